#!/usr/bin/env bash
# Installs the wasm32-wasip2 Rust target if it is missing (sourced by the build and lint scripts).
if ! rustup target list --installed | grep -qx wasm32-wasip2; then
  echo "==> installing the wasm32-wasip2 Rust target"
  rustup target add wasm32-wasip2 || {
    echo "error: 'rustup target add wasm32-wasip2' failed; plugins cannot be built or linted without it" >&2
    exit 1
  }
fi

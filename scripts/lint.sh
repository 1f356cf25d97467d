#!/usr/bin/env bash
# Lints: clippy with warnings as errors over the host, the SDK and the tests (native), and over
# the plugins for their real target, wasm32-wasip2 (installed first if missing).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "==> cargo clippy: host, SDK, tests"
cargo clippy --release -p sluice -p sluice-sdk -p sluice-tests --all-targets -- -D warnings

if ! rustup target list --installed | grep -qx wasm32-wasip2; then
  echo "==> installing the wasm32-wasip2 Rust target"
  rustup target add wasm32-wasip2 || {
    echo "error: 'rustup target add wasm32-wasip2' failed; plugins cannot be linted without it" >&2
    exit 1
  }
fi
plugins=()
for dir in plugins/*/; do
  plugins+=("-p" "$(basename "$dir")")
done
echo "==> cargo clippy: plugins (wasm32-wasip2)"
cargo clippy --profile plugin --target wasm32-wasip2 "${plugins[@]}" --all-targets -- -D warnings

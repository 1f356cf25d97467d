#!/usr/bin/env bash
# Lints: clippy with warnings as errors over the host, the SDK and the tests (native), and over
# the plugins for their real target, wasm32-wasip2 (installed first if missing).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "==> cargo clippy: host, SDK, tests"
cargo clippy --release -p sluice -p sluice-sdk -p sluice-tests --all-targets -- -D warnings

source scripts/wasm-target.sh
plugins=()
for dir in plugins/*/; do
  plugins+=("-p" "$(basename "$dir")")
done
echo "==> cargo clippy: plugins (wasm32-wasip2)"
cargo clippy --profile plugin --target wasm32-wasip2 "${plugins[@]}" --all-targets -- -D warnings

#!/usr/bin/env bash
# The demo: word count over a directory of text files through a Wasm plugin, run to completion
# with the available_now trigger. Builds everything it needs on first use.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build-plugins.sh >/dev/null
cargo build --release -p sluice
exec "${CARGO_TARGET_DIR:-target}/release/sluice" run examples/wordcount_files.toml "$@"

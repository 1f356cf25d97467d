#!/usr/bin/env bash
# End-to-end latency from outside Sluice (issue 13): `sluice bench latency` against a local
# Kafka broker. Each case runs `sluice run` on a pipeline (kafka | socket | rate source ->
# identity plugin -> Kafka sink, or the console sink with --sinks console) at a fixed rate, for
# the default and the continuous trigger, at-least-once and exactly-once, and prints
# p50/p95/p99/max latency, Sluice's CPU and whether it keeps up as a Markdown table (stdout;
# progress on stderr). See host/src/bench/latency.rs for the method. (Socket or rate into the
# console needs no broker: `sluice bench latency --sources socket,rate --sinks console` on its
# own runs without one.)
#
#   scripts/bench-latency.sh                                   # every case (about 10 minutes)
#   scripts/bench-latency.sh --sources kafka --rates 10k --triggers continuous --seconds 5
#   scripts/bench-latency.sh --sources socket,kafka --sinks console --guarantees at-least-once
#                                       # Sluice's own share: its stdout read, no broker after it
#
# Arguments go to `sluice bench latency`. Builds the plugins and the release binary first.
# The broker runs on 127.0.0.1:${SLUICE_KAFKA_PORT:-9192} (the controller on port+1) and is
# stopped on exit, unless it was already running there before this script started it.
set -euo pipefail
cd "$(dirname "$0")/.."

export SLUICE_KAFKA_PORT="${SLUICE_KAFKA_PORT:-9192}"

scripts/build-plugins.sh > /dev/null
cargo build --release -p sluice
bin="${CARGO_TARGET_DIR:-target}/release/sluice"
[ -x "$bin" ] || { echo "error: no sluice binary at $bin" >&2; exit 1; }

if ! scripts/kafka.sh status 2> /dev/null; then
  echo "==> starting a local Apache Kafka broker (KRaft) on port $SLUICE_KAFKA_PORT" >&2
  eval "$(scripts/kafka.sh start)"
  trap 'scripts/kafka.sh stop' EXIT
else
  eval "$(scripts/kafka.sh start)" # already up: only prints the export line
fi

"$bin" bench latency --kafka "$SLUICE_KAFKA_BOOTSTRAP" "$@"

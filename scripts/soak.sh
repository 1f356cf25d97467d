#!/usr/bin/env bash
# Soak of `sluice serve`: two queries for a while, memory / threads / file descriptors sampled
# from the server's own /metrics, and checked for growth after a warm-up.
#
#   scripts/soak.sh [SECONDS]     # default 3600; CI runs a 120 s smoke
#
# Queries: (1) rate 20 000 rows/s -> identity plugin -> aggregation (1 000 keys, checkpoint) -> noop;
# (2) Kafka -> identity plugin -> Kafka (exactly-once), fed by (0) rate 2 000 rows/s -> Kafka.
# Needs the Kafka broker of scripts/kafka.sh (started here if SLUICE_KAFKA_BOOTSTRAP is unset).
# Pass: after the first quarter (warm-up), resident memory stays within 5% of its warm-up
# value (max over the rest vs the value at warm-up end), open fds at the end are no more than at
# warm-up end (fewest of three samples each: a file open at one instant is not a leak), threads by at most 2
# (tokio's on-demand blocking pool), and every query is still running. Prints a table of the samples and the verdict.
set -euo pipefail
cd "$(dirname "$0")/.."
duration="${1:-3600}"
bin="${SLUICE_BIN:-${CARGO_TARGET_DIR:-target}/release/sluice}"
[ -x "$bin" ] || { echo "error: no sluice binary at $bin (cargo build --release -p sluice)" >&2; exit 1; }
[ -f examples/plugins/identity.wasm ] || { echo "error: examples/plugins/identity.wasm is missing (scripts/build-plugins.sh)" >&2; exit 1; }

started_kafka=""
if [ -z "${SLUICE_KAFKA_BOOTSTRAP:-}" ]; then
  eval "$(scripts/kafka.sh start)"
  started_kafka=1
fi
bootstrap="$SLUICE_KAFKA_BOOTSTRAP"
tmp="$(mktemp -d)"
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
url="http://127.0.0.1:$port"
suffix="$(date +%s)"
scripts/kafka.sh topics --create --topic "soak-in-$suffix" --partitions 2 --replication-factor 1 > /dev/null
scripts/kafka.sh topics --create --topic "soak-out-$suffix" --partitions 2 --replication-factor 1 > /dev/null

"$bin" serve --listen "127.0.0.1:$port" --state-dir "$tmp/state" > "$tmp/serve.log" 2>&1 &
pid=$!
cleanup_server() { kill "$pid" 2> /dev/null || true; wait "$pid" 2> /dev/null || true; }
cleanup() { cleanup_server; [ -z "$started_kafka" ] || scripts/kafka.sh stop; }
trap cleanup EXIT
for _ in $(seq 100); do curl -fsS "$url/api/queries" > /dev/null 2>&1 && break; sleep 0.2; done

submit() { # name, then the pipeline on stdin; identity.wasm goes along
  cat > "$tmp/$1.toml"
  curl -fsS -F "pipeline=@$tmp/$1.toml" -F "plugins/identity.wasm=@examples/plugins/identity.wasm" "$url/api/queries" > /dev/null \
    || { echo "error: submitting $1 failed" >&2; tail -20 "$tmp/serve.log" >&2; exit 1; }
}
submit agg <<EOF
name = "agg"
[source]
format = "rate"
options = { rowsPerSecond = "20000" }
[[transform]]
plugin = "plugins/identity.wasm"
[[transform]]
sql = "SELECT value % 1000 AS k, count(*) AS n, max(timestamp) AS last FROM input GROUP BY value % 1000"
[sink]
format = "noop"
output_mode = "update"
[trigger]
processing_time = "1s"
EOF
submit feed <<EOF
name = "feed"
[source]
format = "rate"
options = { rowsPerSecond = "2000" }
[[transform]]
sql = "SELECT CAST(value AS STRING) AS key, to_json(named_struct('v', value, 'ts', timestamp)) AS value FROM input"
[sink]
format = "kafka"
options = { "kafka.bootstrap.servers" = "$bootstrap", topic = "soak-in-$suffix" }
[trigger]
processing_time = "500ms"
EOF
submit kafka <<EOF
name = "kafka"
[source]
format = "kafka"
options = { "kafka.bootstrap.servers" = "$bootstrap", subscribe = "soak-in-$suffix", startingOffsets = "earliest" }
[[transform]]
plugin = "plugins/identity.wasm"
[[transform]]
sql = "SELECT key, value FROM input"
[sink]
format = "kafka"
options = { "kafka.bootstrap.servers" = "$bootstrap", topic = "soak-out-$suffix", deliveryGuarantee = "exactly_once" }
[trigger]
processing_time = "500ms"
EOF

samples="$tmp/samples.tsv"
interval=$(( duration / 40 )); [ "$interval" -ge 2 ] || interval=2
echo "==> soak for ${duration}s, sampling every ${interval}s (server $url, state $tmp/state)"
start=$(date +%s)
while :; do
  now=$(date +%s); t=$(( now - start ))
  m="$(curl -fsS "$url/metrics")" || { echo "error: /metrics failed" >&2; tail -20 "$tmp/serve.log" >&2; exit 1; }
  val() { echo "$m" | awk -v k="$1" '$1 == k { print $2; exit }'; }
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$t" "$(val sluice_process_resident_memory_bytes)" "$(val sluice_process_threads)" \
    "$(val sluice_process_open_fds)" "$(val 'sluice_query_input_rows_total{query="agg"}')" \
    "$(val 'sluice_query_input_rows_total{query="kafka"}')" >> "$samples"
  [ "$t" -lt "$duration" ] || break
  sleep "$interval"
done
states="$(curl -fsS "$url/api/queries" | python3 -c 'import json,sys; print(" ".join(q["name"] + "=" + q["state"] for q in json.load(sys.stdin)["queries"]))')"
cleanup_server
python3 - "$samples" "$states" <<'PY'
import sys
rows = [list(map(float, l.split("\t"))) for l in open(sys.argv[1]) if l.strip()]
print(f"{'t (s)':>7} {'RSS MB':>8} {'threads':>8} {'fds':>5} {'agg rows':>12} {'kafka rows':>11}")
for t, rss, th, fd, a, k in rows:
    print(f"{t:7.0f} {rss/1e6:8.1f} {th:8.0f} {fd:5.0f} {a:12.0f} {k:11.0f}")
warm = next(i for i, r in enumerate(rows) if r[0] >= rows[-1][0] / 4)
base, rest = rows[warm], rows[warm + 1:] or rows[warm:]
growth = max(r[1] for r in rest) / base[1] - 1
threads = max(r[2] for r in rest) - base[2]
# A descriptor open at one sample's instant (a checkpoint file being written, a broker
# connection being replaced) is not a leak; a leak stays: compare the fewest open in the last
# three samples with the fewest in the three that end the warm-up.
fds = min(r[3] for r in rows[-3:]) - min(r[3] for r in rows[max(0, warm - 2):warm + 1])
fds_peak = max(r[3] for r in rest) - base[3]
agg_rate = (rows[-1][4] - base[4]) / max(1, rows[-1][0] - base[0])
print(f"after warm-up (t={base[0]:.0f}s, RSS {base[1]/1e6:.1f} MB): RSS max growth {growth*100:+.1f}%, "
      f"threads {threads:+.0f}, fds {fds:+.0f} at the end ({fds_peak:+.0f} at most); agg {agg_rate:,.0f} rows/s; queries: {sys.argv[2]}")
bad = []
if growth > 0.05: bad.append(f"memory grew {growth*100:.1f}% (> 5%)")
# tokio's blocking pool starts threads on demand (and ends them after 10 s idle): a couple more
# at a busy moment is not a leak; a leak keeps growing.
if threads > 2: bad.append(f"threads grew by {threads:.0f}")
if fds > 0: bad.append(f"file descriptors grew by {fds:.0f}")
if "failed" in sys.argv[2] or "retrying" in sys.argv[2]: bad.append(f"a query is not running: {sys.argv[2]}")
if bad:
    sys.exit("soak FAILED: " + "; ".join(bad))
print("soak OK")
PY

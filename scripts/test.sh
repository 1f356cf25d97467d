#!/usr/bin/env bash
# Runs every test: builds the plugins (installing the wasm32-wasip2 target if needed), then the
# unit and integration tests, then the example pipelines end to end.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/build-plugins.sh

echo "==> starting a local S3-compatible server (moto) for the checkpoint tests"
eval "$(scripts/s3-server.sh start)"
trap 'scripts/s3-server.sh stop' EXIT

echo "==> starting a local Apache Kafka broker (KRaft) for the Kafka tests"
eval "$(scripts/kafka.sh start)"
trap 'scripts/kafka.sh stop; scripts/s3-server.sh stop' EXIT

echo "==> the official Python Prometheus client (the server test parses /metrics with it)"
venv="${HOME:-/tmp}/.cache/sluice/prom-venv"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -c 'import prometheus_client' 2>/dev/null || "$venv/bin/pip" install -q 'prometheus_client==0.21.1'
export SLUICE_PROM_PYTHON="$venv/bin/python"

echo "==> unit and integration tests (the crash tests and the server test run the sluice binary)"
cargo build --release -p sluice
cargo test --release -p sluice -p sluice-sdk -p sluice-tests

echo "==> the plugins' own unit tests, natively (a separate build: plugin features stay apart from the host's)"
native=()
for dir in plugins/*/; do
  grep -q '"rlib"' "$dir/Cargo.toml" && native+=("-p" "$(basename "$dir")")
done
cargo test --release "${native[@]}"

echo "==> example pipelines"
bin="${CARGO_TARGET_DIR:-target}/release/sluice"
abs_bin="$(realpath "$bin")"
for f in examples/*.toml; do
  "$bin" validate "$f"
done
out="$("$bin" run examples/wordcount_files.toml)"
echo "$out" | tail -n 20
# The files example must count 'the' correctly: computed here independently.
expected=$(cat examples/data/words/*.txt | tr 'A-Z' 'a-z' | tr -s '[:space:]' '\n' | grep -cx 'the')
echo "$out" | grep -Eq "^\| the +\| $expected +\|$" || { echo "error: wordcount_files did not report the=$expected" >&2; exit 1; }
"$bin" run examples/wordcount_sql.toml > /dev/null
"$bin" run examples/events_json.toml > /dev/null
"$bin" run examples/json_plugin.toml > /dev/null
# Event time: the late click must be dropped, the out-of-order one counted.
out="$(cd examples && "$abs_bin" run windowed_events.toml --progress 2>&1)"
echo "$out" | grep -Eq '10:00:00Z, end: 2026-11-25T10:01:00Z\} \| home \| 3 ' || { echo "error: windowed_events did not count 3 home clicks in [10:00, 10:01)" >&2; exit 1; }
echo "$out" | grep -q '"numRowsDroppedByWatermark": 1' || { echo "error: windowed_events did not drop the late click" >&2; exit 1; }
rm -rf examples/ckpt/wordcount examples/out/wordcount
"$bin" run examples/wordcount_checkpoint.toml
"$bin" checkpoint inspect examples/ckpt/wordcount
"$bin" checkpoint state examples/ckpt/wordcount --num-rows 5

# Every role a plugin: sequence (source plugin) -> SQL -> jsonl_dir (foreachBatch plugin).
rm -rf examples/ckpt/plugin_roles examples/out/plugin_roles
(cd examples && "$abs_bin" run plugin_roles.toml)
python3 - examples/out/plugin_roles <<'PY'
import json, os, sys
d = sys.argv[1]
files = sorted(f for f in os.listdir(d) if f.startswith("batch-"))
ids = sorted(json.loads(l)["id"] for f in files for l in open(os.path.join(d, f)))
want = [i for i in range(10000) if i % 3 == 0]
if len(files) != 10 or ids != want:
    sys.exit(f"error: plugin_roles wrote {len(files)} files and {len(ids)} ids; expected 10 files and {len(want)} ids")
print(f"plugin_roles: {len(files)} batch files, {len(ids)} ids, each once")
PY
"$bin" plugin inspect examples/plugins/webhook.wasm --config url=http://127.0.0.1:8080/hook | tee /tmp/sluice-inspect.txt
grep -q "outbound HTTP to 127.0.0.1:8080" /tmp/sluice-inspect.txt || { echo "error: plugin inspect did not show the webhook's requirement" >&2; exit 1; }

# Kafka -> plugin -> aggregate -> Kafka on the local broker; totals checked independently.
scripts/kafka.sh topics --delete --topic events >/dev/null 2>&1 || true
scripts/kafka.sh topics --delete --topic user-totals >/dev/null 2>&1 || true
scripts/kafka.sh topics --create --topic events --partitions 3 --replication-factor 1 >/dev/null
cat examples/data/events/*.json | scripts/kafka.sh produce events
rm -rf examples/ckpt/kafka_events
(cd examples && "$abs_bin" run kafka_events.toml > /dev/null)
got="$(scripts/kafka.sh consume user-totals --from-beginning --isolation-level read_committed \
  --timeout-ms 10000 2>/dev/null | grep '^{' || true)"
echo "$got"
python3 - "$got" examples/data/events/*.json <<'PY'
import json, sys
got, files = sys.argv[1], sys.argv[2:]
want = {}
for f in files:
    for line in open(f):
        try:
            e = json.loads(line)
        except ValueError:
            continue
        n, t = want.get(e["user"], (0, 0))
        want[e["user"]] = (n + 1, t + e["amount"])
last = {}
for line in got.splitlines():
    v = json.loads(line)
    last[v["user"]] = (v["orders"], v["total"])
if last != want:
    sys.exit(f"error: kafka_events wrote {last}, expected {want}")
print(f"kafka_events: totals for {len(want)} users match")
PY
echo "examples: OK"

echo "==> the dashboard of sluice serve in headless Chromium (installs Debian's chromium and playwright-core if missing)"
SLUICE_BIN="$abs_bin" scripts/browser-test.sh

echo "==> a 2-minute soak smoke of sluice serve (the hour-long run: scripts/soak.sh 3600)"
SLUICE_BIN="$abs_bin" scripts/soak.sh 120

#!/usr/bin/env bash
# A real S3-compatible server on 127.0.0.1 for the tests: moto's server mode, installed from
# PyPI into a virtual environment under the cache directory. Usage:
#   eval "$(scripts/s3-server.sh start)"   # prints the AWS_* variables to export
#   scripts/s3-server.sh stop
set -euo pipefail
cache="${SLUICE_CACHE_DIR:-${HOME:-/tmp}/.cache/sluice}"
venv="$cache/moto-venv"
port="${SLUICE_S3_PORT:-5055}"
pidfile="$cache/moto.pid"
bucket="sluice-test"

case "${1:-}" in
start)
  mkdir -p "$cache"
  if [ ! -x "$venv/bin/moto_server" ]; then
    echo "installing moto[server] into $venv" >&2
    python3 -m venv "$venv" >&2
    "$venv/bin/pip" install --quiet 'moto[server]>=5,<6' >&2 || { echo "error: pip could not install moto[server]" >&2; exit 1; }
  fi
  if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    kill "$(cat "$pidfile")" 2>/dev/null || true
    sleep 0.5
  fi
  "$venv/bin/moto_server" -H 127.0.0.1 -p "$port" > "$cache/moto.log" 2>&1 &
  echo $! > "$pidfile"
  for _ in $(seq 1 100); do
    if "$venv/bin/python" - "$port" "$bucket" >/dev/null 2>&1 <<'PY'
import sys, boto3
s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{sys.argv[1]}", aws_access_key_id="test",
                  aws_secret_access_key="test", region_name="us-east-1")
names = [b["Name"] for b in s3.list_buckets().get("Buckets", [])]
if sys.argv[2] not in names:
    s3.create_bucket(Bucket=sys.argv[2])
PY
    then
      echo "export AWS_ENDPOINT=http://127.0.0.1:$port AWS_ALLOW_HTTP=true AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1 SLUICE_TEST_S3_BUCKET=$bucket"
      exit 0
    fi
    sleep 0.2
  done
  echo "error: the S3 server did not start on 127.0.0.1:$port; see $cache/moto.log" >&2
  exit 1
  ;;
stop)
  if [ -f "$pidfile" ]; then kill "$(cat "$pidfile")" 2>/dev/null || true; rm -f "$pidfile"; fi
  ;;
*)
  echo "usage: $0 start|stop" >&2
  exit 2
  ;;
esac

#!/usr/bin/env bash
# Browser test of the `sluice serve` dashboard: starts the server with a token, submits a rate
# pipeline, and drives the dashboard in headless Chromium (tests/browser/dashboard.mjs, through
# playwright-core and Debian's chromium: no browser download). Installs what is missing
# (chromium with apt-get, the node modules with npm ci).
#
#   scripts/browser-test.sh            # SLUICE_BIN, CARGO_TARGET_DIR and ARTIFACTS are read
#
# Leaves the screenshot (and the server's log) in ${ARTIFACTS:-target/browser}.
set -euo pipefail
cd "$(dirname "$0")/.."

bin="${SLUICE_BIN:-${CARGO_TARGET_DIR:-target}/release/sluice}"
artifacts="${ARTIFACTS:-target/browser}"
[ -x "$bin" ] || { echo "error: no sluice binary at $bin (build it with 'cargo build --release -p sluice', or set SLUICE_BIN)" >&2; exit 1; }
command -v node > /dev/null && command -v npm > /dev/null || { echo "error: the browser test needs node (>= 20) and npm" >&2; exit 1; }

if [ ! -x /usr/bin/chromium ]; then
  echo "==> installing Debian's chromium"
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y chromium; then
    apt-get update || true
    apt-get install -y chromium || true
  fi
  [ -x /usr/bin/chromium ] || { echo "error: chromium could not be installed (apt-get install -y chromium failed); the browser test needs /usr/bin/chromium" >&2; exit 1; }
fi

want="$(node -p "require('./tests/browser/package-lock.json').packages['node_modules/playwright-core'].version")"
have="$(node -p "try { require('./tests/browser/node_modules/playwright-core/package.json').version } catch { '' }")"
if [ "$want" != "$have" ]; then
  echo "==> npm ci in tests/browser (playwright-core $want)"
  npm ci --prefix tests/browser --no-audit --no-fund
fi

tmp="$(mktemp -d)"
pid=""
mkdir -p "$artifacts"
cleanup() {
  local status=$?
  if [ -n "$pid" ] && kill -0 "$pid" 2> /dev/null; then
    kill "$pid" 2> /dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2> /dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2> /dev/null || true
    wait "$pid" 2> /dev/null || true
  fi
  if [ -f "$tmp/serve.log" ]; then
    cp "$tmp/serve.log" "$artifacts/serve.log"
    if [ "$status" -ne 0 ]; then
      echo "--- last lines of sluice serve's log ($artifacts/serve.log):" >&2
      tail -n 30 "$tmp/serve.log" >&2
    fi
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT

port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
token="$(python3 -c 'import secrets; print(secrets.token_hex(16))')"
url="http://127.0.0.1:$port"
auth="Authorization: Bearer $token"

echo "==> sluice serve on $url"
"$bin" serve --listen "127.0.0.1:$port" --state-dir "$tmp/state" --token "$token" > "$tmp/serve.log" 2>&1 &
pid=$!
ready=""
for _ in $(seq 300); do
  kill -0 "$pid" 2> /dev/null || { echo "error: sluice serve exited before answering" >&2; exit 1; }
  if curl -fsS -o /dev/null -H "$auth" "$url/api/queries" 2> /dev/null; then ready=1; break; fi
  sleep 0.1
done
[ -n "$ready" ] || { echo "error: sluice serve did not answer GET /api/queries within 30 s" >&2; exit 1; }

cat > "$tmp/rate.toml" <<'TOML'
name = "rate_dashboard"
[source]
format = "rate"
options = { rowsPerSecond = "2000" }
[[transform]]
sql = "SELECT value % 10 AS k, count(*) AS n FROM input GROUP BY value % 10"
[sink]
format = "noop"
output_mode = "update"
[trigger]
processing_time = "500ms"
TOML
echo "==> submitting the rate_dashboard pipeline"
curl -fsS -X POST -H "$auth" -H 'Content-Type: application/toml' --data-binary @"$tmp/rate.toml" "$url/api/queries" > /dev/null

echo "==> driving the dashboard in headless Chromium"
shot="$artifacts/dashboard.png"
SLUICE_URL="$url" SLUICE_TOKEN="$token" SCREENSHOT="$shot" node tests/browser/dashboard.mjs
echo "screenshot: $(realpath "$shot")"

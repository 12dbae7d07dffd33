#!/usr/bin/env bash
# The Transaction Lock Monitor (/admin/locks) in a real browser: Debian's
# headless Chromium, driven by playwright-core, against the real server on a
# fresh SQLite database. Installs what is missing (chromium, node, the test's
# npm packages), builds and starts the server, mints the tokens and runs
# tests/browser/monitor.test.mjs. Its screenshots go to target/browser-test/;
# MONITOR_SCREENSHOTS=docs scripts/browser-test.sh refreshes the committed ones.
set -euo pipefail
cd "$(dirname "$0")/.."

export CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"
if [ ! -x "$CHROMIUM" ] || ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "browser test: installing chromium and node" >&2
  apt-get update -qq
  pkgs=()
  [ -x "$CHROMIUM" ] || pkgs+=(chromium)
  command -v node >/dev/null || pkgs+=(nodejs)
  command -v npm >/dev/null || pkgs+=(npm)
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pkgs[@]}" >/dev/null
fi
stamp=tests/browser/node_modules/.installed-package-lock.json
if ! cmp -s tests/browser/package-lock.json "$stamp"; then
  (cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)
  cp tests/browser/package-lock.json "$stamp"
fi

cargo build --locked --quiet -p api --bin ledger
bin=target/debug/ledger

work="$(mktemp -d)"
server=""
cleanup() {
  if [ -n "$server" ]; then
    kill "$server" 2>/dev/null || true
    wait "$server" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
export DATABASE_URL="sqlite://$work/ledger.db"
export LEDGER_JWT_SECRET="browser-test-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
export LEDGER_LISTEN="127.0.0.1:$port"
export LEDGER_RATE_LIMIT_PER_SECOND=0
export LEDGER_SHUTDOWN_DRAIN_MS=0
export RUST_LOG="${RUST_LOG:-warn}"

"$bin" serve >"$work/server.log" 2>&1 &
server=$!
for _ in $(seq 150); do
  curl -fs "http://$LEDGER_LISTEN/health/ready" >/dev/null 2>&1 && break
  kill -0 "$server" 2>/dev/null || { cat "$work/server.log" >&2; exit 1; }
  sleep 0.1
done
curl -fs "http://$LEDGER_LISTEN/health/ready" >/dev/null || { echo "the server did not start" >&2; cat "$work/server.log" >&2; exit 1; }

# Not LEDGER_*: those are the server's configuration.
MONITOR_URL="http://$LEDGER_LISTEN"
MONITOR_ADMIN_TOKEN="$("$bin" token --sub root --role admin)"
MONITOR_SHORT_TOKEN="$("$bin" token --sub root --role admin --ttl 1s)"
MONITOR_WORKER_A="$("$bin" token --sub worker-a --role service)"
MONITOR_WORKER_B="$("$bin" token --sub worker-b --role service)"
MONITOR_WRONG_TOKEN="$(LEDGER_JWT_SECRET="another-secret-0123456789abcdef" "$bin" token --sub root --role admin)"
MONITOR_SCREENSHOTS="$(realpath -m "${MONITOR_SCREENSHOTS:-target/browser-test}")"
export MONITOR_URL MONITOR_ADMIN_TOKEN MONITOR_SHORT_TOKEN MONITOR_WORKER_A MONITOR_WORKER_B \
  MONITOR_WRONG_TOKEN MONITOR_SCREENSHOTS

status=0
(cd tests/browser && node --test --test-reporter=spec monitor.test.mjs) || status=$?
if [ "$status" -ne 0 ]; then
  echo "--- server log ---" >&2
  tail -n 50 "$work/server.log" >&2
fi
exit "$status"

#!/usr/bin/env bash
# The Transaction Lock Monitor (/admin/locks) in a real browser: Debian's
# headless Chromium, driven by playwright-core, against the real server on a
# fresh SQLite database. Installs what is missing (chromium, node, the test's
# npm packages), builds and starts the server, mints the tokens and runs
# tests/browser/monitor.test.mjs. Its screenshots go to target/browser-test/;
# MONITOR_SCREENSHOTS=docs scripts/browser-test.sh refreshes the committed ones.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

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

scratch

export DATABASE_URL="sqlite://$work/ledger.db"
export LEDGER_LISTEN="127.0.0.1:$(free_port)"
server_env "browser-test-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
start_server "$bin" "$work/server.log"

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

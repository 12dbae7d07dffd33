#!/usr/bin/env bash
# A short run of the load generator against the real server on PostgreSQL:
# seed users, serve, drive the mixed scenario, then check the books (each
# user's balance equals what its successful operations imply, and the
# database reconciles). Any failed request, any request without a definite
# answer within 30 s of retries, or any difference fails the script.
#
#   scripts/load-smoke.sh [users] [seconds]      (default 200 users, 15 s)
set -euo pipefail
cd "$(dirname "$0")/.."

users="${1:-200}"
seconds="${2:-15}"
admin="${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
db="ledger_smoke_$$"
url="${admin%/*}/$db"
work="$(mktemp -d)"
server=""

cleanup() {
  [ -n "$server" ] && kill "$server" 2>/dev/null && wait "$server" 2>/dev/null || true
  psql "$admin" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

cargo build --locked --quiet --bin ledger --bin loadgen
bin=target/debug
psql "$admin" -qc "CREATE DATABASE $db" >/dev/null

port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
export DATABASE_URL="$url"
export LEDGER_JWT_SECRET="load-smoke-secret-0123456789abcdef"
export LEDGER_LISTEN="127.0.0.1:$port"
export LEDGER_RATE_LIMIT_PER_SECOND=0
export LEDGER_SHUTDOWN_DRAIN_MS=0
export RUST_LOG=warn

"$bin/ledger" seed-load --users "$users" --balance 1000 --out "$work/users.json"
"$bin/ledger" serve >"$work/server.log" 2>&1 &
server=$!
for _ in $(seq 100); do
  curl -fs "http://$LEDGER_LISTEN/health/ready" >/dev/null 2>&1 && break
  sleep 0.1
done

"$bin/loadgen" --users-file "$work/users.json" --target "$LEDGER_LISTEN" \
  --scenario mixed --vus "$users" --ramp 2 --duration "$seconds" \
  --think-min-ms 50 --think-max-ms 250 --retry-bound 30 --database-url "$url"
echo "load smoke: books balance"

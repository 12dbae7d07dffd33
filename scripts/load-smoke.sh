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
. scripts/lib.sh

users="${1:-200}"
seconds="${2:-15}"
db="ledger_smoke_$$"
url="$(database_url "$db")"
on_exit() {
  psql "$pg_admin" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
}
scratch

cargo build --locked --quiet --bin ledger --bin loadgen
bin=target/debug
psql "$pg_admin" -qc "CREATE DATABASE $db" >/dev/null

export DATABASE_URL="$url"
export LEDGER_LISTEN="127.0.0.1:$(free_port)"
server_env "load-smoke-secret-0123456789abcdef"
export RUST_LOG=warn

"$bin/ledger" seed-load --users "$users" --balance 1000 --out "$work/users.json"
start_server "$bin/ledger" "$work/server.log"

"$bin/loadgen" --users-file "$work/users.json" --target "$LEDGER_LISTEN" \
  --scenario mixed --vus "$users" --ramp 2 --duration "$seconds" \
  --think-min-ms 50 --think-max-ms 250 --retry-bound 30 --database-url "$url"
echo "load smoke: books balance"

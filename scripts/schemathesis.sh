#!/usr/bin/env bash
# Property-based API testing with schemathesis against the real server on
# SQLite: every operation of /openapi.json is called with generated valid and
# invalid requests, and every answer must match the document (status, content
# type, body schema) and never be a 5xx, and a method a path does not serve
# must get 405 with `Allow`. Two users with funded live wallets, a
# priced symbol and an open order are seeded first, and the hooks in
# scripts/schemathesis_hooks.py steer part of the generated ids to them, so
# deposits, withdrawals, transfers and orders really execute. Exits non-zero
# on any failure.
#
#   scripts/schemathesis.sh [extra schemathesis run options]
#   SCHEMATHESIS_EXAMPLES=100  generated cases per operation and phase
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

version="${SCHEMATHESIS_VERSION:-4.32.5}"
export SCHEMATHESIS_SEED="${SCHEMATHESIS_SEED:-20251129}"
examples="${SCHEMATHESIS_EXAMPLES:-100}"
venv="$(realpath -m "${SCHEMATHESIS_VENV:-target/schemathesis-venv}")"
scratch

if [ "$("$venv/bin/schemathesis" --version 2>/dev/null)" != "schemathesis, version $version" ]; then
  echo "installing schemathesis $version into $venv"
  python3 -m venv --clear "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$version"
fi

cargo build --locked --quiet --bin ledger
bin=target/debug/ledger

port="$(free_port)"
base="http://127.0.0.1:$port"
export DATABASE_URL="sqlite://$work/ledger.db"
export LEDGER_LISTEN="127.0.0.1:$port"
server_env "schemathesis-secret-0123456789abcdef"
start_server "$bin" "$work/server.log"

admin="$("$bin" token --sub root --role admin --ttl 1h)"

# POST/PUT with the admin token; prints the body, fails on a non-2xx answer.
call() {
  local method="$1" path="$2" body="$3"
  curl -fsS -X "$method" "$base$path" \
    -H "Authorization: Bearer $admin" -H 'Content-Type: application/json' \
    -H "Idempotency-Key: seed-$RANDOM-$RANDOM-$RANDOM" -d "$body"
}
field() { python3 -c "import json,sys; print(json.load(sys.stdin)[\"$1\"])"; }

alice="$(call POST /api/v1/users '{"email":"alice@example.com"}' | field id)"
bob="$(call POST /api/v1/users '{"email":"bob@example.com"}' | field id)"
call POST /api/v1/wallets/deposit "{\"user_id\":$alice,\"amount\":\"1000000\",\"wallet\":\"live\"}" >/dev/null
call POST /api/v1/wallets/deposit "{\"user_id\":$bob,\"amount\":\"1000000\",\"wallet\":\"live\"}" >/dev/null
call PUT /api/v1/prices/BTCUSD '{"price":"100"}' >/dev/null
order="$(call POST /api/v1/orders "{\"user_id\":$alice,\"symbol\":\"BTCUSD\",\"side\":\"buy\",\"quantity\":\"1\",\"leverage\":10,\"wallet\":\"live\"}" | field id)"

export SCHEMATHESIS_SEED_USERS="$alice,$bob"
export SCHEMATHESIS_SEED_ORDERS="$order"
export SCHEMATHESIS_SEED_SYMBOL="BTCUSD"
export SCHEMATHESIS_STATUS_LOG="$work/statuses.log"
export SCHEMATHESIS_HOOKS=schemathesis_hooks
export PYTHONPATH="$PWD/scripts${PYTHONPATH:+:$PYTHONPATH}"

# Lock changes all through the run, so that every read of the event stream
# carries events and each is checked against the document. A release may
# find its lock already ended by the generated admin requests (clear-all,
# DELETE /api/v1/locks): the loop goes on.
churn() {
  local i=0 lock
  while :; do
    i=$((i + 1))
    lock="$(curl -fsS -X POST "$base/api/v1/locks" \
      -H "Authorization: Bearer $admin" -H 'Content-Type: application/json' \
      -H "Idempotency-Key: churn-$i" \
      -d "{\"resources\":[\"churn:$i\"],\"transaction_type\":\"churn\"}" | field lock_id)" &&
      curl -sS -o /dev/null -X POST "$base/api/v1/locks/$lock/release" \
        -H "Authorization: Bearer $admin" -H 'Content-Type: application/json' -d '{}'
    sleep 0.2
  done
}
churn &
churn_pid=$!
on_exit() { kill "$churn_pid" 2>/dev/null || true; }

status=0
# run from the scratch directory: schemathesis keeps a cache in its cwd
(cd "$work" && "$venv/bin/schemathesis" run "$base/openapi.json" \
  --checks not_a_server_error,status_code_conformance,response_schema_conformance,content_type_conformance,unsupported_method,allow_header_conformance \
  --header "Authorization: Bearer $admin" \
  --max-examples "$examples" \
  --workers 2 \
  --seed "$SCHEMATHESIS_SEED" \
  --generation-database none \
  --no-color \
  "$@") || status=$?
on_exit

if [ "$status" -ne 0 ]; then
  echo "schemathesis failed (exit $status); server log:" >&2
  tail -n 50 "$work/server.log" >&2
  exit "$status"
fi

# The run proves little if the money and lock paths only ever refused: each
# of these must have succeeded at least once.
python3 - "$SCHEMATHESIS_STATUS_LOG" <<'PY'
import collections, sys
counts = collections.defaultdict(collections.Counter)
for line in open(sys.argv[1], encoding="utf-8"):
    method, path, status = line.split()
    counts[f"{method} {path}"][int(status)] += 1
for op in sorted(counts):
    if set(counts[op]) == {405}:
        continue  # a method the path does not serve, probed once
    print(f"{op:40} " + " ".join(f"{s}x{n}" for s, n in sorted(counts[op].items())))
money = ["POST /api/v1/users", "POST /api/v1/wallets/deposit", "POST /api/v1/wallets/withdraw",
         "POST /api/v1/wallets/transfer", "POST /api/v1/orders",
         "POST /api/v1/orders/{id}/close", "POST /api/v1/locks", "POST /api/v1/holds",
         "POST /api/v1/workflows/withdrawals", "POST /api/v1/workflows/deposits"]
missed = [op for op in money if not any(200 <= s < 300 for s in counts[op])]
if missed:
    sys.exit("no successful request reached: " + ", ".join(missed))
PY
"$bin" reconcile

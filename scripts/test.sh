#!/usr/bin/env bash
# The whole test suite: unit tests, the HTTP tests on SQLite and on
# PostgreSQL (each test in a database of its own), the lock monitor page in
# headless Chromium, the k6 scripts' parse and route check, and a short
# load-generator run whose books must balance.
set -euo pipefail
cd "$(dirname "$0")/.."
export TEST_DATABASE_URL="${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
scripts/ensure-postgres.sh
# The fault tests start the real `ledger` binary as a process of its own.
cargo build --locked -p api --bin ledger
cargo test --workspace --locked "$@"
scripts/browser-test.sh
scripts/k6-check.sh
scripts/load-smoke.sh 200 15

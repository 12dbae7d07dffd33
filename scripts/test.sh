#!/usr/bin/env bash
# The whole test suite: unit tests, the HTTP tests on SQLite and on
# PostgreSQL (each test in a database of its own), schemathesis against the
# OpenAPI document, the lock monitor page in headless Chromium, the k6
# scripts' parse and route check, a short load-generator run whose books must
# balance, and a short run of every fault scenario (`faults`;
# `bench/faults.sh` runs them long).
set -euo pipefail
cd "$(dirname "$0")/.."
export TEST_DATABASE_URL="${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
scripts/ensure-postgres.sh
# The fault tests start the real `ledger` binary as a process of its own.
cargo build --locked -p api --bin ledger
cargo build --locked -p tests --bin faults
cargo test --workspace --locked "$@"
# Every fault scenario for a few seconds of load (pg-stop keeps PostgreSQL
# down its full 10 s): about a minute and a half in all.
target/debug/faults --seconds 4 --clients 8
scripts/schemathesis.sh
scripts/browser-test.sh
scripts/k6-check.sh
scripts/promtool-check.sh
scripts/load-smoke.sh 200 15

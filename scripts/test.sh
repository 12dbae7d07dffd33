#!/usr/bin/env bash
# The whole test suite: unit tests, and the HTTP tests on SQLite and on
# PostgreSQL (each test in a database of its own).
set -euo pipefail
cd "$(dirname "$0")/.."
export TEST_DATABASE_URL="${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
scripts/ensure-postgres.sh
cargo test --workspace --locked "$@"

#!/usr/bin/env bash
# Every fault scenario run long, one after the other, each against real
# `ledger` processes on PostgreSQL under the bank workload, and the result
# written to RELIABILITY.md (the table: operations, faults injected, outage
# seen by clients, p99 during and after the fault, never-definite writes,
# duplicates, discrepancies). Exits non-zero if any scenario fails; the
# report says which row and why.
#
#   bench/faults.sh [seconds of load per scenario] [clients]   (default 45, 16)
#
# Scenarios that stop or restart PostgreSQL run a private cluster (needs the
# PostgreSQL server binaries; PG_BIN overrides where they are); the network
# scenario needs `ip netns` and `tc` (root), and is skipped with the kernel's
# reason where they are refused.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-45}"
clients="${2:-16}"
export TEST_DATABASE_URL="${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
scripts/ensure-postgres.sh
cargo build --locked -p api --bin ledger
cargo build --locked -p tests --bin faults
status=0
target/debug/faults --seconds "$seconds" --clients "$clients" --report RELIABILITY.md || status=$?
echo "bench/faults.sh: RELIABILITY.md written"
exit "$status"

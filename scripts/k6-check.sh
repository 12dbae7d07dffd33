#!/usr/bin/env bash
# The k6 scripts cannot run here (k6 is not installed); this checks that each
# parses as an ES module and that every route they call is in the server's
# OpenAPI document.
set -euo pipefail
cd "$(dirname "$0")/.."
spec="$(mktemp)"
trap 'rm -f "$spec"' EXIT
cargo run --locked --quiet --bin ledger -- openapi >"$spec"
node k6/check.mjs "$spec"

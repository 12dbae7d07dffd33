#!/usr/bin/env bash
# A flame graph of the server under one kind of load: where the CPU of one
# wallet read (`GET /api/v1/users/{id}/wallets`) or one deposit
# (`POST /api/v1/wallets/deposit`) goes.
#
#   bench/profile.sh [read|deposit]   writes bench/flamegraph-SCENARIO.svg and
#                                     bench/profile-SCENARIO.txt (the top
#                                     frames); read when not named
#
# Builds the release binaries, seeds a PostgreSQL database of its own
# (ledger_profile) with `ledger seed-load`, starts the release server (the
# same settings as bench/run.sh), runs loadgen's scenario (50
# connections) and samples the server with
# `perf record -F 999 --call-graph dwarf -p <pid>` for PROFILE_SECONDS
# (default 15) in the middle of it. Plain `-g` unwinds with frame pointers,
# which a release build here does not keep: the stacks would stop at the
# leaf. PERF_CALL_GRAPH=fp gives the `-g` behaviour anyway.
# The graph is drawn with inferno (`cargo install inferno --locked` when
# inferno-flamegraph is missing).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

scenario="${1:-read}"
case "$scenario" in
  read) route="GET /api/v1/users/{id}/wallets" ;;
  deposit) route="POST /api/v1/wallets/deposit" ;;
  *) echo "usage: bench/profile.sh [read|deposit]" >&2; exit 2 ;;
esac
seconds="${PROFILE_SECONDS:-15}"
users="${PROFILE_USERS:-2000}"
call_graph="${PERF_CALL_GRAPH:-dwarf}"
db=ledger_profile
url="$(database_url "$db")"
port=18091
perf="${PERF:-perf}"
svg="bench/flamegraph-$scenario.svg"
summary="bench/profile-$scenario.txt"
load=""
on_exit() {
  stop_pid "$load"
  psql "$pg_admin" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
}
scratch

export PATH="$HOME/.cargo/bin:$PATH"
command -v "$perf" >/dev/null || { echo "perf is missing" >&2; exit 1; }
if ! command -v inferno-flamegraph >/dev/null || ! command -v inferno-collapse-perf >/dev/null; then
  cargo install inferno --locked
fi

bench_setup

echo "== seed $users users into $db"
psql "$pg_admin" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" -qc "CREATE DATABASE $db"
export DATABASE_URL="$url"
RUST_LOG=warn "$bin/ledger" seed-load --users "$users" --balance 1000 --out "$work/users.json"
psql "$url" -qc "VACUUM ANALYZE"

echo "== server"
export LEDGER_LISTEN="127.0.0.1:$port" LEDGER_DB_MAX_CONNECTIONS=50
start_server "$bin/ledger" "$work/server.log" 200

echo "== $scenario load, perf on the server (pid $server) for ${seconds}s"
"$bin/loadgen" --users-file "$work/users.json" --target "127.0.0.1:$port" --label "profile-$scenario" \
  --scenario "$scenario" --vus 50 --duration "$((seconds + 6))" >"$work/loadgen.txt" 2>&1 &
load=$!
sleep 3
# CPU time of the machine and of the server over the sampled seconds:
# whether the server (or the machine) is saturated or waits.
cpu_times() { head -1 /proc/stat; awk '{print "server", $14 + $15}' "/proc/$server/stat"; }
cpu_times >"$work/cpu-before.txt"
"$perf" record -F 999 --call-graph "$call_graph" -p "$server" -o "$work/perf.data" -- sleep "$seconds" 2>&1 |
  grep -v '^\[ perf record: Woken' || true
cpu_times >"$work/cpu-after.txt"
wait "$load" || true
load=""
cat "$work/loadgen.txt"
curl -fs "http://$LEDGER_LISTEN/metrics" >"$work/metrics.txt" || true

echo "== flame graph"
"$perf" script -i "$work/perf.data" 2>/dev/null | inferno-collapse-perf >"$work/folded.txt"
inferno-flamegraph --title "ledger: $route, 50 connections (perf -F 999, ${seconds} s)" \
  <"$work/folded.txt" >"$svg"

# The top frames: self time (the frame on top of the stack) and total time
# (the frame anywhere in the stack), each as a share of all samples.
python3 - "$work/folded.txt" "$work/loadgen.txt" "$work/cpu-before.txt" "$work/cpu-after.txt" \
  "$work/metrics.txt" "$seconds" >"$summary" <<'EOF'
import os
import re
import sys
from collections import Counter

# The folded stacks, each with its weight, read once.
stacks = []
for line in open(sys.argv[1]):
    stack, _, count = line.rstrip("\n").rpartition(" ")
    if count.isdigit():
        stacks.append((stack.split(";"), int(count)))
total = sum(n for _, n in stacks)
own, anywhere = Counter(), Counter()
for frames, n in stacks:
    own[frames[-1]] += n
    for f in set(frames):
        anywhere[f] += n


def short(frame):
    frame = re.sub(r"::h[0-9a-f]{16}$", "", frame)
    return frame if len(frame) <= 150 else frame[:147] + "..."


# What a request spends its CPU on: the share of the weight whose stack holds
# a frame matching each pattern (the areas overlap: JSON inside the
# handler, the kernel inside the database I/O; each is counted where it is).
areas = [
    ("JWT verification (jsonwebtoken, HMAC-SHA256, the auth extractor)", r"jsonwebtoken|hmac|api::auth"),
    ("SHA-256 (the request's fingerprint, the journal's hash chain)", r"sha2::"),
    ("group commit (the leader, the group's books and statements)", r"domain::group"),
    ("idempotency (claim, replay, the stored answer)", r"domain::idempotency"),
    ("JSON (serde_json, poem-openapi ToJSON)", r"serde_json|ToJSON|to_json|ParseFromJSON"),
    ("logging and tracing (tracing-subscriber, the request log line)", r"tracing_subscriber|tracing_core::event|tracing::span::Span::(new|record)|infra::telemetry"),
    ("metrics (prometheus)", r"prometheus"),
    ("the connection pool (sqlx pool: acquire, the query through it, release)", r"sqlx_core::pool"),
    ("  of which returning the connection (sqlx return_to_pool: a socket flush)", r"Floating<.*Live<.*>>::return_to_pool"),
    ("the query in sea-orm/sea-query (build, bind, map rows)", r"sea_orm::|sea_query::"),
    ("PostgreSQL protocol I/O (sqlx socket write/read)", r"sqlx_core::net::socket|BufferedSocket"),
    ("HTTP (hyper + poem routing, headers)", r"hyper::proto|poem::route|poem::server"),
    ("memory allocation (mimalloc)", r"^mi_|mimalloc"),
    ("kernel: TCP send", r"tcp_sendmsg"),
    ("kernel: TCP receive", r"tcp_recvmsg"),
    ("kernel: scheduler / wake-ups (context switches, futex, epoll)", r"finish_task_switch|schedule|futex|ep_poll|try_to_wake_up"),
]
load = open(sys.argv[2]).read()
first = next((l for l in load.splitlines() if " req/s " in l), "")
print(f"total weight (perf cpu-clock periods): {total}")
print(f"load during the profile: {first}")


def cpu(path):
    lines = open(path).read().splitlines()
    ticks = [int(x) for x in lines[0].split()[1:]]
    return sum(ticks), ticks[3] + ticks[4], int(lines[1].split()[1])


(all0, idle0, srv0), (all1, idle1, srv1) = cpu(sys.argv[3]), cpu(sys.argv[4])
hz, seconds = os.sysconf("SC_CLK_TCK"), float(sys.argv[6])
print(
    f"CPU over the sampled {seconds:g} s: machine {100 - 100 * (idle1 - idle0) / max(all1 - all0, 1):.0f} % busy "
    f"({os.cpu_count()} cores), the server {(srv1 - srv0) / hz / seconds:.2f} cores"
)
# Batches the server formed over the whole load run (`/metrics`): how many,
# their mean size, and how many held one request only.
metrics = open(sys.argv[5]).read() if os.path.exists(sys.argv[5]) else ""
for name, what in (("ledger_db_group_size", "group-commit transactions"),
                   ("ledger_db_read_batch_size", "coalesced read statements")):
    value = lambda suffix: float((re.search(rf"^{name}{suffix} (\S+)$", metrics, re.M) or [0, 0])[1])  # noqa: E731
    count, alone = value("_count"), value('_bucket{le="1"}')
    if count:
        print(f"{what}: {count:,.0f}, mean size {value('_sum') / count:.1f}, {alone:,.0f} of one request")
print()
print("where the CPU goes (% of the weight with a matching frame on the stack; areas overlap)")
for name, pattern in areas:
    rx = re.compile(pattern)
    w = sum(c for frames, c in stacks if any(rx.search(f) for f in frames))
    print(f"{w * 100 / total:6.2f}  {name}")
print()
print("top 25 frames by self time (% of samples)")
for frame, n in own.most_common(25):
    print(f"{n * 100 / total:6.2f}  {short(frame)}")
print()
print("top 40 frames by total time (% of samples in which the frame is on the stack)")
for frame, n in anywhere.most_common(40):
    print(f"{n * 100 / total:6.2f}  {short(frame)}")
EOF
cat "$summary"
echo "wrote $svg and $summary"

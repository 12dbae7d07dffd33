#!/usr/bin/env bash
# Regenerates BENCHMARKS.md and bench/latency.svg: every number in them comes
# from this script's run on this machine.
#
#   bench/run.sh                     the full run (about 30 minutes)
#   BENCH_QUICK=1 bench/run.sh       a short rehearsal (smaller, shorter)
#   BENCH_ONLY=holds,workflows bench/run.sh
#                                    seed, then only these sections (api:
#                                    pgbench and the API's deposits, reads and
#                                    hot wallet, with and without group commit
#                                    and coalesced reads; locks, orders, holds,
#                                    workflows, fast: the 33,000-user
#                                    fast-think run); the other results stay, and
#                                    the report is written from all of them
#   BENCH_NOTE="..."                 a remark on the machine (other work running
#                                    on it) for the report's machine block
#   BENCH_DB=name BENCH_PORT=n       another database and port than ledger_bench
#                                    and 18090
#
# Steps: seed 33,000 users on PostgreSQL; pgbench the deposit and wallet-read
# SQL (bench/pgbench/), the deposit both as the API first sent it (7 round
# trips, 2 commits) and as one statement (1 round trip, 1 commit), each also
# with every client on one wallet; the same work through the API with
# loadgen (50 connections); one hot wallet under 500 depositors; 33,000
# users on keep-alive connections running the mixed scenario, with the books
# checked and the database reconciled, once with 20-40 s think time and once
# with 3-6 s (more than the server can serve: load shedding, and the
# clients' retries with the same keys); the SQLite default at moderate load.
# Between the API runs and the mixed runs: the writes without group commit
# and the reads without coalescing (before/after), resource locks (uncontended, and one hot resource with
# 200 queued waiters), and orders opened without and with a signal_id (a
# trade lock); holds created and captured, and withdrawal workflows (hold,
# payout, capture) against `payout-sim` accepting at once, with 4 and 16
# workflow workers. Each run's commands are written beside its results
# (NAME.cmd), and the report prints them; the load average is sampled
# every 5 s during each run (NAME.load).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

quick="${BENCH_QUICK:-0}"
users=33000 step=30 mixed_ramp=120 mixed_hold=600 think_min=20000 think_max=40000
fast_hold=300 fast_think_min=3000 fast_think_max=6000
sqlite_users=1000 sqlite_vus=200 sqlite_hold=60
flow_vus=50 flow_hold=60 flow_workers="4 16"
if [ "$quick" = 1 ]; then
  users=3000 step=8 mixed_ramp=10 mixed_hold=30 think_min=500 think_max=1500
  # a tenth of the users with a tenth of the think time: the same offered load
  fast_hold=20 fast_think_min=300 fast_think_max=600
  sqlite_users=200 sqlite_vus=100 sqlite_hold=15
  flow_hold=8
fi
only="${BENCH_ONLY:-}"
# The 20-40 s think run's hold and both 33,000-user ramps can be shortened
# (seconds); BENCHMARKS.md states the durations they ran.
mixed_hold="${BENCH_MIXED_HOLD:-$mixed_hold}"
mixed_ramp="${BENCH_MIXED_RAMP:-$mixed_ramp}"

# BENCH_DB and BENCH_PORT let a second run share the machine with another
# one (another checkout's) without dropping its database or its port.
db="${BENCH_DB:-ledger_bench}"
url="$(database_url "$db")"
out=bench/results
port="${BENCH_PORT:-18090}"
mkdir -p "$out"
if [ -z "$only" ]; then
  rm -f "$out"/*.json "$out"/*.txt "$out"/*.cmd "$out"/*.load
fi
servers=()

stop_servers() {
  for pid in "${servers[@]:-}"; do
    stop_pid "$pid"
  done
  servers=()
}
trap stop_servers EXIT

bench_setup

# serve NAME [INSTANCES] [POOL]: starts the server(s) on $port, logs to $out.
# The environment it adds (e.g. LEDGER_GROUP_COMMIT=false) is in server_cmd,
# for the .cmd files of the runs against it.
server_cmd=""
serve() {
  local name="$1" instances="${2:-1}" pool="${3:-50}" i extra="" var
  for var in LEDGER_GROUP_COMMIT LEDGER_READ_BATCH LEDGER_PAYOUT_URL LEDGER_WORKFLOW_WORKERS LEDGER_MAX_IN_FLIGHT; do
    [ -n "${!var:-}" ] && extra="$extra$var=${!var} "
  done
  case "$DATABASE_URL" in sqlite:*) extra="${extra}DATABASE_URL=sqlite://…/ledger.db " ;; esac
  server_cmd="${extra}LEDGER_LISTEN_REUSE_PORT=true LEDGER_DB_MAX_CONNECTIONS=$pool ledger serve"
  [ "$instances" -gt 1 ] && server_cmd="$server_cmd   # $instances instances sharing the port"
  for i in $(seq "$instances"); do
    LEDGER_LISTEN="127.0.0.1:$port" LEDGER_LISTEN_REUSE_PORT=true \
      LEDGER_DB_MAX_CONNECTIONS="$pool" \
      "$bin/ledger" serve >"$out/server-$name-$i.log" 2>&1 &
    servers+=($!)
  done
  wait_ready "http://127.0.0.1:$port" "" 200
}

# loadgen NAME ARGS...: one generator run; its report goes to $out/NAME.json,
# the load average every 5 s during it to $out/NAME.load (with the three
# processes that used the most CPU in those 5 s). $pre_cmd (a helper
# process the server talks to) goes into NAME.cmd before the server.
pre_cmd=""
# busiest: the three processes with the most CPU time over the last 5 s.
busiest() {
  local a b
  a="$(ps -eo pid=,time=,comm= 2>/dev/null)"
  sleep 5
  b="$(ps -eo pid=,time=,comm= 2>/dev/null)"
  awk 'function secs(t,  d, p) { d = 0; if (index(t, "-")) { split(t, p, "-"); d = p[1]; t = p[2] }
         split(t, p, ":"); return d * 86400 + p[1] * 3600 + p[2] * 60 + p[3] }
       NR == FNR { before[$1] = secs($2); next }
       { used = secs($2) - ($1 in before ? before[$1] : 0); if (used > 0) print used, $3 }' \
    <(echo "$a") <(echo "$b") | sort -rn | head -3 | awk '{printf "%s%s %ss", sep, $2, $1; sep = ", "}'
}
loadgen() {
  local name="$1" sampler rc=0
  shift
  {
    [ -n "$pre_cmd" ] && echo "$pre_cmd"
    echo "server: $server_cmd"
    echo "loadgen --users-file $out/users.json --target 127.0.0.1:$port --label $name $*"
  } >"$out/$name.cmd"
  (while :; do
    echo "$(date -u +%H:%M:%S) $(cut -d' ' -f1-3 /proc/loadavg) busiest: $(busiest)"
  done) >"$out/$name.load" &
  sampler=$!
  "$bin/loadgen" --users-file "$out/users.json" --target "127.0.0.1:$port" \
    --label "$name" --json "$out/$name.json" "$@" | tee "$out/$name.txt" || rc=$?
  kill "$sampler" 2>/dev/null && wait "$sampler" 2>/dev/null || true
  return "$rc"
}

# payout_sim NAME: a payout provider that accepts every payout at once, for
# the server's LEDGER_PAYOUT_URL; stopped with the servers (on SIGTERM it
# logs what it paid to $out/payout-sim-NAME.txt).
payout_sim() {
  local name="$1" url=""
  "$bin/payout-sim" --listen 127.0.0.1:0 --mode accept --quiet \
    >"$out/payout-sim-$name.out" 2>"$out/payout-sim-$name.txt" &
  servers+=($!)
  for _ in $(seq 100); do
    url="$(sed -n 's/^LEDGER_PAYOUT_URL=//p' "$out/payout-sim-$name.out")"
    [ -n "$url" ] && break
    sleep 0.1
  done
  [ -n "$url" ] || { echo "payout-sim did not start" >&2; return 1; }
  pre_cmd="payout-sim --listen 127.0.0.1:0 --mode accept --quiet   # prints LEDGER_PAYOUT_URL=$url"
  payout_url="$url"
}

# Resource locks through the API: 50 users each on a resource of its own,
# then 200 queued waiters on one hot resource.
section_locks() {
  echo "== resource locks: acquire and release, uncontended and one hot resource"
  serve locks
  loadgen locks --scenario locks --vus 50 --duration "$step" || echo "locks run FAILED" | tee -a "$out/locks.txt"
  loadgen locks-hot --scenario locks-hot --vus 200 --ramp 2 --duration "$step" \
    || echo "locks-hot run FAILED" | tee -a "$out/locks-hot.txt"
  stop_servers
}

# Orders opened and closed by 50 users, without and then with a fresh
# signal_id per order, back to back against the same server.
section_orders() {
  echo "== orders opened and closed, without and with a signal_id (a trade lock)"
  serve orders
  loadgen orders --scenario orders --vus 50 --duration "$step" || echo "orders run FAILED" | tee -a "$out/orders.txt"
  loadgen orders-signal --scenario orders-signal --vus 50 --duration "$step" \
    || echo "orders-signal run FAILED" | tee -a "$out/orders-signal.txt"
  stop_servers
}

# Holds: each of $flow_vus users holds 0.01 of its live wallet, the service
# captures it at once; books checked, database reconciled (held included).
section_holds() {
  echo "== holds: create + capture, $flow_vus users"
  serve holds
  loadgen holds --scenario holds --vus "$flow_vus" --duration "$flow_hold" --amount 0.01 \
    --database-url "$url" || echo "holds run FAILED" | tee -a "$out/holds.txt"
  stop_servers
}

# mixed NAME HOLD THINK_MIN THINK_MAX: the 33,000-user mixed scenario on two
# instances sharing the port (pool 25 + 25), each taking as many requests in
# flight as it has pooled connections (the default) and refusing the rest at
# once.
mixed() {
  local name="$1" hold="$2" think_min="$3" think_max="$4"
  psql "$url" -qc "VACUUM ANALYZE"
  serve "$name" 2 25
  loadgen "$name" --scenario mixed --vus "$users" --shards 2 \
    --sources 127.0.0.1,127.0.0.2,127.0.0.3,127.0.0.4 \
    --ramp "$mixed_ramp" --duration "$hold" \
    --think-min-ms "$think_min" --think-max-ms "$think_max" \
    --timeout 60 --database-url "$url" || echo "$name run FAILED" | tee -a "$out/$name.txt"
  stop_servers
}

section_fast() {
  echo "== $users users, mixed, fast think ($fast_think_min-$fast_think_max ms): more than can be served"
  mixed mixed-fast "$fast_hold" "$fast_think_min" "$fast_think_max"
}

# Withdrawal workflows end to end (start, then poll until a final status),
# the server paying out through payout-sim in accept mode; once per worker
# count in $flow_workers.
section_workflows() {
  local workers
  for workers in $flow_workers; do
    echo "== withdrawal workflows: $flow_vus users, $workers workers, payout-sim accepting at once"
    payout_sim "workflows-$workers"
    LEDGER_PAYOUT_URL="$payout_url" LEDGER_WORKFLOW_WORKERS="$workers" serve "workflows-$workers"
    loadgen "workflows-$workers" --scenario withdrawal-workflows --vus "$flow_vus" \
      --duration "$flow_hold" --amount 0.01 --poll-ms 20 --database-url "$url" \
      || echo "workflows-$workers run FAILED" | tee -a "$out/workflows-$workers.txt"
    stop_servers
    pre_cmd=""
  done
}

# pgb NAME SCRIPT [USERS]: 50 clients, $step seconds, prepared statements,
# on a copy of the seeded database (its journal rows carry a fixed hash, so
# they must not join the API's hash chains).
pgb() {
  echo "pgbench -n -M prepared -c 50 -j 2 -T $step -D users=${3:-$users} -f bench/pgbench/$2 ${db}_pgbench" \
    >"$out/pgbench-$1.cmd"
  pgbench -h 127.0.0.1 -U postgres -n -M prepared -c 50 -j 2 -T "$step" \
    -D users="${3:-$users}" -f "bench/pgbench/$2" "${db}_pgbench" | tee "$out/pgbench-$1.txt"
}

machine="$out/machine.txt"
# One file per set of sections run on their own, so that a later set does
# not take the machine of an earlier one.
[ -n "$only" ] && machine="$out/machine-only-${only//,/-}.txt"
echo "== machine"
{
  echo "cpus: $(nproc)"
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
  echo "memory: $(free -g | awk '/Mem:/ {print $2}') GiB"
  echo "kernel: $(uname -r)"
  echo "postgresql: $(psql "$pg_admin" -Atc 'show server_version')"
  echo "pgbench: $(pgbench --version)"
  echo "rustc: $(rustc --version)"
  echo "open files per process (hard): $(ulimit -Hn)"
  echo "date: $(date -u +%Y-%m-%dT%H:%MZ)"
  echo "quick: $quick"
  if [ -n "$only" ]; then
    echo "sections: $only (run on their own; the other results are from the full run above)"
    echo "load average at the start: $(cut -d' ' -f1-3 /proc/loadavg)"
  fi
  if [ -n "${BENCH_NOTE:-}" ]; then echo "note: $BENCH_NOTE"; fi
} | tee "$machine"

# The database's own limit for the same SQL, then the API against it: one
# instance, pool 50; and again without group commit and without coalesced
# reads (before/after).
section_api() {
  echo "== pgbench: the database's own limit for the same SQL"
  psql "$pg_admin" -qc "DROP DATABASE IF EXISTS ${db}_pgbench WITH (FORCE)" \
    -qc "CREATE DATABASE ${db}_pgbench TEMPLATE $db"
  pgb deposit deposit.sql
  pgb deposit-1rt deposit-1rt.sql
  pgb read read.sql
  pgb hot deposit.sql 1
  pgb hot-1rt deposit-1rt.sql 1
  psql "$pg_admin" -qc "DROP DATABASE ${db}_pgbench WITH (FORCE)"

  echo "== the API, one instance, pool 50"
  serve single
  loadgen deposit --scenario deposit --vus 50 --duration "$step"
  loadgen read --scenario read --vus 50 --duration "$step"
  loadgen hot --scenario hot --vus 500 --ramp 2 --duration "$step"
  stop_servers

  echo "== the same without group commit (one transaction per write) and without coalesced reads"
  LEDGER_GROUP_COMMIT=false LEDGER_READ_BATCH=false serve solo
  loadgen deposit-solo --scenario deposit --vus 50 --duration "$step"
  loadgen read-solo --scenario read --vus 50 --duration "$step"
  loadgen hot-solo --scenario hot --vus 500 --ramp 2 --duration "$step"
  stop_servers
}

echo "== seed $users users"
psql "$pg_admin" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" -qc "CREATE DATABASE $db"
export DATABASE_URL="$url"
start=$(date +%s%N)
seed="seed"
[ -n "$only" ] && seed="seed-only"
echo "ledger seed-load --users $users --balance 1000 --out $out/users.json   # DATABASE_URL=$url" >"$out/$seed.cmd"
RUST_LOG=warn "$bin/ledger" seed-load --users "$users" --balance 1000 --out "$out/users.json"
echo "seed_ms: $(( ($(date +%s%N) - start) / 1000000 ))" | tee "$out/$seed.txt"
psql "$url" -qc "VACUUM ANALYZE"

if [ -n "$only" ]; then
  for section in ${only//,/ }; do
    "section_$section"
  done
  rm -f "$out/users.json"
  echo "== report"
  python3 bench/report.py "$out" BENCHMARKS.md bench/latency.svg
  exit 0
fi

section_api

section_locks
section_orders
section_holds
section_workflows


echo "== $users users, mixed, two instances sharing the port (pool 25 + 25)"
mixed mixed "$mixed_hold" "$think_min" "$think_max"

section_fast

echo "== SQLite (the default), moderate load"
sqlite_dir="$(mktemp -d)"
export DATABASE_URL="sqlite://$sqlite_dir/ledger.db"
RUST_LOG=warn "$bin/ledger" seed-load --users "$sqlite_users" --balance 1000 --out "$out/users.json"
serve sqlite
loadgen sqlite --scenario mixed --vus "$sqlite_vus" --ramp 5 --duration "$sqlite_hold" \
  --think-min-ms 100 --think-max-ms 500 --database-url "$DATABASE_URL" || true
stop_servers
rm -rf "$sqlite_dir"
rm -f "$out/users.json"

echo "== report"
python3 bench/report.py "$out" BENCHMARKS.md bench/latency.svg

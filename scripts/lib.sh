# Sourced by the scripts in scripts/ and bench/ (`. scripts/lib.sh`, from the
# repository root): a free port, the server's test settings, starting and
# stopping a `ledger serve` and waiting for it to be ready.

# The PostgreSQL server the scripts use (TEST_DATABASE_URL, else the local
# one), and database_url DB: the URL of its database DB.
pg_admin="${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
database_url() {
  echo "${pg_admin%/*}/$1"
}

# scratch: a scratch directory in $work, no server yet in $server, and on
# exit: the server stopped, the script's own on_exit run (when it defines
# one), the directory removed.
scratch() {
  work="$(mktemp -d)"
  server=""
  trap scratch_cleanup EXIT
}
scratch_cleanup() {
  stop_pid "$server"
  if declare -F on_exit >/dev/null; then
    on_exit
  fi
  rm -rf "$work"
}

# A TCP port on 127.0.0.1 that nothing listens on right now.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# server_env SECRET: what every script's server runs with: the JWT secret, no
# rate limit, no shutdown drain, RUST_LOG as given (else RUST_LOG_DEFAULT).
server_env() {
  export LEDGER_JWT_SECRET="$1"
  export LEDGER_RATE_LIMIT_PER_SECOND=0
  export LEDGER_SHUTDOWN_DRAIN_MS=0
  export RUST_LOG="${RUST_LOG:-${RUST_LOG_DEFAULT:-warn}}"
}

# bench_setup: PostgreSQL up, the release binaries built ($bin), the server's
# settings the benchmarks share.
bench_setup() {
  scripts/ensure-postgres.sh
  cargo build --release --locked --bin ledger --bin loadgen --bin payout-sim
  bin=target/release
  RUST_LOG_DEFAULT="info,sqlx=warn,sea_orm=warn" server_env "bench-secret-0123456789abcdef0123456789"
}

# wait_ready URL [PID] [TRIES]: polls URL/health/ready every 0.1 s, TRIES
# times (default 150); gives up early when the process PID has exited.
# Fails, saying so on stderr, when the server never became ready.
wait_ready() {
  local url="$1" pid="${2:-}" tries="${3:-150}"
  for _ in $(seq "$tries"); do
    curl -fs "$url/health/ready" >/dev/null 2>&1 && return 0
    if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
      break
    fi
    sleep 0.1
  done
  curl -fs "$url/health/ready" >/dev/null 2>&1 && return 0
  echo "the server did not start" >&2
  return 1
}

# start_server BIN LOG [TRIES]: `BIN serve` in the background on
# $LEDGER_LISTEN, its output to LOG, its pid in $server; waits until it is
# ready (see wait_ready), else prints the end of LOG on stderr and fails.
start_server() {
  local bin="$1" log="$2" tries="${3:-150}"
  "$bin" serve >"$log" 2>&1 &
  server=$!
  wait_ready "http://$LEDGER_LISTEN" "$server" "$tries" || {
    tail -n 50 "$log" >&2
    return 1
  }
}

# stop_pid PID: ends a process this script started, and waits for it.
stop_pid() {
  if [ -n "${1:-}" ]; then
    kill "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
  fi
}

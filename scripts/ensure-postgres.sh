#!/usr/bin/env bash
# Makes sure the PostgreSQL that the tests use answers: starts it if it is
# installed but stopped, installs it (Debian packages) if it is absent, and
# fails loudly otherwise. Never skips.
set -euo pipefail

url="${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

reachable() {
  command -v psql >/dev/null 2>&1 && psql "$url" -Atqc 'select 1' >/dev/null 2>&1
}

start_cluster() {
  command -v pg_ctlcluster >/dev/null 2>&1 || return 1
  local version
  for version in $(ls /etc/postgresql 2>/dev/null); do
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start >/dev/null 2>&1 || true
  done
}

# The tests connect as `postgres` without a password over TCP: a throwaway
# test cluster on this machine trusts loopback connections.
trust_loopback() {
  local hba
  for hba in /etc/postgresql/*/main/pg_hba.conf; do
    [ -f "$hba" ] || continue
    if ! grep -q '^host all all 127.0.0.1/32 trust' "$hba"; then
      as_root sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust' "$hba"
    fi
  done
}

wait_ready() {
  for _ in $(seq 1 30); do
    reachable && return 0
    sleep 1
  done
  return 1
}

if reachable; then exit 0; fi

echo "PostgreSQL is not answering at $url; trying to start it" >&2
start_cluster || true
if wait_ready; then exit 0; fi

if ! command -v pg_ctlcluster >/dev/null 2>&1; then
  echo "PostgreSQL is not installed; installing it from Debian's packages" >&2
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq postgresql postgresql-client >/dev/null
fi
trust_loopback
start_cluster || true
for version in $(ls /etc/postgresql 2>/dev/null); do
  as_root pg_ctlcluster --skip-systemctl-redirect "$version" main reload >/dev/null 2>&1 || true
done
if wait_ready; then exit 0; fi

echo "error: PostgreSQL is still not reachable at $url; the PostgreSQL suite cannot run" >&2
exit 1

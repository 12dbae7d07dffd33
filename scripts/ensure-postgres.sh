#!/usr/bin/env bash
# Makes sure the PostgreSQL that the tests use answers at TEST_DATABASE_URL.
# Starts an installed cluster that is stopped. Changes the machine only when
# asked (`--install`, or CI=true): installs Debian's packages if PostgreSQL is
# absent and lets the tests connect over loopback without a password by adding
# `trust` lines to pg_hba.conf. Says on stderr what it does; never skips.
set -euo pipefail

usage() {
  echo "usage: $0 [--install]" >&2
  echo "  --install  install PostgreSQL with apt-get and trust loopback connections" >&2
  echo "             in pg_hba.conf if that is what it takes (implied by CI=true)" >&2
}

may_change_machine=false
[ "${CI:-}" = "true" ] && may_change_machine=true
for arg in "$@"; do
  case "$arg" in
    --install) may_change_machine=true ;;
    -h | --help) usage; exit 0 ;;
    *) usage; exit 2 ;;
  esac
done

url="${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
say() { echo "ensure-postgres: $*" >&2; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

reachable() {
  command -v psql >/dev/null 2>&1 && psql "$url" -Atqc 'select 1' >/dev/null 2>&1
}

clusters() { ls /etc/postgresql 2>/dev/null || true; }

start_clusters() {
  command -v pg_ctlcluster >/dev/null 2>&1 || return 0
  local version
  for version in $(clusters); do
    say "starting cluster $version/main (pg_ctlcluster $version main start)"
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start >/dev/null 2>&1 || true
  done
}

# The tests connect as `postgres` without a password over TCP: a throwaway
# test cluster on this machine trusts loopback connections.
trust_loopback() {
  local hba version
  for hba in /etc/postgresql/*/main/pg_hba.conf; do
    [ -f "$hba" ] || continue
    if ! grep -q '^host all all 127.0.0.1/32 trust' "$hba"; then
      say "adding 'host all all 127.0.0.1/32 trust' and '::1/128 trust' at the top of $hba"
      as_root sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust' "$hba"
      version="$(basename "$(dirname "$(dirname "$hba")")")"
      say "reloading cluster $version/main so that it reads $hba"
      as_root pg_ctlcluster --skip-systemctl-redirect "$version" main reload >/dev/null 2>&1 || true
    fi
  done
}

install_packages() {
  say "installing postgresql and postgresql-client with apt-get"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq postgresql postgresql-client >/dev/null
}

wait_ready() {
  say "waiting up to 30 s for $url to answer"
  for _ in $(seq 1 30); do
    reachable && return 0
    sleep 1
  done
  return 1
}

if reachable; then exit 0; fi

say "PostgreSQL is not answering at $url"
if [ -n "$(clusters)" ] && command -v pg_ctlcluster >/dev/null 2>&1; then
  start_clusters
  if wait_ready; then exit 0; fi
fi

if [ "$may_change_machine" != true ]; then
  say "error: PostgreSQL does not answer at $url, and changing this machine was not asked for."
  say "Start it and allow passwordless loopback connections for the tests yourself, set"
  say "TEST_DATABASE_URL to a server that answers, or re-run with --install (CI=true implies it)"
  say "to let this script install PostgreSQL and add 'trust' lines for loopback to pg_hba.conf."
  exit 1
fi

if ! command -v pg_ctlcluster >/dev/null 2>&1; then
  install_packages
fi
trust_loopback
start_clusters
if wait_ready; then exit 0; fi

say "error: PostgreSQL is still not reachable at $url; the PostgreSQL suite cannot run"
exit 1

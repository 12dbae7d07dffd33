#!/usr/bin/env bash
# The Prometheus side of the alerts: checks deploy/prometheus/ledger.rules.yml
# and the example configurations, runs the rules' unit tests
# (ledger.rules.test.yml) and checks that Alertmanager routes critical alerts
# to the on-call receiver (e-mail and Slack) and warnings to Slack. Installs
# Debian's prometheus (promtool) and prometheus-alertmanager (amtool) when
# missing; their services are not started by the install in a container
# (policy-rc.d), and nothing here starts them.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v promtool >/dev/null || ! command -v amtool >/dev/null; then
  echo "promtool check: installing prometheus and prometheus-alertmanager" >&2
  apt-get update -qq
  pkgs=()
  command -v promtool >/dev/null || pkgs+=(prometheus)
  command -v amtool >/dev/null || pkgs+=(prometheus-alertmanager)
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
fi

promtool check rules deploy/prometheus/ledger.rules.yml
promtool check config deploy/prometheus/prometheus.yml
(cd deploy/prometheus && promtool test rules ledger.rules.test.yml)

if command -v amtool >/dev/null; then
  am=deploy/alertmanager/alertmanager.yml
  amtool check-config "$am"
  route() {
    local expected="$1"
    shift
    amtool config routes test --config.file="$am" --verify.receivers="$expected" "$@" 2>/dev/null >/dev/null || {
      echo "alertmanager: $* should go to $expected" >&2
      exit 1
    }
  }
  route oncall alertname=high_error_rate severity=critical
  route oncall alertname=circuit_breaker_open severity=critical provider=payouts
  route slack alertname=deadlock_retries severity=warning
  echo "alertmanager routes: critical -> oncall (e-mail, Slack), warning -> slack"
else
  echo "amtool not available: alertmanager.yml not checked" >&2
fi

#!/usr/bin/env bash
# Prometheus server + promtool from Debian's package, for tests/test_deploy_prometheus.py
# (promtool check config, and a real Prometheus scraping a real saic server on loopback).
# Idempotent: does nothing when both binaries are already on PATH.
set -euo pipefail
if command -v prometheus >/dev/null && command -v promtool >/dev/null; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null || { echo "prometheus.sh: need root or sudo to apt-get install prometheus" >&2; exit 1; }
  SUDO="sudo"
fi
echo "installing prometheus (Debian package) ..."
$SUDO apt-get update -qq
# --no-install-recommends: no node exporter; the tests start their own Prometheus on loopback.
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null
prometheus --version 2>&1 | head -1

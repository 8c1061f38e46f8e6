#!/usr/bin/env bash
# Checks the alerting rules: `promtool check rules` and their unit tests
# (alerts_test.yml), and that prometheus.yml loads them. Installs Debian's
# `prometheus` package (it has promtool) when promtool is missing.
set -euo pipefail
cd "$(dirname "$0")"
if ! command -v promtool >/dev/null 2>&1; then
    echo "promtool not found: installing Debian's prometheus package"
    if [ "$(id -u)" -eq 0 ]; then sudo=""; else sudo="sudo"; fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
promtool check rules alerts.yml
promtool test rules alerts_test.yml
promtool check config --syntax-only prometheus.yml

#!/usr/bin/env bash
# Runs every promptreg-bench scenario, side by side with etcd 3.4, and
# writes bench/results/latest.json (summary) and latest.md (tables).
#
#   bash bench/run.sh            # the full run: 10,000 watchers over 100 connections
#   bash bench/run.sh --quick    # everything small, in under a minute (what CI runs)
#   bash bench/run.sh --watchers 5000 --promotes 10   # any promptreg-bench option
#
# Installs Debian's etcd-server (etcd 3.4) and protobuf-compiler (the
# etcd-client crate's build script runs protoc) when they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
if [ ${#need[@]} -gt 0 ]; then
    echo "run.sh: installing ${need[*]}" >&2
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

# 10,000 watch streams need far fewer sockets than that (they share 100
# connections), but keep the limit well clear anyway.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

cargo build --release -p promptreg -p promptreg-bench

mkdir -p bench/results
# CARGO_TARGET_DIR moves the build (a shared warm target/ for a clone).
"${CARGO_TARGET_DIR:-target}"/release/promptreg-bench all "$@" \
    --json bench/results/latest.json \
    --markdown bench/results/latest.md
echo "run.sh: wrote bench/results/latest.json and bench/results/latest.md" >&2

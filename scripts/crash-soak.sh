#!/usr/bin/env bash
# Crash soak: hundreds of SIGKILL/restart cycles of the real server binary
# while publishers and promoters write (tests/crash.rs), on the release build.
#
#   scripts/crash-soak.sh            # 300 cycles
#   scripts/crash-soak.sh 1000       # or any number
#   PROMPTREG_CRASH_SEED=N scripts/crash-soak.sh   # replay a run's kill moments
#
# Exits non-zero on the first broken guarantee; the output names the cycle,
# the seed and every problem found.
set -euo pipefail
cd "$(dirname "$0")/.."
export PROMPTREG_CRASH_CYCLES="${1:-${PROMPTREG_CRASH_CYCLES:-300}}"
echo "crash soak: ${PROMPTREG_CRASH_CYCLES} kill/restart cycles (release build)"
exec cargo test --release --test crash -- --nocapture

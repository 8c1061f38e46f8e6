#!/usr/bin/env bash
# Long fuzzing runs, bounded in time:
#   1. the property tests (tests/properties.rs) with many cases;
#   2. the gRPC fuzz test (tests/grpc_fuzz.rs) again and again with fresh
#      seeds and more rounds, until the time budget is spent.
#
#   scripts/fuzz.sh                       # 100 000 cases, then 10 minutes of gRPC fuzzing
#   PROPTEST_CASES=10000 FUZZ_SECONDS=120 scripts/fuzz.sh
#   PROMPTREG_FUZZ_ROUNDS=3000 scripts/fuzz.sh   # more requests per gRPC run
#
# Every step runs even when an earlier one fails; the exit status is non-zero
# when any failed, and each failure prints the seed that replays it
# (PROMPTREG_FUZZ_SEED=N cargo test --test grpc_fuzz).
set -uo pipefail
cd "$(dirname "$0")/.."
cases="${PROPTEST_CASES:-100000}"
budget="${FUZZ_SECONDS:-600}"
rounds="${PROMPTREG_FUZZ_ROUNDS:-1000}"
failed=()

echo "== property tests, ${cases} cases each"
if ! PROPTEST_CASES="$cases" cargo test --release --test properties; then
    failed+=("properties (PROPTEST_CASES=${cases})")
fi

echo "== gRPC fuzz, ${rounds} rounds per run, for ${budget} s"
if ! cargo test --release --test grpc_fuzz --no-run; then
    echo "the gRPC fuzz test does not build" >&2
    exit 1
fi
# The deterministic oversized-field test once; then random runs.
if ! cargo test --release --test grpc_fuzz oversized -- --nocapture; then
    failed+=("grpc_fuzz oversized_fields_get_a_status_that_reaches_the_client")
fi
end=$((SECONDS + budget))
runs=0
while ((SECONDS < end)); do
    runs=$((runs + 1))
    seed=$(od -An -N8 -tu8 /dev/urandom | tr -d ' ')
    echo "-- run ${runs}: PROMPTREG_FUZZ_SEED=${seed}"
    if ! PROMPTREG_FUZZ_SEED="$seed" PROMPTREG_FUZZ_ROUNDS="$rounds" \
        cargo test --release --test grpc_fuzz malformed -- --nocapture; then
        failed+=("grpc_fuzz PROMPTREG_FUZZ_SEED=${seed} PROMPTREG_FUZZ_ROUNDS=${rounds}")
    fi
done

echo "== ${runs} gRPC fuzz runs done"
if ((${#failed[@]})); then
    printf 'FAILED: %s\n' "${failed[@]}" >&2
    exit 1
fi
echo "all passed"

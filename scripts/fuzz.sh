#!/usr/bin/env bash
# Long fuzzing runs, bounded in time:
#   1. the property tests (tests/properties.rs) with many cases;
#   2. the gRPC fuzz test (tests/grpc_fuzz.rs) again and again with fresh
#      seeds and more rounds, until the time budget is spent;
#   3. every cargo-fuzz target in fuzz/ (libFuzzer, nightly toolchain) for a
#      fixed time each: the template parser, the canonical digest, the record
#      decoder and request validation (harnesses in src/testing/).
#
#   scripts/fuzz.sh                       # 100 000 cases, 10 minutes of gRPC fuzzing, 120 s per target
#   PROPTEST_CASES=10000 FUZZ_SECONDS=120 FUZZ_TARGET_SECONDS=30 scripts/fuzz.sh
#   PROMPTREG_FUZZ_ROUNDS=3000 scripts/fuzz.sh   # more requests per gRPC run
#   FUZZ_TARGETS="template records" scripts/fuzz.sh   # only these cargo-fuzz targets
#   FUZZ_TARGET_SECONDS=0 scripts/fuzz.sh         # skip step 3 (no nightly needed)
#
# Every step runs even when an earlier one fails; the exit status is non-zero
# when any failed, and each failure prints how to replay it: the seed
# (PROMPTREG_FUZZ_SEED=N cargo test --test grpc_fuzz) or the crash input
# (cargo +nightly fuzz run -O -a TARGET fuzz/artifacts/TARGET/crash-...).
# Step 3 installs cargo-fuzz (cargo install cargo-fuzz --locked) if missing;
# the corpus it grows stays in fuzz/corpus/TARGET (git keeps only seed-*).
set -uo pipefail
cd "$(dirname "$0")/.."
cases="${PROPTEST_CASES:-100000}"
budget="${FUZZ_SECONDS:-600}"
rounds="${PROMPTREG_FUZZ_ROUNDS:-1000}"
target_seconds="${FUZZ_TARGET_SECONDS:-120}"
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

if ((target_seconds > 0)); then
    echo "== cargo-fuzz targets, ${target_seconds} s each"
    # Release build with debug assertions and overflow checks: an overflow
    # is a crash, as it would be in a debug build.
    fuzz=(cargo +nightly fuzz)
    if ! command -v cargo-fuzz >/dev/null; then
        cargo install cargo-fuzz --locked || failed+=("cargo install cargo-fuzz --locked")
    fi
    if ! command -v cargo-fuzz >/dev/null || ! "${fuzz[@]}" build -O -a; then
        failed+=("cargo-fuzz targets do not build (they need the nightly toolchain: rustup toolchain install nightly)")
    else
        read -r -a targets <<<"${FUZZ_TARGETS:-$("${fuzz[@]}" list | tr '\n' ' ')}"
        for target in "${targets[@]}"; do
            echo "-- ${target}"
            log=$(mktemp)
            if ! "${fuzz[@]}" run -O -a "$target" -- \
                -max_total_time="$target_seconds" -timeout=10 -print_final_stats=1 2>&1 | tee "$log"; then
                artifact=$(grep -o 'fuzz/artifacts/[^ ]*' "$log" | tail -n 1)
                failed+=("cargo-fuzz ${target}: replay with cargo +nightly fuzz run -O -a ${target} ${artifact:-fuzz/artifacts/${target}/<newest>}")
            fi
            rm -f "$log"
        done
    fi
fi

if ((${#failed[@]})); then
    printf 'FAILED: %s\n' "${failed[@]}" >&2
    exit 1
fi
echo "all passed"

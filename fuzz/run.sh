#!/usr/bin/env bash
# Runs the cargo fuzz targets, one after another, each for SECONDS (default 600), and prints for
# each the executions, coverage and corpus libFuzzer reports at the end. Fails at the first crash,
# timeout or out-of-memory, leaving the input in fuzz/artifacts/<target>/ (keep it as a regression:
# fuzz/regressions/<target>/, replayed by tests/it/fuzz_regressions.rs).
#
#   fuzz/run.sh [SECONDS] [TARGET...]        e.g. fuzz/run.sh 600; fuzz/run.sh 60 catalog tarball
#
# Only stable Rust is needed: RUSTC_BOOTSTRAP=1 lets cargo fuzz pass its -Z flags. FUZZ_SANITIZER
# picks the sanitizer (default none: the proxy forbids unsafe code, and without ASan a run gets about
# twice the executions; `address` works too, its runtime ships with stable's rust-std). The corpus a
# run grows goes to fuzz/target/corpus/<target>/ (not committed); fuzz/corpus/<target>/seed-* are the
# committed seeds.
set -euo pipefail
cd "$(dirname "$0")"

seconds="${1:-600}"
shift || true
targets=("$@")
((${#targets[@]})) || targets=(catalog signature eucarc tarball cloud_error qcow2 simplestreams clearsign splice splice_qcow2)
sanitizer="${FUZZ_SANITIZER:-none}"

if ! command -v cargo-fuzz >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz"
    cargo install cargo-fuzz --version 0.13.2 --locked
fi
export RUSTC_BOOTSTRAP=1
# The harnesses' scratch files (a data dir, the tarball or eucarc under test) stay under target/.
export TMPDIR="$PWD/target/tmp"
mkdir -p "$TMPDIR"
# FUZZ_PROFILE=--dev (what the smoke run uses) builds without optimisation: a fraction of the build
# time, fewer executions per second.
fuzz_flags=(--sanitizer "$sanitizer" "${FUZZ_PROFILE:---release}" --debug-assertions)

# Every target at once: they share one instrumented build of the library.
cargo fuzz build "${fuzz_flags[@]}"

status=0
printf '%-12s %12s %8s %8s %8s %10s  %s\n' target executions exec/s cov ft corpus result
for target in "${targets[@]}"; do
    corpus="target/corpus/$target"
    log="target/logs/$target.log"
    mkdir -p "$corpus" "$(dirname "$log")"
    result=ok
    # -timeout: one input taking 10 s is a hang; -rss_limit_mb: libFuzzer's default, said aloud.
    # New inputs go to the first directory; the seeds and past crashes are read as a start.
    seeds=("corpus/$target")
    [ -d "regressions/$target" ] && seeds+=("regressions/$target")
    if ! cargo fuzz run "${fuzz_flags[@]}" "$target" "$corpus" "${seeds[@]}" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        >"$log" 2>&1; then
        result="FAILED (see fuzz/$log and fuzz/artifacts/$target/)"
        status=1
    fi
    executions="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)"
    speed="$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)"
    last="$(grep -E '^#[0-9]+' "$log" | tail -1)"
    cov="$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")"
    ft="$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")"
    corp="$(sed -n 's/.* corp: \([0-9]*\/[0-9]*[a-zA-Z]*\).*/\1/p' <<<"$last")"
    printf '%-12s %12s %8s %8s %8s %10s  %s\n' "$target" "${executions:-?}" "${speed:-?}" \
        "${cov:-?}" "${ft:-?}" "${corp:-?}" "$result"
    if [ "$result" != ok ]; then
        grep -E 'panicked|ERROR: libFuzzer|SUMMARY|Test unit written' "$log" | head -5 || true
    fi
done
exit "$status"

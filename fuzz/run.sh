#!/usr/bin/env bash
# Runs every fuzz target for SECONDS seconds each (default 10), one after the other.
#
#   fuzz/run.sh [SECONDS]
#   FUZZ_RUNS=N fuzz/run.sh     (CI) N inputs per target from a fixed seed, instead of a time
#
# Installs cargo-fuzz once if it is missing (into ~/.cargo/bin). cargo-fuzz needs nightly -Z
# flags; RUSTC_BOOTSTRAP=1 lets the stable toolchain accept them. The targets are built once
# with AddressSanitizer (set ODMR_FUZZ_SANITIZER=none to build without it). Each run starts from
# fuzz/corpus/TARGET (the committed seed-* files plus whatever earlier runs added there).
#
# Exits non-zero if any target crashes, hangs (-timeout) or runs out of memory; the inputs that
# did are in fuzz/artifacts/TARGET/ and are printed in base64 at the end. Reproduce one with
#   RUSTC_BOOTSTRAP=1 cargo fuzz run TARGET fuzz/artifacts/TARGET/crash-...
# (from fuzz/, with ODMR_FUZZ_TRACE=1 to print every step of a machine target).
set -uo pipefail

secs="${1:-10}"
runs="${FUZZ_RUNS:-}"
for n in "$secs" "${runs:-0}"; do
    case "$n" in
        '' | *[!0-9]*)
            echo "usage: [FUZZ_RUNS=N] $0 [SECONDS]" >&2
            exit 2
            ;;
    esac
done

# FUZZ_RUNS=N (CI): a fixed number of inputs from a fixed seed, so a CI result is reproducible;
# otherwise fuzz for SECONDS. `budget` says it in the run's output.
seed=1
if [ -n "$runs" ]; then
    limits=(-runs="$runs" -seed="$seed")
    budget="$runs inputs from seed $seed"
else
    limits=(-max_total_time="$secs")
    budget="$secs s"
fi

cd "$(dirname "$0")"
export PATH="$HOME/.cargo/bin:$PATH"
export RUSTC_BOOTSTRAP=1

targets=(data_receiver dot_roundtrip parsers dsn smtp_server odmr_session customer deliverer relay splice_observer)
sanitizer="${ODMR_FUZZ_SANITIZER:-address}"
start=$(date +%s)

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz"
    cargo install cargo-fuzz --locked || exit 1
fi

echo "== building ${#targets[@]} targets (sanitizer: $sanitizer)"
build_start=$(date +%s)
cargo fuzz build --fuzz-dir "$PWD" -s "$sanitizer" || exit 1
echo "== build took $(($(date +%s) - build_start)) s"

failed=()
for t in "${targets[@]}"; do
    echo "== $t: $budget"
    mkdir -p "corpus/$t" "artifacts/$t"
    before=$(ls "artifacts/$t" | sort)
    if ! cargo fuzz run --fuzz-dir "$PWD" -s "$sanitizer" "$t" -- \
        "${limits[@]}" -rss_limit_mb=2048 -timeout=30 -print_final_stats=1; then
        failed+=("$t")
        for f in $(comm -13 <(echo "$before") <(ls "artifacts/$t" | sort)); do
            echo "-- $t: artifacts/$t/$f (base64):"
            base64 -w0 "artifacts/$t/$f"
            echo
        done
    fi
done

echo "== total $(($(date +%s) - start)) s"
if ((${#failed[@]})); then
    echo "FAILED: ${failed[*]}"
    exit 1
fi
echo "all ${#targets[@]} targets ran $budget each without a finding"

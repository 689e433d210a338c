#!/usr/bin/env bash
# Runs one fuzz target for a fixed time: fuzz/run.sh TARGET SECONDS [libFuzzer flags...]
# (TARGET `all`: each target in turn, stopping at the first that fails).
#
# Starts from the committed seeds (fuzz/seeds/TARGET) and keeps what it
# finds in fuzz/corpus/TARGET (not committed). Fails on any crash, timeout
# or OOM, which libFuzzer saves under fuzz/artifacts/TARGET. Needs the
# nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`).
#
# TAILOR_FUZZ_BUILD holds cargo-fuzz build flags; unset, the full build
# (AddressSanitizer, one codegen unit). CI builds without the sanitizer
# (docs/fuzzing.md, "In CI").
set -euo pipefail

targets() {
    sed -n 's/^name = "\(.*\)"$/\1/p' "$(dirname "$0")/Cargo.toml" | grep -v tailor-fuzz
}

if [[ $# -lt 2 ]]; then
    echo "usage: $0 TARGET|all SECONDS [libFuzzer flags...]" >&2
    echo "targets: $(targets | tr '\n' ' ')" >&2
    exit 2
fi
target=$1
seconds=$2
shift 2

if [[ $target == all ]]; then
    for t in $(targets); do
        "$0" "$t" "$seconds" "$@"
    done
    exit 0
fi

cd "$(dirname "$0")"
mkdir -p "corpus/$target"
# The http target's loopback server lives in a static for the whole run:
# its threads are alive at exit, and LeakSanitizer's exit check reports
# glibc's thread-exit bookkeeping for them (64 bytes) as a leak.
leaks=()
[[ $target == http ]] && leaks=(-detect_leaks=0)
# The issue's bounds: 2 GiB of RSS, and no input may take more than 10 s.
# shellcheck disable=SC2086 # the flags are words
exec cargo +nightly fuzz run ${TAILOR_FUZZ_BUILD:-} "$target" "corpus/$target" "seeds/$target" -- \
    -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 \
    -print_final_stats=1 "${leaks[@]}" "$@" </dev/null

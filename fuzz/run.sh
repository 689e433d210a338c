#!/usr/bin/env bash
# Runs one fuzz target for a fixed time: fuzz/run.sh TARGET SECONDS [libFuzzer flags...]
#
# Starts from the committed seeds (fuzz/seeds/TARGET) and keeps what it
# finds in fuzz/corpus/TARGET (not committed). Fails on any crash, timeout
# or OOM, which libFuzzer saves under fuzz/artifacts/TARGET. Needs the
# nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`).
set -euo pipefail

if [[ $# -lt 2 ]]; then
    echo "usage: $0 TARGET SECONDS [libFuzzer flags...]" >&2
    echo "targets: $(sed -n 's/^name = "\(.*\)"$/\1/p' "$(dirname "$0")/Cargo.toml" | grep -v tailor-fuzz | tr '\n' ' ')" >&2
    exit 2
fi
target=$1
seconds=$2
shift 2

cd "$(dirname "$0")"
mkdir -p "corpus/$target"
# The issue's bounds: 2 GiB of RSS, and no input may take more than 10 s.
exec cargo +nightly fuzz run "$target" "corpus/$target" "seeds/$target" -- \
    -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 \
    -print_final_stats=1 "$@" </dev/null

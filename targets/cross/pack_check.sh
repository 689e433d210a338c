#!/usr/bin/env bash
# Usage: [EXPORTER=PATH] targets/cross/pack_check.sh RUNTIME SYSROOT QEMU
#
# The slow check of `exporter pack` with the real aarch64 runtime (run by
# targets/cross/build.sh after its build): packs the test bundle for every
# aarch64 board, installs the Raspberry Pi 5's pack into a scratch root with
# its own install.sh, and runs the installed runtime's `select` with the
# installed config under qemu on bullseye's glibc 2.31 (--in-process: the
# measuring children re-execute the binary, which without binfmt_misc the
# host cannot run: exit 127).
set -euo pipefail
cd "$(dirname "$0")/../.."

runtime=$1
sysroot=$2
qemu=$3
# The aarch64 entries of BOARDS (targets/src/board.rs).
boards=(jetson-orin-nano jetson-xavier rpi5 rk3588 generic-aarch64)

# $EXPORTER names an exporter binary already built (the workspace's tests
# build target/debug/exporter); otherwise one is built.
exporter=${EXPORTER:-}
if [[ -z $exporter ]]; then
    cargo build -q -p tailor-exporter --bin exporter
    exporter=${CARGO_TARGET_DIR:-target}/debug/exporter
fi
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

for board in "${boards[@]}"; do
    "$exporter" pack runtime/tests/fixtures/bundle-tiny --target "$board" --latency-ms 100000 \
        --runtime-bin "$runtime" -o "$scratch/$board.tar.gz"
done

mkdir "$scratch/root"
tar xzf "$scratch/rpi5.tar.gz" -C "$scratch"
"$scratch/tailor-rpi5/install.sh" --root "$scratch/root"
installed=$scratch/root/opt/tailor
echo "\$ $(basename "$qemu") -L $sysroot <root>/opt/tailor/bin/runtime select <root>/opt/tailor/bundle --config <root>/etc/tailor/runtime.toml ..." >&2
selection=$("$qemu" -L "$sysroot" "$installed/bin/runtime" select "$installed/bundle" \
    --config "$scratch/root/etc/tailor/runtime.toml" --no-cache --json --in-process)
python3 -c '
import json, sys
s = json.load(sys.stdin)
print("installed rpi5 pack selected", s["subnet"]["id"], "with engine", s["engine"], "limits", s["limits"])
' <<<"$selection"

#!/usr/bin/env bash
# Usage: [PROFILE=release-small] targets/cross/build.sh [CARGO ARGS...]     (e.g. --features ort)
#
# Builds the `runtime` binary for the 64-bit Arm boards with a glibc 2.31
# floor (JetPack 5's Ubuntu 20.04), then checks it: the GLIBC_ symbol versions
# it needs, its stripped size, and that it runs (`probe` and `select`) under
# qemu-aarch64 against Debian bullseye's real glibc 2.31. Installs
# cargo-zigbuild (pip), the Rust target and qemu-user-static (apt) if missing.
# Slow (a cold fat-LTO build of tract), so not part of .ci/run.
set -euo pipefail
cd "$(dirname "$0")/../.."

triple=aarch64-unknown-linux-gnu
floor=2.31
# `device` is tuned for speed; `release-small` (opt-level "z") for flash,
# and must stay within the 10 MB budget (docs/benchmarks.md has both).
profile=${PROFILE:-device}
max_bytes=$((10 * 1000 * 1000))
bin=target/$triple/$profile/runtime
sysroot=target/cross/sysroot-bullseye-arm64

step() { printf '\n== %s\n' "$*"; }
fail() {
    echo "cross: $*" >&2
    exit 1
}
as_root() { if [[ $EUID -eq 0 ]]; then "$@"; else sudo "$@"; fi; }

step "tools"
command -v cargo-zigbuild >/dev/null || python3 -m pip install --quiet cargo-zigbuild
rustup target add "$triple" 2>&1 | grep -v "is up to date" || true
qemu=$(command -v qemu-aarch64 || command -v qemu-aarch64-static || true)
if [[ -z $qemu ]]; then
    as_root apt-get update -qq
    as_root apt-get install -y -qq --no-install-recommends qemu-user-static
    qemu=$(command -v qemu-aarch64-static)
fi
command -v objdump >/dev/null || as_root apt-get install -y -qq --no-install-recommends binutils
echo "cargo-zigbuild $(cargo-zigbuild --version | awk '{print $2}'), $("$qemu" --version | head -1)"

step "sysroot"
targets/cross/sysroot.sh "$sysroot"

step "build: cargo zigbuild --profile $profile -p tailor-runtime --bin runtime --target $triple.$floor $*"
# zigbuild links with `zig cc -target aarch64-linux-gnu.2.31`, through the
# CARGO_TARGET_*_LINKER variable, which overrides .cargo/config.toml's gcc.
nice -n 15 cargo zigbuild --profile "$profile" -p tailor-runtime --bin runtime --target "$triple.$floor" "$@"

step "glibc floor"
objdump -T "$bin" | targets/cross/glibc_floor.sh "$floor"

step "qemu: probe"
# Runs the binary under qemu on bullseye's glibc; the command goes to stderr.
run() {
    echo "\$ $(basename "$qemu") -L $sysroot $bin $*" >&2
    "$qemu" -L "$sysroot" "$bin" "$@"
}
probe=$(run probe --sysroot runtime/tests/fixtures/probe/jetson-orin-nano --json)
device=$(python3 -c 'import json, sys; print(json.load(sys.stdin)["profile"])' <<<"$probe")
echo "profile: $device"
[[ $device == jetson-orin ]] || fail "probe of the Jetson Orin Nano fixture reported profile '$device'"

step "qemu: select"
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
cp -r runtime/tests/fixtures/bundle-tiny "$scratch/bundle"
# --in-process: each candidate's child is the runtime re-executing itself,
# which the host kernel cannot start without a binfmt_misc entry for qemu
# (on a board it is native).
selection=$(run select "$scratch/bundle" --latency-ms 100000 --memory-mb 4096 --no-cache --in-process --json)
subnet=$(python3 -c 'import json, sys; print(json.load(sys.stdin)["subnet"]["id"])' <<<"$selection")
echo "selected: $subnet"

step "packs: every aarch64 board; the installed rpi5 pack selects under qemu"
targets/cross/pack_check.sh "$bin" "$sysroot" "$qemu"

step "size"
if readelf -S "$bin" | grep -q '\.symtab'; then
    fail "$bin still has a symbol table: the device profile no longer strips"
fi
bytes=$(stat -c %s "$bin")
echo "$bin: $bytes bytes stripped ($((bytes / 1000)) kB; budget $max_bytes for release-small)"
if ((bytes > max_bytes)); then
    [[ $profile == device ]] || fail "$bin is larger than $max_bytes bytes"
    echo "over the 10 MB budget: the speed-tuned device profile; PROFILE=release-small builds the small one"
fi

step "ok: $bin ($bytes bytes, glibc <= $floor, runs on bullseye's glibc under qemu)"

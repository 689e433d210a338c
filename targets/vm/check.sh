#!/usr/bin/env bash
# Usage: [PROFILE=device] targets/vm/check.sh [--arch x86_64|aarch64] [SESSION...]
#        (sessions: deb tar fleet; default deb tar)
#
# Installs the generic-ARCH pack into a Debian bullseye VM (glibc 2.31,
# systemd as PID 1) and checks the service under a real systemd: install
# (.deb, install.sh), Type=notify readiness, the HTTP API, reload, power-mode
# changes, a reboot's cache hit, kill -9, MemoryMax=, upgrade while running,
# removal, and systemd-analyze security. The fleet session boots twice: a
# reference board selects and exports its decisions, the host packs them
# (`exporter pack --decisions`), and a fresh copy of the image installing
# that pack must measure only the shipped winner. Every check is printed as
# `PASS|FAIL NAME SECONDS DETAIL`; the script exits non-zero if one failed.
#
# The guest image is built once (targets/vm/image.sh, root and Debian's
# mirror needed) and cached in target/vm/ARCH until its recipe changes. Each
# session boots (fleet: twice) a fresh copy of it under QEMU (x86_64: KVM where it works,
# else TCG; aarch64: an emulated `virt` board with Cortex-A72 cores, TCG)
# with a 9p share holding the packs and targets/vm/guest.sh, which runs the
# boot's checks inside and powers off. Logs: target/vm/ARCH/{log,run}/.
# Slow (tens of minutes under TCG; aarch64 several times that), so not part
# of .ci/run; docs/deploy.md.
set -euo pipefail
cd "$(dirname "$0")/../.."

arch=x86_64
if [[ ${1:-} == --arch ]]; then
    arch=${2:?--arch needs x86_64 or aarch64}
    shift 2
fi
floor=2.31
triple=$arch-unknown-linux-gnu
board=generic-$arch
case $arch in
x86_64)
    # cargo's release profile builds in minutes; PROFILE=device is the
    # boards' fat-LTO build (many more minutes, same behaviour).
    profile=${PROFILE:-release}
    qemu=(qemu-system-x86_64 -accel "${ACCEL:-tcg}" -cpu max)
    console=ttyS0
    slowdown=1
    host_packages=(mmdebstrap qemu-system-x86)
    ;;
aarch64)
    # The boards' build, as targets/cross/build.sh makes it.
    profile=${PROFILE:-device}
    qemu=(qemu-system-aarch64 -M virt -cpu cortex-a72)
    console=ttyAMA0
    # TCG translates Arm code on an x86 host: the guest's timeouts stretch.
    slowdown=${SLOWDOWN:-4}
    host_packages=(debootstrap qemu-system-arm cpio kmod)
    ;;
*)
    echo "check.sh: no guest for '$arch' (x86_64 or aarch64)" >&2
    exit 2
    ;;
esac
vm=target/vm
image=$vm/$arch
log=$image/log
sessions=("$@")
((${#sessions[@]})) || sessions=(deb tar)
# The guest's measurements run on emulated CPUs: a session takes minutes
# (an hour or more on the emulated aarch64 board).
session_timeout=${SESSION_TIMEOUT:-$((5400 * slowdown))}
mkdir -p "$log"

as_root() { if [[ $EUID -eq 0 ]]; then "$@"; else sudo "$@"; fi; }

# step NAME COMMAND...: a host step, printed like the guest's checks; its
# output goes to target/vm/ARCH/log/NAME.log. A failed host step ends the run.
step() {
    local name=$1 t0=$EPOCHREALTIME verdict=PASS
    shift
    if ! "$@" >"$log/$name.log" 2>&1; then
        verdict=FAIL
    fi
    awk -v a="$t0" -v b="$EPOCHREALTIME" -v v="$verdict" -v n="$name" -v o="$(tail -n 1 "$log/$name.log")" \
        'BEGIN { printf "%s %s %.1fs %s\n", v, n, b - a, o }'
    if [[ $verdict == FAIL ]]; then
        tail -n 20 "$log/$name.log" >&2
        exit 1
    fi
}

tools() {
    local missing=() package
    for package in "${host_packages[@]}" e2fsprogs binutils; do
        dpkg-query -W -f '${Status}' "$package" 2>/dev/null | grep -q 'ok installed' || missing+=("$package")
    done
    if ((${#missing[@]})); then
        as_root apt-get update -qq
        as_root apt-get install -y -qq --no-install-recommends "${missing[@]}"
    fi
    command -v cargo-zigbuild >/dev/null || python3 -m pip install --quiet cargo-zigbuild
    rustup target add "$triple" 2>&1 | grep -v "is up to date" || true
    echo "$("${qemu[0]}" --version | head -1), cargo-zigbuild $(cargo-zigbuild --version | awk '{print $2}')"
}

# The image is rebuilt when its recipe (image.sh, configure.sh) changes.
guest_image() {
    local recipe
    recipe=$(cat targets/vm/image.sh targets/vm/configure.sh | sha256sum | cut -d' ' -f1)
    if [[ -f $image/root.img && $(cat "$image/recipe" 2>/dev/null) == "$recipe" ]]; then
        echo "cached: $image (recipe $recipe)"
        return
    fi
    rm -f "$image/recipe"
    as_root nice -n 10 targets/vm/image.sh "$arch" "$image"
    echo "$recipe" >"$image/recipe"
    echo "built $image: $(du -h --apparent-size "$image/root.img" | cut -f1) root.img (recipe $recipe)"
}

# RUNTIME_BIN=PATH uses a runtime already built (by targets/cross/build.sh,
# say: a fat-LTO build is long); its glibc floor is still checked.
bin=${RUNTIME_BIN:-target/$triple/$profile/runtime}
runtime() {
    [[ -n ${RUNTIME_BIN:-} ]] ||
        nice -n 10 cargo zigbuild --profile "$profile" -p tailor-runtime --bin runtime --target "$triple.$floor"
    objdump -T "$bin" | targets/cross/glibc_floor.sh "$floor"
    echo "$bin: $(stat -c %s "$bin") bytes, glibc <= $floor"
}

# EXPORTER=PATH uses an exporter already built (with other features, say).
exporter=${EXPORTER:-target/debug/exporter}
# v1: every sub-network of the example teacher; v2 (the upgrade): four of
# them, a runtime that differs by a trailing marker, so the check can tell
# which is installed and running, and another latency limit, so its
# runtime.toml differs too.
packs=$image/packs
packs() {
    [[ -n ${EXPORTER:-} ]] || nice -n 10 cargo build -q -p tailor-exporter --bin exporter
    local teacher=examples/poa-vit-tiny/eval/training_799/teacher_checkpoint.pth
    rm -rf "$vm/bundle-v1" "$vm/bundle-v2" "$packs"
    mkdir -p "$packs"
    "$exporter" --all-subnets "$teacher" -o "$vm/bundle-v1" --quiet
    "$exporter" --subnets 48x3,64x4,80x5,96x6 "$teacher" -o "$vm/bundle-v2" --quiet
    cp "$bin" "$packs/runtime-v2"
    printf 'tailor-vm-check v2\n' >>"$packs/runtime-v2"
    pack v1 "$vm/bundle-v1" "$bin" 100000
    pack v2 "$vm/bundle-v2" "$packs/runtime-v2" 90000
    python3 targets/vm/png.py "$packs/image.png"
    ls -l "$packs"
}

# pack NAME BUNDLE RUNTIME LATENCY_MS [ARGS...]: packs/NAME.{tar.gz,deb}.
pack() {
    local name=$1 bundle=$2 runtime=$3 latency=$4
    shift 4
    "$exporter" pack "$bundle" --target "$board" --runtime-bin "$runtime" \
        --latency-ms "$latency" --deb --force -o "$packs/$name.tar.gz" "$@"
}

# The fleet's pack: v1 again (its bundle, runtime and limits, so the keys
# of the reference boot's decisions are this pack's) with those decisions.
fleet_pack() {
    local out
    out=$(pack fleet "$vm/bundle-v1" "$bin" 100000 --decisions "$1" 2>&1) || {
        echo "$out"
        return 1
    }
    echo "$out"
    echo "$out" | grep -F shipping
}

# boot SESSION [FILE...]: a fresh copy of the image, the share (the packs,
# and FILEs of an earlier boot), QEMU until the guest powers off; the
# guest's results are printed as they come. Fails if a check failed.
boot() {
    local session=$1 run=$image/run/$1 t0=$EPOCHREALTIME
    shift
    rm -rf "$run"
    mkdir -p "$run/share"
    cp --sparse=always "$image/root.img" "$run/root.img"
    cp targets/vm/guest.sh "$packs"/*.tar.gz "$packs"/*.deb "$packs/image.png" "$@" "$run/share/"
    echo "$session" >"$run/share/session"
    echo "$board" >"$run/share/board"
    echo "$slowdown" >"$run/share/slowdown"
    : >"$run/share/results"
    nice -n 10 timeout "$session_timeout" "${qemu[@]}" -smp "${VM_CPUS:-2}" -m 2G \
        -kernel "$image/vmlinuz" -initrd "$image/initrd.img" \
        -append "root=/dev/vda rw console=$console quiet" \
        -drive "file=$run/root.img,if=virtio,format=raw" \
        -virtfs "local,path=$run/share,mount_tag=vmcheck,security_model=none" \
        -nic none -display none -monitor none -serial "file:$run/console.log" \
        2>"$run/qemu.log" &
    local vm_pid=$! printed=0
    while :; do
        local alive=true
        kill -0 "$vm_pid" 2>/dev/null || alive=false
        local lines
        lines=$(wc -l <"$run/share/results")
        if ((lines > printed)); then
            sed -n "$((printed + 1)),${lines}p" "$run/share/results" | grep -v '^DONE' | sed "s/^/[$session] /"
            printed=$lines
        fi
        [[ $alive == true ]] || break
        sleep 2
    done
    wait "$vm_pid" || echo "[$session] qemu exited with $? (see $run/qemu.log, $run/console.log)"
    awk -v a="$t0" -v b="$EPOCHREALTIME" -v s="$session" 'BEGIN { printf "[%s] powered off after %.0fs\n", s, b - a }'
    grep -q '^DONE' "$run/share/results" || {
        echo "FAIL [$session] the session did not finish: see $run/console.log"
        return 1
    }
    ! grep -q '^FAIL' "$run/share/results"
}

# run_session NAME: its boots. fleet: the reference board, the host's pack of
# its exported decisions, then a fresh board installing that pack.
run_session() {
    case $1 in
    fleet)
        local reference=$image/run/fleet-reference/share
        boot fleet-reference || return
        step pack-decisions fleet_pack "$reference/decisions.postcard"
        boot fleet-warm "$reference"/reference-{selection.json,probe.json,fingerprint}
        ;;
    *) boot "$1" ;;
    esac
}

echo "== host ($arch)"
step tools tools
step guest-image guest_image
step runtime-build runtime
step packs packs

status=0
for session in "${sessions[@]}"; do
    echo "== guest: $session"
    t0=$EPOCHREALTIME
    run_session "$session" || status=1
    awk -v a="$t0" -v b="$EPOCHREALTIME" -v s="$session" 'BEGIN { printf "session %s: %.0fs\n", s, b - a }'
done
echo "== $( ((status == 0)) && echo "all checks passed" || echo "some checks FAILED")"
exit "$status"

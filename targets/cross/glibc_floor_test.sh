#!/usr/bin/env bash
# Tests glibc_floor.sh on recorded `objdump -T` output (fixtures/) and on
# hand-written lines in the same format. Cheap: runs in .ci/run.
set -euo pipefail
cd "$(dirname "$0")"

failures=0
# expect NAME FLOOR STATUS PATTERN... < INPUT: glibc_floor.sh exits with
# STATUS and its output (stdout and stderr) contains every PATTERN (`!PATTERN`:
# does not contain it).
expect() {
    local name=$1 floor=$2 want=$3 out status=0 p
    shift 3
    out=$(./glibc_floor.sh "$floor" 2>&1) || status=$?
    if [[ $status -ne $want ]]; then
        echo "FAIL $name: exit $status, expected $want; output:"$'\n'"$out"
        failures=$((failures + 1))
        return
    fi
    for p in "$@"; do
        if [[ $p == !* ]]; then
            [[ $out != *"${p#!}"* ]] && continue
            echo "FAIL $name: output contains '${p#!}':"$'\n'"$out"
        else
            [[ $out == *"$p"* ]] && continue
            echo "FAIL $name: output lacks '$p':"$'\n'"$out"
        fi
        failures=$((failures + 1))
        return
    done
    echo "ok   $name"
}

# A line of `objdump -T` for an undefined symbol of version $1.
und() { printf '0000000000000000      DF *UND*\t0000000000000000 (%s) %s\n' "$1" "$2"; }

# The runtime linked on Debian 12 (glibc 2.36) needs 2.35: rejected, and
# every newer symbol is named, the old ones (2.2.5, 2.14) are not.
expect "bookworm x86_64 build vs floor 2.31" 2.31 1 \
    "highest GLIBC_ version required: 2.35" \
    "GLIBC_2.35 hypot" "GLIBC_2.34 __libc_start_main" "GLIBC_2.32 pthread_getattr_np" \
    "!memcpy" "!memmove" "!_Unwind_Resume" \
    <fixtures/objdump-T-x86_64-bookworm.txt
expect "bookworm x86_64 build vs floor 2.35" 2.35 0 \
    "highest GLIBC_ version required: 2.35" "!hypot" \
    <fixtures/objdump-T-x86_64-bookworm.txt

# The zigbuild with floor 2.31 (targets/cross/build.sh) needs 2.30 (gettid):
# it passes, and a 2.28 floor names exactly the 2.29 and 2.30 symbols.
expect "aarch64 .2.31 zigbuild vs floor 2.31" 2.31 0 \
    "highest GLIBC_ version required: 2.30" "!gettid" \
    <fixtures/objdump-T-aarch64-zig-2.31.txt
expect "aarch64 .2.31 zigbuild vs floor 2.28" 2.28 1 \
    "4 symbol(s) need more than glibc 2.28" \
    "GLIBC_2.30 gettid" "GLIBC_2.29 pow" "GLIBC_2.29 exp" "GLIBC_2.29 log" "!statx" \
    <fixtures/objdump-T-aarch64-zig-2.31.txt

# Versions compare as numbers: 2.4 and 2.17 are older than 2.31, although
# they sort after it as text; 2.31.1 is newer.
expect "2.4 and 2.17 are older than 2.31" 2.31 0 \
    "highest GLIBC_ version required: 2.17" \
    < <(und GLIBC_2.4 memcpy; und GLIBC_2.17 clock_gettime)
expect "2.31.1 is newer than 2.31" 2.31 1 "GLIBC_2.31.1 later_symbol" \
    < <(und GLIBC_2.17 memcpy; und GLIBC_2.31.1 later_symbol)
expect "2.100 is newer than 2.31" 2.31 1 "GLIBC_2.100 far_future" \
    < <(und GLIBC_2.100 far_future)

# A GLIBC_PRIVATE symbol ties the binary to one glibc build.
expect "GLIBC_PRIVATE is rejected" 2.31 1 "GLIBC_PRIVATE _dl_private" \
    < <(und GLIBC_2.17 memcpy; und GLIBC_PRIVATE _dl_private)

# Input without any GLIBC_ version (a static or non-glibc binary) is an error.
expect "no GLIBC_ versions" 2.31 2 "no GLIBC_ symbol versions" \
    < <(und GCC_3.0 _Unwind_Resume)

if ((failures)); then
    echo "$failures failure(s)"
    exit 1
fi

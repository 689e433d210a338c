#!/usr/bin/env bash
# Usage: objdump -T BINARY | glibc_floor.sh FLOOR
#
# Reads `objdump -T` output on stdin, prints the highest GLIBC_ symbol version
# it requires, and fails listing every symbol that needs a glibc newer than
# FLOOR (e.g. 2.31), or a GLIBC_PRIVATE one (tied to one exact glibc build).
# Versions compare numerically, component by component: 2.4 < 2.17 < 2.31.
set -euo pipefail

if [[ $# -ne 1 || ! $1 =~ ^[0-9]+(\.[0-9]+)*$ ]]; then
    echo "usage: objdump -T BINARY | $0 FLOOR   (FLOOR like 2.31)" >&2
    exit 2
fi

awk -v floor="$1" '
    # -1, 0 or 1 as version a is older than, equal to or newer than b.
    function cmp(a, b,    x, y, n, ny, i, xi, yi) {
        n = split(a, x, ".")
        ny = split(b, y, ".")
        if (ny > n) n = ny
        for (i = 1; i <= n; i++) {
            xi = (i in x) ? x[i] + 0 : 0
            yi = (i in y) ? y[i] + 0 : 0
            if (xi != yi) return xi < yi ? -1 : 1
        }
        return 0
    }
    match($0, /GLIBC_[A-Za-z0-9_.]+/) {
        version = substr($0, RSTART + 6, RLENGTH - 6)
        symbol = $NF
        seen++
        if (version !~ /^[0-9]+(\.[0-9]+)*$/) {
            bad[++nbad] = "GLIBC_" version " " symbol
            next
        }
        if (max == "" || cmp(version, max) > 0) max = version
        if (cmp(version, floor) > 0) bad[++nbad] = "GLIBC_" version " " symbol
    }
    END {
        if (!seen) {
            print "no GLIBC_ symbol versions in the input: not objdump -T of a glibc binary?" > "/dev/stderr"
            exit 2
        }
        print "highest GLIBC_ version required: " (max == "" ? "none numeric" : max) " (floor " floor ")"
        fflush()
        if (nbad) {
            print nbad " symbol(s) need more than glibc " floor ":" > "/dev/stderr"
            for (i = 1; i <= nbad; i++) print "  " bad[i] > "/dev/stderr"
            exit 1
        }
    }
'

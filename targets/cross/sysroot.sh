#!/usr/bin/env bash
# Usage: sysroot.sh DIR
#
# Unpacks Debian bullseye's arm64 glibc 2.31 (libc6, plus libgcc-s1 for
# unwinding) into DIR, for running the cross-built runtime under qemu against
# the oldest glibc the boards ship (JetPack 5 = Ubuntu 20.04 = glibc 2.31).
#
# apt runs with a private configuration, package lists and cache under
# DIR.apt/: the machine's own apt sources, architectures and dpkg database are
# neither read nor changed. Needs apt-get, dpkg-deb and Debian's archive keyring
# (package debian-archive-keyring, also in Ubuntu). Set TAILOR_BULLSEYE_MIRROR
# when bullseye has moved to http://archive.debian.org/debian.
set -euo pipefail

if [[ $# -ne 1 ]]; then
    echo "usage: $0 DIR" >&2
    exit 2
fi
mkdir -p "$1"
sysroot=$(cd "$1" && pwd)
mirror=${TAILOR_BULLSEYE_MIRROR:-http://deb.debian.org/debian}
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
libc=$sysroot/lib/aarch64-linux-gnu/libc-2.31.so

if [[ -f $libc && -f $sysroot/lib/aarch64-linux-gnu/libgcc_s.so.1 ]]; then
    echo "sysroot: $sysroot (glibc 2.31, already unpacked)"
    exit 0
fi
if [[ ! -f $keyring ]]; then
    echo "sysroot: $keyring is missing: install debian-archive-keyring" >&2
    exit 1
fi

apt=$sysroot.apt
rm -rf "$apt"
mkdir -p "$apt/etc/sources.list.d" "$apt/etc/preferences.d" "$apt/lists/partial" \
    "$apt/cache/archives/partial" "$apt/debs"
: >"$apt/status"
echo "deb [arch=arm64 signed-by=$keyring] $mirror bullseye main" >"$apt/etc/sources.list"

opts=(
    -o "Dir::Etc=$apt/etc"
    -o "Dir::Etc::sourcelist=$apt/etc/sources.list"
    -o "Dir::Etc::sourceparts=$apt/etc/sources.list.d"
    -o "Dir::Etc::preferencesparts=$apt/etc/preferences.d"
    -o "Dir::State::lists=$apt/lists"
    -o "Dir::State::status=$apt/status"
    -o "Dir::Cache=$apt/cache"
    -o "APT::Architecture=arm64"
    -o "APT::Architectures::=arm64"
)
# As root apt downloads as the `_apt` user, who cannot write to this directory.
[[ $EUID -eq 0 ]] && opts+=(-o "APT::Sandbox::User=root")

apt-get "${opts[@]}" -qq update
(cd "$apt/debs" && apt-get "${opts[@]}" -qq download libc6:arm64 libgcc-s1:arm64)
for deb in "$apt"/debs/*.deb; do
    dpkg-deb -x "$deb" "$sysroot"
done
rm -rf "$apt"

if [[ ! -f $libc ]]; then
    echo "sysroot: $libc missing after unpacking: bullseye's libc6 is not glibc 2.31?" >&2
    exit 1
fi
echo "sysroot: $sysroot (glibc 2.31 from Debian bullseye, $mirror)"

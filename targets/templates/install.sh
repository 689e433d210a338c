#!/bin/sh
# Installs tailor's runtime, bundle and service for {{board}} (made by
# `exporter pack`). Running it again installs the same files again.
#
#   sudo ./install.sh                 install, create the tailor user, enable and (re)start tailor.service
#   sudo ./install.sh --uninstall     stop and disable the service, remove what was installed
#   ./install.sh --root DIR           lay the files out under DIR (an image's root): no systemctl, no user
#   sudo {{installer}} --uninstall    the same, from the copy kept on the device
#
# --system-only runs the user and service steps alone (a .deb's maintainer
# scripts: dpkg places the files).
set -eu

usage() { sed -n '2,12s/^# \{0,1\}//p' "$0"; }
die() {
    echo "install.sh: $*" >&2
    exit 1
}

root=
uninstall=false
files=true
while [ $# -gt 0 ]; do
    case $1 in
    --root)
        [ $# -ge 2 ] || die "--root needs a directory"
        root=${2%/}
        shift 2
        ;;
    --uninstall) uninstall=true && shift ;;
    --system-only) files=false && shift ;;
    -h | --help) usage && exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
    esac
done
if [ -n "$root" ]; then
    [ -d "$root" ] || die "--root $root is not a directory"
    root=$(cd "$root" && pwd)
    [ "$files" = true ] || die "--root installs files only; --system-only has nothing to do there"
fi
system=false
[ -z "$root" ] && system=true
if [ "$system" = true ] && [ "$(id -u)" -ne 0 ]; then
    die "run as root (sudo), or with --root DIR to lay the files out elsewhere"
fi

install_files() {
    here=$(cd "$(dirname "$0")" && pwd)
    src=$here/root
    [ -d "$src" ] || die "$src is missing: run install.sh from the unpacked pack"
    # The bundle is replaced whole: a file the new pack dropped does not linger.
    rm -rf "$root{{bundle}}"
    (cd "$src" && find . -type d) | while read -r dir; do
        mkdir -p "$root/${dir#./}"
    done
    (cd "$src" && find . ! -type d) | while read -r file; do
        path=/${file#./}
        if [ "$path" = "{{config}}" ] && [ -e "$root$path" ] && ! cmp -s "$src/$file" "$root$path"; then
            # An edited configuration is kept; the pack's lands beside it.
            cp -p "$src/$file" "$root$path.new"
            echo "kept $root$path as edited; the pack's is $root$path.new"
            continue
        fi
        cp -p "$src/$file" "$root$path"
    done
    echo "installed {{board}}'s files under ${root:-/}"
}

remove_files() {
    rm -f "$root{{unit}}" "$root{{sysusers}}" "$root{{config}}" "$root{{config}}.new"
    rmdir "$root$(dirname "{{config}}")" 2>/dev/null || true
    rm -rf "$root{{prefix}}"
    echo "removed tailor's files from ${root:-/}"
}

if [ "$uninstall" = true ]; then
    if [ "$system" = true ]; then
        systemctl disable --now tailor.service 2>/dev/null || true
    fi
    if [ "$files" = true ]; then
        remove_files
        if [ "$system" = true ]; then
            systemctl daemon-reload
            if getent passwd tailor >/dev/null; then userdel tailor; fi
            echo "left /var/cache/tailor and /var/lib/tailor (decisions, TensorRT engines): remove them by hand if unwanted"
        fi
    fi
    exit 0
fi

if [ "$files" = true ]; then
    install_files
fi
if [ "$system" = true ]; then
    systemd-sysusers {{sysusers}}
    systemctl daemon-reload
    systemctl enable tailor.service
    # A restart, not a start: a reinstall must run the new files. Not waited
    # for: the first start measures candidates (and builds TensorRT engines).
    systemctl restart --no-block tailor.service
    echo "tailor.service is starting: it is ready once it has selected (journalctl -u tailor -f)"
fi

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

# Every file is staged beside its destination (NAME.tailor-new), then renamed
# over it: a running runtime keeps the file it was started from (writing
# into it fails, "Text file busy"), and an install that fails half way
# leaves the previous one whole. The bundle is staged whole, then swapped
# in by two renames, so no file of an old bundle lingers.
install_files() {
    here=$(cd "$(dirname "$0")" && pwd)
    src=$here/root
    [ -d "$src" ] || die "$src is missing: run install.sh from the unpacked pack"
    bundle=$root{{bundle}}
    rel=${bundle#"$root"/}
    staged_bundle=$(dirname "$bundle")/.bundle.tailor-new
    old_bundle=$(dirname "$bundle")/.bundle.tailor-old
    staged_list=$(mktemp)
    trap 'unstage; rm -f "$staged_list"' EXIT
    # What an interrupted install left.
    unstage

    (cd "$src" && find . -type d ! -path "./$rel" ! -path "./$rel/*") | while read -r dir; do
        mkdir -p "$root/${dir#./}"
    done
    cp -pR "$src/$rel" "$staged_bundle"
    (cd "$src" && find . ! -type d ! -path "./$rel/*") | while read -r file; do
        dest=$root/${file#./}
        echo "$dest" >>"$staged_list"
        cp -p "$src/$file" "$dest.tailor-new"
    done

    while read -r dest; do
        mv -f "$dest.tailor-new" "$dest"
    done <"$staged_list"
    if [ -e "$bundle" ]; then mv "$bundle" "$old_bundle"; fi
    mv "$staged_bundle" "$bundle"
    unstage
    rm -f "$staged_list"
    trap - EXIT
    echo "installed {{board}}'s files under ${root:-/}"
}

# Removes what an install staged and did not rename (all of it, when it
# failed), and an old bundle that was swapped out (back in, if no new one
# took its place).
unstage() {
    if [ -f "$staged_list" ]; then
        while read -r dest; do
            rm -f "$dest.tailor-new"
        done <"$staged_list"
    fi
    rm -rf "$staged_bundle"
    if [ -e "$old_bundle" ] && [ ! -e "$bundle" ]; then
        mv "$old_bundle" "$bundle"
    fi
    rm -rf "$old_bundle"
}

# The pack's configuration ({{packed_config}}) goes to {{config}} unless
# that was edited on the device: then it is kept, and the pack's is put
# beside it as runtime.toml.new. Edited means it differs from what the last
# install put there, kept as runtime.toml.packed (dpkg's conffile rule,
# without its prompt; one with no such record is taken as edited). Run for
# the tar.gz and, from the .deb's postinst, after dpkg placed the files.
install_config() {
    config=$root{{config}}
    packed=$root{{packed_config}}
    mkdir -p "$(dirname "$config")"
    if [ -e "$config" ] && ! cmp -s "$config" "$packed" && ! cmp -s "$config" "$config.packed"; then
        put "$packed" "$config.new"
        echo "kept $config as edited; the pack's is $config.new"
    else
        put "$packed" "$config"
        rm -f "$config.new"
    fi
    put "$packed" "$config.packed"
}

# put SRC DEST: copies SRC to DEST by a rename, so DEST is never half written.
put() {
    cp -p "$1" "$2.tailor-new"
    mv -f "$2.tailor-new" "$2"
}

remove_files() {
    rm -f "$root{{unit}}" "$root{{sysusers}}" "$root{{config}}" "$root{{config}}.new" "$root{{config}}.packed"
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
install_config
if [ "$system" = true ]; then
    systemd-sysusers {{sysusers}}
    systemctl daemon-reload
    systemctl enable tailor.service
    # A restart, not a start: a reinstall must run the new files. Not waited
    # for: the first start measures candidates (and builds TensorRT engines).
    systemctl restart --no-block tailor.service
    echo "tailor.service is starting: it is ready once it has selected (journalctl -u tailor -f)"
fi

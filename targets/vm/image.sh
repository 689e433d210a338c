#!/usr/bin/env bash
# Usage: targets/vm/image.sh ARCH OUT_DIR     (ARCH: x86_64 or aarch64)
#
# Builds the Debian bullseye guest targets/vm/check.sh boots: glibc 2.31
# (JetPack 5's), systemd as PID 1, a kernel, curl and jq, configured by
# targets/vm/configure.sh. Leaves OUT_DIR/{root.img,vmlinuz,initrd.img}.
# Needs root and Debian's package mirror; no mount.
#
# x86_64 is the host's own: mmdebstrap configures the packages in a chroot.
# aarch64 is foreign and this host has no binfmt_misc to run its binaries,
# so it is built the standard foreign way: `debootstrap --foreign` unpacks
# the packages, and the guest configures them itself on a first boot under
# qemu-system-aarch64 (debootstrap's second stage, then configure.sh, then a
# power-off), started by a throw-away initramfs made here from the image's
# own busybox-static and kernel modules. The kernel and the initrd Debian
# generated in the guest are then read out of the disk with debugfs.
set -euo pipefail

arch=${1:?usage: image.sh ARCH OUT_DIR}
out=${2:?usage: image.sh ARCH OUT_DIR}
here=$(cd "$(dirname "$0")" && pwd)
mirror=${MIRROR:-http://deb.debian.org/debian}
size=${IMAGE_SIZE:-2G}
rootfs=$out/rootfs
# curl and jq drive the checks, procps/kmod/iproute2 what systemd's units
# expect.
packages=systemd,systemd-sysv,udev,dbus,curl,jq,procps,kmod,iproute2
rm -rf "$rootfs" "$out/root.img"
mkdir -p "$out"

x86_64() {
    mmdebstrap --variant=minbase --mode=root --include="$packages,linux-image-amd64" \
        --customize-hook="cp '$here/configure.sh' \"\$1/root/configure.sh\"" \
        --customize-hook='chroot "$1" /bin/sh /root/configure.sh && rm "$1/root/configure.sh"' \
        bullseye "$rootfs" "$mirror"
    cp -L "$rootfs/vmlinuz" "$out/vmlinuz"
    cp -L "$rootfs/initrd.img" "$out/initrd.img"
    mke2fs -q -t ext4 -L root -d "$rootfs" "$out/root.img" "$size"
}

aarch64() {
    debootstrap --foreign --arch=arm64 --variant=minbase \
        --include="$packages,linux-image-arm64,busybox-static" bullseye "$rootfs" "$mirror"
    # The first stage unpacks only the essential packages: the kernel and
    # busybox for the first boot come out of the downloaded .debs.
    local unpacked=$out/unpacked kver deb
    rm -rf "$unpacked"
    for deb in "$rootfs"/var/cache/apt/archives/{linux-image-*-arm64_,busybox-static_}*.deb; do
        dpkg-deb -x "$deb" "$unpacked"
    done
    kver=$(basename "$unpacked"/lib/modules/*)
    cp "$here/configure.sh" "$rootfs/root/configure.sh"
    cat >"$rootfs/root/stage2.sh" <<'EOF'
#!/bin/sh
# The first boot, as PID 1: configure the unpacked packages, then power off.
/debootstrap/debootstrap --second-stage && /bin/sh /root/configure.sh &&
    rm /root/configure.sh /root/stage2.sh && touch /etc/vmcheck-image
sync
[ -e /proc/sysrq-trigger ] || mount -t proc proc /proc
mount -o remount,ro /
echo o >/proc/sysrq-trigger
# The power-off is asynchronous; PID 1 exiting first would panic the kernel.
sleep 600
EOF
    first_boot_initrd "$unpacked" "$kver" "$out/first-boot.cpio.gz"
    cp "$unpacked/boot/vmlinuz-$kver" "$out/vmlinuz"
    rm -rf "$unpacked"
    mke2fs -q -t ext4 -L root -d "$rootfs" "$out/root.img" "$size"
    rm -rf "$rootfs"

    echo "first boot: debootstrap --second-stage in the guest (TCG)"
    timeout "${FIRST_BOOT_TIMEOUT:-5400}" qemu-system-aarch64 -M virt -cpu cortex-a72 -smp 2 -m 2G \
        -kernel "$out/vmlinuz" -initrd "$out/first-boot.cpio.gz" -append "console=ttyAMA0" \
        -drive "file=$out/root.img,if=virtio,format=raw" \
        -nic none -display none -monitor none -serial "file:$out/first-boot.log"
    debugfs -R "stat /etc/vmcheck-image" "$out/root.img" 2>/dev/null | grep -q '^Inode:' || {
        tail -n 30 "$out/first-boot.log" >&2
        echo "image.sh: the guest's second stage did not finish: see $out/first-boot.log" >&2
        exit 1
    }
    debugfs -R "dump /boot/initrd.img-$kver $out/initrd.img" "$out/root.img"
    [[ -s $out/initrd.img ]] || {
        echo "image.sh: the guest made no /boot/initrd.img-$kver" >&2
        exit 1
    }
    rm "$out/first-boot.cpio.gz"
}

# first_boot_initrd UNPACKED KVER OUT: an initramfs that loads the modules
# the disk needs (virtio-pci, virtio-blk, ext4: modules in Debian's kernel),
# mounts it and runs its stage2.sh as PID 1.
first_boot_initrd() {
    local unpacked=$1 kver=$2 initramfs=$out/initramfs
    rm -rf "$initramfs"
    mkdir -p "$initramfs"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,root,modules}
    cp "$unpacked/bin/busybox" "$initramfs/bin/busybox"
    depmod -b "$unpacked" "$kver"
    modprobe -d "$unpacked" -S "$kver" -a --show-depends virtio_pci virtio_blk ext4 |
        awk '$1 == "insmod" && !seen[$2]++ { print $2 }' | while read -r module; do
        cp "$module" "$initramfs/modules/"
        basename "$module" >>"$initramfs/modules/order"
    done
    cat >"$initramfs/init" <<'EOF'
#!/bin/busybox sh
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in $(cat /modules/order); do insmod "/modules/$m"; done
while [ ! -b /dev/vda ]; do sleep 0.2; done
mount -t ext4 /dev/vda /root
mount --move /dev /root/dev
umount /proc /sys
exec switch_root /root /bin/sh /root/stage2.sh
EOF
    chmod +x "$initramfs/init"
    (cd "$initramfs" && find . | cpio -o -H newc --quiet) | gzip -1 >"$3"
    rm -rf "$initramfs"
}

case $arch in
x86_64 | aarch64) "$arch" ;;
*) echo "image.sh: no guest for '$arch' (x86_64 or aarch64)" >&2 && exit 2 ;;
esac
rm -rf "$rootfs"

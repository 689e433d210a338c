#!/usr/bin/env bash
# Usage: targets/vm/image.sh OUT_DIR
#
# Builds the x86_64 Debian bullseye guest targets/vm/check.sh boots: glibc
# 2.31 (JetPack 5's), systemd as PID 1, a kernel, curl and jq, and
# vmcheck.service, which at every boot mounts the host's 9p share `vmcheck`
# and runs its guest.sh. Leaves OUT_DIR/{root.img,vmlinuz,initrd.img}.
# Needs root (mmdebstrap's root mode) and Debian's package mirror; no mount.
set -euo pipefail

out=${1:?usage: image.sh OUT_DIR}
mirror=${MIRROR:-http://deb.debian.org/debian}
size=${IMAGE_SIZE:-2G}
rootfs=$out/rootfs
rm -rf "$rootfs" "$out/root.img"
mkdir -p "$out"

# curl and jq drive the checks, procps/kmod/iproute2 what systemd's units
# expect; apt-daily and friends are masked so they do not run mid-check.
mmdebstrap --variant=minbase --mode=root \
    --include=systemd,systemd-sysv,udev,dbus,linux-image-amd64,curl,jq,procps,kmod,iproute2 \
    --customize-hook='echo tailor-vm >"$1/etc/hostname"' \
    --customize-hook='echo "/dev/vda / ext4 rw,errors=remount-ro 0 1" >"$1/etc/fstab"' \
    --customize-hook='chroot "$1" passwd -d root' \
    --customize-hook='for u in apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer e2scrub_reap.service fstrim.timer man-db.timer logrotate.timer systemd-timesyncd.service; do ln -sf /dev/null "$1/etc/systemd/system/$u"; done' \
    --customize-hook='mkdir -p "$1/etc/systemd/journald.conf.d" && printf "[Journal]\nStorage=persistent\n" >"$1/etc/systemd/journald.conf.d/vmcheck.conf"' \
    --customize-hook='cat >"$1/etc/systemd/system/vmcheck.service" <<EOF
[Unit]
Description=tailor VM check: run guest.sh from the host share
After=multi-user.target
[Service]
Type=oneshot
ExecStartPre=/bin/mkdir -p /mnt/vmcheck
ExecStartPre=/bin/mount -t 9p -o trans=virtio,version=9p2000.L vmcheck /mnt/vmcheck
ExecStart=/bin/bash /mnt/vmcheck/guest.sh
StandardOutput=journal+console
StandardError=journal+console
[Install]
WantedBy=multi-user.target
EOF' \
    --customize-hook='chroot "$1" systemctl enable vmcheck.service' \
    bullseye "$rootfs" "$mirror"

cp -L "$rootfs/vmlinuz" "$out/vmlinuz"
cp -L "$rootfs/initrd.img" "$out/initrd.img"
mke2fs -q -t ext4 -L root -d "$rootfs" "$out/root.img" "$size"
rm -rf "$rootfs"

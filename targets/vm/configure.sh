#!/bin/sh
# Runs inside the guest's root once its packages are configured (x86_64: in
# mmdebstrap's chroot; aarch64: on the first boot, after debootstrap's second
# stage): a passwordless root, the disk in fstab, the timers that would run
# mid-check masked, a persistent journal, and vmcheck.service, which at
# every boot mounts the host's 9p share `vmcheck` and runs its guest.sh.
set -eu

echo tailor-vm >/etc/hostname
echo "/dev/vda / ext4 rw,errors=remount-ro 0 1" >/etc/fstab
passwd -d root
for unit in apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer e2scrub_reap.service \
    fstrim.timer man-db.timer logrotate.timer systemd-timesyncd.service; do
    ln -sf /dev/null "/etc/systemd/system/$unit"
done
mkdir -p /etc/systemd/journald.conf.d
printf '[Journal]\nStorage=persistent\n' >/etc/systemd/journald.conf.d/vmcheck.conf
cat >/etc/systemd/system/vmcheck.service <<UNIT
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
UNIT
systemctl enable vmcheck.service

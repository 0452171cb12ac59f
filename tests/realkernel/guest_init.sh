#!/bin/sh
# PID 1 of the real-kernel test guest (busybox sh). It brings up just enough of a system for the
# scenarios -- proc, sysfs, devtmpfs, the 9p share, the drivers of the emulated devices -- runs the
# scenario script from the share, and powers off. Every step prints an "XPB-STAGE" marker on the
# serial console: the harness on the host waits for them, one timeout per stage.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root LANG=C.UTF-8 PYTHONUTF8=1

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /run /tmp /var/lib
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /run

mark() { echo "XPB-STAGE $*" >/dev/console; }
die() { mark "failed $*"; poweroff -f; sleep 5; echo o >/proc/sysrq-trigger; }

mark init
ip link set lo up

for m in virtio_pci 9pnet_virtio 9p; do modprobe "$m" || die "modprobe $m"; done
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 share /mnt || die "mount 9p share"
mark share-mounted

for m in e1000e nvme pci-stub crc32c_generic ext4; do modprobe "$m" || die "modprobe $m"; done
# Drivers probe asynchronously: wait (bounded) until the NVMe namespace exists.
i=0
while [ ! -e /dev/nvme0n1 ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
mark modules-loaded

budget=$(sed -n 's/.*xpb.timeout=\([0-9]*\).*/\1/p' /proc/cmdline)
mark scenario-start
PYTHONPATH=/mnt/code:/opt/pydeps timeout "${budget:-300}" \
    python3 /mnt/scenario/run_scenarios.py /mnt/results >/mnt/results/scenario.out 2>&1
mark "scenario-exit $?"
sync
umount /mnt
mark poweroff
poweroff -f

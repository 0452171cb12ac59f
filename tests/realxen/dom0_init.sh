#!/bin/sh
# PID 1 of the real-Xen tier's dom0 (busybox sh, a Linux PV dom0 under Xen under QEMU). It brings
# up what a Xen toolstack needs -- proc, sysfs, devtmpfs, the Xen device drivers, xenfs, the 9p
# share, xenstored, xen-init-dom0, xenconsoled -- runs the scenario from the share, and powers
# off (Xen then leaves through ACPI S5 and QEMU exits). Every step prints an "XPB-STAGE" marker on
# the console (Xen's com1): the harness waits for each with its own timeout.
export PATH=/usr/lib/xen-4.17/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root LANG=C.UTF-8 PYTHONUTF8=1

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /run /tmp
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /run
mkdir -p /run/xenstored /run/xen /var/lib/xen /var/log/xen /var/lib/xenstored

mark() { echo "XPB-STAGE $*" >/dev/console; }
loaded() { [ -d "/sys/module/$(echo "$1" | tr - _)" ]; }
die() {
    mark "failed $*"
    if [ -S /run/xenstored/socket ]; then
        echo "--- xenstore-ls -f (dom0, on failure) ---" >/dev/console
        timeout 10 xenstore-ls -f >/dev/console 2>&1
    fi
    poweroff -f; sleep 5; echo o >/proc/sysrq-trigger
}

mark init
ip link set lo up
for m in xen-evtchn xen-gntdev xen-gntalloc xen-privcmd xenfs; do
    modprobe "$m" 2>/dev/null || loaded "$m" || die "modprobe $m"
done
mount -t xenfs xenfs /proc/xen || die "mount xenfs"
for m in virtio_pci 9pnet_virtio 9p; do modprobe "$m" || loaded "$m" || die "modprobe $m"; done
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 share /mnt || die "mount 9p share"
mark share-mounted

trace=""
[ -e /mnt/scenario/xenstored-trace ] && trace="-T /mnt/results/xenstored-trace.log"
# shellcheck disable=SC2086
xenstored --pid-file /run/xenstored.pid $trace || die "xenstored"
i=0
while [ ! -S /run/xenstored/socket ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
xen-init-dom0 >/dev/console 2>&1 || die "xen-init-dom0"
xenconsoled --log=guest --log-dir=/var/log/xen || die "xenconsoled"
mark xen-tools

budget=$(sed -n 's/.*xpb.timeout=\([0-9]*\).*/\1/p' /proc/cmdline)
mark scenario-start
# The code runs from dom0's memory: every import over 9p costs round trips under emulation.
cp -a /mnt/code /run/code && cp -a /mnt/scenario /run/scenario || die "copy code from the share"
PYTHONPATH=/run/code:/opt/pydeps timeout "${budget:-600}" \
    python3 /run/scenario/run_xen.py /mnt/results >/mnt/results/scenario.out 2>&1
rc=$?
if [ $rc -ne 0 ]; then
    # Loud failure: the tree as xenstored holds it, for the harness to print.
    timeout 10 xenstore-ls -f >/mnt/results/xenstore-on-failure.txt 2>&1
fi
mkdir -p /mnt/results/xen-logs
cp /var/log/xen/* /mnt/results/xen-logs/ 2>/dev/null
mark "scenario-exit $rc"
sync
umount /mnt
mark poweroff
poweroff -f

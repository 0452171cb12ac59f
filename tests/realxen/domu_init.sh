#!/bin/sh
# PID 1 of the real-Xen tier's PV guest. It loads the real pcifront, then obeys dom0: dom0 writes
# "SEQ COMMAND" to the guest's xenstore node data/xpb-cmd; the guest runs COMMAND with sh and
# prints its output and exit code gzipped and base64-encoded, framed on its console by
# "XPBG-BEGIN SEQ" / "XPBG-END SEQ" (xenconsoled logs the console to a file dom0 reads; the
# kernel's own messages are kept off the console by loglevel=1), and writes SEQ to data/xpb-done. Polling, not a watch: xenstore-watch over the
# guest's /dev/xen/xenbus is not needed for a test that already waits in seconds.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /tmp /run

modprobe xen-pcifront 2>&1
echo "XPBG ready $(xenstore-read domid 2>&1)"
last=""
while true; do
    cmd=$(xenstore-read data/xpb-cmd 2>/dev/null)
    if [ -z "$cmd" ] || [ "$cmd" = "$last" ]; then
        sleep 0.2
        continue
    fi
    last=$cmd
    seq=${cmd%% *}
    echo "XPBG-BEGIN $seq"
    # Compressed: the PV console is the slowest link under emulation (a few hundred bytes a
    # second on a busy machine); the exit code is the payload's last line.
    ( sh -c "${cmd#* }" 2>&1; echo "XPBG-RC $?" ) | gzip -1 | base64
    echo "XPBG-END $seq"
    xenstore-write data/xpb-done "$seq"
done

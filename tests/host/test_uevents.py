"""The host AER feed (``host/uevents.py``): the kernel's error-recovery uevents as real Xen's
dom0 sent them (tests/realxen, docs/real-xen.md), turned into relays for ``serve``. The feed
reads a datagram socket pair here and a temporary sysfs tree: no netlink, no Xen."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from xenpciback_cli.host.uevents import Recoveries, UeventFeed, fatal_total, parse
from xenpciback_cli.pci.address import Bdf

NIC = Bdf.parse("0000:01:00.0")
PORT = "0000:00:04.0"


def uevent(error: str, name: str = "0000:01:00.0", driver: str = "pci-stub") -> bytes:
    """What dom0's 6.1 kernel sent (pci_uevent_ers), field for field."""
    path = f"/devices/pci0000:00/{PORT}/{name}"
    fields = [f"change@{path}", "ACTION=change", f"DEVPATH={path}", "SUBSYSTEM=pci",
              f"ERROR_EVENT={error}", f"DEVICE_ONLINE={int(error == 'SUCCESSFUL_RECOVERY')}",
              f"DRIVER={driver}", "PCI_CLASS=20000", "PCI_ID=8086:10D3", f"PCI_SLOT_NAME={name}",
              "SEQNUM=682"]
    return "\0".join(fields).encode() + b"\0"


def test_parse_reads_the_kernels_fields_and_skips_udevs_messages():
    event = parse(uevent("FAILED_RECOVERY"))
    assert event is not None
    assert event["ERROR_EVENT"] == "FAILED_RECOVERY" and event["PCI_SLOT_NAME"] == "0000:01:00.0"
    assert parse(b"libudev\0\xfe\xed\xca\xfe") is None
    assert parse(b"no header at all") is None


def test_pci_stubs_failed_recovery_starts_one_relay():
    recoveries = Recoveries()
    assert recoveries.device(parse(uevent("FAILED_RECOVERY")), {NIC}) == NIC


def test_a_drivers_begin_starts_the_relay_and_its_end_does_not_start_another():
    recoveries = Recoveries()
    assert recoveries.device(parse(uevent("BEGIN_RECOVERY", driver="vfio-pci")), {NIC}) == NIC
    assert recoveries.device(parse(uevent("SUCCESSFUL_RECOVERY", driver="vfio-pci")), {NIC}) is None
    assert recoveries.device(parse(uevent("BEGIN_RECOVERY", driver="vfio-pci")), {NIC}) == NIC
    assert recoveries.device(parse(uevent("FAILED_RECOVERY", driver="vfio-pci")), {NIC}) is None
    assert recoveries.device(parse(uevent("FAILED_RECOVERY")), {NIC}) == NIC  # a new error


@pytest.mark.parametrize("event", [
    uevent("FAILED_RECOVERY", name="0000:02:00.0"),            # not exported
    uevent("SUCCESSFUL_RECOVERY"),                             # an end, nothing opened
    uevent("FAILED_RECOVERY").replace(b"SUBSYSTEM=pci", b"SUBSYSTEM=net"),
    uevent("FAILED_RECOVERY").replace(b"ACTION=change", b"ACTION=add"),
    uevent("FAILED_RECOVERY").replace(b"PCI_SLOT_NAME=0000:01:00.0", b"PCI_SLOT_NAME=../../x"),
    uevent("FAILED_RECOVERY").replace(b"ERROR_EVENT=FAILED_RECOVERY\0", b""),
])
def test_other_uevents_start_nothing(event):
    parsed = parse(event)
    assert parsed is not None and Recoveries().device(parsed, {NIC}) is None


def test_fatal_total_reads_the_counter_file():
    assert fatal_total("Undefined 0\nDLP 1\nTOTAL_ERR_FATAL 3\n") == 3
    assert fatal_total("") == 0 and fatal_total("TOTAL_ERR_FATAL x\n") == 0


def _sysfs(tmp_path: Path, port_fatal: int = 0) -> Path:
    """/sys/devices/pci0000:00/PORT/NIC with aer_dev_fatal files, /sys/bus/pci/devices links."""
    port = tmp_path / "devices/pci0000:00" / PORT
    nic = port / str(NIC)
    nic.mkdir(parents=True)
    (port / "aer_dev_fatal").write_text(f"TOTAL_ERR_FATAL {port_fatal}\n")
    (nic / "aer_dev_fatal").write_text("TOTAL_ERR_FATAL 0\n")
    links = tmp_path / "bus/pci/devices"
    links.mkdir(parents=True)
    for target in (port, nic):
        os.symlink(target, links / target.name)
    return tmp_path


def _feed(root: Path) -> tuple[UeventFeed, socket.socket]:
    ours, kernel = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    return UeventFeed(str(root), sock=ours), kernel


def test_the_feed_relays_an_exported_devices_failed_recovery_as_nonfatal(tmp_path):
    feed, kernel = _feed(_sysfs(tmp_path, port_fatal=2))  # 2 fatal errors before start-up
    try:
        assert feed.poll({NIC}) == []
        kernel.send(uevent("FAILED_RECOVERY"))
        kernel.send(uevent("FAILED_RECOVERY", name="0000:02:00.0"))
        assert feed.poll({NIC}) == [(NIC, "nonfatal")]
    finally:
        feed.close()
        kernel.close()


def test_a_fatal_count_that_moved_on_the_port_makes_it_fatal(tmp_path):
    root = _sysfs(tmp_path)
    feed, kernel = _feed(root)
    try:
        (root / "devices/pci0000:00" / PORT / "aer_dev_fatal").write_text("TOTAL_ERR_FATAL 1\n")
        kernel.send(uevent("FAILED_RECOVERY"))
        assert feed.poll({NIC}) == [(NIC, "fatal")]
        kernel.send(uevent("FAILED_RECOVERY"))  # the count did not move again
        assert feed.poll({NIC}) == [(NIC, "nonfatal")]
    finally:
        feed.close()
        kernel.close()


def test_on_the_kernels_socket_only_the_kernels_messages_count(tmp_path):
    """Another root process may send to the uevent group: its message (port id not 0) must not
    make serve relay an error; the kernel's (port id 0) does."""

    class NetlinkLike:
        family = socket.AF_NETLINK

        def __init__(self, messages):
            self.messages = list(messages)

        def setblocking(self, flag):
            pass

        def recvfrom(self, size):
            if not self.messages:
                raise BlockingIOError
            return self.messages.pop(0)

        def fileno(self):
            return -1

        def close(self):
            pass

    spoofed = (uevent("FAILED_RECOVERY"), (4242, 1))
    feed = UeventFeed(str(_sysfs(tmp_path)), sock=NetlinkLike([spoofed]))  # type: ignore[arg-type]
    assert feed.poll({NIC}) == []
    feed.sock = NetlinkLike([spoofed, (uevent("FAILED_RECOVERY"), (0, 1))])  # type: ignore[assignment]
    assert feed.poll({NIC}) == [(NIC, "nonfatal")]


def test_serve_relays_what_the_feed_reports_to_raise_aer():
    from xenpciback_cli.engine.serve import Server

    class Feed:
        def __init__(self) -> None:
            self.r, self.w = socket.socketpair()
            self.asked: list[set[Bdf]] = []

        def fileno(self) -> int:
            return self.r.fileno()

        def poll(self, exported):
            self.asked.append(set(exported))
            return [(NIC, "nonfatal")]

        def close(self) -> None:
            self.r.close()
            self.w.close()

    feed = Feed()
    server = Server(None, None, None, None, aer_feed=feed)  # type: ignore[arg-type]
    raised: list[tuple[Bdf, str]] = []
    server.raise_aer = lambda host, error, reply=None: raised.append((host, error))  # type: ignore[method-assign]
    from types import SimpleNamespace

    exported = SimpleNamespace(host=NIC)
    server.guests[3] = SimpleNamespace(session=SimpleNamespace(devices={(0, 0, 0): exported}))  # type: ignore[assignment]
    server._host_aer()
    assert feed.asked == [{NIC}] and raised == [(NIC, "nonfatal")]
    server.guests.clear()
    server.close()
    assert feed.r.fileno() == -1  # serve closes the feed it was given

"""The host's AER feed for ``serve``: the kernel's PCI error-recovery uevents, as they come.

With a userspace backend the exported device is held by ``pci-stub`` (or no driver), which has no
AER handlers; the kernel's AER core then recovers the device without asking anyone and reports
the outcome in a ``KOBJ_CHANGE`` uevent on the device (``pci_uevent_ers``): ``ERROR_EVENT=
BEGIN_RECOVERY`` when a driver took part, ``FAILED_RECOVERY`` (``DEVICE_ONLINE=0``) when none
could (pci-stub: "can't recover (no error_detected callback)"), ``SUCCESSFUL_RECOVERY`` at the
end. Measured on real Xen (tests/realxen, docs/real-xen.md). This module turns those uevents into
``(device, severity)`` pairs for :meth:`Server.raise_aer`, which relays the recovery to the guest
holding the device -- AFTER the host's own recovery has run: the guest's answer can no longer
steer it (only ``aerState=aerfail`` for the toolstack, as the kernel's pciback writes).

The uevent names no severity. It is read from the AER core's sysfs counters (``aer_dev_fatal``'s
``TOTAL_ERR_FATAL`` of the device and of the ports above it, which count the error where it was
reported): a fatal count that moved since the last event means ``fatal``, anything else
``nonfatal``. ``parse`` and :class:`Recoveries` are pure; :class:`UeventFeed` owns the socket.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Callable, Collection
from pathlib import Path

from xenpciback_cli.pci.address import Bdf

NETLINK_KOBJECT_UEVENT = 15
KERNEL_GROUP = 1  # the kernel's own messages (udev re-broadcasts on group 2, in its own format)
MAX_MESSAGE = 8192
#: ERROR_EVENT values that start a relay; SUCCESSFUL_RECOVERY only closes one.
STARTS = ("BEGIN_RECOVERY", "FAILED_RECOVERY")
PCI_NAME = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{2}:[0-1][0-9a-f]\.[0-7]$")


def parse(data: bytes) -> dict[str, str] | None:
    """A kernel uevent (``ACTION@DEVPATH`` then ``KEY=VALUE`` fields, NUL-separated); None for
    anything else (udev's own messages start with ``libudev``)."""
    fields = data.split(b"\0")
    if b"@" not in fields[0] or fields[0].startswith(b"libudev"):
        return None
    event: dict[str, str] = {}
    for field in fields[1:]:
        key, sep, value = field.decode("utf-8", "replace").partition("=")
        if sep and key:
            event[key] = value
    return event


class Recoveries:
    """Which uevents start a relay, one per error and device: ``BEGIN_RECOVERY`` does, and so
    does a ``FAILED_RECOVERY`` that no ``BEGIN_RECOVERY`` of the same device opened (pci-stub
    sends only that one); ``SUCCESSFUL_RECOVERY``/``FAILED_RECOVERY`` close an open one."""

    def __init__(self) -> None:
        self.open: set[Bdf] = set()

    def device(self, event: dict[str, str], exported: Collection[Bdf]) -> Bdf | None:
        """The exported device this event starts a relay for, or None."""
        if event.get("SUBSYSTEM") != "pci" or event.get("ACTION") != "change":
            return None
        error, name = event.get("ERROR_EVENT"), event.get("PCI_SLOT_NAME", "").lower()
        if error is None or not PCI_NAME.match(name):
            return None
        bdf = Bdf.parse(name)
        if bdf not in exported:
            return None
        if error == "BEGIN_RECOVERY":
            self.open.add(bdf)
            return bdf
        if bdf in self.open:
            self.open.discard(bdf)
            return None
        return bdf if error in STARTS else None


def fatal_total(text: str) -> int:
    """``TOTAL_ERR_FATAL N`` of an ``aer_dev_fatal`` file; 0 when absent."""
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        if name.strip() == "TOTAL_ERR_FATAL" and value.isdigit():
            return int(value)
    return 0


class UeventFeed:
    """The kernel's uevent socket (netlink, group 1), non-blocking, and the sysfs counters that
    give an error's severity. ``fileno`` for the selector; ``poll`` returns the
    ``(device, severity)`` pairs of the events waiting. ``OSError`` from the constructor when
    the socket cannot be opened (then ``serve`` runs without a host AER feed)."""

    def __init__(self, sysfs_root: str = "/sys", log: Callable[[str], None] | None = None,
                 sock: socket.socket | None = None) -> None:
        """``sock``: a datagram socket to read instead of the kernel's (tests)."""
        self.root = sysfs_root
        self.log = log or (lambda line: None)
        self.recoveries = Recoveries()
        self.fatal_seen: dict[str, int] = {}
        if sock is None:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_KOBJECT_UEVENT)
            try:
                sock.bind((0, KERNEL_GROUP))
            except OSError:
                sock.close()
                raise
        self.sock = sock
        self.sock.setblocking(False)
        #: On the kernel's socket only messages from port id 0 are the kernel's: another root
        #: process may send to the group too, and must not make serve relay an error.
        self._from_kernel_only = sock.family == socket.AF_NETLINK
        # Every device's fatal count now, so the first error after start-up is told apart from
        # the ones before it.
        for path in Path(self.root, "bus", "pci", "devices").glob("*"):
            real = os.path.realpath(path)
            self.fatal_seen[real] = fatal_total(self._read(Path(real) / "aer_dev_fatal"))

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()

    def poll(self, exported: Collection[Bdf]) -> list[tuple[Bdf, str]]:
        found: list[tuple[Bdf, str]] = []
        for _ in range(64):  # bounded: the rest waits for the next round
            try:
                data, sender = self.sock.recvfrom(MAX_MESSAGE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:  # ENOBUFS: the kernel dropped some; go on with the rest
                self.log(f"AER feed: uevent socket: {exc.strerror or exc}")
                break
            if self._from_kernel_only and (not isinstance(sender, tuple) or sender[0] != 0):
                continue
            event = parse(data)
            bdf = self.recoveries.device(event, exported) if event is not None else None
            if bdf is not None:
                found.append((bdf, self.severity(bdf)))
        return found

    def severity(self, bdf: Bdf) -> str:
        """``fatal`` if a fatal count of the device or a port above it moved since last asked."""
        moved = False
        for path in self._chain(bdf):
            total = fatal_total(self._read(path / "aer_dev_fatal"))
            moved |= total > self.fatal_seen.get(str(path), 0)
            self.fatal_seen[str(path)] = total
        return "fatal" if moved else "nonfatal"

    def _chain(self, bdf: Bdf) -> list[Path]:
        """The device's sysfs directory and those of the bridges above it."""
        try:
            path = Path(os.path.realpath(os.path.join(self.root, "bus", "pci", "devices", str(bdf))))
        except OSError:
            return []
        chain = []
        while PCI_NAME.match(path.name):
            chain.append(path)
            path = path.parent
        return chain

    @staticmethod
    def _read(path: Path) -> str:
        try:
            return path.read_text()
        except OSError:
            return ""

"""A tiny backend for tests, written from docs/sandbox-protocol.md's backend side, until `serve`
exists: the xenbus side is the project's XenbusBackend (as the sandbox's simulated kernel pciback
runs it), the connect step maps the grant file and binds `.back` before Connected, and a thread
answers ops through GuestSession with a fake InterruptControl over the sandbox device's config file.

Test-only: every wait is bounded, `stop()` ends both threads.
"""

from __future__ import annotations

import mmap
import os
import select
import socket
import stat
import threading
from pathlib import Path

from xenpciback_cli.backend.session import GuestSession
from xenpciback_cli.backend.xenbus import Snapshot, XenbusBackend
from xenpciback_cli.host.configfile import FileConfigAccessor
from xenpciback_cli.pci.address import Bdf
from xenpciback_cli.pv.abi import XEN_PCIF_ACTIVE
from xenpciback_cli.pv.codec import read_flags, set_flag_bits
from xenpciback_cli.sandbox.host import open_sandbox
from xenpciback_cli.sandbox.peer_runner import PeerRunner
from xenpciback_cli.toolstack.plan import Op


class FakeInterrupts:
    """PIRQ 100+entry per MSI-X entry, 55 for MSI, legacy 17; records every call."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def enable_msi(self, domid, host):
        self.calls.append(("enable_msi", domid, host))
        return 55

    def disable_msi(self, domid, host):
        self.calls.append(("disable_msi", domid, host))

    def enable_msix(self, domid, host, entries):
        self.calls.append(("enable_msix", domid, host, tuple(entries)))
        return [100 + e for e in entries]

    def disable_msix(self, domid, host):
        self.calls.append(("disable_msix", domid, host))

    def legacy_pirq(self, domid, host):
        return 17


class _ConnectingBackend(XenbusBackend):
    """XenbusBackend whose connect step does the contract's backend step 1 first."""

    owner: TestBackend

    def _connect(self, snap: Snapshot) -> list[Op]:
        ops = super()._connect(snap)
        if any(getattr(op, "value", None) == "4" for op in ops):
            self.owner.attach(snap.frontend)
        return ops


class TestBackend:
    """Serves domain `domid` of sandbox `sandbox`; devices exported from the sandbox host."""

    __test__ = False  # not a pytest class

    def __init__(self, sandbox: Path, domid: int, *, answer: bool = True) -> None:
        from xenpciback_cli.xenstore.client import XenstoreClient

        self.sandbox = Path(sandbox)
        self.domid = domid
        self.answer = answer
        self.interrupts = FakeInterrupts()
        self.session = GuestSession(domid, self.interrupts)
        xenbus = _ConnectingBackend(domid)
        xenbus.owner = self
        self.xenbus = xenbus
        self.runner = PeerRunner(
            XenstoreClient.open_socket(str(self.sandbox / "xenstore" / "socket"), timeout=5),
            xenbus)
        self.page: mmap.mmap | None = None
        self.sock: socket.socket | None = None
        self.front_path = ""
        self._stop = threading.Event()
        self._loop: threading.Thread | None = None
        self.ops = 0
        self.notifications = 0

    def attach(self, frontend: dict) -> None:
        ref, port = int(frontend["pci-op-ref"]), int(frontend["event-channel"])
        grant = self.sandbox / "xen" / "grant" / str(self.domid) / str(ref)
        info = os.lstat(grant)
        assert stat.S_ISREG(info.st_mode) and info.st_size == 4096
        fd = os.open(grant, os.O_RDWR | os.O_NOFOLLOW)
        try:
            self.page = mmap.mmap(fd, 4096, mmap.MAP_SHARED)
        finally:
            os.close(fd)
        host = open_sandbox(self.sandbox)
        for host_bdf in sorted(self.xenbus.exported):
            config = FileConfigAccessor(
                str(self.sandbox / "sys" / "bus" / "pci" / "devices" / str(host_bdf) / "config"),
                writable=True)
            self.session.export(host_bdf, config, device=host.device(host_bdf))
        base = self.sandbox / "xen" / "evtchn" / f"{self.domid}-{port}"
        back = Path(f"{base}.back")
        back.unlink(missing_ok=True)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(back))
        self.sock.setblocking(False)
        self.front_path = f"{base}.front"
        self._loop = threading.Thread(target=self._serve, daemon=True)
        self._loop.start()

    def _serve(self) -> None:
        assert self.sock is not None and self.page is not None
        while not self._stop.is_set():
            ready, _, _ = select.select([self.sock], [], [], 0.1)
            if not ready:
                continue
            while True:
                try:
                    self.sock.recv(64)
                except BlockingIOError:
                    break
                self.notifications += 1
            if not self.answer or not read_flags(self.page) & XEN_PCIF_ACTIVE:
                continue
            self.session.process(memoryview(self.page))
            self.ops += 1
            set_flag_bits(self.page, clear_mask=XEN_PCIF_ACTIVE)
            try:
                self.sock.sendto(b"\x01", self.front_path)
            except OSError:
                pass

    def start(self) -> TestBackend:
        self.runner.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self.runner.stop()
        if self._loop is not None:
            self._loop.join(2)
        if self.sock is not None:
            self.sock.close()
        try:
            self.runner.client.close()
        except OSError:
            pass


def guest_bdf(devfn: int = 0) -> Bdf:
    return Bdf(0, 0, devfn >> 3, devfn & 7)

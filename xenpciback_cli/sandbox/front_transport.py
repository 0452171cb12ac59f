"""The frontend's end of the sandbox transport (``docs/sandbox-protocol.md``): a granted page as a
file, an event channel as a pair of unix datagram sockets.

A guest's pcifront grants one page and allocates one event-channel port. In sandbox ``S`` for
domain ``D`` that is:

* the grant ``REF``: the regular file ``S/xen/grant/D/REF`` (mode 0600, 4096 zero bytes), which
  this side maps shared (``mmap``) like the backend does, so both see the same bytes;
* the port ``P``: a datagram socket bound at ``S/xen/evtchn/D-P.front``; notifying the backend is
  one datagram to ``S/xen/evtchn/D-P.back``; the backend notifies us with one to ``.front``.

Only what the contract says, written from it (not from the backend's code), so this module is
what an independent frontend would do. No xenstore here: :mod:`.pcifront` publishes REF and P.
"""

from __future__ import annotations

import errno
import mmap
import os
import select
import socket
import stat
import time
from pathlib import Path

PAGE_SIZE = 4096
#: ``sun_path`` holds 108 bytes with its terminating NUL on Linux.
MAX_SOCKET_PATH = 107


class FrontTransportError(OSError):
    """The page or the channel could not be set up (one line: what and where)."""


def grant_path(sandbox: Path, domid: int, ref: int) -> Path:
    return Path(sandbox) / "xen" / "grant" / str(domid) / str(ref)


def channel_path(sandbox: Path, domid: int, port: int, end: str) -> Path:
    """``S/xen/evtchn/D-P.front`` or ``.back``."""
    return Path(sandbox) / "xen" / "evtchn" / f"{domid}-{port}.{end}"


class GrantedPage:
    """The frontend's granted page: creates ``S/xen/grant/D/REF`` and maps it shared."""

    def __init__(self, sandbox: Path, domid: int, ref: int) -> None:
        if not 1 <= ref < 2**32:
            raise FrontTransportError(f"grant reference {ref} is outside 1..2^32-1")
        self.path = grant_path(sandbox, domid, ref)
        self.ref = ref
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # A leftover of an earlier run is reused, not replaced: a backend that still maps it
            # keeps seeing the same page (the same inode). It starts zeroed either way.
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            raise FrontTransportError(f"cannot create the grant file {self.path}: "
                                      f"{exc.strerror}") from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise FrontTransportError(f"the grant file {self.path} is not a regular file")
            os.fchmod(fd, 0o600)
            os.ftruncate(fd, PAGE_SIZE)
            os.pwrite(fd, bytes(PAGE_SIZE), 0)
            self._map = mmap.mmap(fd, PAGE_SIZE, mmap.MAP_SHARED,
                                  mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)
        #: The page as the frontend writes and reads it (shared with the backend's mapping).
        self.page = memoryview(self._map)

    def close(self, *, remove: bool = True) -> None:
        page, self.page = self.page, memoryview(b"")
        page.release()
        if not self._map.closed:
            self._map.close()
        if remove:
            self.path.unlink(missing_ok=True)


class FrontChannel:
    """Port ``P`` of domain ``D``, frontend end: bound at ``.front``, notifies ``.back``."""

    def __init__(self, sandbox: Path, domid: int, port: int) -> None:
        if not 1 <= port < 2**31:
            raise FrontTransportError(f"event-channel port {port} is outside 1..2^31-1")
        self.port = port
        self.path = channel_path(sandbox, domid, port, "front")
        self.peer = channel_path(sandbox, domid, port, "back")
        for path in (self.path, self.peer):
            if len(os.fsencode(path)) > MAX_SOCKET_PATH:
                raise FrontTransportError(f"the socket path {path} is longer than a unix socket "
                                          f"allows ({MAX_SOCKET_PATH} bytes): use a shorter "
                                          "sandbox directory")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.path.is_symlink() or self.path.exists():
                self.path.unlink()  # stale: a frontend that died without cleaning up
            self.sock.bind(str(self.path))
        except OSError as exc:
            self.sock.close()
            raise FrontTransportError(f"cannot bind the event channel {self.path}: "
                                      f"{exc.strerror}") from None
        self.sock.setblocking(False)
        self.notified = 0
        self.sent = 0

    def fileno(self) -> int:
        return self.sock.fileno()

    def notify(self) -> bool:
        """Send one notification to the backend; False if no backend is bound at ``.back``
        (not there yet, or restarting), so the caller retries."""
        try:
            self.sock.sendto(b"\x01", str(self.peer))
        except BlockingIOError:
            return True  # the peer's queue is full: it has notifications waiting already
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ECONNREFUSED, errno.ENOTSOCK):
                return False
            raise FrontTransportError(f"cannot notify {self.peer}: {exc.strerror}") from None
        self.sent += 1
        return True

    def drain(self) -> int:
        """Consume every pending notification; how many there were."""
        count = 0
        while True:
            try:
                self.sock.recv(64)
            except (BlockingIOError, InterruptedError):
                break
            count += 1
        self.notified += count
        return count

    def wait(self, timeout: float) -> int:
        """Wait up to ``timeout`` seconds for notifications; how many arrived (0: none)."""
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            got = self.drain()
            if got:
                return got
            left = deadline - time.monotonic()
            if left <= 0:
                return 0
            select.select([self.sock], [], [], left)

    def close(self, *, remove: bool = True) -> None:
        self.sock.close()
        if remove:
            self.path.unlink(missing_ok=True)

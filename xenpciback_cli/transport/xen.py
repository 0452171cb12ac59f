"""THE SEAM's transport on real Xen: a guest's granted page through ``/dev/xen/gntdev`` and its
interdomain event channel through ``/dev/xen/evtchn``, both Linux character devices.

Why the device files and not ``libxengnttab``/``libxenevtchn`` through ctypes (on Linux those
libraries issue exactly these ioctls):

* **Lifetime safety.** The page is a Python :class:`mmap.mmap`; closing it while any memoryview
  of it is still alive raises ``BufferError`` instead of unmapping. A page from
  ``xengnttab_map_grant_ref`` would be a bare pointer wrapped by ctypes: a view kept past the
  unmap would touch unmapped memory and kill the backend (and every guest it serves).
* **Errors.** A failed ioctl is an :class:`OSError` with its errno, turned into
  :class:`TransportError` here, in one place; no ``use_errno`` bookkeeping.
* **No library to find.** The device ioctls are the kernel's stable uapi (the numbers and layouts
  are in ``xen_abi.py``, checked against the headers by the tests); it is also what the proof of
  concept on real Xen used (``../shared/spec/xen-in-qemu.md``).
* **One channel, one descriptor.** Each bound channel gets its own ``/dev/xen/evtchn`` open, so
  :meth:`XenEventChannel.fileno` is readable exactly when *that* guest notified, as the seam wants;
  the kernel masks a port when it fires until we write it back, so a flood costs one wake-up per
  drain.

:func:`real_xen_adapters` is what ``app.py`` calls to serve real guests.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from xenpciback_cli.backend.ports import TransportError
from xenpciback_cli.transport import xen_abi as abi

if TYPE_CHECKING:
    from xenpciback_cli.transport.xen_interrupts import XenInterrupts

__all__ = ["EVTCHN_PATH", "GNTDEV_PATH", "XenEventChannel", "XenGrantMapping", "XenTransport",
           "real_xen_adapters"]

GNTDEV_PATH = "/dev/xen/gntdev"
EVTCHN_PATH = "/dev/xen/evtchn"

#: ``ioctl(fd, request, buffer)``: returns the ioctl's return value, fills ``buffer`` in place
#: (``fcntl.ioctl`` with a mutable buffer does exactly that). Tests pass a fake.
Ioctl = Callable[[int, int, bytearray], int]
#: ``open(path, flags) -> fd`` (``os.open``); tests pass one that hands out socketpairs or files.
Opener = Callable[[str, int], int]


def _ioctl(fd: int, request: int, buf: bytearray) -> int:
    return int(fcntl.ioctl(fd, request, buf, True))


def _reason(what: str, exc: OSError) -> str:
    name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
    return f"{what}: {name} ({exc.strerror or exc})"


class XenGrantMapping:
    """One page a guest granted, mapped shared through gntdev. :attr:`page` is writable."""

    def __init__(self, transport: XenTransport, domid: int, ref: int, index: int,
                 mapped: mmap.mmap) -> None:
        self.domid = domid
        self.ref = ref
        self.index = index
        self._transport = transport
        self._map: mmap.mmap | None = mapped
        self.page = memoryview(mapped)

    def close(self) -> None:
        """Unmap the page (munmap, then gntdev's UNMAP_GRANT_REF, as libxengnttab does).
        Idempotent. While a view derived from :attr:`page` is still alive nothing is unmapped
        and :class:`TransportError` says so (the page stays usable; close again later): better
        a refused close than a dangling page."""
        if self._map is None:
            return
        self.page.release()
        try:
            self._map.close()
        except BufferError:
            self.page = memoryview(self._map)
            raise TransportError(f"page {self.ref} of domain {self.domid} is still in use: "
                                 "left mapped") from None
        self._map = None
        self._transport._unmap(self.index)


class XenEventChannel:
    """One interdomain channel bound on its own ``/dev/xen/evtchn`` descriptor."""

    def __init__(self, transport: XenTransport, fd: int, port: int, domid: int,
                 remote_port: int) -> None:
        self.port = port  # the local port the kernel bound
        self.domid = domid
        self.remote_port = remote_port
        self._transport = transport
        self._fd = fd
        #: The port as the device wants it: written back to unmask, passed to notify.
        self._port_buf = bytearray(abi.EVTCHN_PORT.pack(port))
        self._masked = False  # a port was read and not yet written back

    def fileno(self) -> int:
        return self._fd

    def drain(self) -> int:
        """Read every pending port (u32 each), return how many. The kernel masked the port when
        it fired and it stays masked until :meth:`rearm`: the guest's notifications while an
        answer is worked on (or its page is polled) cost dom0 no interrupt."""
        if self._fd < 0:
            raise TransportError(f"event channel {self.port} of domain {self.domid} is closed")
        count = 0
        while True:
            try:
                data = os.read(self._fd, 4 * 64)
            except BlockingIOError:
                break
            except InterruptedError:
                continue
            except OSError as exc:
                if exc.errno == errno.EFBIG:  # the kernel's ring overflowed: reset it, go on
                    self._transport._call(self._fd, abi.IOCTL_EVTCHN_RESET, bytearray(),
                                          "resetting the event channel ring")
                    count += 1
                    break
                raise TransportError(_reason(f"reading event channel {self.port}", exc)) from None
            if not data:
                break
            count += len(data) // 4  # the ring carries this descriptor's one port only
            if len(data) < 4 * 64:
                break
        if count:
            self._masked = True
        return count

    def rearm(self) -> None:
        """Unmask the port if a read left it masked (writing it back; once is enough). A
        notification that came while it was masked fires again at once: none is lost."""
        if not self._masked or self._fd < 0:
            return
        try:
            os.write(self._fd, self._port_buf)
        except OSError as exc:
            raise TransportError(_reason(f"unmasking event channel {self.port}", exc)) from None
        self._masked = False

    def notify(self) -> None:
        """One ioctl, once per op answered: the buffer is built once and the error text only
        when there is an error (an emulated dom0 feels every Python step here)."""
        if self._fd < 0:
            return
        try:
            self._transport._ioctl(self._fd, abi.IOCTL_EVTCHN_NOTIFY, self._port_buf)
        except OSError as exc:
            raise TransportError(_reason(f"notifying domain {self.domid} on port {self.port}",
                                         exc)) from None

    def close(self) -> None:
        """Unbind and close (closing alone would unbind too; the explicit unbind reports)."""
        if self._fd < 0:
            return
        fd, self._fd = self._fd, -1
        try:
            self._transport._ioctl(fd, abi.IOCTL_EVTCHN_UNBIND,
                                   bytearray(abi.EVTCHN_PORT.pack(self.port)))
        except OSError:
            pass  # the close below unbinds whatever is left
        finally:
            os.close(fd)


class XenTransport:
    """Grant mapping and event channels on real Xen (Linux dom0 or driver domain).

    One gntdev descriptor for every page of this backend process (opened on first use); one
    evtchn descriptor per bound channel. ``gntdev_path``, ``evtchn_path``, ``ioctl`` and
    ``opener`` exist for tests; real callers use the defaults.
    """

    def __init__(self, *, gntdev_path: str = GNTDEV_PATH, evtchn_path: str = EVTCHN_PATH,
                 ioctl: Ioctl = _ioctl, opener: Opener = os.open) -> None:
        self.gntdev_path = gntdev_path
        self.evtchn_path = evtchn_path
        self._ioctl = ioctl
        self._open = opener
        self._gntdev = -1

    # -- grants ---------------------------------------------------------------------------------
    def map_grant(self, domid: int, ref: int) -> XenGrantMapping:
        if not (0 <= domid < 0x7FF0) or not (0 <= ref <= 0xFFFFFFFF):
            raise TransportError(f"cannot map grant {ref} of domain {domid}: out of range")
        fd = self._gntdev_fd()
        buf = bytearray(abi.GNTDEV_MAP_GRANT_REF.pack(1, 0, 0, domid, ref))
        self._call(fd, abi.IOCTL_GNTDEV_MAP_GRANT_REF, buf,
                   f"mapping grant {ref} of domain {domid}")
        index = abi.GNTDEV_MAP_GRANT_REF.unpack(buf)[2]
        try:
            mapped = mmap.mmap(fd, abi.PAGE_SIZE, mmap.MAP_SHARED,
                               mmap.PROT_READ | mmap.PROT_WRITE, offset=index)
        except OSError as exc:
            self._unmap(index)
            raise TransportError(_reason(f"mapping grant {ref} of domain {domid}", exc)) from None
        return XenGrantMapping(self, domid, ref, index, mapped)

    def _gntdev_fd(self) -> int:
        if self._gntdev < 0:
            try:
                self._gntdev = self._open(self.gntdev_path, os.O_RDWR | os.O_CLOEXEC)
            except OSError as exc:
                raise TransportError(_reason(f"opening {self.gntdev_path}", exc)) from None
        return self._gntdev

    def _unmap(self, index: int) -> None:
        if self._gntdev < 0:
            return
        buf = bytearray(abi.GNTDEV_UNMAP_GRANT_REF.pack(index, 1, 0))
        try:
            self._ioctl(self._gntdev, abi.IOCTL_GNTDEV_UNMAP_GRANT_REF, buf)
        except OSError:
            pass  # nothing left to do: closing the descriptor releases it in the end

    # -- event channels -------------------------------------------------------------------------
    def bind_interdomain(self, domid: int, remote_port: int) -> XenEventChannel:
        if not (0 <= domid < 0x7FF0) or not (0 < remote_port <= 0xFFFFFFFF):
            raise TransportError(f"cannot bind port {remote_port} of domain {domid}: out of range")
        try:
            fd = self._open(self.evtchn_path, os.O_RDWR | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError as exc:
            raise TransportError(_reason(f"opening {self.evtchn_path}", exc)) from None
        buf = bytearray(abi.EVTCHN_BIND_INTERDOMAIN.pack(domid, remote_port))
        try:
            port = self._call(fd, abi.IOCTL_EVTCHN_BIND_INTERDOMAIN, buf,
                              f"binding port {remote_port} of domain {domid}")
        except TransportError:
            os.close(fd)
            raise
        return XenEventChannel(self, fd, port, domid, remote_port)

    # -- shared ---------------------------------------------------------------------------------
    def _call(self, fd: int, request: int, buf: bytearray, what: str) -> int:
        try:
            return self._ioctl(fd, request, buf)
        except OSError as exc:
            raise TransportError(_reason(what, exc)) from None

    def close(self) -> None:
        """Close the gntdev descriptor (pages still mapped stay valid until unmapped)."""
        if self._gntdev >= 0:
            os.close(self._gntdev)
            self._gntdev = -1


def real_xen_adapters(sysfs_root: str = "/sys") -> tuple[XenTransport, XenInterrupts]:
    """The Transport and InterruptControl a backend on real Xen uses (``app.py`` calls this).
    Nothing is opened yet: the first map, bind or MSI enable opens what it needs, so a missing
    device or library is reported for the guest that needed it, as a TransportError or
    InterruptError."""
    from xenpciback_cli.transport.xen_interrupts import XenInterrupts

    return XenTransport(), XenInterrupts(sysfs_root)

"""The sandbox transport, backend side, exactly as ``docs/sandbox-protocol.md`` says.

* A grant ``REF`` of domain ``D`` is the regular file ``S/xen/grant/D/REF`` of exactly 4096 bytes;
  mapping it is a shared read-write ``mmap``. The file is untrusted (the guest made it): opened
  with ``O_NOFOLLOW`` (no symlink), checked to be a regular file of the right size on the opened
  descriptor (no race between the check and the map).
* An interdomain event channel, port ``P`` of domain ``D``, is two datagram sockets: the backend
  binds ``S/xen/evtchn/D-P.back`` (a stale file removed first) and notifies by sending one byte
  to ``S/xen/evtchn/D-P.front``; a frontend that has gone away (no socket, nobody bound) is not
  an error: the notification is lost, as it would be for a dead domain.

Also the sandbox's device adapters: :class:`SandboxDevices` gives a device's config space (the
simulated host's ``config`` file, so writes land in the simulated config space) and
:class:`SandboxInterrupts` plays the hypervisor's PIRQ mapping (stable numbers per device and
MSI-X entry) and sets the enable bits in config space as the kernel's MSI code would.
"""

from __future__ import annotations

import errno
import json
import mmap
import os
import socket
import stat
import zlib
from collections.abc import Sequence
from pathlib import Path

from xenpciback_cli.backend.ports import InterruptError, TransportError
from xenpciback_cli.config.fields import ConfigAccessError
from xenpciback_cli.config.registers import XenPciErr
from xenpciback_cli.host.configfile import FileConfigAccessor
from xenpciback_cli.pci.address import Bdf

PAGE_SIZE = 4096
MAX_REF = 2**32 - 1
MAX_PORT = 2**31 - 1
_CAP_MSI = 0x05
_CAP_MSIX = 0x11
_GONE = (errno.ENOENT, errno.ECONNREFUSED)


def grant_path(root: Path, domid: int, ref: int) -> Path:
    return root / "xen" / "grant" / str(domid) / str(ref)


def channel_path(root: Path, domid: int, port: int, end: str) -> Path:
    return root / "xen" / "evtchn" / f"{domid}-{port}.{end}"


class SandboxGrant:
    """One mapped grant file: ``page`` is a writable memoryview of the shared mapping."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError as exc:
            why = "a symlink" if exc.errno == errno.ELOOP else exc.strerror
            raise TransportError(f"cannot map grant {path}: {why}") from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise TransportError(f"cannot map grant {path}: not a regular file")
            if info.st_size != PAGE_SIZE:
                raise TransportError(f"cannot map grant {path}: {info.st_size} bytes, "
                                     f"not {PAGE_SIZE}")
            try:
                self._map = mmap.mmap(fd, PAGE_SIZE, mmap.MAP_SHARED,
                                      mmap.PROT_READ | mmap.PROT_WRITE)
            except (OSError, ValueError) as exc:
                raise TransportError(f"cannot map grant {path}: {exc}") from None
        finally:
            os.close(fd)
        self.page = memoryview(self._map)

    def close(self) -> None:
        self.page.release()
        try:
            self._map.close()
        except BufferError:  # a view still exported somewhere: the GC unmaps it later
            pass


class SandboxChannel:
    """The backend end of one event channel: ``D-P.back``, notifying ``D-P.front``."""

    def __init__(self, back: Path, front: Path) -> None:
        self.back, self.front = back, front
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            self._sock.setblocking(False)
            back.parent.mkdir(parents=True, exist_ok=True)
            try:
                back.unlink()
            except FileNotFoundError:
                pass
            self._sock.bind(str(back))
        except OSError as exc:
            self._sock.close()
            raise TransportError(f"cannot bind event channel {back}: {exc.strerror}") from None
        self._inode = os.stat(back).st_ino

    def fileno(self) -> int:
        return self._sock.fileno()

    def drain(self) -> int:
        count = 0
        while True:
            try:
                self._sock.recv(64)
            except (BlockingIOError, InterruptedError):
                return count
            except OSError as exc:
                raise TransportError(f"event channel {self.back}: {exc.strerror}") from None
            count += 1

    def rearm(self) -> None:
        """Nothing to do: a datagram socket queues notifications without masking."""

    def notify(self) -> None:
        try:
            self._sock.sendto(b"\x01", str(self.front))
        except BlockingIOError:
            pass  # the frontend's queue is full: it has notifications to read already
        except OSError as exc:
            if exc.errno not in _GONE:
                raise TransportError(f"cannot notify {self.front}: {exc.strerror}") from None

    def close(self) -> None:
        self._sock.close()
        try:  # only our own socket file: a newer backend may have bound the path since
            if os.stat(self.back).st_ino == self._inode:
                self.back.unlink()
        except OSError:
            pass


class SandboxTransport:
    """The :class:`~xenpciback_cli.backend.ports.Transport` of sandbox ``root``."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).resolve()

    def map_grant(self, domid: int, ref: int) -> SandboxGrant:
        if not 0 < ref <= MAX_REF:
            raise TransportError(f"grant reference {ref} out of range")
        return SandboxGrant(grant_path(self.root, domid, ref))

    def bind_interdomain(self, domid: int, remote_port: int) -> SandboxChannel:
        if not 0 < remote_port <= MAX_PORT:
            raise TransportError(f"event channel port {remote_port} out of range")
        return SandboxChannel(channel_path(self.root, domid, remote_port, "back"),
                              channel_path(self.root, domid, remote_port, "front"))


class SandboxDevices:
    """Config space of the sandbox's devices: the simulated host's ``config`` files."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).resolve()

    def config_path(self, bdf: Bdf) -> Path:
        return self.root / "sys" / "bus" / "pci" / "devices" / str(bdf) / "config"

    def config(self, bdf: Bdf) -> FileConfigAccessor:
        try:
            return FileConfigAccessor(str(self.config_path(bdf)), writable=True)
        except OSError as exc:
            raise ConfigAccessError(XenPciErr.OP_FAILED) from exc


def _find_cap(config: FileConfigAccessor, cap_id: int) -> int | None:
    if not config.read(0x06, 2) & 0x10:  # STATUS.CAP_LIST
        return None
    pointer, seen = config.read(0x34, 1) & 0xFC, 0
    while pointer >= 0x40 and seen < 48:
        if config.read(pointer, 1) == cap_id:
            return pointer
        pointer, seen = config.read(pointer + 1, 1) & 0xFC, seen + 1
    return None


class SandboxInterrupts:
    """The sandbox's hypervisor for MSI and MSI-X: PIRQ numbers derived from the device and the
    entry (stable across restarts, so a guest's vectors stay valid), and the enable bits set or
    cleared in the simulated config space as Linux's ``pci_enable_msi``/``msix`` would.

    The hypervisor's side outlives ``serve``, as Xen's does: every PIRQ mapped into a domain is
    listed in ``S/xen/pirqs.json`` (``{"D/BDF": [pirq, ...]}``, a second map of the same entry
    listed twice, as Xen would hand out a second PIRQ). What this adapter itself knows it mapped
    is in memory, like the real adapter's, and is handed back after a restart by :meth:`adopt`."""

    MSI_BASE = 0x100
    MSIX_BASE = 0x400

    def __init__(self, devices: SandboxDevices) -> None:
        self.devices = devices
        self._mapped: dict[tuple[int, Bdf], tuple[str, list[int]]] = {}

    @property
    def hypervisor_path(self) -> Path:
        return self.devices.root / "xen" / "pirqs.json"

    def _device_key(self, host: Bdf) -> int:
        return zlib.crc32(str(host).encode()) % 61

    # -- the simulated hypervisor's table ---------------------------------------------------------
    def hypervisor_mappings(self) -> dict[str, list[int]]:
        """Every PIRQ the simulated hypervisor has mapped, by ``"domid/bdf"``."""
        try:
            fd = os.open(self.hypervisor_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return {}
        with os.fdopen(fd, "rb") as f:
            data = f.read(1 << 20)
        try:
            table = json.loads(data)
        except ValueError:
            return {}
        if not isinstance(table, dict):
            return {}
        return {str(k): [int(p) for p in v if type(p) is int]
                for k, v in table.items() if isinstance(v, list)}

    def _hypervisor(self, domid: int, host: Bdf, add: Sequence[int] = (),
                    remove: Sequence[int] = ()) -> None:
        table = self.hypervisor_mappings()
        key = f"{domid}/{host}"
        pirqs = table.get(key, []) + list(add)
        for pirq in remove:
            if pirq in pirqs:
                pirqs.remove(pirq)
        if pirqs:
            table[key] = pirqs
        else:
            table.pop(key, None)
        path = self.hypervisor_path
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(table, f, sort_keys=True)
        os.replace(tmp, path)

    def _set(self, host: Bdf, cap_id: int, offset: int, bit: int, on: bool) -> bool:
        try:
            config = self.devices.config(host)
        except ConfigAccessError:
            return False
        try:
            cap = _find_cap(config, cap_id)
            if cap is None:
                return False
            control = config.read(cap + offset, 2)
            config.write(cap + offset, 2, (control | bit) if on else (control & ~bit & 0xFFFF))
            return True
        except ConfigAccessError:
            return False
        finally:
            config.close()

    def _refuse_twice(self, domid: int, host: Bdf) -> None:
        if (domid, host) in self._mapped:
            raise InterruptError(-errno.EBUSY, f"{host}: MSI or MSI-X already mapped for "
                                 f"domain {domid}")

    def enable_msi(self, domid: int, host: Bdf) -> int:
        self._refuse_twice(domid, host)
        if not self._set(host, _CAP_MSI, 2, 0x0001, True):
            raise InterruptError(-errno.ENODEV, f"{host}: no MSI capability to enable")
        pirq = self.MSI_BASE + self._device_key(host)
        self._hypervisor(domid, host, add=[pirq])
        self._mapped[(domid, host)] = ("msi", [pirq])
        return pirq

    def disable_msi(self, domid: int, host: Bdf) -> None:
        self._unmap(domid, host, "msi")
        self._set(host, _CAP_MSI, 2, 0x0001, False)

    def enable_msix(self, domid: int, host: Bdf, entries: Sequence[int]) -> Sequence[int]:
        self._refuse_twice(domid, host)
        if not self._set(host, _CAP_MSIX, 2, 0x8000, True):
            raise InterruptError(-errno.ENODEV, f"{host}: no MSI-X capability to enable")
        base = self.MSIX_BASE + self._device_key(host) * 0x100
        pirqs = [base + (entry & 0xFF) for entry in entries]
        self._hypervisor(domid, host, add=pirqs)
        self._mapped[(domid, host)] = ("msix", pirqs)
        return pirqs

    def disable_msix(self, domid: int, host: Bdf) -> None:
        self._unmap(domid, host, "msix")
        self._set(host, _CAP_MSIX, 2, 0x8000, False)

    def _unmap(self, domid: int, host: Bdf, kind: str) -> None:
        mapped = self._mapped.get((domid, host))
        if mapped is not None and mapped[0] == kind:
            del self._mapped[(domid, host)]
            self._hypervisor(domid, host, remove=mapped[1])

    def adopt(self, domid: int, host: Bdf, kind: str, entries: Sequence[int],
              pirqs: Sequence[int]) -> None:
        self._refuse_twice(domid, host)
        self._mapped[(domid, host)] = (kind, [int(p) for p in pirqs])

    def mapped(self) -> dict[str, object]:
        """What this adapter knows it mapped (for status and tests): ``{"domid/bdf": [pirqs]}``."""
        return {f"{d}/{b}": list(p) for (d, b), (_kind, p) in self._mapped.items()}

    def legacy_pirq(self, domid: int, host: Bdf) -> int:
        try:
            config = self.devices.config(host)
        except ConfigAccessError:
            return 0
        try:
            pin = config.read(0x3D, 1)
            line = config.read(0x3C, 1)
        except ConfigAccessError:
            return 0
        finally:
            config.close()
        return line if pin and line not in (0, 0xFF) else 0

"""InterruptControl on real Xen: MSI and MSI-X PIRQs mapped straight into the guest's domain.

Linux's xen-pciback calls ``pci_enable_msi``; dom0's kernel then maps the interrupt with
``PHYSDEVOP_map_pirq`` *for the device's owner domain*. A userspace backend cannot call
``pci_enable_msi``; it does the same through libxenctrl (as QEMU's xen_pt does for HVM guests)
and sets the enable bits itself. The sequence and the error each missing step returns were
proven on Xen 4.17 (``../shared/spec/xen-in-qemu.md``, "MSI and MSI-X for a PV guest"):

=========================  ==================================================================
step                       who does it
=========================  ==================================================================
IOMMU context, assignment  the toolstack before serve: ``passthrough="enabled"`` and
                           ``xc_assign_device`` (``attach``, issue 13); without them the map
                           below fails with EOPNOTSUPP / ENODEV, passed to the guest as is
prepare MSI-X              here, once per device before its first MSI-X map:
                           ``PHYSDEVOP_prepare_msix`` through ``xencall2`` (libxenctrl has no
                           wrapper); without it the map fails with ENODATA
map                        here: ``xc_physdev_map_pirq_msi(xch, domid, -1, &pirq, devfn, bus,
                           entry_nr, table_base)`` -- the PIRQ is in the *guest's* space. MSI:
                           entry 0, table base 0 (as Linux's dom0 code passes); MSI-X: the
                           table entry and the physical start of the BAR holding the table.
                           Xen writes the address/data and the (masked) table entries itself
                           and grants the guest access to the interrupt while mapping, so no
                           ``xc_domain_irq_permission`` follows (that call takes a PIRQ in
                           dom0's own space, which these are not)
enable bits                here, through sysfs ``config`` after the map: MSI enable, or MSI-X
                           enable with function mask clear; INTx disable (Linux's
                           ``pci_intx_for_msi``). Bus master is *not* set here: the guest's
                           driver sets it through the config filter, as with the kernel's
                           pciback (the proof of concept set it only because no driver ran)
unmap                      here: ``xc_physdev_unmap_pirq``; Xen clears MSI enable and INTx
                           disable but leaves MSI-X enable set, so we clear MSI-X enable and
                           INTx disable ourselves
release MSI-X              :meth:`XenInterrupts.release` (``PHYSDEVOP_release_msix``), when the
                           device leaves the backend; deassignment is the toolstack's
=========================  ==================================================================

Xen does not refuse a second map of a mapped device (it hands out a new PIRQ): this adapter
keeps what it mapped and refuses a double enable with -EBUSY, behind the core's own XSA-157
checks. Its map lives in memory; ``serve`` records every change in its run dir and, after a
restart, hands the surviving mappings back through :meth:`XenInterrupts.adopt`. Only PCI
segment 0 is supported: ``xc_physdev_map_pirq_msi`` has no segment argument.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from xenpciback_cli.backend.ports import InterruptError
from xenpciback_cli.config import capabilities
from xenpciback_cli.config.fields import ConfigAccessError
from xenpciback_cli.config.registers import (MSI_FLAGS, MSI_FLAGS_ENABLE, MSIX_FLAGS, MSIX_FLAGS_ENABLE,
                                             MSIX_FLAGS_MASKALL, CapId, Command, Reg)
from xenpciback_cli.host.configfile import FileConfigAccessor
from xenpciback_cli.pci.address import Bdf
from xenpciback_cli.engine.grants import IRQ_LINE_LIMIT
from xenpciback_cli.transport import xen_abi as abi
from xenpciback_cli.untrusted import decimal

__all__ = ["Hypervisor", "LibxcHypervisor", "XenInterrupts", "XenLibraries", "ctypes_prototype",
           "load_libraries"]

MSIX_TABLE = 4  # offset of the table offset/BIR register in the MSI-X capability
MSIX_TABLE_BIR = 0x7
PIRQ_ANY = -1  # let Xen pick the PIRQ (and the index)

# -- ctypes -----------------------------------------------------------------------------------------
_CTYPES: dict[str, Any] = {
    "int": ctypes.c_int, "unsigned": ctypes.c_uint, "unsigned int": ctypes.c_uint,
    "uint32_t": ctypes.c_uint32, "uint64_t": ctypes.c_uint64, "size_t": ctypes.c_size_t,
    "int *": ctypes.POINTER(ctypes.c_int), "void": None, "bool": ctypes.c_bool,
    "uint8_t": ctypes.c_uint8, "unsigned long": ctypes.c_ulong,
}


def ctypes_prototype(ret: str, params: Sequence[str]) -> tuple[Any, list[Any]]:
    """``(restype, argtypes)`` for a C prototype from ``xen_abi``'s tables. Opaque handles and
    buffers (any other pointer) are ``c_void_p``; an unknown type is a programming error."""

    def one(c_type: str) -> Any:
        if c_type in _CTYPES:
            return _CTYPES[c_type]
        if c_type.endswith("*"):
            return ctypes.c_void_p
        raise KeyError(f"no ctypes type for C type {c_type!r}")

    return one(ret), [one(p) for p in params]


@dataclass
class XenLibraries:
    xenctrl: ctypes.CDLL
    xencall: ctypes.CDLL


def _load(names: Sequence[str], short: str) -> ctypes.CDLL:
    tried = list(names)
    found = ctypes.util.find_library(short)
    if found:
        tried.append(found)
    last: OSError | None = None
    for name in tried:
        try:
            return ctypes.CDLL(name, use_errno=True)
        except OSError as exc:
            last = exc
    raise OSError(errno.ENOENT, f"cannot load lib{short} (tried {', '.join(tried)}): {last}")


def load_libraries() -> XenLibraries:
    """dlopen libxenctrl and libxencall with every prototype we call set. OSError if missing."""
    libs = XenLibraries(_load(abi.XENCTRL_LIBRARIES, "xenctrl"), _load(abi.XENCALL_LIBRARIES, "xencall"))
    for lib, functions in ((libs.xenctrl, abi.XENCTRL_FUNCTIONS), (libs.xencall, abi.XENCALL_FUNCTIONS)):
        for name, (ret, params) in functions.items():
            fn = getattr(lib, name)
            fn.restype, fn.argtypes = ctypes_prototype(ret, params)
    return libs


# -- the hypervisor calls ---------------------------------------------------------------------------
class Hypervisor(Protocol):
    """The three hypercalls this adapter makes; each raises OSError(errno) on failure."""

    def map_pirq_msi(self, domid: int, bus: int, devfn: int, entry_nr: int, table_base: int) -> int: ...

    def unmap_pirq(self, domid: int, pirq: int) -> None: ...

    def physdev_pci_op(self, op: int, seg: int, bus: int, devfn: int) -> None: ...


class LibxcHypervisor:
    """:class:`Hypervisor` through libxenctrl and libxencall (ctypes). Opened on first use."""

    def __init__(self, loader: Callable[[], XenLibraries] = load_libraries) -> None:
        self._loader = loader
        self._libs: XenLibraries | None = None
        self._xch: int | None = None
        self._xcall: int | None = None

    def _open(self) -> tuple[XenLibraries, int, int]:
        if self._libs is None:
            self._libs = self._loader()
        if self._xch is None:
            self._xch = self._libs.xenctrl.xc_interface_open(None, None, 0)
            if not self._xch:
                err = ctypes.get_errno() or errno.EACCES
                raise OSError(err, f"xc_interface_open: {os.strerror(err)}")
        if self._xcall is None:
            self._xcall = self._libs.xencall.xencall_open(None, 0)
            if not self._xcall:
                err = ctypes.get_errno() or errno.EACCES
                raise OSError(err, f"xencall_open: {os.strerror(err)}")
        return self._libs, self._xch, self._xcall

    def open(self) -> None:
        """Load the libraries and open both handles now (OSError if that fails)."""
        self._open()

    def map_pirq_msi(self, domid: int, bus: int, devfn: int, entry_nr: int, table_base: int) -> int:
        libs, xch, _ = self._open()
        pirq = ctypes.c_int(PIRQ_ANY)
        rc = libs.xenctrl.xc_physdev_map_pirq_msi(xch, domid, PIRQ_ANY, ctypes.byref(pirq), devfn,
                                                  bus, entry_nr, table_base)
        if rc != 0:
            raise OSError(ctypes.get_errno() or errno.EIO, "xc_physdev_map_pirq_msi")
        return pirq.value

    def unmap_pirq(self, domid: int, pirq: int) -> None:
        libs, xch, _ = self._open()
        if libs.xenctrl.xc_physdev_unmap_pirq(xch, domid, pirq) != 0:
            raise OSError(ctypes.get_errno() or errno.EIO, "xc_physdev_unmap_pirq")

    def physdev_pci_op(self, op: int, seg: int, bus: int, devfn: int) -> None:
        """``HYPERVISOR_physdev_op(op, &struct physdev_pci_device)``; the argument lives in a
        hypercall-safe buffer from ``xencall_alloc_buffer`` (never ordinary, pageable memory)."""
        libs, _, xcall = self._open()
        arg = abi.PHYSDEV_PCI_DEVICE.pack(seg, bus, devfn)
        buf = libs.xencall.xencall_alloc_buffer(xcall, len(arg))
        if not buf:
            raise OSError(ctypes.get_errno() or errno.ENOMEM, "xencall_alloc_buffer")
        try:
            ctypes.memmove(buf, arg, len(arg))
            rc = libs.xencall.xencall2(xcall, abi.HYPERVISOR_PHYSDEV_OP, op, buf)
            if rc < 0:
                raise OSError(ctypes.get_errno() or -rc, f"physdev op {op}")
        finally:
            libs.xencall.xencall_free_buffer(xcall, buf)

    def close(self) -> None:
        if self._libs is not None:
            if self._xcall:
                self._libs.xencall.xencall_close(self._xcall)
            if self._xch:
                self._libs.xenctrl.xc_interface_close(self._xch)
        self._xch = self._xcall = None


# -- the adapter ------------------------------------------------------------------------------------
def _error(what: str, exc: OSError) -> InterruptError:
    code = exc.errno or errno.EIO
    return InterruptError(-code, f"{what}: {errno.errorcode.get(code, code)} ({os.strerror(code)})")


#: Where the kernel offers Xen's hypercall interface (privcmd) to dom0's userspace.
PRIVCMD_DEVICES = ("/dev/xen/privcmd", "/proc/xen/privcmd")


class XenInterrupts:
    """:class:`~xenpciback_cli.backend.ports.InterruptControl` for real Xen."""

    def __init__(self, sysfs_root: str = "/sys", hypervisor: Hypervisor | None = None) -> None:
        self.sysfs_root = sysfs_root
        self._hv: Hypervisor = hypervisor if hypervisor is not None else LibxcHypervisor()
        self._msi: dict[tuple[int, Bdf], int] = {}
        self._msix: dict[tuple[int, Bdf], list[int]] = {}
        self._prepared: set[Bdf] = set()

    def warm_up(self) -> None:
        """Open the hypervisor interface now rather than at the first MSI/MSI-X enable.

        Found on real Xen (issue 13): a real pcifront waits 2 s for an answer, then logs
        "pciback not responding", gives up on the op and fails the driver's
        ``pci_enable_msix``; loading libxenctrl and libxencall and opening their handles took
        longer than that in an emulated dom0. A failure here is not reported: the first enable
        meets it again and reports it to the guest that needed it. Without Xen's privcmd
        device there is nothing to warm, and libxencall would print its own error line."""
        if not any(os.path.exists(p) for p in PRIVCMD_DEVICES):
            return
        opener = getattr(self._hv, "open", None)
        if callable(opener):
            try:
                opener()
            except OSError:
                pass

    # -- the device's files ---------------------------------------------------------------------
    def _device_file(self, host: Bdf, name: str) -> str:
        return os.path.join(self.sysfs_root, "bus", "pci", "devices", str(host), name)

    def _config(self, host: Bdf) -> FileConfigAccessor:
        try:
            return FileConfigAccessor(self._device_file(host, "config"), writable=True)
        except OSError as exc:
            raise _error(f"opening {host}'s config space", exc) from None

    def _capability(self, host: Bdf, cap_id: int) -> int:
        try:
            with open(self._device_file(host, "config"), "rb") as f:
                data = f.read(256)
        except OSError as exc:
            raise _error(f"reading {host}'s config space", exc) from None
        cap = capabilities.walk(data).find(cap_id)
        if cap is None:
            raise InterruptError(-errno.EINVAL, f"{host} has no {capabilities.cap_name(cap_id)} capability")
        return cap.offset

    def _update(self, host: Bdf, changes: Sequence[tuple[int, int, int]]) -> None:
        """Read-modify-write 16-bit registers: ``(offset, bits to set, bits to clear)``."""
        config = self._config(host)
        try:
            for offset, set_bits, clear_bits in changes:
                value = config.read(offset, 2)
                new = (value | set_bits) & ~clear_bits & 0xFFFF
                if new != value:
                    config.write(offset, 2, new)
        except ConfigAccessError:
            raise InterruptError(-errno.EIO, f"writing {host}'s config space failed") from None
        finally:
            config.close()

    def _table_base(self, host: Bdf, msix: int) -> int:
        """The physical start of the BAR holding the MSI-X table (sysfs ``resource`` line BIR),
        which Xen checks against the device."""
        config = self._config(host)
        try:
            bir = config.read(msix + MSIX_TABLE, 4) & MSIX_TABLE_BIR
        except ConfigAccessError:
            raise InterruptError(-errno.EIO, f"reading {host}'s MSI-X table register failed") from None
        finally:
            config.close()
        try:
            with open(self._device_file(host, "resource")) as f:
                lines = f.read().splitlines()
        except OSError as exc:
            raise _error(f"reading {host}'s resources", exc) from None
        try:
            start = int(lines[bir].split()[0], 16)
        except (IndexError, ValueError):
            start = 0
        if not start:
            raise InterruptError(-errno.EINVAL, f"{host}'s MSI-X table BAR {bir} is not assigned")
        return start

    @staticmethod
    def _segment_zero(host: Bdf) -> None:
        if host.domain != 0:
            raise InterruptError(-errno.EOPNOTSUPP,
                                 f"{host}: MSI mapping supports PCI segment 0 only")

    # -- MSI ------------------------------------------------------------------------------------
    def enable_msi(self, domid: int, host: Bdf) -> int:
        self._segment_zero(host)
        key = (domid, host)
        if key in self._msi or key in self._msix:
            raise InterruptError(-errno.EBUSY, f"{host}: MSI or MSI-X already mapped for domain {domid}")
        msi = self._capability(host, CapId.MSI)
        try:
            pirq = self._hv.map_pirq_msi(domid, host.bus, host.devfn, 0, 0)
        except OSError as exc:
            raise _error(f"mapping MSI of {host} for domain {domid}", exc) from None
        try:
            self._update(host, ((Reg.COMMAND, Command.INTX_DISABLE, 0),
                                (msi + MSI_FLAGS, MSI_FLAGS_ENABLE, 0)))
        except InterruptError:
            self._unmap_quietly(domid, [pirq])
            raise
        self._msi[key] = pirq
        return pirq

    def disable_msi(self, domid: int, host: Bdf) -> None:
        pirq = self._msi.pop((domid, host), None)
        if pirq is None:
            return
        self._unmap_quietly(domid, [pirq])
        msi = self._capability(host, CapId.MSI)
        self._update(host, ((msi + MSI_FLAGS, 0, MSI_FLAGS_ENABLE),
                            (Reg.COMMAND, 0, Command.INTX_DISABLE)))

    # -- MSI-X ----------------------------------------------------------------------------------
    def enable_msix(self, domid: int, host: Bdf, entries: Sequence[int]) -> Sequence[int]:
        self._segment_zero(host)
        key = (domid, host)
        if key in self._msi or key in self._msix:
            raise InterruptError(-errno.EBUSY, f"{host}: MSI or MSI-X already mapped for domain {domid}")
        msix = self._capability(host, CapId.MSIX)
        table_base = self._table_base(host, msix)
        if host not in self._prepared:
            try:
                self._hv.physdev_pci_op(abi.PHYSDEVOP_PREPARE_MSIX, host.domain, host.bus, host.devfn)
            except OSError as exc:
                # EBUSY: already prepared (e.g. by this backend before a restart); ENOSYS: a Xen
                # without the op. Linux's pciback carries on after both; so do we.
                if exc.errno not in (errno.EBUSY, errno.EEXIST, errno.ENOSYS):
                    raise _error(f"preparing MSI-X of {host}", exc) from None
            self._prepared.add(host)
        pirqs: list[int] = []
        for entry in entries:
            try:
                pirqs.append(self._hv.map_pirq_msi(domid, host.bus, host.devfn, entry, table_base))
            except OSError as exc:
                self._unmap_quietly(domid, pirqs)
                raise _error(f"mapping MSI-X entry {entry} of {host} for domain {domid}", exc) from None
        try:
            self._update(host, ((Reg.COMMAND, Command.INTX_DISABLE, 0),
                                (msix + MSIX_FLAGS, MSIX_FLAGS_ENABLE, MSIX_FLAGS_MASKALL)))
        except InterruptError:
            self._unmap_quietly(domid, pirqs)
            raise
        self._msix[key] = pirqs
        return pirqs

    def disable_msix(self, domid: int, host: Bdf) -> None:
        pirqs = self._msix.pop((domid, host), None)
        if pirqs is None:
            return
        self._unmap_quietly(domid, pirqs)
        msix = self._capability(host, CapId.MSIX)
        self._update(host, ((msix + MSIX_FLAGS, 0, MSIX_FLAGS_ENABLE),
                            (Reg.COMMAND, 0, Command.INTX_DISABLE)))

    # -- after a restart ----------------------------------------------------------------------
    def adopt(self, domid: int, host: Bdf, kind: str, entries: Sequence[int],
              pirqs: Sequence[int]) -> None:
        """A mapping an earlier ``serve`` made (its record in the run dir, checked against the
        enable bits): remembered so ``disable_*`` unmaps exactly these PIRQs and a second
        enable is refused (-EBUSY) instead of mapping the device twice. MSI-X was prepared
        then, so it is not prepared again."""
        key = (domid, host)
        if key in self._msi or key in self._msix:
            raise InterruptError(-errno.EBUSY, f"{host}: MSI or MSI-X already mapped for domain {domid}")
        if kind == "msi" and len(pirqs) == 1:
            self._msi[key] = int(pirqs[0])
        elif kind == "msix" and pirqs and len(pirqs) == len(entries):
            self._msix[key] = [int(p) for p in pirqs]
            self._prepared.add(host)
        else:
            raise InterruptError(-errno.EINVAL, f"{host}: cannot adopt {kind} with {len(pirqs)} "
                                 f"PIRQ(s) for {len(entries)} entr(ies)")

    # -- INTx and release -------------------------------------------------------------------------
    def legacy_pirq(self, domid: int, host: Bdf) -> int:
        """The device's INTx as the guest knows it: libxl maps the GSI into a PV guest under the
        same number (``xc_physdev_map_pirq(domid, irq, &irq)``), so it is sysfs ``irq`` - a plain
        decimal line number in libxl's range (1-254, as ``attach`` grants it), else 0 (none)."""
        try:
            with open(self._device_file(host, "irq"), "rb") as f:
                text = f.read(64).decode("ascii").strip()
        except (OSError, UnicodeDecodeError):
            return 0
        irq = decimal(text, max_digits=3)
        return irq if irq is not None and 0 < irq < IRQ_LINE_LIMIT else 0

    def release(self, host: Bdf) -> None:
        """The device leaves this backend: unmap what is still mapped, undo prepare_msix."""
        for table in (self._msi, self._msix):
            for key in [k for k in table if k[1] == host]:
                value = table.pop(key)
                self._unmap_quietly(key[0], value if isinstance(value, list) else [value])
        if host in self._prepared:
            self._prepared.discard(host)
            try:
                self._hv.physdev_pci_op(abi.PHYSDEVOP_RELEASE_MSIX, host.domain, host.bus, host.devfn)
            except OSError:
                pass  # nothing more to undo; deassignment resets Xen's view anyway

    def mapped(self) -> dict[str, object]:
        """What is mapped now (for status and tests): ``{"domid/bdf": [pirqs]}``."""
        out: dict[str, object] = {f"{d}/{b}": [p] for (d, b), p in self._msi.items()}
        out.update({f"{d}/{b}": list(p) for (d, b), p in self._msix.items()})
        return out

    def _unmap_quietly(self, domid: int, pirqs: Sequence[int]) -> None:
        for pirq in pirqs:
            try:
                self._hv.unmap_pirq(domid, pirq)
            except OSError:
                pass  # EINVAL: already unmapped; nothing else to try

"""DomainGrants on real Xen: libxenctrl's calls for a PV guest's device, through ctypes.

The port (:class:`xenpciback_cli.engine.grants.DomainGrants`) is one method per hypercall; this
adapter passes each straight to the libxenctrl function libxl calls for the same step
(``tools/libs/light/libxl_pci.c``):

==========================  =================================================================
port method                 libxenctrl call
==========================  =================================================================
iomem_permission            ``xc_domain_iomem_permission(xch, domid, first_mfn, nr_mfns, allow)``
ioport_permission           ``xc_domain_ioport_permission(xch, domid, first_port, nr_ports, allow)``
map_pirq                    ``xc_physdev_map_pirq(xch, domid, irq, &pirq)`` with ``pirq = irq``
                            on entry (libxl's request: the GSI under its own number)
unmap_pirq                  ``xc_physdev_unmap_pirq(xch, domid, pirq)``
irq_permission              ``xc_domain_irq_permission(xch, domid, pirq, allow)``
assign_device               ``xc_assign_device(xch, domid, sbdf, flag)``; flag
                            ``XEN_DOMCTL_DEV_RDM_RELAXED`` unless rdm_policy is strict
deassign_device             ``xc_deassign_device(xch, domid, sbdf)``: from a guest, the device
                            goes to Xen's quarantine (DomIO); from ``DOMID_IO``, back to dom0
==========================  =================================================================

Every call returns < 0 and sets errno on failure; that becomes ``OSError(errno)`` here, and the
engine words it. The prototypes are data in ``xen_abi.XENCTRL_FUNCTIONS`` (checked against
``xenctrl.h`` by ``tests/transport/test_xen_abi.py``); the libraries are the ones
``xen_interrupts.load_libraries`` opens, and nothing is opened before the first call.
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Callable

from xenpciback_cli.pci.address import Bdf
from xenpciback_cli.transport import xen_abi as abi
from xenpciback_cli.transport.xen_interrupts import XenLibraries, load_libraries

__all__ = ["XenDomainGrants"]


class XenDomainGrants:
    """:class:`~xenpciback_cli.engine.grants.DomainGrants` through libxenctrl."""

    kind = "xen"

    def __init__(self, loader: Callable[[], XenLibraries] = load_libraries) -> None:
        self._loader = loader
        self._libs: XenLibraries | None = None
        self._xch: int | None = None

    def _open(self) -> tuple[ctypes.CDLL, int]:
        if self._libs is None:
            self._libs = self._loader()
        if self._xch is None:
            self._xch = self._libs.xenctrl.xc_interface_open(None, None, 0)
            if not self._xch:
                err = ctypes.get_errno() or errno.EACCES
                raise OSError(err, f"xc_interface_open: {os.strerror(err)}")
        return self._libs.xenctrl, self._xch

    @staticmethod
    def _check(rc: int, name: str) -> None:
        if rc < 0:
            err = ctypes.get_errno() or errno.EIO
            raise OSError(err, f"{name}: {os.strerror(err)}")

    def iomem_permission(self, domid: int, first_frame: int, frames: int, allow: bool) -> None:
        lib, xch = self._open()
        self._check(lib.xc_domain_iomem_permission(xch, domid, first_frame, frames, int(allow)),
                    "xc_domain_iomem_permission")

    def ioport_permission(self, domid: int, first_port: int, ports: int, allow: bool) -> None:
        lib, xch = self._open()
        self._check(lib.xc_domain_ioport_permission(xch, domid, first_port, ports, int(allow)),
                    "xc_domain_ioport_permission")

    def map_pirq(self, domid: int, irq: int) -> int:
        lib, xch = self._open()
        pirq = ctypes.c_int(irq)
        self._check(lib.xc_physdev_map_pirq(xch, domid, irq, ctypes.byref(pirq)), "xc_physdev_map_pirq")
        return pirq.value

    def unmap_pirq(self, domid: int, pirq: int) -> None:
        lib, xch = self._open()
        self._check(lib.xc_physdev_unmap_pirq(xch, domid, pirq), "xc_physdev_unmap_pirq")

    def irq_permission(self, domid: int, pirq: int, allow: bool) -> None:
        lib, xch = self._open()
        self._check(lib.xc_domain_irq_permission(xch, domid, pirq, bool(allow)), "xc_domain_irq_permission")

    def assign_device(self, domid: int, bdf: Bdf, *, relaxed: bool) -> None:
        lib, xch = self._open()
        flag = abi.XEN_DOMCTL_DEV_RDM_RELAXED if relaxed else 0
        self._check(lib.xc_assign_device(xch, domid, abi.machine_sbdf(bdf.domain, bdf.bus, bdf.devfn), flag),
                    "xc_assign_device")

    def deassign_device(self, domid: int, bdf: Bdf) -> None:
        lib, xch = self._open()
        self._check(lib.xc_deassign_device(xch, domid, abi.machine_sbdf(bdf.domain, bdf.bus, bdf.devfn)),
                    "xc_deassign_device")

    def close(self) -> None:
        if self._libs is not None and self._xch:
            self._libs.xenctrl.xc_interface_close(self._xch)
        self._xch = None

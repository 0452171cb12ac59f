"""The real-Xen DomainGrants adapter against fake libraries whose functions are real C function
pointers built from our prototype table (``xen_abi.XENCTRL_FUNCTIONS``): ctypes converts every
argument to the declared C type on the way in, so the order, count and packing of each call are
what a C caller would pass. (``test_xen_abi.py`` checks the table itself against xenctrl.h.)"""

from __future__ import annotations

import ctypes
import errno
import os
from types import SimpleNamespace

import pytest

from xenpciback_cli.engine.grants import DOMID_IO, grant_device, plan_grants, revoke_device
from xenpciback_cli.pci.address import Bdf
from xenpciback_cli.pci.device import PciDevice, Resource
from xenpciback_cli.transport import xen_abi as abi
from xenpciback_cli.transport.xen_grants import XenDomainGrants
from xenpciback_cli.transport.xen_interrupts import ctypes_prototype, load_libraries

DEV = Bdf.parse("0000:0a:1f.5")  # devfn 0xfd: 31 << 3 | 5
XCH = 0x4000


def _fake_libraries(log: list[tuple], fail: dict[str, int] | None = None, pirq: int = 40):
    fail = fail or {}
    keep: list[object] = []

    def c_function(name, body):
        ret, params = abi.XENCTRL_FUNCTIONS[name]
        restype, argtypes = ctypes_prototype(ret, params)
        pointer = ctypes.CFUNCTYPE(restype, *argtypes, use_errno=True)(body)
        keep.append(pointer)
        return pointer

    def recorder(name):
        def body(*args):
            values = [a.contents.value if isinstance(a, ctypes._Pointer) else a for a in args]
            log.append((name, *values))
            if name == "xc_physdev_map_pirq":
                args[3].contents.value = pirq
            if name in fail:
                ctypes.set_errno(fail[name])
                return -1
            return 0
        return body

    names = ("xc_domain_iomem_permission", "xc_domain_ioport_permission", "xc_physdev_map_pirq",
             "xc_physdev_unmap_pirq", "xc_domain_irq_permission", "xc_assign_device", "xc_deassign_device")
    xenctrl = SimpleNamespace(**{n: c_function(n, recorder(n)) for n in names})
    xenctrl.xc_interface_open = c_function("xc_interface_open", lambda a, b, c: XCH)
    xenctrl.xc_interface_close = c_function("xc_interface_close", lambda h: log.append(("close", h)) or 0)
    xenctrl.keep = keep
    return SimpleNamespace(xenctrl=xenctrl, xencall=None)


def test_each_call_passes_libxls_arguments_in_prototype_order():
    log: list[tuple] = []
    xen = XenDomainGrants(loader=lambda: _fake_libraries(log))  # type: ignore[arg-type, return-value]
    xen.iomem_permission(5, 0xFEBC0, 32, True)
    xen.ioport_permission(5, 0xC000, 32, False)
    assert xen.map_pirq(5, 19) == 40
    xen.irq_permission(5, 40, True)
    xen.unmap_pirq(5, 40)
    xen.assign_device(5, DEV, relaxed=True)
    xen.assign_device(5, DEV, relaxed=False)
    xen.deassign_device(DOMID_IO, DEV)
    sbdf = 0x0A << 8 | 0xFD
    assert log == [
        ("xc_domain_iomem_permission", XCH, 5, 0xFEBC0, 32, 1),
        ("xc_domain_ioport_permission", XCH, 5, 0xC000, 32, 0),
        ("xc_physdev_map_pirq", XCH, 5, 19, 19),  # *pirq = irq on entry: the GSI under its number
        ("xc_domain_irq_permission", XCH, 5, 40, True),
        ("xc_physdev_unmap_pirq", XCH, 5, 40),
        ("xc_assign_device", XCH, 5, sbdf, abi.XEN_DOMCTL_DEV_RDM_RELAXED),
        ("xc_assign_device", XCH, 5, sbdf, 0),
        ("xc_deassign_device", XCH, DOMID_IO, sbdf),
    ]
    xen.close()
    assert log[-1] == ("close", XCH)


def test_a_large_frame_number_survives_the_packing():
    """unsigned long frame numbers: a BAR above 4 GiB (frame above 2^20) and above 16 TiB."""
    log: list[tuple] = []
    xen = XenDomainGrants(loader=lambda: _fake_libraries(log))  # type: ignore[arg-type, return-value]
    xen.iomem_permission(5, 0x3FFF_FFF0_0000 >> 12, 1 << 20, True)
    assert log[0][3:5] == (0x3FFF_FFF0_0000 >> 12, 1 << 20)


def test_a_failing_call_is_oserror_with_its_errno():
    log: list[tuple] = []
    xen = XenDomainGrants(loader=lambda: _fake_libraries(log, {"xc_assign_device": errno.EOPNOTSUPP}))  # type: ignore[arg-type, return-value]
    with pytest.raises(OSError) as exc:
        xen.assign_device(5, DEV, relaxed=False)
    assert exc.value.errno == errno.EOPNOTSUPP and "xc_assign_device" in str(exc.value)


def test_the_engine_through_the_adapter_grants_and_revokes_in_order(tmp_path):
    device = PciDevice(DEV, 0x8086, 0x10D3, 0x020000, 0, irq=19, resources=(
        Resource(0, 0xFEBC0000, 0xFEBDFFFF, 0x40200), Resource(2, 0xC000, 0xC01F, 0x40101)))
    log: list[tuple] = []
    xen = XenDomainGrants(loader=lambda: _fake_libraries(log))  # type: ignore[arg-type, return-value]
    grant_device(xen, tmp_path, 5, device, relaxed=False)
    revoke_device(xen, tmp_path, DEV, 5)
    assert [entry[0] for entry in log] == [
        "xc_domain_iomem_permission", "xc_domain_ioport_permission", "xc_physdev_map_pirq",
        "xc_domain_irq_permission", "xc_assign_device",
        "xc_deassign_device", "xc_physdev_unmap_pirq", "xc_domain_irq_permission",
        "xc_domain_ioport_permission", "xc_domain_iomem_permission", "xc_deassign_device"]
    assert log[6][3] == 40 and log[7][3:] == (40, False)  # the PIRQ Xen returned, not the GSI
    assert log[-1][2] == DOMID_IO
    assert [g.kind for g in plan_grants(device, relaxed=False)] == ["iomem", "ioport", "intx", "assign"]


def test_without_xen_the_real_library_fails_cleanly():
    if os.path.exists("/dev/xen/privcmd"):
        pytest.skip("this host runs on Xen: not calling the hypervisor from a unit test")
    try:
        load_libraries()
    except OSError as exc:
        pytest.skip(f"libxenctrl/libxencall not installed ({exc})")
    with pytest.raises(OSError) as exc:
        XenDomainGrants().iomem_permission(5, 1, 1, True)
    assert exc.value.errno is not None and "xc_interface_open" in str(exc.value)

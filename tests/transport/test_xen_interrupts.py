"""The real-Xen InterruptControl: the proven sequence (spec/xen-in-qemu.md) against a fake
hypervisor and a temporary sysfs tree, and the ctypes calls' argument packing against fake
libraries (and, where installed, the real ones failing cleanly without Xen)."""

from __future__ import annotations

import xenpciback_cli.transport.xen_interrupts as xen_interrupts_module

import ctypes
import errno
import os
import struct
from types import SimpleNamespace

import pytest

from xenpciback_cli.backend.ports import InterruptError
from xenpciback_cli.pci.address import Bdf
from xenpciback_cli.transport import xen_abi as abi
from xenpciback_cli.transport.xen_interrupts import LibxcHypervisor, XenInterrupts, load_libraries

DEV = Bdf(0, 0, 3, 0)
MSI_CAP, MSIX_CAP = 0x50, 0x70
TABLE_BAR_START = 0xFEBF0000


def _config() -> bytearray:
    c = bytearray(256)
    struct.pack_into("<HH", c, 0, 0x8086, 0x10D3)
    struct.pack_into("<H", c, 0x04, 0x0006)  # memory decode and bus master on
    struct.pack_into("<H", c, 0x06, 0x0010)  # capability list
    c[0x34] = MSI_CAP
    c[MSI_CAP:MSI_CAP + 4] = bytes([0x05, MSIX_CAP, 0x80, 0x00])  # MSI, 64-bit
    c[MSIX_CAP:MSIX_CAP + 2] = bytes([0x11, 0x00])
    struct.pack_into("<H", c, MSIX_CAP + 2, 0x4000 | 4)  # MSI-X: function masked, 5 entries
    struct.pack_into("<I", c, MSIX_CAP + 4, 0x2000 | 2)  # table in BAR 2 at 0x2000
    return c


class FakeHypervisor:
    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.next_pirq = 55
        self.fail_map_at: int | None = None  # the n-th map (0-based) fails
        self.map_errno = errno.ENOSPC
        self.prepare_errno: int | None = None
        self.on_map = None

    def map_pirq_msi(self, domid, bus, devfn, entry_nr, table_base):
        maps = sum(1 for c in self.calls if c[0] == "map")
        self.calls.append(("map", domid, bus, devfn, entry_nr, table_base))
        if self.fail_map_at == maps:
            raise OSError(self.map_errno, os.strerror(self.map_errno))
        if self.on_map:
            self.on_map()
        self.next_pirq -= 1
        return self.next_pirq + 1

    def unmap_pirq(self, domid, pirq):
        self.calls.append(("unmap", domid, pirq))

    def physdev_pci_op(self, op, seg, bus, devfn):
        self.calls.append(("physdev", op, seg, bus, devfn))
        if op == abi.PHYSDEVOP_PREPARE_MSIX and self.prepare_errno:
            raise OSError(self.prepare_errno, os.strerror(self.prepare_errno))


@pytest.fixture
def sysfs(tmp_path):
    dev = tmp_path / "bus" / "pci" / "devices" / str(DEV)
    dev.mkdir(parents=True)
    (dev / "config").write_bytes(bytes(_config()))
    lines = [f"0x{0:016x} 0x{0:016x} 0x{0:016x}"] * 13
    lines[2] = f"0x{TABLE_BAR_START:016x} 0x{TABLE_BAR_START + 0x3FFF:016x} 0x{0x40200:016x}"
    (dev / "resource").write_text("\n".join(lines) + "\n")
    (dev / "irq").write_text("11\n")
    return tmp_path


def _word(sysfs, offset) -> int:
    data = (sysfs / "bus" / "pci" / "devices" / str(DEV) / "config").read_bytes()
    return int.from_bytes(data[offset:offset + 2], "little")


@pytest.fixture
def hv():
    return FakeHypervisor()


@pytest.fixture
def irqs(sysfs, hv):
    return XenInterrupts(str(sysfs), hypervisor=hv)


def test_msi_maps_for_the_guest_then_sets_the_enable_bits(sysfs, hv, irqs):
    assert irqs.enable_msi(7, DEV) == 55
    assert hv.calls == [("map", 7, 0, DEV.devfn, 0, 0)]  # entry 0, no table: as Linux's dom0 code
    assert _word(sysfs, MSI_CAP + 2) & 0x0001  # MSI enable
    assert _word(sysfs, 0x04) == 0x0006 | 0x0400  # INTx disable added, bus master left alone
    assert irqs.mapped() == {f"7/{DEV}": [55]}

    with pytest.raises(InterruptError) as err:  # Xen would hand out a second PIRQ: we refuse
        irqs.enable_msi(7, DEV)
    assert err.value.errno == -errno.EBUSY
    assert len(hv.calls) == 1

    irqs.disable_msi(7, DEV)
    assert hv.calls[-1] == ("unmap", 7, 55)
    assert not _word(sysfs, MSI_CAP + 2) & 0x0001
    assert _word(sysfs, 0x04) == 0x0006
    irqs.disable_msi(7, DEV)  # not enabled: nothing happens
    assert len(hv.calls) == 2


def test_a_failed_map_leaves_the_device_alone_and_passes_the_errno(sysfs, hv, irqs):
    hv.fail_map_at, hv.map_errno = 0, errno.ENODEV  # e.g. the device was never assigned
    before = (sysfs / "bus" / "pci" / "devices" / str(DEV) / "config").read_bytes()
    with pytest.raises(InterruptError, match="ENODEV") as err:
        irqs.enable_msi(7, DEV)
    assert err.value.errno == -errno.ENODEV
    assert (sysfs / "bus" / "pci" / "devices" / str(DEV) / "config").read_bytes() == before
    assert irqs.mapped() == {}


def test_msix_prepares_once_maps_each_entry_with_the_table_bar_and_enables(sysfs, hv, irqs):
    assert list(irqs.enable_msix(7, DEV, [0, 2])) == [55, 54]
    assert hv.calls == [
        ("physdev", abi.PHYSDEVOP_PREPARE_MSIX, 0, 0, DEV.devfn),  # before the first map
        ("map", 7, 0, DEV.devfn, 0, TABLE_BAR_START),
        ("map", 7, 0, DEV.devfn, 2, TABLE_BAR_START),
    ]
    control = _word(sysfs, MSIX_CAP + 2)
    assert control & 0x8000 and not control & 0x4000  # enabled, function mask cleared
    assert _word(sysfs, 0x04) & 0x0400

    irqs.disable_msix(7, DEV)
    assert hv.calls[-2:] == [("unmap", 7, 55), ("unmap", 7, 54)]
    assert not _word(sysfs, MSIX_CAP + 2) & 0x8000  # Xen leaves it set: we clear it
    assert not _word(sysfs, 0x04) & 0x0400

    irqs.enable_msix(7, DEV, [1])
    assert [c for c in hv.calls if c[0] == "physdev"] == [hv.calls[0]]  # prepared only once


def test_msix_partial_failure_unmaps_what_was_mapped(sysfs, hv, irqs):
    hv.fail_map_at = 1
    with pytest.raises(InterruptError) as err:
        irqs.enable_msix(7, DEV, [0, 1, 2])
    assert err.value.errno == -errno.ENOSPC
    assert hv.calls[-1] == ("unmap", 7, 55)
    assert not _word(sysfs, MSIX_CAP + 2) & 0x8000
    assert irqs.mapped() == {}


def test_a_config_write_failure_after_the_map_undoes_the_map(sysfs, hv, irqs):
    config = sysfs / "bus" / "pci" / "devices" / str(DEV) / "config"
    hv.on_map = config.unlink  # the device vanishes between the map and the enable
    with pytest.raises(InterruptError):
        irqs.enable_msi(7, DEV)
    assert hv.calls[-1] == ("unmap", 7, 55)
    assert irqs.mapped() == {}


def test_prepare_msix_already_done_is_tolerated_other_errors_are_not(sysfs, hv, irqs):
    hv.prepare_errno = errno.EBUSY
    assert list(irqs.enable_msix(7, DEV, [0])) == [55]
    other = XenInterrupts(str(sysfs), hypervisor=FakeHypervisor())
    other._hv.prepare_errno = errno.EPERM  # type: ignore[attr-defined]
    with pytest.raises(InterruptError) as err:
        other.enable_msix(8, DEV, [0])
    assert err.value.errno == -errno.EPERM


def test_unassigned_table_bar_no_capability_and_other_segments_are_refused(sysfs, hv, irqs):
    res = sysfs / "bus" / "pci" / "devices" / str(DEV) / "resource"
    res.write_text("0x0 0x0 0x0\n" * 13)
    with pytest.raises(InterruptError, match="BAR 2 is not assigned") as err:
        irqs.enable_msix(7, DEV, [0])
    assert err.value.errno == -errno.EINVAL
    with pytest.raises(InterruptError) as err:
        irqs.enable_msi(7, Bdf(1, 0, 3, 0))
    assert err.value.errno == -errno.EOPNOTSUPP
    config = sysfs / "bus" / "pci" / "devices" / str(DEV) / "config"
    data = bytearray(config.read_bytes())
    data[0x34] = 0
    config.write_bytes(bytes(data))
    with pytest.raises(InterruptError, match="no MSI capability"):
        irqs.enable_msi(7, DEV)
    assert [c for c in hv.calls if c[0] == "map"] == []


def test_legacy_pirq_is_the_sysfs_irq(sysfs, irqs):
    assert irqs.legacy_pirq(7, DEV) == 11
    (sysfs / "bus" / "pci" / "devices" / str(DEV) / "irq").unlink()
    assert irqs.legacy_pirq(7, DEV) == 0


@pytest.mark.parametrize("text", ["1_1\n", "\u0661\u0661\n", "+11\n", "-11\n", "0x0b\n", "11 12\n",
                                  "9" * 5000, "\xff\xfe", "255\n", "4096\n", ""])
def test_legacy_pirq_takes_only_a_plain_line_number(sysfs, irqs, text):
    """sysfs text is not trusted blindly: int() would read '1_1' and Arabic-Indic digits as 11.
    Only a plain decimal INTx line (1-254, libxl's range) is an IRQ; anything else is none."""
    (sysfs / "bus" / "pci" / "devices" / str(DEV) / "irq").write_bytes(text.encode("utf-8", "surrogateescape")
                                                                      if text != "\xff\xfe" else b"\xff\xfe")
    assert irqs.legacy_pirq(7, DEV) == 0


def test_release_unmaps_and_undoes_prepare(hv, irqs):
    irqs.enable_msix(7, DEV, [0, 1])
    irqs.release(DEV)
    assert hv.calls[-3:] == [("unmap", 7, 55), ("unmap", 7, 54),
                             ("physdev", abi.PHYSDEVOP_RELEASE_MSIX, 0, 0, DEV.devfn)]
    assert irqs.mapped() == {}


# -- the ctypes layer -------------------------------------------------------------------------------
def _fake_libraries(log):
    buffers: list[ctypes.Array] = []

    def map_pirq_msi(xch, domid, index, pirq_ref, devfn, bus, entry_nr, table_base):
        log.append(("map", xch, domid, index, pirq_ref._obj.value, devfn, bus, entry_nr, table_base))
        pirq_ref._obj.value = 53
        return 0

    def alloc(xcall, size):
        buf = ctypes.create_string_buffer(size)
        buffers.append(buf)
        return ctypes.addressof(buf)

    def xencall2(xcall, op, arg1, arg2):
        log.append(("xencall2", xcall, op, arg1, ctypes.string_at(arg2, 4)))
        return 0

    xenctrl = SimpleNamespace(
        xc_interface_open=lambda a, b, c: 0x1000,
        xc_interface_close=lambda h: log.append(("xc_close", h)) or 0,
        xc_physdev_map_pirq_msi=map_pirq_msi,
        xc_physdev_unmap_pirq=lambda h, d, p: log.append(("unmap", h, d, p)) or -1,
    )
    xencall = SimpleNamespace(
        xencall_open=lambda a, b: 0x2000,
        xencall_close=lambda h: 0,
        xencall2=xencall2,
        xencall_alloc_buffer=alloc,
        xencall_free_buffer=lambda h, p: log.append(("free", p)),
    )
    return SimpleNamespace(xenctrl=xenctrl, xencall=xencall)


def test_libxc_calls_pass_arguments_in_the_prototype_order():
    log: list[tuple] = []
    hv = LibxcHypervisor(loader=lambda: _fake_libraries(log))  # type: ignore[arg-type, return-value]
    assert hv.map_pirq_msi(7, 0x12, 0x18, 3, TABLE_BAR_START) == 53
    assert log[0] == ("map", 0x1000, 7, -1, -1, 0x18, 0x12, 3, TABLE_BAR_START)
    hv.physdev_pci_op(abi.PHYSDEVOP_PREPARE_MSIX, 0, 0x12, 0x18)
    kind, handle, op, arg1, arg = log[1]
    assert (kind, handle, op, arg1) == ("xencall2", 0x2000, 33, 30)
    assert arg == struct.pack("=HBB", 0, 0x12, 0x18)  # struct physdev_pci_device in the buffer
    assert log[2][0] == "free"
    with pytest.raises(OSError):
        hv.unmap_pirq(7, 53)  # the fake returns -1
    hv.close()


def test_without_xen_the_real_libraries_fail_cleanly(sysfs):
    if os.path.exists("/dev/xen/privcmd"):
        pytest.skip("this host runs on Xen: not calling the hypervisor from a unit test")
    try:
        load_libraries()
    except OSError as exc:
        pytest.skip(f"libxenctrl/libxencall not installed ({exc})")
    irqs = XenInterrupts(str(sysfs))  # the real LibxcHypervisor: xc_interface_open fails here
    with pytest.raises(InterruptError, match="ENOENT") as err:
        irqs.enable_msi(1, DEV)
    assert err.value.errno == -errno.ENOENT
    assert irqs.mapped() == {}


# -- the backend core driving this adapter ------------------------------------------------------------
def test_a_guest_enables_and_disables_msix_through_the_session(sysfs, hv, irqs):
    """The core (GuestSession, the overlay) and this adapter together, over the sysfs tree:
    the PIRQs Xen returns reach the page as vectors, the host's MSI-X is on, then off."""
    from xenpciback_cli.backend.session import GuestSession
    from xenpciback_cli.host.configfile import FileConfigAccessor
    from xenpciback_cli.pv.codec import encode_op

    config = FileConfigAccessor(str(sysfs / "bus" / "pci" / "devices" / str(DEV) / "config"),
                                writable=True)
    session = GuestSession(7, irqs)
    session.export(DEV, config)

    def op(cmd, value=0, entries=()):
        page = bytearray(4096)
        page[4:552] = encode_op(cmd, 0, 0, 0, 0, 4, value, msix_entries=entries)
        return session.process(page)

    assert op(4, 2, ((0, 0), (0, 3))) == (0, 0, (55, 54))
    assert _word(sysfs, MSIX_CAP + 2) & 0x8000
    assert op(4, 1, ((0, 1),))[0] == -114  # already on: the core refuses before the adapter
    assert op(5) == (0, 11)                # disabled; the legacy PIRQ is sysfs irq
    assert not _word(sysfs, MSIX_CAP + 2) & 0x8000
    hv.fail_map_at, hv.map_errno = 2, errno.ENOSPC  # the third map call
    assert op(4, 1, ((0, 1),))[:2] == (-errno.ENOSPC, -errno.ENOSPC & 0xFFFFFFFF)
    assert op(2)[0] == 0                   # MSI after a failed MSI-X: PIRQ from Xen
    assert irqs.mapped() == {f"7/{DEV}": [53]}
    config.close()


def test_adopted_msix_is_unmapped_exactly_once_and_not_mapped_twice(sysfs, hv, irqs):
    """A restarted serve hands over what the previous process mapped (PIRQs 91, 90, 89)."""
    path = sysfs / "bus" / "pci" / "devices" / str(DEV) / "config"
    config = bytearray(path.read_bytes())
    struct.pack_into("<H", config, MSIX_CAP + 2, 0x8000 | 4)    # MSI-X left enabled
    path.write_bytes(bytes(config))
    irqs.adopt(7, DEV, "msix", [0, 1, 2], [91, 90, 89])
    assert hv.calls == [] and irqs.mapped() == {f"7/{DEV}": [91, 90, 89]}
    with pytest.raises(InterruptError) as err:                   # a second mapping: refused
        irqs.enable_msix(7, DEV, [0])
    assert err.value.errno == -errno.EBUSY and hv.calls == []
    irqs.disable_msix(7, DEV)
    assert hv.calls == [("unmap", 7, 91), ("unmap", 7, 90), ("unmap", 7, 89)]
    assert not _word(sysfs, MSIX_CAP + 2) & 0x8000
    irqs.disable_msix(7, DEV)                                    # nothing left to unmap
    assert len(hv.calls) == 3
    irqs.enable_msix(7, DEV, [0, 1])                             # prepared before: not again
    assert [c[0] for c in hv.calls[3:]] == ["map", "map"]


def test_adopted_msi_and_bad_adoptions(hv, irqs):
    irqs.adopt(7, DEV, "msi", [], [42])
    with pytest.raises(InterruptError):
        irqs.adopt(7, DEV, "msi", [], [43])                      # already known
    irqs.disable_msi(7, DEV)
    assert hv.calls == [("unmap", 7, 42)]
    for kind, entries, pirqs in (("msi", [], [1, 2]), ("msix", [0, 1], [5]), ("intx", [], [1])):
        with pytest.raises(InterruptError) as err:
            irqs.adopt(8, DEV, kind, entries, pirqs)
        assert err.value.errno == -errno.EINVAL
    assert irqs.mapped() == {}


# -- found on real Xen (tests/realxen) ----------------------------------------------------------------
def test_warm_up_opens_the_libraries_once_before_the_first_enable(sysfs, tmp_path, monkeypatch):
    """A real pcifront gives up on an op after 2 s ("pciback not responding"); loading the
    libraries at the first MSI-X enable took longer than that in an emulated dom0, so the
    guest's e1000e fell back to INTx. warm_up() loads them when serve starts."""
    (tmp_path / "privcmd").touch()  # as under Xen
    monkeypatch.setattr(xen_interrupts_module, "PRIVCMD_DEVICES", (str(tmp_path / "privcmd"),))
    log: list[tuple] = []
    loads: list[int] = []

    def loader():
        loads.append(1)
        return _fake_libraries(log)

    irqs = XenInterrupts(str(sysfs), hypervisor=LibxcHypervisor(loader=loader))  # type: ignore[arg-type]
    irqs.warm_up()
    assert loads == [1] and log == []  # loaded and opened, no hypercall yet
    assert irqs.enable_msi(4, DEV) == 53
    assert loads == [1]  # not loaded again at the enable


def test_warm_up_without_xen_is_silent_and_the_enable_still_reports_it(sysfs):
    def loader():
        raise OSError(errno.ENOENT, "cannot load libxenctrl")

    irqs = XenInterrupts(str(sysfs), hypervisor=LibxcHypervisor(loader=loader))
    irqs.warm_up()  # no exception: a host without Xen still starts serve
    with pytest.raises(InterruptError, match="ENOENT"):
        irqs.enable_msi(4, DEV)


def test_warm_up_without_privcmd_loads_nothing(sysfs, tmp_path, monkeypatch):
    """Not under Xen: libxencall would print its own error line on serve's stderr at start
    (seen with 'serve foreground --record-max-size banana' before its one-line refusal)."""
    loads: list[int] = []

    def loader():
        loads.append(1)
        raise OSError(errno.ENOENT, "cannot load libxenctrl")

    monkeypatch.setattr(xen_interrupts_module, "PRIVCMD_DEVICES", (str(tmp_path / "none"),))
    XenInterrupts(str(sysfs), hypervisor=LibxcHypervisor(loader=loader)).warm_up()
    assert loads == []


def test_warm_up_tolerates_a_hypervisor_without_open(sysfs, hv):
    XenInterrupts(str(sysfs), hypervisor=hv).warm_up()
    assert hv.calls == []

"""Overlay edges (issue 9, item 9): BARs without a usable kernel resource, capabilities that run
past standard config space, and the config size coming from the capabilities rather than from how
many bytes happened to be readable."""

from __future__ import annotations

import pytest
from config.test_config_overlay import MEM32, MEM64PF, RESOURCES, ROM, make_config

from xenpciback_cli.config import capabilities
from xenpciback_cli.config.fields import ConfigAccessError, MemoryAccessor
from xenpciback_cli.config.overlay import OverlayDevice, Policy
from xenpciback_cli.config.registers import XenPciErr
from xenpciback_cli.pci.device import Resource
from xenpciback_cli.pci.ioresource import DISABLED as IORESOURCE_DISABLED
from xenpciback_cli.pci.ioresource import UNSET as IORESOURCE_UNSET

INVALID = XenPciErr.INVALID_OFFSET
OP_FAILED = XenPciErr.OP_FAILED


def _with(index: int, res: Resource | None) -> tuple[Resource, ...]:
    return tuple(r for r in RESOURCES if r.index != index) + ((res,) if res else ())


# -- item 1: a BAR whose kernel resource is absent, unset or disabled --------------------------

BAR0_UNUSABLE = [
    pytest.param(None, id="absent"),
    pytest.param(Resource(0, 0, 0, 0), id="empty"),
    pytest.param(Resource(0, 0xFEBF0000, 0xFEBFFFFF, MEM32 | IORESOURCE_UNSET), id="unset"),
    pytest.param(Resource(0, 0, 0xFFFF, MEM32 | IORESOURCE_UNSET), id="unset-at-zero"),
    pytest.param(Resource(0, 0xFEBF0000, 0xFEBFFFFF, MEM32 | IORESOURCE_DISABLED), id="disabled"),
]


@pytest.mark.parametrize("res", BAR0_UNUSABLE)
def test_bar_without_usable_resource_reads_zero_and_keeps_hardware(res):
    hw = MemoryAccessor(bytes(make_config()))
    ov = OverlayDevice(hw, resources=_with(0, res), policy=Policy())
    assert ov.read(0x10, 4) == (0, 0)  # Linux: the BAR looks unimplemented
    for value in (0, 0xFFFFFFFF, 0xFEBF0000, 0x12345000, 0):
        assert ov.write(0x10, 4, value) == 0
    assert ov.write(0x10, 2, 0) == 0 and ov.write(0x12, 1, 0) == 0
    assert ov.read(0x10, 4) == (0, 0)
    assert hw.read(0x10, 4) == 0xFEBF0000  # the hardware address is kept
    assert hw.writes == 0


def test_upper_half_of_an_unset_64_bit_bar_keeps_hardware():
    # BAR2/3: 64-bit prefetchable at 0x3_8000_0000 in hardware, the kernel left it unassigned.
    res = Resource(2, 0, 0x0FFFFFFF, MEM64PF | IORESOURCE_UNSET)
    hw = MemoryAccessor(bytes(make_config()))
    ov = OverlayDevice(hw, resources=_with(2, res), policy=Policy())
    for offset in (0x18, 0x1C):
        assert ov.write(offset, 4, 0) == 0
        assert ov.write(offset, 4, ov.read(offset, 4)[1]) == 0
    assert hw.read(0x18, 4) == 0x8000000C and hw.read(0x1C, 4) == 0x3
    assert hw.writes == 0


def test_rom_with_unset_resource_keeps_hardware():
    res = Resource(6, 0xFEA00000, 0xFEA1FFFF, ROM | IORESOURCE_UNSET)
    hw = MemoryAccessor(bytes(make_config()))
    ov = OverlayDevice(hw, resources=_with(6, res), policy=Policy())
    assert ov.read(0x30, 4) == (0, 0)
    assert ov.write(0x30, 4, 0) == 0
    assert hw.read(0x30, 4) == 0xFEA00000 and hw.writes == 0


def test_valid_bar_is_still_restored_after_hardware_lost_it():
    hw = MemoryAccessor(bytes(make_config()))
    ov = OverlayDevice(hw, resources=RESOURCES, policy=Policy())
    hw.data[0x1C:0x20] = b"\0\0\0\0"  # upper half of a valid 64-bit BAR lost (e.g. a reset)
    ov.write(0x1C, 4, 3)
    assert hw.read(0x1C, 4) == 3


# -- item 2: capabilities running past 0x100 ----------------------------------------------------

def _pm_at_0xfc(size: int, pme_enable_at_0x100: bool) -> bytearray:
    c = make_config()
    c[0x90] = 0x09  # vendor-specific instead of Express: conventional device unless size says
    c[0x80:0x82] = bytes([0x03, 0xFC])  # VPD -> PM at 0xFC
    c[0x40:0x42] = bytes([0x09, 0x50])  # the old PM becomes vendor-specific
    c[0xFC:0x100] = bytes([0x01, 0x90, 0x03, 0xFA])  # PMC, then PMCSR at 0x100
    if size == 4096:
        c[0x90] = 0x10  # Express: 0x100 is the AER header
    if pme_enable_at_0x100:
        c[0x100:0x102] = (0x0101 if size == 4096 else 0x0100).to_bytes(2, "little")
    return c[:size]


@pytest.mark.parametrize("size", [256, 4096])
def test_pm_capability_at_0xfc_never_writes_past_0x100(size):
    config = _pm_at_0xfc(size, pme_enable_at_0x100=True)
    hw = MemoryAccessor(bytes(config))
    ov = OverlayDevice(hw, policy=Policy())
    assert ov.config_size == size
    ov.prepare_export()
    assert hw.writes == 0 and bytes(hw.data) == bytes(config)
    assert all(f.end <= 0x100 for f in ov.fields())
    assert "Power Management capability at 0xfc" in " ".join(ov.problems)
    # a guest power-state write at 0x100 is no PMCSR write: dropped (or -2 without ext space)
    err = ov.write(0x100, 2, 0x0003)
    assert err == (INVALID if size == 256 else 0)
    assert bytes(hw.data) == bytes(config)


@pytest.mark.parametrize("flags,length", [(0x0000, 0x0A), (0x0080, 0x0E), (0x0100, 0x14),
                                          (0x0180, 0x18)])
def test_msi_capability_must_fit_below_0x100(flags, length):
    c = make_config()
    pos = (0x100 - length + 4) & ~3  # runs past 0x100; four bytes lower fits
    c[0x50] = 0x09  # the original MSI becomes vendor-specific
    c[0x80:0x82] = bytes([0x03, pos])
    c[pos:pos + 4] = bytes([0x05, 0x00]) + flags.to_bytes(2, "little")
    ov = OverlayDevice(MemoryAccessor(bytes(c)), policy=Policy())
    assert ov.field_at(pos) is None and ov.field_at(pos + 2) is None
    c[0x80:0x82] = bytes([0x03, pos - 4])
    c[pos - 4:pos] = bytes([0x05, 0x00]) + flags.to_bytes(2, "little")
    c[pos:pos + 4] = b"\0\0\0\0"
    ov = OverlayDevice(MemoryAccessor(bytes(c)), policy=Policy())
    assert ov.field_at(pos - 2).name == "MSI message control"


def test_building_writes_nothing_and_export_disarms_pme_in_range():
    hw = MemoryAccessor(bytes(make_config()))
    ov = OverlayDevice(hw, resources=RESOURCES, policy=Policy())
    assert hw.writes == 0 and hw.read(0x44, 2) & 0x0100
    assert ov.prepare_export() == [(0x44, 2, 0x0000)]
    assert not hw.read(0x44, 2) & 0x0100


def test_export_on_a_read_only_device_reports_instead_of_raising(tmp_path):
    from xenpciback_cli.host.configfile import FileConfigAccessor

    image = tmp_path / "config"
    image.write_bytes(bytes(make_config()))
    with FileConfigAccessor(str(image)) as hw:
        ov = OverlayDevice(hw, resources=RESOURCES, policy=Policy())
        assert ov.prepare_export() == []
        assert any("PME" in p for p in ov.problems)


# -- item 3: the config size comes from the capabilities ---------------------------------------

def _pcix(status: int, size: int = 256) -> bytes:
    c = make_config()
    c[0x90:0x98] = bytes([0x07, 0x00, 0, 0]) + status.to_bytes(4, "little")  # PCI-X, not Express
    return bytes(c[:size])


@pytest.mark.parametrize("data,expected", [
    pytest.param(bytes(make_config()), 4096, id="express-4096-readable"),
    pytest.param(bytes(make_config()[:256]), 4096, id="express-256-readable"),
    pytest.param(bytes(make_config()[:64]), 256, id="64-readable-unknown"),
    pytest.param(_pcix(0x00030010), 256, id="pci-x-1.0"),
    pytest.param(_pcix(0x00030010, 4096), 256, id="pci-x-1.0-4096-readable"),
    pytest.param(_pcix(0x40030010), 4096, id="pci-x-2.0-266"),
    pytest.param(_pcix(0x80030010), 4096, id="pci-x-2.0-533"),
    pytest.param(bytes(make_config()[:0x100]) + b"\xff" * 3840, 256, id="express-ext-all-ones"),
])
def test_config_size_comes_from_capabilities(data, expected):
    assert capabilities.config_space_size(data) == expected
    size = max(len(data), 256)
    ov = OverlayDevice(MemoryAccessor(data, size=size), policy=Policy())
    assert ov.config_size == expected


def test_conventional_device_with_a_4096_byte_capture_is_256():
    c = make_config()
    c[0x90] = 0x09  # no Express capability
    ov = OverlayDevice(MemoryAccessor(bytes(c)), policy=Policy(), permissive=True)
    assert ov.config_size == 256
    for offset in (0x100, 0x104, 0xFFC):
        assert ov.write(offset, 4, 0x12345678) == INVALID
        assert ov.read(offset, 4) == (INVALID, 0)
    assert bytes(c) == bytes(ov._hw.data)


@pytest.mark.parametrize("offset,size", [(0xFF, 2), (0xFE, 4), (0xFFF, 2), (0xFFE, 4), (0x1000, 1)])
def test_accesses_running_past_the_config_size_are_invalid(offset, size):
    hw = MemoryAccessor(bytes(make_config()))
    ov = OverlayDevice(hw, policy=Policy(), permissive=True)
    assert ov.write(offset, size, 0) == INVALID
    assert ov.read(offset, size) == (INVALID, 0)
    assert hw.writes == 0


def test_permissive_write_beyond_the_readable_bytes_never_reaches_the_copy():
    data = bytes(make_config()[:256])  # an lspci -xxx dump of an Express device
    hw = MemoryAccessor(data, size=4096)
    ov = OverlayDevice(hw, policy=Policy(), permissive=True)
    assert ov.config_size == 4096
    assert ov.write(0x100, 4, 0x12345678) == OP_FAILED
    assert ov.read(0x100, 4) == (OP_FAILED, 0)
    assert hw.writes == 0 and bytes(hw.data[:256]) == data
    assert ov.write(0xC0, 4, 0x12345678) == 0  # inside what is known: written (permissive)
    assert hw.read(0xC0, 4) == 0x12345678


def test_memory_accessor_short_data_never_grows():
    hw = MemoryAccessor(b"\0" * 64)
    with pytest.raises(ConfigAccessError) as exc:
        hw.write(0x40, 4, 1)
    assert exc.value.err == OP_FAILED
    assert len(hw.data) == 64


def test_inspect_report_uses_the_capability_size():
    from xenpciback_cli.config.report import DeviceSource, build_report

    rep = build_report(DeviceSource("0000:00:00.0", _pcix(0x00030010), "test"), permissive=True,
                       writes=[(0x100, 4, 0x12345678), (0xC0, 4, 0x1)])
    assert rep["config_size"] == 256
    first, second = rep["guest_writes"]
    assert first["err"] == INVALID and first["hardware_changes"] == []
    assert second["err"] == 0 and second["hardware_changes"]
    rep = build_report(DeviceSource("0000:00:00.0", bytes(make_config()[:256]), "test"),
                       permissive=True, writes=[(0x200, 4, 0x12345678)])
    assert rep["config_size"] == 4096
    assert rep["guest_writes"][0]["hardware_changes"] == []
    assert rep["guest_writes"][0]["err"] == OP_FAILED


def test_unowned_space_is_not_tabled_yet_reads_and_writes_as_before():
    """serve holds hundreds of overlays (64 guests x 4 devices): one must stay small. Tabling
    every (offset, size) of extended space took ~2.5 MB a device."""
    import tracemalloc

    hw = MemoryAccessor(bytes(make_config()))
    hw.data[0x800:0x804] = (0xCAFEF00D).to_bytes(4, "little")
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    ov = OverlayDevice(hw, resources=RESOURCES, irq=0x2B, policy=Policy())
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert used < 400_000, used
    assert ov.read(0x800, 4) == (0, 0xCAFEF00D) and ov.read(0x802, 2) == (0, 0xCAFE)
    assert ov.read(0x801, 1) == (0, 0xF0)
    for offset, size in ((0x801, 2), (0x802, 4), (0xFFE, 4), (0x1000, 1), (-4, 4), (0x800, 3)):
        assert ov.read(offset, size)[0] == XenPciErr.INVALID_OFFSET
        assert ov.write(offset, size, 0) == XenPciErr.INVALID_OFFSET
    assert ov.write(0x800, 4, 0) == 0 and ov.read(0x800, 4) == (0, 0xCAFEF00D)  # dropped
    assert ov.dropped_writes == 1


def test_memory_accessor_reads_little_endian_at_every_size_and_refuses_unreadable_bytes():
    hw = MemoryAccessor(bytes(range(1, 65)), size=256, readable=64)
    assert [hw.read(8, n) for n in (1, 2, 3, 4)] == [0x09, 0x0A09, 0x0B0A09, 0x0C0B0A09]
    assert hw.read(61, 3) == 0x403F3E and hw.read(60, 4) == 0x403F3E3D and hw.read(5, 0) == 0
    for offset, size in ((61, 4), (64, 1), (-1, 1), (63, 2)):
        with pytest.raises(ConfigAccessError):
            hw.read(offset, size)
    assert hw.reads == 11 and hw.writes == 0  # every attempt counts, refused ones too

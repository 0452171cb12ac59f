"""The overlay engine, field by field, against the behaviour in spec §4 (and the stricter rules in
docs/linux-differences.md)."""

from __future__ import annotations

import pytest

from helpers.configspace import pciutils_fixtures
from xenpciback_cli.engine.inspect_sources import read_dump_file
from xenpciback_cli.config.fields import MemoryAccessor, QuirkError
from xenpciback_cli.config.overlay import OverlayDevice, Policy, Quirk
from xenpciback_cli.config.registers import XenPciErr
from xenpciback_cli.pci.device import Resource

INVALID = XenPciErr.INVALID_OFFSET
DENIED = XenPciErr.ACCESS_DENIED

MEM32, IO, MEM64PF, ROM = 0x00040200, 0x00040101, 0x0014220C, 0x00046200


def make_config() -> bytearray:
    """A type-0 function: BAR0 32-bit MEM, BAR1 I/O, BAR2/3 64-bit prefetchable, ROM; PM at
    0x40, MSI (64-bit, maskable) at 0x50, MSI-X at 0x70, VPD at 0x80, PCIe at 0x90."""
    c = bytearray(4096)
    c[0:4] = (0x8086 | (0x10D3 << 16)).to_bytes(4, "little")
    c[4:6] = (0x0006).to_bytes(2, "little")  # MEM + MASTER on
    c[6:8] = (0x0010).to_bytes(2, "little")  # capability list
    c[8:12] = (0x02000000 | 0x01).to_bytes(4, "little")
    c[0x0C] = 0x10
    c[0x0D] = 0x40
    c[0x10:0x14] = (0xFEBF0000).to_bytes(4, "little")
    c[0x14:0x18] = (0xE001).to_bytes(4, "little")
    c[0x18:0x1C] = (0x8000000C).to_bytes(4, "little")
    c[0x1C:0x20] = (0x00000003).to_bytes(4, "little")
    c[0x30:0x34] = (0xFEA00000).to_bytes(4, "little")
    c[0x34] = 0x40
    c[0x3C] = 0x0B
    c[0x3D] = 0x01
    c[0x3E:0x40] = b"\x12\x34"
    c[0x40:0x48] = bytes([0x01, 0x50, 0x03, 0xFA, 0x00, 0x01, 0x00, 0x00])  # PMC D1 not D2, PME on
    c[0x50:0x52] = bytes([0x05, 0x70])
    c[0x52:0x54] = (0x0180).to_bytes(2, "little")  # 64-bit, per-vector masking
    c[0x54:0x58] = (0xFEE00000).to_bytes(4, "little")
    c[0x70:0x74] = bytes([0x11, 0x80, 0x03, 0x00])
    c[0x74:0x78] = (0x2000).to_bytes(4, "little")
    c[0x80:0x84] = bytes([0x03, 0x90, 0x00, 0x00])
    c[0x90:0x94] = bytes([0x10, 0x00, 0x02, 0x00])
    c[0x100:0x104] = (0x00010001).to_bytes(4, "little")  # AER v1, end of list
    return c


RESOURCES = (
    Resource(0, 0xFEBF0000, 0xFEBFFFFF, MEM32),
    Resource(1, 0xE000, 0xE01F, IO),
    Resource(2, 0x380000000, 0x38FFFFFFF, MEM64PF),
    Resource(3, 0, 0, 0),
    Resource(4, 0, 0, 0),
    Resource(5, 0, 0, 0),
    Resource(6, 0xFEA00000, 0xFEA1FFFF, ROM),
)


@pytest.fixture
def dev():
    hw = MemoryAccessor(bytes(make_config()))
    return hw, OverlayDevice(hw, resources=RESOURCES, irq=0x2B, policy=Policy())


def r(dev, off, size):
    return dev[1].read(off, size)


# -- offsets and sizes ---------------------------------------------------------------------------

@pytest.mark.parametrize("offset,size", [(-4, 4), (-0x80000000, 4), (4096, 4), (0x7FFFFFFC, 4),
                                         (1, 2), (2, 4), (3, 2), (0, 3), (0, 0), (0, 8), (0, 9),
                                         (1, 9), (0, -1)])
def test_invalid_offsets_and_sizes(dev, offset, size):
    hw, ov = dev
    before = bytes(hw.data)
    assert ov.read(offset, size) == (INVALID, 0)
    assert ov.write(offset, size, 0xFFFFFFFF) == INVALID
    assert bytes(hw.data) == before


def test_conventional_device_rejects_extended_offsets():
    config = make_config()
    config[0x90] = 0x09  # turn the PCIe capability into a vendor one: 256-byte device
    ov = OverlayDevice(MemoryAccessor(bytes(config[:256])), policy=Policy())
    assert ov.config_size == 256
    assert ov.read(0x100, 4) == (INVALID, 0)
    assert ov.read(0xFC, 4)[0] == 0


def test_partial_reads_return_only_requested_bytes(dev):
    # Linux returns bytes 2 and 3 of the BAR for a 1-byte read at BAR+2; we return byte 2 only.
    assert r(dev, 0x12, 1) == (0, 0xBF)
    assert r(dev, 0x12, 2) == (0, 0xFEBF)
    assert r(dev, 0x05, 1) == (0, 0x00)


def test_every_width_at_every_alignment_matches_bytewise_view(dev):
    _, ov = dev
    view = [ov.read(off, 1)[1] for off in range(ov.config_size)]
    for size in (2, 4):
        for off in range(0, ov.config_size, size):
            err, value = ov.read(off, size)
            assert err == 0
            assert value == int.from_bytes(bytes(view[off:off + size]), "little"), hex(off)
            assert value < (1 << (8 * size))


# -- header fields -------------------------------------------------------------------------------

def test_emulated_reads_touch_no_hardware(dev):
    hw, ov = dev
    hw.reads = 0
    for off, size in [(0, 2), (2, 2), (0, 4), (0x10, 4), (0x14, 4), (0x18, 4), (0x30, 4),
                      (0x3C, 1)]:
        ov.read(off, size)
    assert hw.reads == 0
    ov.read(0x06, 2)
    assert hw.reads == 1


def test_interrupt_line_is_dom0_irq_and_pin_is_hardware(dev):
    assert r(dev, 0x3C, 1) == (0, 0x2B)
    assert r(dev, 0x3C, 4) == (0, 0x3412012B)


def test_vendor_device_are_cached_values():
    hw = MemoryAccessor(bytes(make_config()))
    ov = OverlayDevice(hw, vendor_id=0x1234, device_id=0x5678, policy=Policy())
    hw.data[0:4] = b"\xff\xff\xff\xff"  # an SR-IOV VF reads all-ones here
    assert ov.read(0, 4) == (0, 0x56781234)


def test_unlisted_register_writes_dropped_unless_permissive(dev):
    hw, ov = dev
    assert ov.write(0x3E, 2, 0xAAAA) == 0
    assert hw.read(0x3E, 2) == 0x3412
    assert ov.dropped_writes == 1 and len(ov.events) == 1
    ov.permissive = True
    assert ov.write(0x3E, 2, 0xAAAA) == 0
    assert hw.read(0x3E, 2) == 0xAAAA


def test_global_permissive_policy():
    policy = Policy()
    hw = MemoryAccessor(bytes(make_config()))
    ov = OverlayDevice(hw, resources=RESOURCES, policy=policy)
    ov.write(0x2C, 2, 0xBEEF)
    assert hw.read(0x2C, 2) == 0
    policy.permissive = True
    ov.write(0x2C, 2, 0xBEEF)
    assert hw.read(0x2C, 2) == 0xBEEF


def test_a_device_without_a_servers_policy_shares_none():
    """The policy belongs to whoever serves: no process-wide one that one device (or test)
    could switch for every other."""
    first = OverlayDevice(MemoryAccessor(bytes(make_config())), resources=RESOURCES)
    first.policy.permissive = True
    hw = MemoryAccessor(bytes(make_config()))
    second = OverlayDevice(hw, resources=RESOURCES)
    second.write(0x2C, 2, 0xBEEF)
    assert not second.policy.permissive and hw.read(0x2C, 2) == 0


def test_multi_field_write_at_0x3c_writes_nothing_even_permissive(dev):
    hw, ov = dev
    ov.permissive = True
    before = bytes(hw.data)
    assert ov.write(0x3C, 4, 0xFFFFFFFF) == 0
    assert bytes(hw.data) == before


def test_cache_line_size_written_latency_dropped(dev):
    hw, ov = dev
    ov.write(0x0C, 1, 0x08)
    ov.write(0x0D, 1, 0xFF)
    assert hw.read(0x0C, 1) == 0x08 and hw.read(0x0D, 1) == 0x40


def test_bist_rules(dev):
    hw, ov = dev
    hw.data[0x0F] = 0x80  # BIST capable
    ov.write(0x0F, 1, 0x0F)  # changes other bits: dropped
    assert hw.read(0x0F, 1) == 0x80
    ov.write(0x0F, 1, 0xC0)  # start, other bits unchanged
    assert hw.read(0x0F, 1) == 0xC0
    hw.data[0x0F] = 0x00
    ov.write(0x0F, 1, 0x40)  # start alone
    assert hw.read(0x0F, 1) == 0x40


# -- COMMAND and XSA-120 -------------------------------------------------------------------------

def test_xsa120_guest_cannot_clear_decode(dev):
    hw, ov = dev
    assert ov.write(0x04, 2, 0x0007) == 0  # enable (IO|MEM|MASTER)
    assert hw.read(0x04, 2) & 0x3 == 0x3
    assert ov.write(0x04, 2, 0x0000) == 0
    assert hw.read(0x04, 2) & 0x3 == 0x3  # decode stays on in hardware
    assert hw.read(0x04, 2) & 0x4 == 0  # bus mastering goes off
    assert r(dev, 0x04, 2) == (0, 0x0000)  # the guest sees what it wrote
    assert ov.write(0x04, 2, 0x0004) == 0
    assert hw.read(0x04, 2) & 0x7 == 0x7
    assert r(dev, 0x04, 2)[1] & 0x7 == 0x4


def test_command_virtual_bits_never_reach_hardware(dev):
    hw, ov = dev
    ov.write(0x04, 2, 0x0002 | 0x0040 | 0x0100 | 0x0400 | 0x0008)  # MEM PARITY SERR INTX SPECIAL
    value = hw.read(0x04, 2)
    assert value & (0x0040 | 0x0100 | 0x0400 | 0x0008) == 0
    assert r(dev, 0x04, 2)[1] & 0x0540 == 0x0540  # guest reads its own PARITY/SERR/INTX


def test_command_permissive_passes_guest_bits_only(dev):
    hw, ov = dev
    ov.permissive = True
    ov.write(0x04, 2, 0x0002 | 0x0008 | 0x0080 | 0x0100 | 0x0400)
    value = hw.read(0x04, 2)
    assert value & 0x0088 == 0x0088  # SPECIAL and WAIT are guest bits
    assert value & 0x0500 == 0  # SERR and INTX_DISABLE are not


def test_permissive_4_byte_write_at_command_does_not_write_status(dev):
    hw, ov = dev
    ov.permissive = True
    hw.data[6:8] = b"\x10\x00"
    ov.write(0x04, 4, 0xFFFF0006)
    assert hw.read(0x06, 2) == 0x0010


def test_mwi_needs_cache_line_size(dev):
    hw, ov = dev
    ov.write(0x04, 2, 0x0012)
    assert hw.read(0x04, 2) & 0x10
    ov.write(0x04, 2, 0x0002)
    assert not hw.read(0x04, 2) & 0x10
    hw.data[0x0C] = 0
    ov.write(0x04, 2, 0x0012)
    assert not hw.read(0x04, 2) & 0x10


# -- BARs ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("offset,val,length", [
    (0x10, 0xFEBF0000, 0xFFFF0000),  # 32-bit memory, 64 KiB
    (0x14, 0x0000E001, 0xFFFFFFE1),  # I/O, 32 bytes
    (0x18, 0x8000000C, 0xF000000C),  # 64-bit prefetchable, 256 MiB, lower half
    (0x1C, 0x00000003, 0xFFFFFFFF),  # upper half
    (0x20, 0, 0), (0x24, 0, 0),      # unimplemented
])
def test_bar_sizing_round_trip(dev, offset, val, length):
    hw, ov = dev
    before = bytes(hw.data)
    assert ov.read(offset, 4) == (0, val)
    assert ov.write(offset, 4, 0xFFFFFFFF) == 0
    assert ov.read(offset, 4) == (0, length)
    assert ov.write(offset, 4, val) == 0
    assert ov.read(offset, 4) == (0, val)
    assert bytes(hw.data) == before  # sizing never touches hardware


def test_bar_sizing_accepts_type_bits_and_rejects_moves(dev):
    hw, ov = dev
    ov.write(0x14, 4, 0xFFFFFFFC)  # I/O BAR: low two bits are ignored
    assert ov.read(0x14, 4) == (0, 0xFFFFFFE1)
    ov.write(0x14, 4, 0x1000)  # a move: ignored, back to the address
    assert ov.read(0x14, 4) == (0, 0xE001)
    assert hw.read(0x14, 4) == 0xE001
    ov.write(0x1C, 4, 0xFFFFFFF0)  # upper half: only all-ones sizes it
    assert ov.read(0x1C, 4) == (0, 3)


def test_bar_restore_after_hardware_lost_it(dev):
    hw, ov = dev
    hw.data[0x10:0x14] = b"\0\0\0\0"  # e.g. after a reset
    ov.write(0x10, 4, 0x12345000)  # not the original value: nothing
    assert hw.read(0x10, 4) == 0
    ov.write(0x10, 4, 0xFEBF0000)
    assert hw.read(0x10, 4) == 0xFEBF0000


def test_rom_sizing(dev):
    hw, ov = dev
    assert ov.read(0x30, 4) == (0, 0xFEA00000)
    ov.write(0x30, 4, 0xFFFFF800)  # enable bit clear still sizes
    assert ov.read(0x30, 4) == (0, 0xFFFE0000)
    ov.write(0x30, 4, 0xFEA00001)  # enable: not the original value, ignored
    assert ov.read(0x30, 4) == (0, 0xFEA00000)
    assert hw.read(0x30, 4) == 0xFEA00000


def test_partial_bar_write_never_sizes(dev):
    _, ov = dev
    ov.write(0x10, 2, 0xFFFF)
    assert ov.read(0x10, 4) == (0, 0xFEBF0000)


def test_bridge_bars_and_rom_at_0x38():
    config = make_config()
    config[0x0E] = 0x01
    config[0x38:0x3C] = (0xFE000000).to_bytes(4, "little")
    ov = OverlayDevice(MemoryAccessor(bytes(config)), resources=RESOURCES, policy=Policy())
    names = {f.offset: f.name for f in ov.fields()}
    assert 0x18 not in names and 0x30 not in names and names[0x38] == "expansion ROM"
    assert ov.read(0x38, 4) == (0, 0xFEA00000)


def test_bars_without_resources_show_address_with_unknown_size():
    ov = OverlayDevice(MemoryAccessor(bytes(make_config())), policy=Policy())
    assert ov.read(0x10, 4) == (0, 0xFEBF0000)
    bar0 = ov.field_at(0x10)
    assert bar0.describe()["size_known"] is False


# -- capabilities --------------------------------------------------------------------------------

def test_pm_hides_pme_support_and_disarms_pme(dev):
    hw, ov = dev
    assert r(dev, 0x42, 2) == (0, 0x0203)
    assert hw.read(0x44, 2) & 0x0100 and hw.writes == 0  # building the overlay writes nothing
    ov.prepare_export()
    assert not hw.read(0x44, 2) & 0x0100  # PME_Enable cleared at export, as Linux does at bind
    ov.write(0x44, 2, 0x0100)
    assert not hw.read(0x44, 2) & 0x0100


def test_pm_state_transitions(dev):
    hw, ov = dev
    assert ov.write(0x44, 2, 0x0003) == 0  # D3hot
    assert hw.read(0x44, 2) & 3 == 3
    assert ov.write(0x44, 2, 0x0001) == DENIED  # D3hot -> D1 is not a legal transition
    assert ov.write(0x44, 2, 0x0000) == 0
    assert hw.read(0x44, 2) & 3 == 0
    assert ov.write(0x44, 2, 0x0002) == DENIED  # D2 not supported by PMC
    assert ov.write(0x44, 2, 0x0001) == 0  # D1 supported


def test_vpd_write_requests_denied(dev):
    hw, ov = dev
    assert ov.write(0x82, 2, 0x8010) == DENIED
    assert hw.read(0x82, 2) == 0
    assert ov.write(0x82, 2, 0x0010) == 0
    assert hw.read(0x82, 2) == 0x0010


@pytest.mark.parametrize("permissive", [False, True])
def test_msi_and_msix_never_enabled_by_config_writes(dev, permissive):
    hw, ov = dev
    ov.permissive = permissive
    err = ov.write(0x52, 2, 0x0181)
    assert hw.read(0x52, 2) & 1 == 0
    assert err == (0 if permissive else DENIED)
    ov.write(0x72, 2, 0x8003)
    assert hw.read(0x72, 2) & 0x8000 == 0
    assert ov.write(0x52, 2, 0x0180) == 0  # unchanged value is fine


def test_msi_enable_with_allow_interrupt_control():
    hw = MemoryAccessor(bytes(make_config()))
    ov = OverlayDevice(hw, allow_interrupt_control=True, policy=Policy())
    assert ov.write(0x52, 2, 0x0181) == 0
    assert hw.read(0x52, 2) & 1
    assert ov.write(0x72, 2, 0x8003) == DENIED  # MSI already active
    assert ov.write(0x52, 2, 0x0191) == DENIED  # bits outside the enable bit


def test_msi_body_read_only_even_permissive(dev):
    hw, ov = dev
    ov.permissive = True
    ov.write(0x54, 4, 0x12345678)
    ov.write(0x50, 4, 0xFFFFFFFF)
    assert hw.read(0x54, 4) == 0xFEE00000
    assert hw.read(0x50, 2) == 0x7005  # the capability header is never written
    assert hw.read(0x52, 2) & 1 == 0  # permissive opens message control, never its enable bit


# -- quirks --------------------------------------------------------------------------------------

def test_quirk_mask_enforced(dev):
    hw, ov = dev
    hw.data[0xC0:0xC4] = (0x11223344).to_bytes(4, "little")
    ov.add_quirk(Quirk(0xC0, 4, 0x0000FF00))
    assert ov.write(0xC0, 4, 0xAABBCCDD) == 0
    assert hw.read(0xC0, 4) == 0x1122CC44
    ov.write(0xC1, 1, 0x99)  # a byte write inside the quirk, mask still applies
    assert hw.read(0xC0, 4) == 0x11229944
    assert ov.read(0xC0, 4) == (0, 0x11229944)
    ov.reset()
    ov.write(0xC0, 4, 0)
    assert hw.read(0xC0, 4) == 0x11229944  # quirks go away on detach


@pytest.mark.parametrize("quirk", [Quirk(0x04, 2, 0xFFFF), Quirk(0x06, 4, 0xFFFFFFFF),
                                   Quirk(0xC1, 2, 0xFFFF), Quirk(0xC0, 3, 0), Quirk(0xC0, 1, 0x100),
                                   Quirk(4096, 4, 0), Quirk(-4, 4, 0), Quirk(0x52, 2, 0xFFFF)])
def test_bad_quirks_refused(dev, quirk):
    with pytest.raises(QuirkError):
        dev[1].add_quirk(quirk)


def test_quirk_on_status(dev):
    hw, ov = dev
    ov.add_quirk(Quirk(0x06, 2, 0xF900))
    hw.data[6:8] = (0x8010).to_bytes(2, "little")
    ov.write(0x06, 2, 0x8000)
    assert hw.read(0x06, 2) == 0x8010


# -- real captures -------------------------------------------------------------------------------

def _captured_devices():
    out = []
    for path in pciutils_fixtures():
        for device in read_dump_file(path):
            if len(device.data) >= 256 and device.data[0x0E] & 0x7F in (0, 1):
                out.append(pytest.param(device, id=f"{path.name}-{device.bdf}"))
    return out[:40]


@pytest.mark.parametrize("device", _captured_devices())
def test_real_captures_build_and_survive_full_sweep(device):
    hw = MemoryAccessor(device.data, size=4096)
    ov = OverlayDevice(hw, policy=Policy())  # the size from the capabilities, not the capture
    assert hw.writes == 0
    for off in range(0, 4096, 4):
        err, value = ov.read(off, 4)
        if off >= ov.config_size:
            assert (err, value) == (INVALID, 0)
        elif off >= len(device.data):  # the capture does not hold these bytes
            assert (err, value) == (XenPciErr.OP_FAILED, 0)
        else:
            assert err == 0 and 0 <= value <= 0xFFFFFFFF
    assert ov.read(0, 2) == (0, int.from_bytes(device.data[0:2], "little"))


def test_file_accessor_round_trip_on_a_temporary_file(tmp_path):
    """The serve adapter, on a copy (never the real /sys)."""
    from xenpciback_cli.host.configfile import FileConfigAccessor
    from xenpciback_cli.pci.device import PciDevice
    from xenpciback_cli.pci.address import Bdf

    image = tmp_path / "config"
    image.write_bytes(bytes(make_config()))
    device = PciDevice(Bdf(0, 3, 0, 0), 0x8086, 0x10D3, 0x020000, 1, irq=17, resources=RESOURCES)
    with FileConfigAccessor(str(image), writable=True) as hw:
        ov = OverlayDevice.for_device(hw, device, policy=Policy())
        assert ov.read(0x3C, 1) == (0, 17)
        assert ov.write(0x0C, 1, 0x20) == 0
        assert ov.read(0x2000, 4) == (INVALID, 0)
    assert image.read_bytes()[0x0C] == 0x20
    short = tmp_path / "short"
    short.write_bytes(bytes(make_config())[:64])  # what a non-root reader gets
    with FileConfigAccessor(str(short)) as hw:
        assert hw.read(0, 4) == 0x10D38086
        with pytest.raises(Exception) as exc:
            hw.read(0x40, 4)
        assert exc.value.err == XenPciErr.OP_FAILED
        with pytest.raises(Exception) as exc:
            hw.write(0, 2, 0)
        assert exc.value.err == XenPciErr.ACCESS_DENIED


def test_overlay_over_a_short_readable_device(tmp_path):
    from xenpciback_cli.host.configfile import FileConfigAccessor

    short = tmp_path / "short"
    short.write_bytes(bytes(make_config())[:64])
    with FileConfigAccessor(str(short)) as hw:
        ov = OverlayDevice(hw, resources=RESOURCES, policy=Policy())
        assert ov.read(0, 4) == (0, 0x10D38086)
        assert ov.read(0x40, 4) == (XenPciErr.OP_FAILED, 0)  # the error reaches the guest
        assert ov.write(0x0C, 1, 0) == XenPciErr.ACCESS_DENIED  # read-only accessor


def test_resource_flags_without_type_bits_still_give_bar_type_bits():
    bare = (Resource(0, 0xFEBF0000, 0xFEBFFFFF, 0x200), Resource(1, 0xE000, 0xE01F, 0x100),
            Resource(2, 0x380000000, 0x38FFFFFFF, 0x100200 | 0x2000))
    ov = OverlayDevice(MemoryAccessor(bytes(make_config())), resources=bare, policy=Policy())
    assert ov.read(0x10, 4) == (0, 0xFEBF0000)
    assert ov.read(0x14, 4) == (0, 0xE001)
    assert ov.read(0x18, 4) == (0, 0x8000000C)
    assert ov.read(0x1C, 4) == (0, 0x3)

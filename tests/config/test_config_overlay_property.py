"""Property: whatever a guest writes, hardware changes only where the overlay allows it, and a read
never returns bytes the guest did not ask for."""

from __future__ import annotations

import functools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from configspace_helpers import pciutils_fixtures
from xenpciback_cli.config.dumpfile import read_dump_file
from xenpciback_cli.config.fields import MemoryAccessor
from xenpciback_cli.config.overlay import OverlayDevice, Policy, Quirk
from xenpciback_cli.config.registers import CapId


@functools.lru_cache(maxsize=1)
def _find_capture() -> bytes | None:
    """A real PCIe endpoint with PM, MSI and MSI-X (first one found among the captures)."""
    from xenpciback_cli.config import capabilities

    for path in pciutils_fixtures():
        for device in read_dump_file(path):
            if len(device.data) < 4096 or device.data[0x0E] & 0x7F:
                continue
            walk = capabilities.walk(device.data)
            if all(walk.find(c) for c in (CapId.PM, CapId.MSI, CapId.MSIX, CapId.EXP)):
                return device.data
    return None


def _capture() -> bytes:
    data = _find_capture()
    if data is None:
        pytest.skip("no suitable real capture (../shared absent)")
    return data


def _allowed_masks(ov: OverlayDevice, quirk: Quirk | None) -> dict[int, int]:
    """Per byte, the bits a guest may change in hardware (non-permissive device)."""
    allowed: dict[int, int] = {}

    def allow(offset: int, size: int, mask: int) -> None:
        for i in range(size):
            allowed[offset + i] = allowed.get(offset + i, 0) | ((mask >> (8 * i)) & 0xFF)

    allow(0x04, 2, 0x0017)  # decode on enable, MASTER, MWI
    allow(0x0C, 1, 0xFF)  # cache line size
    allow(0x0F, 1, 0x40)  # BIST start
    for field in ov.fields():
        if field.write_kind == "pmcsr":
            allow(field.offset, 2, 0x8000 | 0x1E00 | 0x0003 | 0x0100)
        elif field.write_kind == "vpd_address":
            allow(field.offset, 2, 0x7FFF)
        elif field.write_kind in ("bar", "rom"):
            pass  # only the exact original value is restored; the capture already holds it
    if quirk is not None:
        allow(quirk.offset, quirk.size, quirk.mask)
    return allowed


ops = st.lists(
    st.tuples(st.sampled_from([1, 2, 4]),
              # mostly the header and capabilities, where the fields are; sometimes anywhere
              st.one_of(st.integers(0, 0x3F), st.integers(0x40, 0x100), st.integers(-8, 4100)),
              st.integers(0, 0xFFFFFFFF), st.sampled_from([True, True, True, False])),
    min_size=5, max_size=60)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=ops, quirk_mask=st.integers(0, 0xFFFF))
def test_hardware_changes_only_inside_allowed_masks(ops, quirk_mask):
    data = _capture()
    hw = MemoryAccessor(data)
    ov = OverlayDevice(hw, policy=Policy())
    quirk = Quirk(0x0E4, 2, quirk_mask) if ov.field_at(0xE4) is None and \
        ov.field_at(0xE5) is None else None
    if quirk is not None:
        ov.add_quirk(quirk)
    baseline = bytes(hw.data)  # after export-time changes (PME_Enable disarmed)
    allowed = _allowed_masks(ov, quirk)
    for size, offset, value, aligned in ops:
        if aligned:
            offset -= offset % size
        err = ov.write(offset, size, value)
        valid = 0 <= offset <= ov.config_size - size and offset % size == 0
        assert (err == -2) == (not valid)
        err, read_value = ov.read(offset, size)
        assert 0 <= read_value < (1 << (8 * size))
        if not valid:
            assert (err, read_value) == (-2, 0)
        for i, (old, new) in enumerate(zip(baseline, hw.data)):
            assert (old ^ new) & ~allowed.get(i, 0) == 0, f"byte {i:#x}: {old:#x} -> {new:#x}"


@settings(max_examples=100, deadline=None)
@given(size=st.sampled_from([1, 2, 4]), offset=st.integers(0, 4095))
def test_reads_agree_with_bytewise_view(size, offset):
    data = _capture()
    ov = OverlayDevice(MemoryAccessor(data), policy=Policy())
    offset -= offset % size
    err, value = ov.read(offset, size)
    assert err == 0
    expected = 0
    for i in range(size):
        expected |= ov.read(offset + i, 1)[1] << (8 * i)
    assert value == expected


@settings(max_examples=60, deadline=None)
@given(data=st.binary(min_size=64, max_size=4096), status=st.booleans(),
       pointer=st.integers(0, 255), header=st.sampled_from([0, 1, 2, 0x7F, 0x80, 0x81]))
def test_hostile_config_never_crashes_inspect_or_overlay(data, status, pointer, header):
    """A device (or a dump) may hold anything: decoding and the overlay must cope."""
    from xenpciback_cli.config.report import DeviceSource, build_report

    raw = bytearray(data)
    raw[0x0E] = header
    raw[0x34] = pointer
    if status:
        raw[6] |= 0x10
    report = build_report(DeviceSource("0000:00:00.0", bytes(raw), "fuzz"))
    assert report["config_bytes"] == len(raw)
    offsets = [f["offset"] for f in report["fields"]]
    ends = [f["offset"] + f["size"] for f in report["fields"]]
    assert all(e <= s for e, s in zip(ends, offsets[1:]))  # fields never overlap

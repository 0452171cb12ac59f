"""Property: whatever a guest writes, hardware changes only where the overlay allows it, and a read
never returns bytes the guest did not ask for."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers.configspace import firecracker_fixtures, pciutils_fixtures
import xenpciback_cli.sandbox
from xenpciback_cli.engine.inspect_sources import read_dump_file
from xenpciback_cli.config.fields import MemoryAccessor
from xenpciback_cli.config.overlay import OverlayDevice, Policy, Quirk
from xenpciback_cli.config.registers import CapId
from xenpciback_cli.pci.device import Resource
from xenpciback_cli.pci.ioresource import DISABLED as IORESOURCE_DISABLED
from xenpciback_cli.pci.ioresource import UNSET as IORESOURCE_UNSET


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


@functools.lru_cache(maxsize=1)
def _read_only_overlay() -> OverlayDevice:
    return OverlayDevice(MemoryAccessor(_capture()), policy=Policy())


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
    ov.prepare_export()
    baseline = bytes(hw.data)  # after export-time changes (PME_Enable disarmed)
    allowed = _allowed_masks(ov, quirk)
    # the check after every op as one big-integer operation: bits changed outside the masks
    forbidden = ~int.from_bytes(bytes(allowed.get(i, 0) for i in range(len(baseline))), "little")
    base = int.from_bytes(baseline, "little")
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
        if (base ^ int.from_bytes(hw.data, "little")) & forbidden:
            for i, (old, new) in enumerate(zip(baseline, hw.data)):
                assert (old ^ new) & ~allowed.get(i, 0) == 0, f"byte {i:#x}: {old:#x} -> {new:#x}"


@settings(max_examples=100, deadline=None)
@given(size=st.sampled_from([1, 2, 4]), offset=st.integers(0, 4095))
def test_reads_agree_with_bytewise_view(size, offset):
    ov = _read_only_overlay()  # reads change nothing: one overlay serves every example
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


# -- every real capture: no guest write sequence escapes the declared masks ----------------------

# The sandbox's captures as the imported package ships them (the path moved with the layout once,
# and a glob over a missing directory finds nothing silently: hence the assert in _all_sources).
SANDBOX_CAPTURES = Path(xenpciback_cli.sandbox.__file__).resolve().parent / "captures"


@functools.lru_cache(maxsize=1)
def _all_sources() -> tuple[tuple[str, bytes], ...]:
    """Every real capture: the pciutils dumps, the Firecracker VM's and the sandbox's."""
    out = []
    for path in pciutils_fixtures():
        out += [(f"{path.name}/{d.bdf}", d.data) for d in read_dump_file(path)
                if len(d.data) >= 64]
    out += [(path.name, path.read_bytes()) for path in firecracker_fixtures()]
    sandbox = [(path.name, path.read_bytes()) for path in sorted(SANDBOX_CAPTURES.glob("*.bin"))]
    assert sandbox, f"no sandbox captures under {SANDBOX_CAPTURES}"
    out += sandbox
    return tuple(out)


def _resources(data: bytes, modes: list[str]) -> tuple[Resource, ...]:
    """Resources as the kernel might report them for the capture's BARs: assigned where the
    hardware has them, or (per ``modes``) absent, unset, disabled or moved elsewhere."""
    from xenpciback_cli.sandbox import configspace

    out = []
    for bar, mode in zip(configspace.decode_bars(data), modes):
        size = bar.fallback_size() or 0x1000
        start = bar.address + (size if mode == "moved" else 0)
        flags = bar.flags | (0x1 if bar.is_io else (0x4 if bar.is_64 else 0)
                             | (0x8 if bar.prefetchable else 0))
        if mode == "absent":
            continue
        if mode == "unset":
            start, flags = 0, flags | IORESOURCE_UNSET
        elif mode == "disabled":
            flags |= IORESOURCE_DISABLED
        out.append(Resource(bar.index, start, start + size - 1, flags))
    return tuple(out)


def _declared_masks(ov: OverlayDevice, permissive: bool) -> dict[int, int]:
    """Per byte, the bits a guest write may change in hardware (docs/config-overlay.md)."""
    masks: dict[int, int] = {}
    if permissive:
        masks.update({b: 0xFF for b in range(ov.config_size) if ov.field_at(b) is None})
    for field in ov.fields():
        kind = field.write_kind
        mask = {"hardware": 0xFF, "bist": 0xFF, "masked": field.mask, "vpd_address": 0xFFFF,
                "pmcsr": 0x8000 | 0x1E00 | 0x0100 | 0x0003,
                "command": 0x0017 | (0x02BC if permissive else 0),
                "msi_flags": 0xFFFE if permissive else 0,
                "msix_flags": 0x7FFF if permissive else 0}.get(kind, 0)
        for i in range(field.size):
            masks[field.offset + i] = (mask >> (8 * i)) & 0xFF
    return masks


guest_ops = st.lists(
    st.tuples(st.sampled_from([1, 2, 4, 4, 3, 8]),
              st.one_of(st.integers(0, 0x3F), st.integers(0x40, 0x103), st.integers(0xF8, 0x108),
                        st.integers(-8, 4100)),
              st.sampled_from([0, 0xFFFFFFFF, 0x0100, 0x8003, 0x0007]) | st.integers(0, 2**32 - 1),
              st.sampled_from([True, True, True, False])),
    min_size=1, max_size=40)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(index=st.integers(0, 10_000), permissive=st.booleans(), ops=guest_ops,
       modes=st.none() | st.lists(st.sampled_from(["assigned", "assigned", "unset", "absent",
                                                    "disabled", "moved"]), min_size=6,
                                  max_size=6))
def test_real_captures_guest_writes_stay_inside_declared_masks(index, permissive, ops, modes):
    sources = _all_sources()
    if not sources:
        pytest.skip("no real captures (../shared absent)")
    name, data = sources[index % len(sources)]
    hw = MemoryAccessor(data, size=4096)
    resources = None if modes is None else _resources(data, modes)
    ov = OverlayDevice(hw, resources=resources, permissive=permissive, policy=Policy())
    assert hw.writes == 0, f"{name}: building the overlay wrote {hw.log}"
    known = min(len(data), ov.config_size)
    for offset, size, _value in ov.prepare_export():  # Linux's bind-time PME_Enable clear only
        assert offset >= 0x40 and offset + size <= 0x100 and ov.field_at(offset).name == \
            "PM control/status"
    baseline = bytes(hw.data)
    masks = _declared_masks(ov, permissive)
    for size, offset, value, aligned in ops:
        if aligned and size in (1, 2, 4):
            offset -= offset % size
        value &= (1 << (8 * min(size, 4))) - 1
        valid = size in (1, 2, 4) and offset % size == 0 and 0 <= offset <= ov.config_size - size
        writes_before = hw.writes
        err = ov.write(offset, size, value)
        if not valid:
            assert err == -2 and hw.writes == writes_before, (name, offset, size)
        else:
            assert err in (0, -3, -5), (name, offset, size, err)
            assert err != -5 or offset + size > known
        err, read_value = ov.read(offset, size)
        if not valid:
            assert (err, read_value) == (-2, 0)
        assert 0 <= read_value < (1 << (8 * min(size, 4)))
    for offset, size, _ in hw.log:
        assert offset >= 0 and offset + size <= known, f"{name}: write at {offset:#x}"
    for field in ov.fields():
        if field.write_kind in ("bar", "rom"):
            now = hw.read(field.offset, 4)
            old = int.from_bytes(baseline[field.offset:field.end], "little")
            assert now == old or (field.restorable and now == field.bar_val), \
                f"{name}: {field.name} {old:#x} -> {now:#x}"
    for i, (old, new) in enumerate(zip(baseline, hw.data)):
        field = ov.field_at(i)
        if field is not None and field.write_kind in ("bar", "rom"):
            continue
        assert (old ^ new) & ~masks.get(i, 0) == 0, f"{name}: byte {i:#x}: {old:#x} -> {new:#x}"
    pmcsr = next((f for f in ov.fields() if f.write_kind == "pmcsr"), None)
    if pmcsr is not None:  # a guest never arms PME
        assert not hw.read(pmcsr.offset, 2) & 0x0100 or baseline[pmcsr.offset + 1] & 0x01


def test_every_real_capture_builds_without_writing_and_sizes_from_capabilities():
    sources = _all_sources()
    if not sources:
        pytest.skip("no real captures (../shared absent)")
    from xenpciback_cli.config import capabilities

    for name, data in sources:
        hw = MemoryAccessor(data, size=4096)
        ov = OverlayDevice(hw, policy=Policy(), permissive=True)
        assert hw.writes == 0, name
        assert ov.config_size == capabilities.config_space_size(data), name
        walk = capabilities.walk(data[:256])
        if walk.find(CapId.EXP) is None and ov.config_size == 4096:
            # only a PCI-X 2.0 device or a host bridge with readable extended space
            assert walk.find(CapId.PCIX) is not None or data[0x0A:0x0C] == b"\x00\x06", name
        for offset in (ov.config_size, ov.config_size - 2, 0x1000):
            assert ov.write(offset, 4, 0x5A5A5A5A) == -2, name
        assert ov.write(len(data), 4, 0x5A5A5A5A) in (-2, -5), name  # beyond what is known
        assert hw.writes == 0 and bytes(hw.data[:len(data)]) == data[:4096], name

"""What the sandbox derives from a config-space capture: BARs, resources, SR-IOV and VF configs.

A capture is the raw bytes of a real device's config space. The simulated host must stay consistent
with them (``resource`` agrees with the BAR addresses, VFs come from the PF's SR-IOV capability),
because tools like lspci cross-check them and so do our own tests.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from xenpciback_cli.config import decode
from xenpciback_cli.config.capabilities import extended_list, find_extended
from xenpciback_cli.config.le import u16, u32
from xenpciback_cli.pci import ioresource

_U16 = struct.Struct("<H")  # for writing; reads use config.le
_U32 = struct.Struct("<I")

EXT_CAP_SRIOV = 0x10
#: Size limits used when a dump does not say how big a BAR is (alignment gives an upper bound).
_SIZE_CAP = {"io": 0x100, "mem": 0x100000, "prefetch": 0x10000000}


def _low_bit(value: int) -> int:
    return value & -value


@dataclass(frozen=True)
class Bar:
    index: int
    address: int
    is_io: bool
    is_64: bool
    prefetchable: bool

    @property
    def flags(self) -> int:
        if self.is_io:
            return ioresource.IO | ioresource.SIZEALIGN
        flags = ioresource.MEM | ioresource.SIZEALIGN
        if self.prefetchable:
            flags |= ioresource.PREFETCH
        if self.is_64:
            flags |= ioresource.MEM_64
        return flags

    def fallback_size(self) -> int:
        kind = "io" if self.is_io else "prefetch" if self.prefetchable else "mem"
        return min(_low_bit(self.address), _SIZE_CAP[kind])


def decode_bars(config: bytes, first: int = 0x10, count: int | None = None) -> list[Bar]:
    """The assigned BARs of a header (type 0: 6 at 0x10; type 1: 2), skipping upper halves,
    as ``config.decode`` decodes them."""
    return [Bar(bar.index, bar.address, bar.kind == "io", bar.is_64bit, bar.prefetchable)
            for bar in decode.decode_bars(config, first=first, count=count) if bar.address]


def resource_lines(config: bytes, sizes: dict[int, int], rom_size: int | None) -> list[tuple[int, int, int]]:
    """(start, end, flags) for every line of sysfs ``resource``: BARs, ROM, IOV/bridge slots."""
    is_bridge = (config[0x0E] & 0x7F) == 1
    lines = [(0, 0, 0)] * (17 if is_bridge else 13)
    bars = decode_bars(config)
    rom = u32(config, 0x38 if is_bridge else 0x30) & ~0x7FF
    for bar in bars:
        size = sizes.get(bar.index) or _bounded(bar, bars, rom)
        lines[bar.index] = (bar.address, bar.address + size - 1, bar.flags)
    if rom:
        size = rom_size or min(_low_bit(rom), 0x20000)
        lines[6] = (rom, rom + size - 1, ioresource.MEM | ioresource.READONLY | ioresource.SIZEALIGN)
    return lines


def _bounded(bar: Bar, bars: list[Bar], rom: int) -> int:
    """An unknown BAR size: aligned, capped, and not running into the device's next BAR or ROM."""
    size = bar.fallback_size()
    others = [other.address for other in bars if other.is_io == bar.is_io]
    if rom and not bar.is_io:
        others.append(rom)
    for address in others:
        if address > bar.address:
            gap = address - bar.address
            while size > gap:
                size //= 2
    return size


@dataclass(frozen=True)
class SriovInfo:
    """The fields of a PF's SR-IOV capability that decide where VFs appear and what they are."""

    offset: int
    total_vfs: int
    first_vf_offset: int
    vf_stride: int
    vf_device_id: int
    vf_bars: tuple[Bar, ...]

    def vf_routing_id(self, pf_routing_id: int, index: int) -> int:
        return pf_routing_id + self.first_vf_offset + index * self.vf_stride

    def vf_bar_size(self, bar: Bar) -> int:
        """Per-VF size: the BAR's region (bounded by its alignment and the next region) / TotalVFs."""
        region = _low_bit(bar.address)
        for other in self.vf_bars:
            if other.address > bar.address:
                region = min(region, other.address - bar.address)
        return max(region // max(self.total_vfs, 1), 0x1000 if not bar.is_io else 4)


def sriov_info(config: bytes) -> SriovInfo | None:
    cap = find_extended(config, EXT_CAP_SRIOV)
    if cap is None:
        return None
    bars = decode_bars(config, cap + 0x24, 6)
    return SriovInfo(cap, u16(config, cap + 0x0E), u16(config, cap + 0x14), u16(config, cap + 0x16),
                     u16(config, cap + 0x1A), tuple(bars))


def set_num_vfs(config: bytes, info: SriovInfo, count: int) -> bytes:
    """The PF config after writing NumVFs and VF Enable/MSE, as the kernel does."""
    data = bytearray(config)
    control = u16(data, info.offset + 0x08)
    control = control | 0x9 if count else control & ~0x9  # VF Enable + VF MSE
    _U16.pack_into(data, info.offset + 0x08, control)
    _U16.pack_into(data, info.offset + 0x10, count)
    return bytes(data)


def vf_config(pf_config: bytes, info: SriovInfo, index: int) -> tuple[bytes, list[tuple[int, int, int]]]:
    """A VF's hardware config space and its resource lines.

    Per the SR-IOV spec a VF's Vendor/Device ID read 0xFFFF (sysfs ``vendor``/``device`` carry the
    real ids), its BARs read zero (they live in the PF's capability), it is single-function, and
    it has no SR-IOV capability of its own (we unlink it from the extended list).
    """
    data = bytearray(pf_config)
    _U32.pack_into(data, 0x00, 0xFFFFFFFF)
    _U16.pack_into(data, 0x04, 0)  # command: VF memory decode is controlled by the PF
    data[0x0E] &= 0x7F
    for offset in range(0x10, 0x28, 4):
        _U32.pack_into(data, offset, 0)
    _U32.pack_into(data, 0x30, 0)  # no expansion ROM
    _unlink_ext_capability(data, info.offset)
    lines = [(0, 0, 0)] * 13
    for bar in info.vf_bars:
        size = info.vf_bar_size(bar)
        start = bar.address + index * size
        lines[bar.index] = (start, start + size - 1, bar.flags)
    return bytes(data), lines


def _unlink_ext_capability(data: bytearray, target: int) -> None:
    header = u32(data, target)
    following = header >> 20
    if target == 0x100:
        # The first capability cannot be unlinked; replace it with a null capability that links on.
        _U32.pack_into(data, 0x100, (following << 20) | 0x0000)
        return
    for offset, current in extended_list(bytes(data)):
        if (current >> 20) & ~3 == target:
            _U32.pack_into(data, offset, (current & 0xFFFFF) | (following << 20))
            break
    for position in range(target, min(target + 0x40, len(data))):
        data[position] = 0


def set_bridge_buses(config: bytes, primary: int, secondary: int, subordinate: int) -> bytes:
    data = bytearray(config)
    data[0x18], data[0x19], data[0x1A] = primary, secondary, subordinate
    return bytes(data)


def set_multifunction(config: bytes, on: bool) -> bytes:
    data = bytearray(config)
    data[0x0E] = (data[0x0E] | 0x80) if on else (data[0x0E] & 0x7F)
    return bytes(data)


def shift_bars(config: bytes, mem_offset: int, io_offset: int) -> bytes:
    """Move every assigned BAR (and the ROM and SR-IOV VF BARs) of a type-0 header.

    Why: two functions built from one capture (the dual-port NIC) must not claim the same
    addresses; the decoded sizes and types stay those of the capture.
    """
    data = bytearray(config)
    sriov = sriov_info(config)
    blocks = [(0x10, 6)] + ([(sriov.offset + 0x24, 6)] if sriov else [])
    for first, count in blocks:
        for bar in decode_bars(bytes(data), first, count):
            address = bar.address + (io_offset if bar.is_io else mem_offset)
            low = u32(data, first + 4 * bar.index)
            flags = low & (0x3 if bar.is_io else 0xF)
            _U32.pack_into(data, first + 4 * bar.index,
                           flags | (address & (0xFFFFFFFC if bar.is_io else 0xFFFFFFF0)))
            if bar.is_64:
                _U32.pack_into(data, first + 4 * (bar.index + 1), address >> 32)
    rom = u32(data, 0x30)
    if rom & ~0x7FF:
        _U32.pack_into(data, 0x30, ((rom & ~0x7FF) + mem_offset) | (rom & 0x7FF))
    return bytes(data)

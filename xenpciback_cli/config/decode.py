"""Decoding the standard header (type 0 and type 1) and the BARs and expansion ROM.

A BAR's size is not in config space: the kernel learns it by sizing (write all-ones, read back)
and publishes it in sysfs ``resource``. So sizes come from the host's resources when we have them
(a real device or a sandbox device) and are reported as unknown for a dump or a raw image: sizing
a BAR from a snapshot would be a guess.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from xenpciback_cli.config.le import u16 as _w
from xenpciback_cli.config.le import u32 as _d
from xenpciback_cli.config.registers import (
    BAR_IO_ADDR_MASK,
    BAR_MEM_ADDR_MASK,
    BAR_MEM_PREFETCH,
    BAR_MEM_TYPE_64,
    BAR_MEM_TYPE_MASK,
    BAR_SPACE_IO,
    HEADER_MULTIFUNCTION,
    HEADER_TYPE_MASK,
    ROM_ADDR_MASK,
    ROM_ENABLE,
    ROM_RESOURCE_INDEX,
    HeaderType,
    Reg,
)
from xenpciback_cli.pci.device import Resource

#: Number of BAR slots per header type.
BAR_COUNT: dict[int, int] = {HeaderType.NORMAL: 6, HeaderType.BRIDGE: 2, HeaderType.CARDBUS: 0}
ROM_OFFSET: dict[int, int] = {HeaderType.NORMAL: Reg.ROM_ADDRESS, HeaderType.BRIDGE: Reg.BRIDGE_ROM_ADDRESS}


@dataclass(frozen=True)
class Bar:
    """One BAR (a 64-bit BAR covers two slots and is listed once, at its lower slot)."""

    index: int
    offset: int
    kind: str  # "io", "mem"
    is_64bit: bool
    prefetchable: bool
    address: int
    size: int | None  # None: unknown (no resource information)
    raw: int

    def as_dict(self) -> dict[str, object]:
        return {"index": self.index, "offset": self.offset, "type": self.kind,
                "64bit": self.is_64bit, "prefetchable": self.prefetchable,
                "address": f"{self.address:#x}", "size": self.size, "raw": f"{self.raw:#010x}"}


@dataclass(frozen=True)
class Rom:
    offset: int
    address: int
    enabled: bool
    size: int | None
    raw: int

    def as_dict(self) -> dict[str, object]:
        return {"offset": self.offset, "address": f"{self.address:#x}", "enabled": self.enabled,
                "size": self.size, "raw": f"{self.raw:#010x}"}


@dataclass
class Header:
    vendor_id: int
    device_id: int
    command: int
    status: int
    revision: int
    class_code: int
    cache_line_size: int
    latency_timer: int
    header_type: int
    multifunction: bool
    bist: int
    interrupt_line: int
    interrupt_pin: int
    capability_pointer: int
    subsystem_vendor_id: int | None = None
    subsystem_id: int | None = None
    bridge: dict[str, object] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {
            "vendor_id": f"{self.vendor_id:#06x}", "device_id": f"{self.device_id:#06x}",
            "command": f"{self.command:#06x}", "status": f"{self.status:#06x}",
            "revision": f"{self.revision:#04x}", "class": f"{self.class_code:#08x}",
            "cache_line_size": self.cache_line_size, "latency_timer": self.latency_timer,
            "header_type": self.header_type, "multifunction": self.multifunction,
            "bist": f"{self.bist:#04x}", "interrupt_line": self.interrupt_line,
            "interrupt_pin": self.interrupt_pin,
            "capability_pointer": self.capability_pointer,
        }
        if self.subsystem_vendor_id is not None:
            out["subsystem_vendor_id"] = f"{self.subsystem_vendor_id:#06x}"
            out["subsystem_id"] = f"{self.subsystem_id:#06x}"
        if self.bridge:
            out["bridge"] = self.bridge
        return out


def decode_header(data: bytes) -> Header:
    """The first 64 bytes, which every source (even sysfs without root) provides."""
    if len(data) < 0x40:
        raise ValueError(f"config space needs at least 64 bytes, got {len(data)}")
    htype = data[Reg.HEADER_TYPE] & HEADER_TYPE_MASK
    header = Header(
        vendor_id=_w(data, Reg.VENDOR_ID), device_id=_w(data, Reg.DEVICE_ID),
        command=_w(data, Reg.COMMAND), status=_w(data, Reg.STATUS),
        revision=data[Reg.REVISION_ID], class_code=_d(data, Reg.REVISION_ID) >> 8,
        cache_line_size=data[Reg.CACHE_LINE_SIZE], latency_timer=data[Reg.LATENCY_TIMER],
        header_type=htype, multifunction=bool(data[Reg.HEADER_TYPE] & HEADER_MULTIFUNCTION),
        bist=data[Reg.BIST], interrupt_line=data[Reg.INTERRUPT_LINE],
        interrupt_pin=data[Reg.INTERRUPT_PIN],
        capability_pointer=data[Reg.CARDBUS_CAPABILITY_LIST if htype == HeaderType.CARDBUS
                                else Reg.CAPABILITY_LIST],
    )
    if htype == HeaderType.NORMAL:
        header.subsystem_vendor_id = _w(data, Reg.SUBSYSTEM_VENDOR_ID)
        header.subsystem_id = _w(data, Reg.SUBSYSTEM_ID)
    elif htype == HeaderType.BRIDGE:
        io_base, io_limit = data[Reg.BRIDGE_IO_BASE], data[Reg.BRIDGE_IO_LIMIT]
        io_lo = (io_base & 0xF0) << 8
        io_hi = ((io_limit & 0xF0) << 8) | 0xFFF
        if io_base & 0xF == 1:  # 32-bit I/O addressing
            io_lo |= _w(data, Reg.BRIDGE_IO_BASE_UPPER16) << 16
            io_hi |= _w(data, Reg.BRIDGE_IO_LIMIT_UPPER16) << 16
        mem_lo = (_w(data, Reg.BRIDGE_MEMORY_BASE) & 0xFFF0) << 16
        mem_hi = ((_w(data, Reg.BRIDGE_MEMORY_LIMIT) & 0xFFF0) << 16) | 0xFFFFF
        pbase, plimit = _w(data, Reg.BRIDGE_PREF_MEMORY_BASE), _w(data, Reg.BRIDGE_PREF_MEMORY_LIMIT)
        pref_lo = (pbase & 0xFFF0) << 16
        pref_hi = ((plimit & 0xFFF0) << 16) | 0xFFFFF
        if pbase & 0xF == 1:  # 64-bit prefetchable window
            pref_lo |= _d(data, Reg.BRIDGE_PREF_BASE_UPPER32) << 32
            pref_hi |= _d(data, Reg.BRIDGE_PREF_LIMIT_UPPER32) << 32
        header.bridge = {
            "primary_bus": data[Reg.BRIDGE_PRIMARY_BUS],
            "secondary_bus": data[Reg.BRIDGE_SECONDARY_BUS],
            "subordinate_bus": data[Reg.BRIDGE_SUBORDINATE_BUS],
            "secondary_latency": data[Reg.BRIDGE_SEC_LATENCY],
            "io_window": _window(io_lo, io_hi),
            "memory_window": _window(mem_lo, mem_hi),
            "prefetchable_window": _window(pref_lo, pref_hi),
            "bridge_control": f"{_w(data, Reg.BRIDGE_CONTROL):#06x}",
        }
    return header


def _window(low: int, high: int) -> str | None:
    return f"{low:#x}-{high:#x}" if low <= high else None


def _resource_for(resources: Sequence[Resource] | None, index: int) -> Resource | None:
    if resources is None:
        return None
    return next((r for r in resources if r.index == index), None)


def _size(res: Resource | None) -> int | None:
    return None if res is None else res.size


def decode_bars(data: bytes, resources: Sequence[Resource] | None = None, *,
                first: int = Reg.BAR0, count: int | None = None) -> list[Bar]:
    """The BARs of a type 0 or type 1 header; sizes from ``resources`` when given.

    ``first`` and ``count`` name another block of BAR slots laid out the same way (the six VF
    BARs of an SR-IOV capability); by default the header's own.
    """
    if count is None:
        count = BAR_COUNT.get(data[Reg.HEADER_TYPE] & HEADER_TYPE_MASK, 0)
    bars: list[Bar] = []
    index = 0
    while index < count:
        offset = first + 4 * index
        raw = _d(data, offset)
        if raw == 0xFFFFFFFF:  # nothing answering (or a broken device): not a BAR
            index += 1
            continue
        if raw & BAR_SPACE_IO:
            bars.append(Bar(index, offset, "io", False, False, raw & BAR_IO_ADDR_MASK,
                            _size(_resource_for(resources, index)), raw))
            index += 1
            continue
        is_64 = (raw & BAR_MEM_TYPE_MASK) == BAR_MEM_TYPE_64 and index + 1 < count
        address = raw & BAR_MEM_ADDR_MASK
        if is_64:
            address |= _d(data, offset + 4) << 32
        res = _resource_for(resources, index)
        if raw or (res is not None and _size(res)):
            bars.append(Bar(index, offset, "mem", is_64, bool(raw & BAR_MEM_PREFETCH), address,
                            _size(res), raw))
        index += 2 if is_64 else 1
    return bars


def decode_rom(data: bytes, resources: Sequence[Resource] | None = None) -> Rom | None:
    htype = data[Reg.HEADER_TYPE] & HEADER_TYPE_MASK
    offset = ROM_OFFSET.get(htype)
    if offset is None:
        return None
    raw = _d(data, offset)
    res = _resource_for(resources, ROM_RESOURCE_INDEX)
    if not raw and not _size(res):
        return None
    return Rom(offset, raw & ROM_ADDR_MASK, bool(raw & ROM_ENABLE), _size(res), raw)

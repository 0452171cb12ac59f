"""What ``inspect`` shows about one device, as plain data (the command only renders it).

Given config bytes (as many as could be read) and, when the host knows them, the device's
resources and IRQ, this decodes the header, BARs and both capability lists, builds the overlay the
device would get if exported, and lists every field with what the guest reads next to what the
hardware holds. All on an in-memory copy: inspecting never touches the device.
"""

from __future__ import annotations

from collections.abc import Sequence
import re
from dataclasses import dataclass, field

from xenpciback_cli.config import capabilities, decode
from xenpciback_cli.config.fields import MemoryAccessor
from xenpciback_cli.config.overlay import OverlayDevice, Policy
from xenpciback_cli.config.registers import CONFIG_SIZE, EXT_CONFIG_SIZE
from xenpciback_cli.errors import InputError
from xenpciback_cli.pci.device import Resource


@dataclass
class DeviceSource:
    """Config bytes and what we know besides them."""

    bdf: str
    data: bytes
    source: str  # "sysfs", "sandbox", "dump FILE", "binary FILE"
    resources: Sequence[Resource] | None = None
    irq: int | None = None  # dom0's IRQ (what Linux shows in INTERRUPT_LINE); None: unknown
    title: str = ""
    vendor_id: int | None = None  # the kernel's ids (an SR-IOV VF reads all-ones in hardware)
    device_id: int | None = None
    notes: list[str] = field(default_factory=list)


_WRITE_RE = re.compile(r"^\s*(-?(?:0x)?[0-9a-fA-F]+):([124]):((?:0x)?[0-9a-fA-F]+)\s*$")


def parse_guest_write(text: str) -> tuple[int, int, int]:
    """``OFFSET:SIZE:VALUE`` (hex; size 1, 2 or 4) as typed after ``inspect --write``."""
    match = _WRITE_RE.match(text)
    if not match:
        raise InputError(f"invalid guest write {text!r}: expected OFFSET:SIZE:VALUE in hex with "
                         "SIZE 1, 2 or 4, e.g. 0x04:2:0x0000")
    value = int(match.group(3), 16)
    size = int(match.group(2))
    if value >= 1 << (8 * size):
        raise InputError(f"invalid guest write {text!r}: value does not fit in {size} bytes")
    return int(match.group(1), 16), size, value


def _simulate_writes(overlay: OverlayDevice, hw: MemoryAccessor,
                     writes: Sequence[tuple[int, int, int]]) -> list[dict[str, object]]:
    """Apply guest writes to the in-memory copy; report each answer and what reached hardware."""
    out = []
    for offset, size, value in writes:
        before = bytes(hw.data)
        err = overlay.write(offset, size, value)
        changes = [{"offset": i, "before": f"{a:#04x}", "after": f"{b:#04x}"}
                   for i, (a, b) in enumerate(zip(before, hw.data)) if a != b]
        read_err, readback = overlay.read(offset, size)
        digits = 2 * size  # as wide as the access: a 2-byte value is 0x0000
        out.append({"offset": offset, "size": size, "value": f"0x{value:0{digits}x}", "err": err,
                    "err_name": err_name(err), "hardware_changes": changes,
                    "guest_reads_back": f"0x{readback:0{digits}x}" if read_err == 0 else None,
                    "read_err": read_err, "read_err_name": err_name(read_err)})
    return out


def err_name(err: int) -> str:
    """``XEN_PCI_ERR_*`` (or a raw errno) in words: 0 "success", -2 "invalid offset"."""
    from xenpciback_cli.pv.abi import Errno, XenPciErr

    for kind in (XenPciErr, Errno):
        try:
            return kind(err).name.lower().replace("_", " ")
        except ValueError:
            continue
    return "unknown error"


def build_report(src: DeviceSource, *, permissive: bool = False,
                 writes: Sequence[tuple[int, int, int]] = ()) -> dict[str, object]:
    data = src.data
    notes = list(src.notes)
    if len(data) < 0x40:
        raise ValueError(f"{src.bdf}: only {len(data)} bytes of config space")
    walk = capabilities.walk(data)
    # The size comes from the capabilities (as Linux decides it), never from how many bytes the
    # source happened to hold: a 4096-byte capture of a conventional device is still 256.
    config_size = capabilities.config_space_size(data)
    has_ext = config_size == EXT_CONFIG_SIZE
    if len(data) <= 0x40:
        why = "sysfs gives the rest to root only" if src.source in ("sysfs", "sandbox") \
            else "the source holds no more"
        notes.append(f"only the first 64 bytes of config space are readable ({why}): "
                     "capabilities and bytes from 0x40 are unknown")
    elif has_ext and len(data) <= CONFIG_SIZE:
        notes.append("extended config space (0x100-0xfff) was not available: extended "
                     "capabilities are unknown")
    irq = src.irq
    if irq is None:
        irq = data[0x3C]
        notes.append("dom0 IRQ unknown: the guest's interrupt line is shown as the register value")
    hw = MemoryAccessor(data, size=config_size)
    overlay = OverlayDevice(hw, resources=src.resources, config_size=config_size, irq=irq,
                            vendor_id=src.vendor_id, device_id=src.device_id,
                            permissive=permissive, policy=Policy())
    header = decode.decode_header(data)
    bars = decode.decode_bars(data, src.resources)
    rom = decode.decode_rom(data, src.resources)
    if src.resources is None:
        notes.append("no resource information: BAR and ROM sizes are unknown")
    notes.extend(overlay.problems)
    readable = len(data)
    shown = min(readable, config_size)  # bytes past the config size belong to no register
    fields = []
    for f in sorted(overlay.fields(), key=lambda f: f.offset):
        item = f.describe()
        known = f.end <= shown
        hw_value = int.from_bytes(data[f.offset:f.end], "little") if known else None
        err, guest = overlay.read(f.offset, f.size)
        width = 2 + 2 * f.size
        item["hardware_value"] = None if hw_value is None else f"{hw_value:#0{width}x}"
        item["guest_value"] = f"{guest:#0{width}x}" if err == 0 and known else None
        item["differs"] = known and err == 0 and guest != hw_value
        fields.append(item)
    guest_bytes = overlay.guest_view(shown - shown % 4)
    simulated = _simulate_writes(overlay, hw, writes)
    report: dict[str, object] = {
        "bdf": src.bdf,
        "title": src.title,
        "source": src.source,
        "config_bytes": readable,
        "config_size": config_size,
        "vendor_id": f"{overlay.vendor_id:#06x}",
        "device_id": f"{overlay.device_id:#06x}",
        "class": f"{header.class_code:#08x}",
        "header_type": header.header_type,
        "header": header.as_dict(),
        "bars": [b.as_dict() for b in bars],
        "rom": rom.as_dict() if rom else None,
        "capabilities": [c.as_dict() for c in walk.standard],
        "extended_capabilities": [c.as_dict() for c in walk.extended],
        "problems": walk.problems,
        "notes": notes,
        "fields": fields,
        "other_registers": "read from hardware; writes dropped" + (
            " (written: permissive)" if permissive else " unless the device is permissive"),
        "config": data.hex(),
        "guest_config": guest_bytes.hex(),
    }
    if writes:
        report["guest_writes"] = simulated
        report["guest_config_after_writes"] = overlay.guest_view(shown - shown % 4).hex()
        report["config_after_writes"] = bytes(hw.data[:shown]).hex()
    return report

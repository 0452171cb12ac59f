"""Field descriptions of the overlay, and the hardware accessor protocol it talks through.

A field is a register range the overlay treats specially. How a guest read is served is data: a
per-field ``hw_mask`` (bits read live from the device) and a virtual value for the other bits.
That covers every case Linux has - pass-through (mask all ones), emulated or constant (mask 0),
and mixed (COMMAND shows the hardware's bus-master-and-friends bits and the guest's own I/O and
memory bits; PMC hides PME_Support) - with one read rule and no per-field code on the read path.
How a write is applied is the field's write handler, named by ``write_kind``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any, Protocol

from xenpciback_cli.config.registers import XenPciErr


class HardwareAccessor(Protocol):
    """The device's real config space. ``read`` and ``write`` may raise ConfigAccessError."""

    def read(self, offset: int, size: int) -> int: ...

    def write(self, offset: int, size: int, value: int) -> None: ...


class ConfigAccessError(Exception):
    """The hardware access failed; ``err`` is what the guest gets (wire code or -errno)."""

    def __init__(self, err: int = XenPciErr.OP_FAILED) -> None:
        super().__init__(f"config access failed ({err})")
        self.err = int(err)


class QuirkError(ValueError):
    """A quirk the overlay refuses (bad size, misaligned, out of range, overlapping a field)."""


#: How a read is served, for ``fields()`` and ``inspect``.
READ_HARDWARE = "hardware"
READ_EMULATED = "emulated"
READ_CONSTANT = "constant"
READ_MIXED = "mixed"

#: Write kinds and what they mean, in words shown by ``inspect``.
WRITE_EFFECTS = {
    "drop": "dropped",
    "hardware": "written to hardware",
    "masked": "written to hardware under the quirk mask",
    "command": "IO/MEM/PARITY/SERR/INTX_DISABLE kept virtual; MASTER and MWI via enable; "
               "other guest bits (0x02bc) reach hardware only in permissive mode",
    "bist": "written only to start BIST without changing other bits",
    "bar": "all-ones sizes the BAR (virtual); writing the original value restores it; "
           "any other value ignored (BARs cannot move)",
    "rom": "all-ones sizes the ROM (virtual); writing the original value restores it; "
           "any other value ignored",
    "vpd_address": "VPD read requests written to hardware; VPD write requests denied (-3)",
    "pmcsr": "power state D0-D3hot and PME_Status/Data_Select written; PME_Enable never",
    "msi_flags": "denied (-3) unless unchanged; enabling goes through the enable_msi op",
    "msix_flags": "denied (-3) unless unchanged; enabling goes through the enable_msix op",
    "readonly": "dropped, even in permissive mode",
}


@dataclass(eq=False, slots=True)  # identity: two fields are never the same field
class Field:
    """One register range: where, how big, how it reads, how a write is applied."""

    offset: int
    size: int
    name: str
    read_kind: str
    hw_mask: int  # bits of the field read live from hardware
    virtual: int  # the other bits' value (only bits outside hw_mask matter)
    write_kind: str
    mask: int = 0  # quirk write mask; the restore/sizing state for BARs lives below
    # BAR / ROM state (Linux's val, len_val, which)
    bar_val: int = 0
    bar_len: int = 0
    bar_sizing_mask: int = 0
    size_known: bool = True
    # Whether a guest write of bar_val may be written back to hardware ("restore"): only for a
    # BAR the kernel assigned (a usable resource), never for one it shows as 0 (stricter than
    # Linux, which would write that 0 over the hardware address).
    restorable: bool = False
    # Filled in by the overlay when it builds its tables: the bound write handler, and the read
    # entries (key, offset, size, hardware mask) to refresh when the virtual value changes.
    writer: Any = None
    read_entries: tuple[tuple[int, int, int, int], ...] = ()
    entry_cache: dict[int, dict[int, tuple[int, int, tuple[int, int]]]] | None = None

    width_mask: int = 0  # all ones over the field's bytes (set from size)

    def __post_init__(self) -> None:
        self.width_mask = (1 << (8 * self.size)) - 1

    @property
    def end(self) -> int:
        return self.offset + self.size

    def describe(self) -> dict[str, object]:
        out: dict[str, object] = {
            "offset": int(self.offset), "size": self.size, "name": self.name,
            "read": self.read_kind, "write": self.write_kind,
            "write_effect": WRITE_EFFECTS[self.write_kind],
        }
        if self.read_kind == READ_MIXED:
            out["hardware_bits"] = f"{self.hw_mask:#0{2 + 2 * self.size}x}"
        if self.write_kind == "masked":
            out["mask"] = f"{self.mask:#0{2 + 2 * self.size}x}"
        if self.write_kind in ("bar", "rom") and not self.size_known:
            out["size_known"] = False
        return out


_UNPACK = {1: struct.Struct("<B").unpack_from, 2: struct.Struct("<H").unpack_from,
           4: struct.Struct("<I").unpack_from}


class MemoryAccessor:
    """Config space held in memory: the hardware of tests, benchmarks and ``inspect``.

    Like the sysfs ``config`` file it stands for, it answers only for the bytes that could be
    read (``readable``: 64 for sysfs without root, 256 for an ``lspci -xxx`` dump): an access
    beyond them fails with ``XEN_PCI_ERR_op_failed`` and changes nothing, so a simulated write
    never lands on bytes nobody knows. ``reads`` and ``writes`` count accesses so tests can prove
    emulated reads touch no hardware and building an overlay writes nothing.
    """

    def __init__(self, data: bytes, size: int | None = None, readable: int | None = None) -> None:
        total = size if size is not None else len(data)
        self.data = bytearray(b"\xff" * total)
        self.data[:min(len(data), total)] = data[:total]
        self.readable = min(len(data) if readable is None else readable, total)
        self.reads = 0
        self.writes = 0
        self.log: list[tuple[int, int, int]] = []

    def read(self, offset: int, size: int) -> int:
        self.reads += 1
        if offset < 0 or offset + size > self.readable:
            raise ConfigAccessError(XenPciErr.OP_FAILED)
        try:  # the overlay's sizes 1, 2, 4: one C call, no slice (the per-op path)
            value: int = _UNPACK[size](self.data, offset)[0]
        except KeyError:  # any other size: this accessor is general
            return int.from_bytes(self.data[offset:offset + size], "little")
        return value

    def write(self, offset: int, size: int, value: int) -> None:
        if offset < 0 or offset + size > self.readable:
            raise ConfigAccessError(XenPciErr.OP_FAILED)
        self.writes += 1
        self.log.append((offset, size, value))
        self.data[offset:offset + size] = value.to_bytes(size, "little")

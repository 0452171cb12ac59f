"""Walking the capability list and the extended capability list, and naming what is found.

Both lists are linked lists written by the device (or, for a guest-visible copy, by whoever
produced the bytes), so they are untrusted: every step is bounds-checked against the bytes that
could actually be read, every visited offset is remembered so a cycle ends the walk, and the
number of steps is capped. A broken list never raises; the walk stops and says why in
``problems``.

The walk follows lspci's rules (so ``inspect`` and ``lspci -vvv`` list the same entries):

* nothing for an unknown header type (not 0, 1 or 2): the pointer's place is unknown;
* standard list: only when STATUS has the capability-list bit; the pointer is at 0x34 (0x14 for a
  CardBus bridge); the low two bits of every pointer are ignored; id 0xFF means "chain broken";
* extended list: only for devices that have a PCI Express or PCI-X capability, starting at 0x100;
  an all-zero or all-ones header ends it; an id of 0xFFFF is listed like any other (lspci does so) with a
  problem noted; the next pointer is bits 20..31 with the low two bits ignored.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from xenpciback_cli.config.le import u16 as _word
from xenpciback_cli.config.le import u32 as _dword
from xenpciback_cli.config.registers import (
    CONFIG_SIZE,
    EXT_CONFIG_SIZE,
    CapId,
    ExtCapId,
    HeaderType,
    HEADER_TYPE_MASK,
    Reg,
    STATUS_CAP_LIST,
)

#: A standard list cannot hold more than (256 - 64) / 4 entries; an extended one (4096-256)/4.
MAX_STD_STEPS = 48
MAX_EXT_STEPS = (4096 - 256) // 4

CAP_NAMES: dict[int, str] = {
    CapId.NULL: "Null",
    CapId.PM: "Power Management",
    CapId.AGP: "AGP",
    CapId.VPD: "Vital Product Data",
    CapId.SLOTID: "Slot ID",
    CapId.MSI: "MSI",
    CapId.CHSWP: "CompactPCI hot-swap",
    CapId.PCIX: "PCI-X",
    CapId.HT: "HyperTransport",
    CapId.VNDR: "Vendor Specific Information",
    CapId.DBG: "Debug port",
    CapId.CCRC: "CompactPCI central resource control",
    CapId.SHPC: "Hot-plug capable",
    CapId.SSVID: "Subsystem",
    CapId.AGP3: "AGP3",
    CapId.SECDEV: "Secure device",
    CapId.EXP: "Express",
    CapId.MSIX: "MSI-X",
    CapId.SATA: "SATA HBA",
    CapId.AF: "PCI Advanced Features",
    CapId.EA: "Enhanced Allocation (EA)",
    CapId.FPB: "Flattening Portal Bridge (FPB)",
}

EXT_CAP_NAMES: dict[int, str] = {
    ExtCapId.NULL: "Null",
    ExtCapId.ERR: "Advanced Error Reporting",
    ExtCapId.VC: "Virtual Channel",
    ExtCapId.DSN: "Device Serial Number",
    ExtCapId.PWR: "Power Budgeting",
    ExtCapId.RCLINK: "Root Complex Link",
    ExtCapId.RCILINK: "Root Complex Internal Link",
    ExtCapId.RCEC: "Root Complex Event Collector Endpoint Association",
    ExtCapId.MFVC: "Multi-Function Virtual Channel",
    ExtCapId.VC9: "Virtual Channel",
    ExtCapId.RCRB: "Root Complex Register Block",
    ExtCapId.VNDR: "Vendor Specific Information",
    ExtCapId.CAC: "Configuration Access Correlation",
    ExtCapId.ACS: "Access Control Services",
    ExtCapId.ARI: "Alternative Routing-ID Interpretation (ARI)",
    ExtCapId.ATS: "Address Translation Service (ATS)",
    ExtCapId.SRIOV: "Single Root I/O Virtualization (SR-IOV)",
    ExtCapId.MRIOV: "Multi-Root I/O Virtualization (MR-IOV)",
    ExtCapId.MCAST: "Multicast",
    ExtCapId.PRI: "Page Request Interface (PRI)",
    ExtCapId.AMD_XXX: "Reserved for AMD",
    ExtCapId.REBAR: "Physical Resizable BAR",
    ExtCapId.DPA: "Dynamic Power Allocation",
    ExtCapId.TPH: "Transaction Processing Hints",
    ExtCapId.LTR: "Latency Tolerance Reporting",
    ExtCapId.SECPCI: "Secondary PCI Express",
    ExtCapId.PMUX: "Protocol Multiplexing",
    ExtCapId.PASID: "Process Address Space ID (PASID)",
    ExtCapId.LNR: "LN Requester",
    ExtCapId.DPC: "Downstream Port Containment",
    ExtCapId.L1SS: "L1 PM Substates",
    ExtCapId.PTM: "Precision Time Measurement",
    ExtCapId.MPCIE: "PCI Express over M-PHY",
    ExtCapId.FRS: "FRS Queueing",
    ExtCapId.RTR: "Readiness Time Reporting",
    ExtCapId.DVSEC: "Designated Vendor-Specific",
    ExtCapId.VF_REBAR: "VF Resizable BAR",
    ExtCapId.DLF: "Data Link Feature",
    ExtCapId.PL_16GT: "Physical Layer 16.0 GT/s",
    ExtCapId.LMR: "Lane Margining at the Receiver",
    ExtCapId.HIER_ID: "Hierarchy ID",
    ExtCapId.NPEM: "Native PCIe Enclosure Management",
    ExtCapId.PL_32GT: "Physical Layer 32.0 GT/s",
    ExtCapId.ALT_PROTO: "Alternate Protocol",
    ExtCapId.SFI: "System Firmware Intermediary",
    ExtCapId.SHADOW: "Shadow Functions",
    ExtCapId.DOE: "Data Object Exchange",
    ExtCapId.DEV3: "Device 3",
    ExtCapId.IDE: "Integrity and Data Encryption",
    ExtCapId.PL_64GT: "Physical Layer 64.0 GT/s",
    ExtCapId.FLIT_LOG: "Flit Logging",
    ExtCapId.FLIT_PERF: "Flit Performance Measurement",
    ExtCapId.FLIT_ERR_INJ: "Flit Error Injection",
}

_EXP_PORT_TYPES = {
    0x0: "Endpoint", 0x1: "Legacy Endpoint", 0x4: "Root Port", 0x5: "Upstream Port",
    0x6: "Downstream Port", 0x7: "PCI-Express to PCI/PCI-X Bridge",
    0x8: "PCI/PCI-X to PCI-Express Bridge", 0x9: "Root Complex Integrated Endpoint",
    0xA: "Root Complex Event Collector",
}


def cap_name(cap_id: int) -> str:
    return CAP_NAMES.get(cap_id, f"Capability ID {cap_id:#04x}")


def ext_cap_name(cap_id: int) -> str:
    return EXT_CAP_NAMES.get(cap_id, f"Extended Capability ID {cap_id:#06x}")


@dataclass(frozen=True)
class Capability:
    """One entry of either list. ``version`` is the extended header's version (0 for standard)."""

    offset: int
    id: int
    name: str
    extended: bool = False
    version: int = 0
    detail: str = ""

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"offset": self.offset, "id": f"{self.id:#04x}" if not self.extended
                                  else f"{self.id:#06x}", "name": self.name}
        if self.extended:
            out["version"] = self.version
        if self.detail:
            out["detail"] = self.detail
        return out


@dataclass
class CapabilityWalk:
    """Both lists of one device, plus what was wrong with them (never an exception)."""

    standard: list[Capability] = field(default_factory=list)
    extended: list[Capability] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def find(self, cap_id: int) -> Capability | None:
        """First standard capability with this id (the one Linux's lookup would find)."""
        return next((c for c in self.standard if c.id == cap_id), None)

    def find_ext(self, cap_id: int) -> Capability | None:
        return next((c for c in self.extended if c.id == cap_id), None)


def _detail(data: bytes, offset: int, cap_id: int) -> str:
    """A short lspci-like qualifier (PM version, Express version and port type)."""
    flags = _word(data, offset + 2)
    if cap_id == CapId.PM:
        return f"version {flags & 0x7}"
    if cap_id == CapId.EXP:
        kind = _EXP_PORT_TYPES.get((flags >> 4) & 0xF, f"Unknown type {(flags >> 4) & 0xF}")
        return f"(v{flags & 0xF}) {kind}"
    if cap_id == CapId.AGP:
        return f"version {(data[offset + 2] >> 4) & 0xF}.{data[offset + 2] & 0xF}"
    if cap_id == CapId.PCIX:
        header_type = data[Reg.HEADER_TYPE] & HEADER_TYPE_MASK
        return "bridge device" if header_type == HeaderType.BRIDGE else "non-bridge device"
    return ""


def walk(data: bytes) -> CapabilityWalk:
    """Walk both capability lists of the config bytes ``data`` (as many bytes as were readable)."""
    result = CapabilityWalk()
    available = len(data)
    if available < 0x40:
        result.problems.append(f"only {available} bytes of config space: no capability list")
        return result
    can_have_ext = False
    header_type = data[Reg.HEADER_TYPE] & HEADER_TYPE_MASK
    if header_type not in (HeaderType.NORMAL, HeaderType.BRIDGE, HeaderType.CARDBUS):
        result.problems.append(f"unknown header type {header_type:#04x}: layout unknown, "
                               "capabilities not walked")
        return result
    if _word(data, Reg.STATUS) & STATUS_CAP_LIST:
        pointer_reg = Reg.CARDBUS_CAPABILITY_LIST if header_type == HeaderType.CARDBUS \
            else Reg.CAPABILITY_LIST
        where = data[pointer_reg] & ~3
        seen: set[int] = set()
        steps = 0
        while where:
            if where + 4 > available:
                result.problems.append(
                    f"capability at {where:#04x} lies beyond the {available} readable bytes")
                break
            if where in seen:
                result.problems.append(f"capability list loops back to {where:#04x}")
                break
            steps += 1
            if steps > MAX_STD_STEPS:
                result.problems.append("capability list too long")
                break
            seen.add(where)
            cap_id = data[where]
            if cap_id == 0xFF:
                result.problems.append(f"capability list broken at {where:#04x} (id 0xff)")
                break
            if where < 0x40:
                result.problems.append(f"capability at {where:#04x} points into the header")
            result.standard.append(Capability(where, cap_id, cap_name(cap_id),
                                              detail=_detail(data, where, cap_id)))
            if cap_id in (CapId.EXP, CapId.PCIX):
                can_have_ext = True
            where = data[where + 1] & ~3
    if can_have_ext:
        _walk_extended(data, result)
    return result


def extended_list(data: bytes | bytearray,
                  problems: list[str] | None = None) -> Iterator[tuple[int, int]]:
    """``(offset, header dword)`` of each entry of the extended capability list in ``data``.

    The one walk of that list (the rules are in the module docstring): it ends at an all-zero or
    all-ones header, at the end of the readable bytes, on a loop, or after ``MAX_EXT_STEPS``; why
    it ended early is appended to ``problems`` when given. Entries whose pointer leads back into
    standard space are yielded (lspci lists them); :func:`find_extended` stops there.
    """
    available = len(data)
    where = 0x100
    seen: set[int] = set()
    steps = 0
    while where:
        if where + 4 > available:
            if problems is not None and (where != 0x100 or available > 0x100):
                problems.append(
                    f"extended capability at {where:#05x} lies beyond the {available} readable bytes")
            return
        header = _dword(data, where)
        if header == 0:
            return
        if header == 0xFFFFFFFF:  # nothing answering there (lspci stops silently too)
            if problems is not None and where != 0x100:
                problems.append(f"extended capability at {where:#05x} reads all-ones")
            return
        if where in seen:
            if problems is not None:
                problems.append(f"extended capability list loops back to {where:#05x}")
            return
        steps += 1
        if steps > MAX_EXT_STEPS:
            if problems is not None:
                problems.append("extended capability list too long")
            return
        seen.add(where)
        yield where, header
        where = (header >> 20) & ~3


def find_extended(data: bytes | bytearray, cap_id: int) -> int | None:
    """Offset of the first extended capability with id ``cap_id``, or None. Like Linux's
    ``pci_find_ext_capability`` it does not follow a pointer back into standard space."""
    for where, header in extended_list(data):
        if where < 0x100:
            return None
        if header & 0xFFFF == cap_id:
            return where
    return None


def _walk_extended(data: bytes, result: CapabilityWalk) -> None:
    for where, header in extended_list(data, result.problems):
        cap_id = header & 0xFFFF
        if cap_id == 0xFFFF:  # listed (as lspci does), but say what it probably means
            result.problems.append(f"extended capability at {where:#05x} reads as id 0xffff "
                                   "(no device answering, or a broken list)")
        if where < 0x100:
            result.problems.append(f"extended capability at {where:#05x} lies in standard space")
        result.extended.append(Capability(where, cap_id, ext_cap_name(cap_id), extended=True,
                                          version=(header >> 16) & 0xF))


def has_express(data: bytes) -> bool:
    """Whether the device has a PCI Express capability (and so 4096 bytes of config space)."""
    return walk(data[:256]).find(CapId.EXP) is not None


#: PCI-X status register (capability + 4) bits saying "PCI-X 2.0: 266 / 533 MHz capable".
_PCIX_STATUS = 4
_PCIX_STATUS_266_533 = 0x40000000 | 0x80000000


def config_space_size(data: bytes,
                      read_dword: Callable[[int], int | None] | None = None) -> int:
    """The device's config space size (256 or 4096) the way Linux's ``pci_cfg_space_size``
    decides it - from the capabilities, never from how many bytes happened to be readable.

    Extended space exists for a PCI Express device, a PCI-X 2.0 device (266/533 MHz capable) and
    a host bridge, and only if the dword at 0x100 does not read all-ones and is not an alias of
    the header. ``data`` is the config bytes that could be read (at least the first 256 for the
    capabilities; 64 readable bytes show none, so such a device counts as conventional);
    ``read_dword(offset)`` reads an extended-space dword, ``None`` when it cannot be read (the
    default looks in ``data``). When 0x100 cannot be read, an Express or PCI-X 2.0 capability
    still means 4096 (an ``lspci -xxx`` dump holds 256 bytes of a 4096-byte device); a host
    bridge without readable extended space counts as 256.
    """
    if read_dword is None:
        def read_dword(offset: int) -> int | None:
            return _dword(data, offset) if offset + 4 <= len(data) else None
    if len(data) < 0x40:
        return CONFIG_SIZE
    caps = walk(data[:CONFIG_SIZE])
    express = caps.find(CapId.EXP) is not None
    pcix = caps.find(CapId.PCIX)
    pcix2 = pcix is not None and pcix.offset + 8 <= len(data) and \
        bool(_dword(data, pcix.offset + _PCIX_STATUS) & _PCIX_STATUS_266_533)
    host_bridge = data[Reg.CLASS_DEVICE + 1] == 0x06 and data[Reg.CLASS_DEVICE] == 0x00
    if not (express or pcix2 or host_bridge):
        return CONFIG_SIZE
    first = read_dword(CONFIG_SIZE)
    if first is None:
        return EXT_CONFIG_SIZE if express or pcix2 else CONFIG_SIZE
    if first == 0xFFFFFFFF:
        return CONFIG_SIZE
    header = _dword(data, 0)
    if first == header and all(read_dword(pos) == header
                               for pos in range(0x200, EXT_CONFIG_SIZE, 0x100)):
        return CONFIG_SIZE  # extended space is the header again (an aliasing host bridge)
    return EXT_CONFIG_SIZE

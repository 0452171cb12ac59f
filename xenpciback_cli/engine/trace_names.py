"""Names of the registers a trace's ops touch, for ``trace show|stats|diff``.

From a device line's config snapshot: the standard header by its type (``0x04 COMMAND``,
``0x08 REVISION_ID/CLASS_PROG/CLASS_DEVICE`` for a dword), BAR sizing (``0x18 BAR2 sizing``:
all ones written to a BAR, ``ROM_ADDRESS sizing`` likewise), and capability-relative names from
the capability lists the snapshot holds (``0x72 MSI-X+0x2 Message Control``, ``0x104 AER+0x4
Uncorrectable Error Status``). Register layouts are the PCI and PCI Express specifications'
(also Linux's ``include/uapi/linux/pci_regs.h``). A byte outside every known register is its
offset alone.
"""

from __future__ import annotations

from xenpciback_cli.config.capabilities import walk
from xenpciback_cli.config.registers import CapId, ExtCapId, Reg
from xenpciback_cli.pv.abi import Errno, PciOp, XenPciErr
from xenpciback_cli.pv.trace import op_name

_ALL_ONES = 0xFFFFFFFF
_TYPE0 = {r.value: r.name for r in Reg if not r.name.startswith(("BRIDGE_", "CARDBUS_CAP"))}
_TYPE1 = {**{k: v for k, v in _TYPE0.items() if k < 0x18 or k in (0x34, 0x3C, 0x3D)},
          **{r.value: r.name[len("BRIDGE_"):] for r in Reg if r.name.startswith("BRIDGE_")}}
_SIZES = {0x00: 2, 0x02: 2, 0x04: 2, 0x06: 2, 0x2C: 2, 0x2E: 2, 0x3E: 1, 0x3F: 1,
          0x1E: 2, 0x20: 2, 0x22: 2, 0x24: 2, 0x26: 2, 0x28: 4, 0x30: 4, 0x32: 2}

_CAP_SHORT = {CapId.PM: "PM", CapId.MSI: "MSI", CapId.MSIX: "MSI-X", CapId.EXP: "Express",
              CapId.VNDR: "Vendor", CapId.PCIX: "PCI-X", CapId.VPD: "VPD", CapId.AF: "AF",
              CapId.SSVID: "SSVID", CapId.HT: "HT"}
_EXT_SHORT = {ExtCapId.ERR: "AER", ExtCapId.SRIOV: "SR-IOV", ExtCapId.DSN: "DSN",
              ExtCapId.ARI: "ARI", ExtCapId.ACS: "ACS", ExtCapId.ATS: "ATS", ExtCapId.LTR: "LTR",
              ExtCapId.VNDR: "Vendor", ExtCapId.VC: "VC", ExtCapId.PWR: "Power Budgeting",
              ExtCapId.REBAR: "Resizable BAR", ExtCapId.PASID: "PASID", ExtCapId.PRI: "PRI",
              ExtCapId.TPH: "TPH", ExtCapId.SECPCI: "Secondary PCIe"}

#: Fields of a capability, relative to its start: (offset, name), ascending.
_PM = ((2, "PMC"), (4, "PMCSR"), (6, "PMCSR_BSE"), (7, "Data"))
_MSIX = ((2, "Message Control"), (4, "Table Offset/BIR"), (8, "PBA Offset/BIR"))
_EXPRESS = ((2, "Express Capabilities"), (4, "Device Capabilities"), (8, "Device Control"),
            (0xA, "Device Status"), (0xC, "Link Capabilities"), (0x10, "Link Control"),
            (0x12, "Link Status"), (0x14, "Slot Capabilities"), (0x18, "Slot Control"),
            (0x1A, "Slot Status"), (0x1C, "Root Control"), (0x1E, "Root Capabilities"),
            (0x20, "Root Status"), (0x24, "Device Capabilities 2"), (0x28, "Device Control 2"),
            (0x2A, "Device Status 2"), (0x2C, "Link Capabilities 2"), (0x30, "Link Control 2"),
            (0x32, "Link Status 2"), (0x34, "Slot Capabilities 2"), (0x38, "Slot Control 2"),
            (0x3A, "Slot Status 2"))
_AER = ((4, "Uncorrectable Error Status"), (8, "Uncorrectable Error Mask"),
        (0xC, "Uncorrectable Error Severity"), (0x10, "Correctable Error Status"),
        (0x14, "Correctable Error Mask"), (0x18, "Capabilities and Control"),
        (0x1C, "Header Log"), (0x2C, "Root Error Command"), (0x30, "Root Error Status"),
        (0x34, "Error Source ID"))
_SRIOV = ((4, "SR-IOV Capabilities"), (8, "SR-IOV Control"), (0xA, "SR-IOV Status"),
          (0xC, "InitialVFs"), (0xE, "TotalVFs"), (0x10, "NumVFs"),
          (0x12, "Function Dependency Link"), (0x14, "First VF Offset"), (0x16, "VF Stride"),
          (0x1A, "VF Device ID"), (0x1C, "Supported Page Sizes"), (0x20, "System Page Size"),
          (0x24, "VF BAR0"), (0x28, "VF BAR1"), (0x2C, "VF BAR2"), (0x30, "VF BAR3"),
          (0x34, "VF BAR4"), (0x38, "VF BAR5"), (0x3C, "VF Migration State"))
_DSN = ((4, "Serial Number Low"), (8, "Serial Number High"))
_EXT_FIELDS = {ExtCapId.ERR: _AER, ExtCapId.SRIOV: _SRIOV, ExtCapId.DSN: _DSN}
#: How long a capability is, when its layout says (others reach the next one).
_LENGTHS: dict[tuple[bool, int], int] = {(False, CapId.PM): 8, (False, CapId.MSIX): 12, (False, CapId.EXP): 0x3C,
            (True, ExtCapId.ERR): 0x38, (True, ExtCapId.SRIOV): 0x40, (True, ExtCapId.DSN): 12,
            (True, ExtCapId.ARI): 8, (True, ExtCapId.ACS): 8, (True, ExtCapId.LTR): 8}

def msi_fields(control: int) -> tuple[tuple[int, str], ...]:
    """MSI's layout depends on its Message Control: 64-bit addresses (bit 7) and per-vector
    masking (bit 8) move the fields after the address."""
    fields = [(2, "Message Control"), (4, "Message Address")]
    at = 8
    if control & 0x80:
        fields.append((8, "Message Upper Address"))
        at = 0xC
    fields.append((at, "Message Data"))
    if control & 0x100:
        fields += [(at + 4, "Mask Bits"), (at + 8, "Pending Bits")]
    return tuple(fields)


def err_name(err: int) -> str:
    """``ok``, ``dev_not_found`` (XEN_PCI_ERR_*), ``-ENXIO`` (errno), or ``error N``."""
    if err == 0:
        return "ok"
    try:
        return XenPciErr(err).name.lower()
    except ValueError:
        pass
    try:
        return f"-{Errno(err).name}"
    except ValueError:
        return f"error {err}"


class RegisterNames:
    """Names of one device's registers, from its config snapshot (``b""``: offsets only)."""

    def __init__(self, config: bytes) -> None:
        self.known = len(config) >= 0x40
        header_type = config[0x0E] & 0x7F if self.known else 0
        self.bridge = header_type == 1
        names = _TYPE1 if self.bridge else _TYPE0
        self.bars = 2 if self.bridge else (6 if header_type == 0 else 0)
        self.rom = 0x38 if self.bridge else 0x30
        #: byte of the header -> (register start, name)
        self.header: dict[int, tuple[int, str]] = {}
        for start, name in sorted(names.items()):
            if 0x10 <= start < 0x10 + 4 * self.bars:
                continue
            size = _SIZES.get(start, 4 if start in (0x10, 0x14, self.rom) else 1)
            for i in range(size):
                self.header.setdefault(start + i, (start, name))
        for n in range(self.bars):
            for i in range(4):
                self.header[0x10 + 4 * n + i] = (0x10 + 4 * n, f"BAR{n}")
        #: (start, end, short name, fields), standard then extended, sorted by start
        self.caps: list[tuple[int, int, str, tuple[tuple[int, str], ...]]] = []
        if self.known:
            self._capabilities(config)

    def _capabilities(self, config: bytes) -> None:
        found = walk(config)
        for caps, limit, extended in ((found.standard, 0x100, False),
                                      (found.extended, 0x1000, True)):
            starts = sorted(c.offset for c in caps)
            for cap in caps:
                later = [s for s in starts if s > cap.offset]
                end = later[0] if later else limit
                length = _LENGTHS.get((extended, cap.id))
                if extended:
                    name = _EXT_SHORT.get(cap.id, cap.name)  # type: ignore[call-overload]
                    fields: tuple[tuple[int, str], ...] = \
                        _EXT_FIELDS.get(cap.id, ())  # type: ignore[call-overload]
                else:
                    name = _CAP_SHORT.get(cap.id, cap.name)  # type: ignore[call-overload]
                    if cap.id == CapId.MSI and cap.offset + 4 <= len(config):
                        control = int.from_bytes(config[cap.offset + 2:cap.offset + 4], "little")
                        fields = msi_fields(control)
                        length = fields[-1][0] + 4
                    else:
                        fields = {CapId.PM: _PM, CapId.MSIX: _MSIX,
                                  CapId.EXP: _EXPRESS}.get(cap.id, ())  # type: ignore[call-overload]
                if length is not None:
                    end = min(end, cap.offset + length)
                self.caps.append((cap.offset, end, name, fields))
        self.caps.sort()

    def name(self, offset: int, size: int = 4, code: int = 0, value: int = 0) -> str:
        """``0x04 COMMAND``; for a non-config op its name."""
        if code != PciOp.CONF_READ and code != PciOp.CONF_WRITE:
            return op_name(code)
        return f"{offset:#04x} {self.label(offset, size, code == PciOp.CONF_WRITE, value)}" \
            .rstrip()

    def label(self, offset: int, size: int, write: bool = False, value: int = 0) -> str:
        """The register's name without the offset (``""`` when no register is known)."""
        if 0 <= offset < 0x40:
            return self._header(offset, size, write, value)
        for start, end, name, fields in self.caps:
            if start <= offset < end:
                return _in_cap(name, fields, offset - start, start < 0x100)
        return ""

    def _header(self, offset: int, size: int, write: bool, value: int) -> str:
        if not self.known and offset >= 0x10:
            return ""
        start, name = self.header.get(offset, (offset, ""))
        if write and size == 4 and start == offset and (
                (name.startswith("BAR") and value == _ALL_ONES)
                or (offset == self.rom and value & 0xFFFFF800 == 0xFFFFF800)):
            return f"{name} sizing"
        if start != offset:
            return f"{name}+{offset - start:#x}" if name else ""
        names = [name]
        at = offset + 1
        while at < min(offset + size, 0x40):
            other = self.header.get(at)
            if other is not None and other[0] == at:
                names.append(other[1])
            at += 1
        return "/".join(n for n in names if n)


def _in_cap(name: str, fields: tuple[tuple[int, str], ...], rel: int, standard: bool) -> str:
    label = f"{name}+{rel:#x}"
    if rel == 0:
        return f"{label} {'ID/Next' if standard else 'Header'}"
    if standard and rel == 1:
        return f"{label} Next"
    field_name = ""
    field_start = 0
    for start, what in fields:
        if start > rel:
            break
        field_start, field_name = start, what
    if not field_name:
        return label
    if field_start == rel:
        return f"{label} {field_name}"
    return f"{label} ({field_name}+{rel - field_start:#x})"

"""Shared helpers for the config-space tests: where the real captures are, and lspci as oracle.

(A uniquely named module, not conftest.py, so other test packages' conftest files cannot shadow
it on import.)"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared"
PCIUTILS_TESTS = SHARED / "fixtures" / "pciutils-tests"
FIRECRACKER = SHARED / "fixtures" / "config" / "firecracker-vm"


def pciutils_fixtures() -> list[Path]:
    if not PCIUTILS_TESTS.is_dir():
        return []
    return sorted(p for p in PCIUTILS_TESTS.iterdir() if p.is_file() and p.name != "SOURCE")


def firecracker_fixtures() -> list[Path]:
    if not FIRECRACKER.is_dir():
        return []
    return sorted(FIRECRACKER.glob("*.config"))


@pytest.fixture
def require_lspci() -> str:
    path = shutil.which("lspci")
    if path is None:
        pytest.skip("lspci (pciutils) is not installed")
    return path


# lspci prints names, not ids: this table maps the beginning of each name lspci prints to the id
# (written from the PCI specifications' id lists, independently of the code under test).
LSPCI_STD_NAMES = [
    ("Null", 0x00), ("Power Management", 0x01), ("AGP3", 0x0E), ("AGP", 0x02),
    ("Vital Product Data", 0x03), ("Slot ID", 0x04), ("MSI-X", 0x11), ("MSI", 0x05),
    ("CompactPCI hot-swap", 0x06), ("PCI-X", 0x07), ("HyperTransport", 0x08),
    ("Vendor Specific Information", 0x09), ("Debug port", 0x0A),
    ("CompactPCI central resource control", 0x0B), ("Hot-plug capable", 0x0C),
    ("Subsystem", 0x0D), ("Secure device", 0x0F), ("Express", 0x10), ("SATA HBA", 0x12),
    ("PCI Advanced Features", 0x13), ("Enhanced Allocation", 0x14),
    ("Flattening Portal Bridge", 0x15),
]
LSPCI_EXT_NAMES = [
    ("Null", 0x00), ("Advanced Error Reporting", 0x01), ("Multi-Function Virtual Channel", 0x08),
    ("Virtual Channel", (0x02, 0x09)), ("Device Serial Number", 0x03), ("Power Budgeting", 0x04),
    ("Root Complex Link", 0x05), ("Root Complex Internal Link", 0x06),
    ("Root Complex Event Collector", 0x07), ("Root Complex Register Block", 0x0A),
    ("Vendor Specific Information", 0x0B), ("Config", 0x0C), ("Access Control Services", 0x0D),
    ("Alternative Routing-ID", 0x0E), ("Address Translation Service", 0x0F),
    ("Single Root I/O Virtualization", 0x10), ("Multi-Root I/O Virtualization", 0x11),
    ("Multicast", 0x12), ("Page Request Interface", 0x13), ("Physical Resizable BAR", 0x15),
    ("Dynamic Power Allocation", 0x16), ("Transaction Processing Hints", 0x17),
    ("Latency Tolerance Reporting", 0x18), ("Secondary PCI Express", 0x19),
    ("Protocol Multiplexing", 0x1A), ("Process Address Space ID", 0x1B), ("LN Requester", 0x1C),
    ("Downstream Port Containment", 0x1D), ("L1 PM Substates", 0x1E),
    ("Precision Time Measurement", 0x1F), ("Readiness Time Reporting", 0x22),
    ("Designated Vendor-Specific", 0x23), ("VF Resizable BAR", 0x24), ("Data Link Feature", 0x25),
    ("Physical Layer 16.0 GT/s", 0x26), ("Lane Margining at the Receiver", 0x27),
    ("Hierarchy ID", 0x28), ("Native PCIe Enclosure Management", 0x29),
    ("Physical Layer 32.0 GT/s", 0x2A), ("Data Object Exchange", 0x2E), ("Device 3", 0x2F),
    ("Integrity", 0x30), ("Physical Layer 64.0 GT/s", 0x31),
]

_DEV_RE = re.compile(r"^(?:([0-9a-f]{4,}):)?([0-9a-f]{2}):([0-9a-f]{2})\.([0-7]) ")
_CAP_RE = re.compile(r"^\tCapabilities: \[([0-9a-f]+)(?: v(\d+))?\] (.*)$")
_UNKNOWN_RE = re.compile(r"^(?:Extended )?Capability ID (0x[0-9a-f]+|[0-9a-f]+)")


def _lspci_id(name: str, table: list) -> int | tuple[int, ...] | None:
    if not name:
        return None  # lspci printed no name: the offset is still compared
    unknown = _UNKNOWN_RE.match(name)
    if unknown:
        return int(unknown.group(1), 16)
    for prefix, cap_id in table:
        if name.startswith(prefix):
            return cap_id
    raise AssertionError(f"lspci printed a capability name this test does not know: {name!r}")


def parse_lspci(text: str) -> dict[str, dict[str, list]]:
    """Per device ('DDDD:BB:DD.F'): standard [(offset, id)] and extended [(offset, id, version)]."""
    devices: dict[str, dict[str, list]] = {}
    current = None
    for line in text.splitlines():
        dev = _DEV_RE.match(line)
        if dev:
            key = f"{int(dev.group(1) or '0', 16):04x}:{dev.group(2)}:{dev.group(3)}.{dev.group(4)}"
            current = devices.setdefault(key, {"standard": [], "extended": []})
            continue
        if current is None or not line.startswith("\tCapabilities: ["):
            continue
        # lspci prints nothing after the offset for a few malformed capabilities, so the next
        # entry can follow on the same line: split on every entry.
        for piece in line.split("\tCapabilities: ")[1:]:
            cap = _CAP_RE.match("\tCapabilities: " + piece)
            if not cap:
                continue
            offset = int(cap.group(1), 16)
            name = cap.group(3).strip()
            if name.startswith("<"):  # <chain looped>, <chain broken>, <access denied>
                continue
            if offset >= 0x100 or cap.group(2) is not None:
                current["extended"].append((offset, _lspci_id(name, LSPCI_EXT_NAMES),
                                            int(cap.group(2) or 0)))
            else:
                current["standard"].append((offset, _lspci_id(name, LSPCI_STD_NAMES)))
    return devices


def lspci_decode(args: list[str]) -> dict[str, dict[str, list]]:
    result = subprocess.run(["lspci", *args], capture_output=True, timeout=60, check=True)
    # lspci prints device-provided strings (VPD) as they are: not always UTF-8
    return parse_lspci(result.stdout.decode("utf-8", errors="replace"))


def id_matches(expected: int | tuple[int, ...] | None, actual: int) -> bool:
    if expected is None:
        return True
    return actual in expected if isinstance(expected, tuple) else actual == expected

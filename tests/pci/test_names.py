"""pci.ids lookups: vendor lines found by bisection (the file lists vendors in order), devices
inside their vendor's block only, classes from the section at the end; a file out of order or
without a class section still answers."""

from __future__ import annotations

import os
import random

import pytest

from xenpciback_cli.pci import names
from xenpciback_cli.pci.names import PciIds

SMALL = """\
#
#\tList of PCI ID's
#
# Vendors, devices and subsystems. Please keep sorted.

0001  SafeNet (wrong ID)
0010  Allied Telesis, Inc (Wrong ID)
# This is a relabelled RTL-8139
\t8139  AT-2500TX V3 Ethernet
1000  Broadcom / LSI
\t0001  53c810
\t\t1000 1000  LSI53C810AE PCI to SCSI I/O Processor
\t0002  53c820
10de  NVIDIA Corporation
\t1eb8  TU104GL [Tesla T4]
8086  Intel Corporation
\t10c9  82576 Gigabit Network Connection
\t\t8086 a03c  Ethernet Server Adapter I340-T4
\t1e31  7 Series/C210 Series Chipset Family USB xHCI Host Controller
ffff  Illegal Vendor ID

# List of known device classes, subclasses and programming interfaces

C 00  Unclassified device
\t00  Non-VGA unclassified device
C 02  Network controller
\t00  Ethernet controller
\t80  Network controller
C 0c  Serial bus controller
\t03  USB controller
\t\t30  XHCI
C ff  Unassigned class
"""


@pytest.fixture
def small() -> PciIds:
    return PciIds(SMALL)


@pytest.mark.parametrize("vendor, name", [
    (0x0001, "SafeNet (wrong ID)"), (0x0010, "Allied Telesis, Inc (Wrong ID)"),
    (0x1000, "Broadcom / LSI"), (0x10DE, "NVIDIA Corporation"), (0x8086, "Intel Corporation"),
    (0xFFFF, "Illegal Vendor ID"), (0x0002, None), (0x1234, None), (0x9000, None),
])
def test_vendor_first_middle_last_and_absent(small, vendor, name):
    assert small.vendor(vendor) == name


def test_device_only_inside_its_vendors_block(small):
    assert small.device(0x8086, 0x10C9) == "82576 Gigabit Network Connection"
    assert small.device(0x1000, 0x0002) == "53c820"
    assert small.device(0x10DE, 0x10C9) is None  # Intel's device, below a later vendor line
    assert small.device(0x0001, 0x8139) is None  # the next vendor's (a comment between)
    assert small.device(0x0010, 0x8139) == "AT-2500TX V3 Ethernet"
    assert small.device(0x1000, 0x1000) is None  # a subsystem line is not a device line
    assert small.device(0x1234, 0x0001) is None


@pytest.mark.parametrize("class_code, name", [
    (0x020000, "Ethernet controller"), (0x028000, "Network controller"),
    (0x0C0330, "USB controller"), (0x020500, "Network controller"),  # unknown subclass: base
    (0x000000, "Non-VGA unclassified device"), (0xFF0000, "Unassigned class"),
    (0x030000, "Display controller"),  # no such class line: the spec's base-class name
    (0x140000, None),
])
def test_class_names(small, class_code, name):
    assert small.class_name(class_code) == name


def test_a_file_out_of_order_still_answers():
    ids = PciIds("# not sorted\n8086  Intel Corporation\n\t10c9  82576\n0001  SafeNet\n"
                 "10de  NVIDIA Corporation\n\t1eb8  TU104GL\n1000  Broadcom / LSI\n")
    assert [ids.vendor(v) for v in (0x8086, 0x0001, 0x10DE, 0x1000, 0x2000)] == [
        "Intel Corporation", "SafeNet", "NVIDIA Corporation", "Broadcom / LSI", None]
    assert ids.device(0x8086, 0x10C9) == "82576"
    assert ids.device(0x10DE, 0x1EB8) == "TU104GL"
    assert ids.device(0x0001, 0x1EB8) is None


def test_no_class_section_gives_the_base_class_names():
    ids = PciIds(SMALL.split("# List of known")[0])
    assert ids.class_name(0x020000) == "Network controller"
    assert ids.class_name(0x0C0330) == "Serial bus controller"


def test_the_database_file_can_be_named(monkeypatch, tmp_path):
    path = tmp_path / "pci.ids"
    path.write_text(SMALL)
    monkeypatch.setenv("XEN_PCIBACK_PCI_IDS", str(path))
    names.database.cache_clear()
    names.lookup.cache_clear()
    try:
        assert names.lookup(0x8086, 0x10C9, 0x020000) == (
            "Intel Corporation", "82576 Gigabit Network Connection", "Ethernet controller")
        monkeypatch.setenv("XEN_PCIBACK_PCI_IDS", str(tmp_path / "absent"))
        names.database.cache_clear()
        names.lookup.cache_clear()
        assert names.lookup(0x8086, 0x10C9, 0x020000) == (None, None, "Network controller")
    finally:
        names.database.cache_clear()
        names.lookup.cache_clear()


def _parse_whole(text: str) -> tuple[dict[int, str], dict[tuple[int, int], str]]:
    """The plain reading: every vendor and device line, top to bottom."""
    vendors: dict[int, str] = {}
    devices: dict[tuple[int, int], str] = {}
    vendor = None
    for line in text.split("\n"):
        if line.startswith("C "):
            break
        if len(line) > 6 and line[4:6] == "  " and all(c in "0123456789abcdef" for c in line[:4]):
            vendor = int(line[:4], 16)
            vendors[vendor] = line[6:].strip()
        elif vendor is not None and line.startswith("\t") and not line.startswith("\t\t") and line[5:7] == "  ":
            devices[(vendor, int(line[1:5], 16))] = line[7:].strip()
    return vendors, devices


@pytest.mark.skipif(not os.path.exists("/usr/share/misc/pci.ids"), reason="no pci.ids installed")
def test_every_vendor_of_the_installed_database_matches_a_whole_parse():
    with open("/usr/share/misc/pci.ids", "rb") as handle:
        data = handle.read()
    vendors, devices = _parse_whole(data.decode("utf-8", "replace"))
    ids = PciIds(data)
    assert all(ids._find_vendor(vendor) >= 0 for vendor in vendors)  # bisection alone finds each
    assert {vendor: ids.vendor(vendor) for vendor in vendors} == vendors
    sample = random.Random(14).sample(sorted(devices), 2000)
    assert {key: ids.device(*key) for key in sample} == {key: devices[key] for key in sample}
    absent = [v for v in range(0, 0x10000, 97) if v not in vendors]
    assert all(ids.vendor(v) is None for v in absent)

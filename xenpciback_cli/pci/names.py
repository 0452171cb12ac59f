"""Vendor, device and class names from the pci.ids database (the file lspci reads).

Why not parse the whole file: it is ~1.3 MB and ``list`` is measured against ``lspci``. The file
is read once as bytes and searched in place: pci.ids lists its vendors in order ("Please keep
sorted"), so a vendor is found by a binary search over the vendor lines, and the class section
is searched from the end of the file, where it sits. A lookup costs microseconds; when no
database is installed every name is ``None``. (Read, not mapped: a mapping would save ~0.4 ms,
but ``serve`` runs for months, and a pci.ids rewritten in place under it would end it with
SIGBUS at its next lookup.)
"""

from __future__ import annotations

import os
import re
from functools import lru_cache

#: The start of a top-level line (a vendor, or a class: ``C``), which ends a vendor's block.
_NEXT_TOP_LEVEL = re.compile(rb"\n[0-9a-fA-FC]")
#: The start of a vendor line, as pci.ids writes them: four lowercase hex digits, two spaces.
_VENDOR_LINE = re.compile(rb"\n([0-9a-f]{4})  ")

PCI_IDS_PATHS = ("/usr/share/misc/pci.ids", "/usr/share/hwdata/pci.ids", "/usr/share/pci.ids",
                 "/usr/local/share/pci.ids")

#: Base-class names (PCI Code and ID Assignment spec); used when pci.ids is absent.
BASE_CLASS_NAMES = {
    0x00: "Unclassified device", 0x01: "Mass storage controller", 0x02: "Network controller",
    0x03: "Display controller", 0x04: "Multimedia controller", 0x05: "Memory controller",
    0x06: "Bridge", 0x07: "Communication controller", 0x08: "Generic system peripheral",
    0x09: "Input device controller", 0x0A: "Docking station", 0x0B: "Processor",
    0x0C: "Serial bus controller", 0x0D: "Wireless controller", 0x0E: "Intelligent controller",
    0x0F: "Satellite communications controller", 0x10: "Encryption controller",
    0x11: "Signal processing controller", 0x12: "Processing accelerators",
    0x13: "Non-Essential Instrumentation", 0x40: "Coprocessor", 0xFF: "Unassigned class",
}


class PciIds:
    """Lazy lookups in one pci.ids file, kept as bytes.

    Bytes, not text: decoding the whole 1.3 MB costs more than every lookup ``list`` makes, so
    only the names found are decoded. Lookups search in place (``find`` with bounds), never
    copying a vendor's block.
    """

    def __init__(self, data: bytes | str) -> None:
        self.data = data.encode("utf-8") if isinstance(data, str) else data
        self._vendor_pos: dict[int, int] = {}

    def _vendor_offset(self, vendor: int) -> int:
        pos = self._vendor_pos.get(vendor)
        if pos is None:
            pos = self._find_vendor(vendor)
            if pos < 0:  # not there, or a hand-made file out of order: look everywhere
                pos = self.data.find(b"\n%04x  " % vendor)
            self._vendor_pos[vendor] = pos
        return pos

    def _find_vendor(self, vendor: int) -> int:
        """Where the line of ``vendor`` starts (its newline), by bisecting the file's offsets;
        -1 when the bisection ends without it.

        The line, if there, starts in [low, high). The first vendor line starting in
        [middle, high) says which part to keep: ours; a smaller id, so ours comes after it; a
        larger id or none at all, so ours starts before the middle.
        """
        data = self.data
        low, high = 0, len(data)
        while low < high:
            middle = (low + high) // 2
            line = _VENDOR_LINE.search(data, middle, high + 6)  # a line starting before high
            if line is None:
                high = middle
                continue
            found = int(line[1], 16)
            if found == vendor:
                return line.start()
            if found < vendor:
                low = line.end()
            else:
                high = middle
        return -1

    def vendor(self, vendor: int) -> str | None:
        pos = self._vendor_offset(vendor)
        if pos < 0:
            return None
        return _line_rest(self.data, pos + 7)

    def device(self, vendor: int, device: int) -> str | None:
        pos = self._vendor_offset(vendor)
        if pos < 0:
            return None
        key = b"\n\t%04x  " % device
        at = self.data.find(key, pos + 1)
        # Ours only if no other top-level line (a hex digit or 'C') comes first.
        if at < 0 or _NEXT_TOP_LEVEL.search(self.data, pos + 1, at + 1):
            return None
        return _line_rest(self.data, at + len(key))

    def class_name(self, class_code: int) -> str | None:
        """The most specific name: subclass if known, else base class."""
        base, sub = (class_code >> 16) & 0xFF, (class_code >> 8) & 0xFF
        data = self.data
        pos = data.rfind(b"\nC %02x  " % base)  # the class section ends the file
        if pos < 0:
            return BASE_CLASS_NAMES.get(base)
        base_name = _line_rest(data, pos + 7)
        next_class = data.find(b"\nC ", pos + 1)
        end = next_class if next_class > 0 else len(data)
        key = b"\n\t%02x  " % sub
        at = data.find(key, pos, end)
        if at < 0:
            return base_name
        return _line_rest(data, at + len(key))


def _line_rest(data: bytes, start: int) -> str:
    end = data.find(b"\n", start)
    return data[start:end if end >= 0 else len(data)].decode("utf-8", "replace").strip()


@lru_cache(maxsize=1)
def database() -> PciIds | None:
    """The installed pci.ids (``XEN_PCIBACK_PCI_IDS`` overrides the search), or None."""
    override = os.environ.get("XEN_PCIBACK_PCI_IDS")
    for path in ((override,) if override else PCI_IDS_PATHS):
        try:
            with open(path, "rb") as handle:
                return PciIds(handle.read())
        except OSError:
            continue
    return None


@lru_cache(maxsize=4096)
def lookup(vendor: int, device: int, class_code: int) -> tuple[str | None, str | None, str | None]:
    """(vendor name, device name, class name); ``None`` where the database has nothing."""
    db = database()
    if db is None:
        return None, None, BASE_CLASS_NAMES.get((class_code >> 16) & 0xFF)
    return db.vendor(vendor), db.device(vendor, device), db.class_name(class_code)

"""PCI addresses: the value type used everywhere, and parsing of the plain BDF forms.

A :class:`Bdf` is an immutable (domain, bus, slot, function). It prints the way the kernel names
devices in sysfs (``0000:03:00.0``). Parsing here covers the forms a person types for one device;
``pci.spec`` (xl's PCI_SPEC_STRING, wildcards, the ``xen-pciback.hide=`` list) builds on it.
"""

from __future__ import annotations

import re
from functools import cache
from typing import NamedTuple

from xenpciback_cli.errors import InputError


@cache
def _bdf_re() -> re.Pattern[str]:
    """Compiled on first use (as the other patterns here): ``list`` parses no typed address."""
    return re.compile(
        r"^(?:(?P<domain>[0-9a-fA-F]{1,8}):)?(?P<bus>[0-9a-fA-F]{1,2}):"
        r"(?P<slot>[0-9a-fA-F]{1,2})\.(?P<func>[0-7])$"
    )


class Bdf(NamedTuple):
    """A PCI function address: segment (domain), bus, slot (device) and function."""

    domain: int
    bus: int
    slot: int
    function: int

    def __str__(self) -> str:
        return f"{self.domain:04x}:{self.bus:02x}:{self.slot:02x}.{self.function:x}"

    @property
    def devfn(self) -> int:
        return (self.slot << 3) | self.function

    @property
    def xs_key(self) -> str:
        """libxl's spelling under ``/libxl/pci``: ``DDDD-BB-DD-F``."""
        return f"{self.domain:04x}-{self.bus:02x}-{self.slot:02x}-{self.function:x}"

    @classmethod
    def from_devfn(cls, domain: int, bus: int, devfn: int) -> Bdf:
        return cls(domain, bus, (devfn >> 3) & 0x1F, devfn & 0x7)

    @classmethod
    def parse(cls, text: str) -> Bdf:
        """Parse ``DDDD:BB:DD.F`` or ``BB:DD.F`` (segment 0); raise :class:`InputError` otherwise.

        The domain may have more than four digits: Linux numbers Intel VMD domains from 0x10000
        (sysfs names like ``10000:e1:00.0``), so a real host can show them.
        """
        value = text.strip()
        match = _bdf_re().match(value)
        if not match:
            raise InputError(f"invalid PCI address {text!r}: expected [DDDD:]BB:DD.F in hex, "
                             "e.g. 0000:03:00.0")
        slot = int(match["slot"], 16)
        if slot > 0x1F:
            raise InputError(f"invalid PCI address {text!r}: slot {slot:#x} is above 0x1f")
        return cls(int(match["domain"] or "0", 16), int(match["bus"], 16), slot, int(match["func"]))


@cache
def _vdev_re() -> re.Pattern[str]:
    return re.compile(r"^([0-9a-fA-F]{1,8}):([0-9a-fA-F]{1,2}):([0-9a-fA-F]{1,2})\.([0-9a-fA-F]{1,2})$")


def guest_address(value: Bdf | str | None) -> str | None:
    """The one spelling of a device's address in its guest, in ``list``, ``status`` and
    ``attach``: xl's ``DDDD:BB:SS.F`` (``0000:00:01.0``). pciback writes ``vdev-N`` with a
    two-digit function (``0000:00:01.00``); that and a :class:`Bdf` come out the same. Text that
    is not an address (a guest may write anything) comes back as it is, for the caller to show
    inertly; None stays None."""
    if value is None or isinstance(value, Bdf):
        return None if value is None else str(value)
    match = _vdev_re().match(value.strip())
    if match is None or int(match[3], 16) > 0x1F or int(match[4], 16) > 7:
        return value
    return str(Bdf(int(match[1], 16), int(match[2], 16), int(match[3], 16), int(match[4], 16)))

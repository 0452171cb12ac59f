"""Config-space quirks: extra registers a guest may write, each under a mask.

One value type serves every place a quirk appears: the ``--quirk REG:SIZE:MASK`` a person types,
the line the kernel pciback's sysfs ``quirks`` file takes (``[DDDD:]BB:DD.F-REG:SIZE:MASK``, all
hex), the recorded settings a userspace backend will start from, and the overlay engine, which
enforces the mask (Linux stores it and never uses it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from xenpciback_cli.errors import InputError
from xenpciback_cli.pci.address import Bdf

_QUIRK_RE = re.compile(r"^(?:0x)?([0-9a-fA-F]{1,3}):([124]):(?:0x)?([0-9a-fA-F]{1,8})$")


@dataclass(frozen=True)
class Quirk:
    """An extra pass-through register: guest writes reach hardware only under ``mask``."""

    offset: int
    size: int
    mask: int

    def __str__(self) -> str:
        return f"{self.offset:x}:{self.size:x}:{self.mask:x}"

    def sysfs_line(self, bdf: Bdf) -> str:
        """What pciback's ``quirks`` file takes for this quirk on ``bdf``."""
        return f"{bdf}-{self}"


def parse_quirk(text: str) -> Quirk:
    """``REG:SIZE:MASK`` in hex (``0x`` allowed), e.g. ``e0:2:ffff``; one InputError line otherwise.

    Like the kernel: REG at most 0xfff, SIZE 1, 2 or 4, MASK within SIZE bytes. Stricter: REG
    aligned to SIZE (a misaligned quirk could never be accessed through the config-space rules).
    """
    match = _QUIRK_RE.match(text.strip())
    if not match:
        raise InputError(f"invalid quirk {text!r}: expected REG:SIZE:MASK in hex with REG <= fff "
                         "and SIZE 1, 2 or 4, e.g. e0:2:ffff")
    offset, size, mask = int(match[1], 16), int(match[2]), int(match[3], 16)
    if mask >> (8 * size):
        raise InputError(f"invalid quirk {text!r}: mask {mask:#x} does not fit in {size} byte(s)")
    if offset % size:
        raise InputError(f"invalid quirk {text!r}: register {offset:#x} is not aligned to its "
                         f"size {size}")
    return Quirk(offset, size, mask)


def parse_pciback_quirk(text: str) -> tuple[Bdf, Quirk]:
    """The kernel's form ``[DDDD:]BB:DD.F-REG:SIZE:MASK``."""
    device, sep, rest = text.strip().partition("-")
    if not sep:
        raise InputError(f"invalid quirk line {text!r}: expected [DDDD:]BB:DD.F-REG:SIZE:MASK")
    return Bdf.parse(device), parse_quirk(rest)

"""Reading config space back from lspci hex dumps (``lspci -x``, ``-xxx``, ``-xxxx``).

A dump file holds one block per device: a line starting with the address (``BB:DD.F`` or
``DDDD:BB:DD.F``) and a description, optionally lspci's indented ``-v`` text, then hex lines
``OFF: b0 b1 ... b15`` (OFF is 2 or 3 hex digits), and a blank line. The same shape is what
``lspci -F FILE`` reads, so bytes a dump does not contain are treated as unreadable: the device's
data ends at the highest byte present, and holes inside read as 0xFF (as on a bus with no answer).

The file is untrusted input from a person: anything that is not a device line or a well-formed hex
line is ignored; bad values raise :class:`~xenpciback_cli.errors.InputError` with the line number.
Sans-IO: text and bytes in; reading the file is the caller's (``engine/inspect_sources.py``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from xenpciback_cli.errors import InputError
from xenpciback_cli.pci.address import Bdf

_DEVICE_RE = re.compile(
    r"^(?:(?P<domain>[0-9a-fA-F]{4,8}):)?(?P<bus>[0-9a-fA-F]{2}):(?P<slot>[0-9a-fA-F]{2})"
    r"\.(?P<func>[0-7])(?:\s+(?P<title>.*))?$")
_HEX_RE = re.compile(r"^(?P<offset>[0-9a-fA-F]{2,3}):(?P<bytes>(?: [0-9a-fA-F]{2}){1,16})\s*$")

MAX_CONFIG = 4096


@dataclass(frozen=True)
class DumpedDevice:
    """One device's config bytes as far as the dump shows them."""

    bdf: Bdf
    title: str
    data: bytes

    @property
    def available(self) -> int:
        return len(self.data)


def parse_dump(text: str, *, source: str = "dump") -> list[DumpedDevice]:
    """Every device in an lspci hex dump, in file order."""
    devices: list[DumpedDevice] = []
    current: tuple[Bdf, str] | None = None
    buffer = bytearray(b"\xff" * MAX_CONFIG)
    length = 0

    def finish() -> None:
        nonlocal current, length
        if current is not None and length:
            devices.append(DumpedDevice(current[0], current[1], bytes(buffer[:length])))
        current = None
        length = 0
        buffer[:] = b"\xff" * MAX_CONFIG

    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.rstrip("\r")
        if not line.strip():
            finish()
            continue
        device = _DEVICE_RE.match(line)
        if device:
            finish()
            domain = int(device["domain"] or "0", 16)
            slot = int(device["slot"], 16)
            if slot > 0x1F or domain > 0xFFFF:
                raise InputError(f"{source}:{number}: invalid device address {line.split()[0]!r}")
            current = (Bdf(domain, int(device["bus"], 16), slot, int(device["func"])),
                       (device["title"] or "").strip())
            continue
        hexline = _HEX_RE.match(line)
        if hexline and current is not None:
            offset = int(hexline["offset"], 16)
            values = bytes(int(b, 16) for b in hexline["bytes"].split())
            if offset + len(values) > MAX_CONFIG:
                raise InputError(f"{source}:{number}: offset {offset:#x} is beyond 4096 bytes "
                                 "of config space")
            buffer[offset:offset + len(values)] = values
            length = max(length, offset + len(values))
    finish()
    return devices


def devices_in_dump(text: str, *, source: str) -> list[DumpedDevice]:
    """The devices of a dump file's text; a dump without any is the person's error (exit 2)."""
    devices = parse_dump(text, source=source)
    if not devices:
        raise InputError(f"no device with a hex dump found in {source!r} "
                         "(expected 'lspci -x', '-xxx' or '-xxxx' output)")
    return devices


def config_image(data: bytes, *, source: str) -> bytes:
    """A raw config-space image (sysfs ``config`` copied to a file), checked: 64 to 4096 bytes."""
    if len(data) < 0x40:
        raise InputError(f"{source!r} holds {len(data)} bytes: a config space image has at "
                         "least 64")
    if len(data) > MAX_CONFIG:
        raise InputError(f"{source!r} holds {len(data)} bytes: config space is at most 4096")
    return data

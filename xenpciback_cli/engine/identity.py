"""What a PCI function *is*, as opposed to where it sits: ids, class and serial number.

A journal entry or a seize record names an address; addresses are reused (a card moved, a
slot re-enumerated, a file planted by someone else). Before ``recover`` or ``restore`` writes
anything for an address, they compare the identity recorded with the one found there now
(:func:`differences`) and refuse on any mismatch, so a stale entry never seizes the host's
root disk.

The serial is the PCIe Device Serial Number extended capability (id 0x0003), spelled like
``lspci -vv`` does (``00-1b-21-ff-ff-4a-c3-90``); it is ``None`` when the device has none or
the config space cannot be read that far (non-root reads stop at 64 bytes).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from xenpciback_cli import errors
from xenpciback_cli.config.le import u32
from xenpciback_cli.pci.address import Bdf

if TYPE_CHECKING:
    from xenpciback_cli.host.model import Host

SERIAL_CAPABILITY = 0x0003
_SERIAL_RE = re.compile(r"^[0-9a-f]{2}(?:-[0-9a-f]{2}){7}$")
FIELDS = ("vendor_id", "device_id", "subsystem_vendor_id", "subsystem_device_id", "class_code", "serial")


@dataclass(frozen=True)
class DeviceIdentity:
    vendor_id: int
    device_id: int
    subsystem_vendor_id: int | None
    subsystem_device_id: int | None
    class_code: int
    serial: str | None = None

    def to_json(self) -> dict[str, object]:
        return {name: getattr(self, name) for name in FIELDS}

    @classmethod
    def from_json(cls, data: object) -> DeviceIdentity:
        """Strict: exactly the six keys, ints in range (never bools), a well-formed serial.

        Raises ``ValueError`` with the words a person reads; the state layer names the file.
        """
        if not isinstance(data, dict):
            raise ValueError("identity is not an object")  # noqa: TRY004 (one error kind for bad files)
        unknown = set(data) - set(FIELDS)
        missing = set(FIELDS) - set(data)
        if unknown or missing:
            raise ValueError(f"identity keys wrong (unknown {sorted(unknown)}, missing {sorted(missing)})")
        values: dict[str, object] = {}
        for name, limit, optional in (("vendor_id", 0xFFFF, False), ("device_id", 0xFFFF, False),
                                      ("subsystem_vendor_id", 0xFFFF, True),
                                      ("subsystem_device_id", 0xFFFF, True),
                                      ("class_code", 0xFFFFFF, False)):
            value = data[name]
            if value is None and optional:
                values[name] = None
                continue
            if type(value) is not int or not 0 <= value <= limit:
                raise ValueError(f"identity {name} must be an integer 0..{limit:#x}")
            values[name] = value
        serial = data["serial"]
        if serial is not None and (not isinstance(serial, str) or not _SERIAL_RE.match(serial)):
            raise ValueError("identity serial must be like 00-1b-21-ff-ff-4a-c3-90 or null")
        return cls(serial=serial, **values)  # type: ignore[arg-type]


def read_serial(config: bytes) -> str | None:
    """The Device Serial Number from a config space dump, or None (absent or not readable)."""
    # imported here: records (and so list, with a state dir) import this module at start-up
    from xenpciback_cli.config.capabilities import find_extended

    offset = find_extended(config, SERIAL_CAPABILITY)
    if offset is None or offset + 12 > len(config):
        return None
    lower, upper = u32(config, offset + 4), u32(config, offset + 8)
    return "-".join(f"{byte:02x}" for byte in ((upper << 32) | lower).to_bytes(8, "big"))


def identity_of(host: Host, bdf: Bdf) -> DeviceIdentity:
    """The identity of the function at ``bdf`` now (``DeviceNotFound`` if absent)."""
    device = host.device(bdf)
    try:
        config = host.read_config(bdf)
    except errors.HostError:
        config = b""
    return DeviceIdentity(device.vendor_id, device.device_id, device.subsystem_vendor_id,
                          device.subsystem_device_id, device.class_code, read_serial(config))


def _pair(a: int | None, b: int | None) -> str:
    return f"{'none' if a is None else f'{a:04x}'}:{'none' if b is None else f'{b:04x}'}"


def differences(expected: DeviceIdentity, actual: DeviceIdentity) -> list[str]:
    """What differs, in words ("vendor:device 8086:10c9 recorded, 144d:a80a found"); [] if same."""
    found: list[str] = []
    if (expected.vendor_id, expected.device_id) != (actual.vendor_id, actual.device_id):
        found.append(f"vendor:device {_pair(expected.vendor_id, expected.device_id)} recorded, "
                     f"{_pair(actual.vendor_id, actual.device_id)} found")
    if ((expected.subsystem_vendor_id, expected.subsystem_device_id)
            != (actual.subsystem_vendor_id, actual.subsystem_device_id)):
        found.append(f"subsystem {_pair(expected.subsystem_vendor_id, expected.subsystem_device_id)} "
                     f"recorded, {_pair(actual.subsystem_vendor_id, actual.subsystem_device_id)} found")
    if expected.class_code != actual.class_code:
        found.append(f"class {expected.class_code:06x} recorded, {actual.class_code:06x} found")
    if expected.serial != actual.serial:
        found.append(f"serial {expected.serial or 'none'} recorded, {actual.serial or 'none'} found")
    return found

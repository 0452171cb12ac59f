"""The persisted seize list (``hide --persist``): a small TOML file read at boot by ``restore``.

Format, one table per device (read with tomllib, written by the tiny writer below so the file
stays stable and diff-friendly)::

    # Devices xen-pciback seizes at boot ('xen-pciback restore').
    [[device]]
    bdf = "0000:03:00.0"
    driver = "pciback"

``bdf`` may be a wildcard (``0000:04:00.*``). ``cmdline`` turns the list into the kernel's
``xen-pciback.hide=(...)`` parameter or the modprobe.d ``options xen-pciback hide=...`` line.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

from xenpciback_cli.engine.records import atomic_write
from xenpciback_cli.errors import InputError, OperationFailed
from xenpciback_cli.pci.spec import BdfPattern, format_hide_list

HEADER = "# Devices xen-pciback seizes at boot ('xen-pciback restore'). Edited by 'hide --persist'.\n"


@dataclass(frozen=True)
class PersistedDevice:
    pattern: BdfPattern
    driver: str = "pciback"


def load(path: str | os.PathLike[str]) -> list[PersistedDevice]:
    file = Path(path)
    try:
        data = tomllib.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{file}: invalid TOML: {exc}") from None
    except OSError as exc:
        raise OperationFailed(f"cannot read {file}: {exc.strerror}") from None
    entries = data.get("device", [])
    if not isinstance(entries, list):
        raise InputError(f"{file}: 'device' must be an array of tables ([[device]])")
    devices: list[PersistedDevice] = []
    for number, entry in enumerate(entries, start=1):
        if not isinstance(entry, dict) or not isinstance(entry.get("bdf"), str):
            raise InputError(f"{file}: device #{number} needs a string 'bdf'")
        driver = entry.get("driver", "pciback")
        if driver not in ("pciback", "pci-stub", "vfio-pci"):
            raise InputError(f"{file}: device #{number}: driver {driver!r} is not pciback, "
                             "pci-stub or vfio-pci")
        devices.append(PersistedDevice(BdfPattern.parse(entry["bdf"], kind=f"{file}: device #{number} bdf"),
                                       driver))
    return devices


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def dumps(devices: list[PersistedDevice]) -> str:
    parts = [HEADER]
    for device in sorted(devices, key=lambda d: str(d.pattern)):
        parts.append(f"\n[[device]]\nbdf = {_quote(str(device.pattern))}\ndriver = {_quote(device.driver)}\n")
    return "".join(parts)


def save(path: str | os.PathLike[str], devices: list[PersistedDevice]) -> None:
    atomic_write(Path(path), dumps(devices))


def add(path: str | os.PathLike[str], patterns: list[BdfPattern], driver: str) -> list[PersistedDevice]:
    """Add (or update the driver of) each pattern; return the new list."""
    devices = {str(d.pattern): d for d in load(path)}
    for pattern in patterns:
        devices[str(pattern)] = PersistedDevice(pattern, driver)
    result = list(devices.values())
    save(path, result)
    return result


def remove(path: str | os.PathLike[str], patterns: list[BdfPattern]) -> bool:
    devices = load(path)
    names = {str(p) for p in patterns}
    kept = [d for d in devices if str(d.pattern) not in names]
    if len(kept) != len(devices):
        save(path, kept)
        return True
    return False


def hide_parameter(devices: list[PersistedDevice], *, modprobe: bool = False) -> str:
    """``xen-pciback.hide=(...)`` (kernel command line) or the modprobe.d line (module option)."""
    pciback = [d.pattern for d in devices if d.driver == "pciback"]
    if modprobe:
        return f"options xen-pciback hide={format_hide_list(pciback, parameter=False)}"
    return format_hide_list(pciback)

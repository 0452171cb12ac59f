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

from xenpciback_cli.engine.statestore import atomic_write
from xenpciback_cli.errors import InputError, OperationFailed
from xenpciback_cli.pci.drivers import SEIZE_DRIVERS
from xenpciback_cli.pci.spec import BdfPattern, format_hide_list

MAX_SIZE = 1 << 20

HEADER = "# Devices xen-pciback seizes at boot ('xen-pciback restore'). Edited by 'hide --persist'.\n"


@dataclass(frozen=True)
class PersistedDevice:
    pattern: BdfPattern
    driver: str = "pciback"


def load(path: str | os.PathLike[str], *, must_exist: bool = False) -> list[PersistedDevice]:
    """The persisted devices. A missing file means none, unless ``must_exist`` (a path a person
    named): then it is an error. Anything unreadable or outside the format is one InputError
    line naming the file (exit 2)."""
    file = Path(path)
    try:
        with open(file, "rb") as handle:
            raw = handle.read(MAX_SIZE + 1)
    except FileNotFoundError:
        if must_exist:
            raise InputError(f"config file {file} does not exist") from None
        return []
    except IsADirectoryError:
        raise InputError(f"config file {file} is a directory") from None
    except OSError as exc:
        raise OperationFailed(f"cannot read {file}: {exc.strerror}") from None
    if len(raw) > MAX_SIZE:
        raise InputError(f"{file}: too large to be a xen-pciback config (over {MAX_SIZE} bytes)")
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise InputError(f"{file}: not a TOML file (invalid UTF-8); fix or remove it") from None
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{file}: invalid TOML: {str(exc).splitlines()[0][:120]}") from None
    except (RecursionError, ValueError) as exc:
        raise InputError(f"{file}: invalid TOML ({type(exc).__name__})") from None
    unknown = sorted(set(data) - {"device"})
    if unknown:
        raise InputError(f"{file}: unknown key {unknown[0][:40]!r} (only [[device]] tables belong here)")
    entries = data.get("device", [])
    if not isinstance(entries, list):
        raise InputError(f"{file}: 'device' must be an array of tables ([[device]])")
    devices: list[PersistedDevice] = []
    for number, entry in enumerate(entries, start=1):
        if not isinstance(entry, dict) or not isinstance(entry.get("bdf"), str):
            raise InputError(f"{file}: device #{number} needs a string 'bdf'")
        extra = sorted(set(entry) - {"bdf", "driver"})
        if extra:
            raise InputError(f"{file}: device #{number}: unknown key {extra[0][:40]!r}")
        driver = entry.get("driver", "pciback")
        if driver not in SEIZE_DRIVERS:
            raise InputError(f"{file}: device #{number}: driver {str(driver)[:40]!r} is not pciback, "
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


def save(path: str | os.PathLike[str], devices: list[PersistedDevice], *,
         create_parent: bool = False) -> None:
    """Replace the file crash-safely (mode 0644). Its directory must exist unless
    ``create_parent`` (the default config's ``/etc/xen-pciback``): a mistyped ``--config``
    never creates directories."""
    atomic_write(Path(path), dumps(devices), mode=0o644, create_parent=create_parent)


def add(path: str | os.PathLike[str], patterns: list[BdfPattern], driver: str, *,
        create_parent: bool = False) -> list[PersistedDevice]:
    """Add (or update the driver of) each pattern; return the new list."""
    if driver not in SEIZE_DRIVERS:
        raise InputError(f"driver {driver!r} is not pciback, pci-stub or vfio-pci")
    devices = {str(d.pattern): d for d in load(path)}
    for pattern in patterns:
        devices[str(pattern)] = PersistedDevice(pattern, driver)
    result = list(devices.values())
    save(path, result, create_parent=create_parent)
    return result


def would_change(path: str | os.PathLike[str], patterns: list[BdfPattern], driver: str | None) -> bool:
    """Whether :func:`add` (``driver``) or :func:`remove` (``None``) would change the file."""
    devices = {str(d.pattern): d.driver for d in load(path)}
    if driver is None:
        return any(str(p) in devices for p in patterns)
    return any(devices.get(str(p)) != driver for p in patterns)


def remove(path: str | os.PathLike[str], patterns: list[BdfPattern], *, must_exist: bool = False) -> bool:
    devices = load(path, must_exist=must_exist)
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

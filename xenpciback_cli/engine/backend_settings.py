"""Per-device settings a backend applies while a guest holds the device: permissive mode and quirks.

The kernel pciback gets them through its sysfs files at attach time; a userspace backend has no
such files, so the same settings are recorded here, in the state dir, and it builds its overlay
from them (:meth:`DeviceSettings.overlay_options` gives ``OverlayDevice``'s keyword arguments).
Lifetimes follow Linux: quirks last until the guest lets the device go (detach clears them);
permissive stays until the device is released from the seize driver (``unhide``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from xenpciback_cli.engine.records import atomic_write
from xenpciback_cli.errors import OperationFailed
from xenpciback_cli.pci.address import Bdf
from xenpciback_cli.pci.quirk import Quirk

FILE_NAME = "backend-settings.json"


@dataclass(frozen=True)
class DeviceSettings:
    permissive: bool = False
    quirks: tuple[Quirk, ...] = ()

    def overlay_options(self) -> dict[str, object]:
        return {"permissive": self.permissive, "quirks": self.quirks}

    def to_json(self) -> dict[str, object]:
        return {"permissive": self.permissive, "quirks": [str(q) for q in self.quirks]}


def settings_path(state_dir: str | os.PathLike[str]) -> Path:
    return Path(state_dir) / FILE_NAME


def load_settings(state_dir: str | os.PathLike[str]) -> dict[Bdf, DeviceSettings]:
    path = settings_path(state_dir)
    try:
        data = json.loads(path.read_text())
        return {Bdf.parse(bdf): DeviceSettings(bool(entry.get("permissive")),
                                              tuple(Quirk(*q) for q in entry.get("quirks", ())))
                for bdf, entry in data.items()}
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        raise OperationFailed(f"cannot read backend settings {path}: {exc}") from None


def _save(state_dir: str | os.PathLike[str], settings: dict[Bdf, DeviceSettings]) -> None:
    data = {str(bdf): {"permissive": s.permissive,
                       "quirks": [[q.offset, q.size, q.mask] for q in s.quirks]}
            for bdf, s in sorted(settings.items()) if s.permissive or s.quirks}
    Path(state_dir).mkdir(parents=True, exist_ok=True)
    atomic_write(settings_path(state_dir), json.dumps(data, indent=2, sort_keys=True) + "\n")


def record_attach(state_dir: str | os.PathLike[str], bdf: Bdf, *, permissive: bool,
                  quirks: tuple[Quirk, ...]) -> DeviceSettings:
    """A guest got ``bdf``: keep permissive if it was already set, add the new quirks."""
    settings = load_settings(state_dir)
    old = settings.get(bdf, DeviceSettings())
    merged = old.quirks + tuple(q for q in quirks if q.offset not in {o.offset for o in old.quirks})
    settings[bdf] = DeviceSettings(old.permissive or permissive, merged)
    _save(state_dir, settings)
    return settings[bdf]


def record_detach(state_dir: str | os.PathLike[str], bdf: Bdf) -> None:
    """The guest let ``bdf`` go: its quirks go with it; permissive stays (as in Linux)."""
    settings = load_settings(state_dir)
    if bdf in settings and settings[bdf].quirks:
        settings[bdf] = DeviceSettings(settings[bdf].permissive, ())
        _save(state_dir, settings)


def record_release(state_dir: str | os.PathLike[str], bdf: Bdf) -> None:
    """``bdf`` left the seize driver: nothing of its backend settings survives."""
    settings = load_settings(state_dir)
    if settings.pop(bdf, None) is not None:
        _save(state_dir, settings)

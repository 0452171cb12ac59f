"""Per-device settings a backend applies while a guest holds the device: permissive mode and quirks.

The kernel pciback gets them through its sysfs files at attach time; a userspace backend has no
such files, so the same settings are recorded here, in the state dir, for ``serve`` (not written
yet) to build its overlay from (:meth:`DeviceSettings.overlay_options` gives ``OverlayDevice``'s
keyword arguments).
Lifetimes follow Linux: quirks last until the guest lets the device go (detach clears them);
permissive stays until the device is released from the seize driver (``unhide``).

One file per device, ``STATE_DIR/backend-settings/DDDD-BB-DD-F.json``, through
:mod:`engine.statestore`; validated on reading, so a corrupt file concerns its own device only.
The older single ``backend-settings.json`` is still read and moved by the first write.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from xenpciback_cli.engine import statestore as st
from xenpciback_cli.errors import InputError, StateFileCorrupt
from xenpciback_cli.pci.address import Bdf
from xenpciback_cli.pci.quirk import Quirk, parse_quirk

FILE_NAME = "backend-settings.json"  # the older single file
SETTINGS_DIR = "backend-settings"
MAX_QUIRKS = 64
FIX = "move the file aside (the device's permissive mode and quirks are then forgotten)"


@dataclass(frozen=True)
class DeviceSettings:
    permissive: bool = False
    quirks: tuple[Quirk, ...] = ()

    def overlay_options(self) -> dict[str, object]:
        return {"permissive": self.permissive, "quirks": self.quirks}

    def to_json(self) -> dict[str, object]:
        return {"permissive": self.permissive, "quirks": [str(q) for q in self.quirks]}


def settings_path(state_dir: str | os.PathLike[str], bdf: Bdf | None = None) -> Path:
    return Path(state_dir) / (FILE_NAME if bdf is None else _name(bdf))


def _name(bdf: Bdf) -> str:
    return f"{SETTINGS_DIR}/{bdf.xs_key}.json"


def _entry(value: object, what: str) -> DeviceSettings:
    entry = st.obj(value, what, required={"permissive", "quirks"}, optional={"bdf", "format"})
    quirks = entry["quirks"]
    if not isinstance(quirks, list) or len(quirks) > MAX_QUIRKS:
        raise st.Invalid(f"{what} quirks must be a list of at most {MAX_QUIRKS}")
    parsed = []
    for quirk in quirks:
        if not isinstance(quirk, list) or len(quirk) != 3:
            raise st.Invalid(f"{what} quirk must be [offset, size, mask]")
        offset = st.integer(quirk[0], "quirk offset", 0, 0xFFF)
        size = st.integer(quirk[1], "quirk size", 1, 4)
        mask = st.integer(quirk[2], "quirk mask", 0, 0xFFFFFFFF)
        try:
            parsed.append(parse_quirk(f"{offset:x}:{size}:{mask:x}"))
        except InputError as exc:
            raise st.Invalid(str(exc)) from None
    return DeviceSettings(st.boolean(entry["permissive"], f"{what} permissive"), tuple(parsed))


def _legacy(store: st.StateStore, data: bytes | None = None) -> dict[Bdf, DeviceSettings]:
    """The older single file's settings (``data``: its bytes, when read already)."""
    data = store.read(FILE_NAME) if data is None else data
    if data is None:
        return {}
    try:
        top = st.parse_json(data)
        if not isinstance(top, dict):
            raise st.Invalid("the file is not a JSON object")
        return {st.bdf(key, "device"): _entry(value, str(key)[:20]) for key, value in top.items()}
    except st.Invalid as exc:
        raise st.corrupt(store.path(FILE_NAME), str(exc), FIX) from None


def _parse(store: st.StateStore, name: str, device: Bdf) -> DeviceSettings | None:
    data = store.read_for(name, device)
    if data is None:
        return None
    try:
        parsed = st.parse_json(data)
        settings = _entry(parsed, "settings")
        if isinstance(parsed, dict) and parsed.get("bdf", str(device)) != str(device):
            raise st.Invalid("it is about another device than its name says")
    except st.Invalid as exc:
        raise st.corrupt(store.path(name), str(exc), FIX, device=device) from None
    return settings


def load_device_settings(state_dir: str | os.PathLike[str], bdf: Bdf) -> DeviceSettings | None:
    """``bdf``'s settings (None if none); :class:`StateFileCorrupt` if its file is corrupt."""
    store = st.StateStore(state_dir)
    own = _parse(store, _name(bdf), bdf)
    return own if own is not None else _legacy(store).get(bdf)


def load_settings(state_dir: str | os.PathLike[str], *,
                  corrupt: list[StateFileCorrupt] | None = None) -> dict[Bdf, DeviceSettings]:
    """Every device's settings; a corrupt file raises, or with ``corrupt`` is listed there."""
    store = st.StateStore(state_dir)
    return st.load_per_device(store, SETTINGS_DIR, "settings", lambda: _legacy(store),
                              lambda name, device: _parse(store, name, device), corrupt)


def _migrate(store: st.StateStore) -> None:
    """Move the older single file's settings into per-device files (the first write does it)."""
    st.migrate_legacy(store, FILE_NAME, lambda data: _legacy(store, data), _name,
                      lambda bdf, settings: _store(store, bdf, settings))


def _store(store: st.StateStore, bdf: Bdf, settings: DeviceSettings) -> None:
    if not settings.permissive and not settings.quirks:
        store.remove(_name(bdf))
        return
    data = {"format": 1, "bdf": str(bdf), "permissive": settings.permissive,
            "quirks": [[q.offset, q.size, q.mask] for q in settings.quirks]}
    store.write(_name(bdf), (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())


def record_attach(state_dir: str | os.PathLike[str], bdf: Bdf, *, permissive: bool,
                  quirks: tuple[Quirk, ...]) -> DeviceSettings:
    """A guest got ``bdf``: keep permissive if it was already set, add the new quirks."""
    store = st.StateStore(state_dir)
    old = load_device_settings(state_dir, bdf) or DeviceSettings()
    merged = old.quirks + tuple(q for q in quirks if q.offset not in {o.offset for o in old.quirks})
    new = DeviceSettings(old.permissive or permissive, merged)
    _migrate(store)
    _store(store, bdf, new)
    return new


def record_detach(state_dir: str | os.PathLike[str], bdf: Bdf) -> None:
    """The guest let ``bdf`` go: its quirks go with it; permissive stays (as in Linux)."""
    old = load_device_settings(state_dir, bdf)
    if old is not None and old.quirks:
        store = st.StateStore(state_dir)
        _migrate(store)
        _store(store, bdf, DeviceSettings(old.permissive, ()))


def record_release(state_dir: str | os.PathLike[str], bdf: Bdf) -> None:
    """``bdf`` left the seize driver: nothing of its backend settings survives (a corrupt file
    of its own goes too: it described settings that end here)."""
    store = st.StateStore(state_dir)
    _migrate(store)
    store.remove(_name(bdf))

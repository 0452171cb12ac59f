"""The durable record of seized devices: which driver each one came from, kept in the state dir.

Why a file of our own: once a device is bound to pciback the kernel forgets which driver had it,
and ``unhide --rebind`` (or ``recover`` after a crash) must give it back to exactly that driver.

One file per device, ``STATE_DIR/seized/DDDD-BB-DD-F.json``, replaced atomically through
:mod:`engine.statestore` (no symlink followed, crash-safe), so a corrupt file concerns its own
device only: :func:`load_record` raises :class:`StateFileCorrupt` for that device, and
:func:`load_records` either raises or, given a ``corrupt`` list, reports it there and goes on.
Every field is validated on reading (a driver name is a name, never a path).

An older version kept every record in ``STATE_DIR/seized.json``; it is still read, and moved into
per-device files by the first write.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from xenpciback_cli.engine import statestore as st
from xenpciback_cli.engine.identity import DeviceIdentity
from xenpciback_cli.errors import StateFileCorrupt
from xenpciback_cli.pci.address import Bdf
from xenpciback_cli.pci.spec import DEVICE_NAME_RULE, is_device_name

RECORDS_DIR = "seized"
LEGACY_FILE = "seized.json"
RECORDS_FILE = LEGACY_FILE  # the old name, kept for callers that show it
FORMAT = 2
METHODS = ("override", "slot", "new_id")
FIX = "check the device with 'xen-pciback list', then move the file aside"
_KEYS = {"bdf", "original_driver", "target_driver", "persist", "seized_at", "method"}


@dataclass(frozen=True)
class SeizeRecord:
    """One seized device: where it came from and what holds it now."""

    bdf: Bdf
    original_driver: str | None  # None: no driver had it before the seize
    target_driver: str  # pciback, pci-stub or vfio-pci
    persist: bool = False
    seized_at: float = field(default_factory=time.time)
    #: How the seize was done: "override" (driver_override + drivers_probe) or "slot" (new_slot + bind).
    method: str = "override"
    #: What the device was when seized; ``recover``/``restore`` refuse an address that changed.
    identity: DeviceIdentity | None = None
    #: Released by a plain ``unhide``: kept only so a later ``unhide --rebind`` knows the original.
    released: bool = False
    #: The name given at ``hide --name`` (xl's ``pci-assignable-add -n``), unique on the host.
    name: str | None = None

    def to_json(self) -> dict[str, object]:
        return {"bdf": str(self.bdf), "original_driver": self.original_driver,
                "target_driver": self.target_driver, "persist": self.persist,
                "seized_at": self.seized_at, "method": self.method,
                "identity": None if self.identity is None else self.identity.to_json(),
                "released": self.released, "name": self.name}

    @classmethod
    def from_json(cls, data: object) -> SeizeRecord:
        """Strict: raises :class:`statestore.Invalid` (a ``ValueError``) naming the bad field."""
        entry = st.obj(data, "record", required=_KEYS, optional={"identity", "released", "format", "name"})
        method = entry["method"]
        if method not in METHODS:
            raise st.Invalid(f"method {str(method)[:20]!r} is not one of {', '.join(METHODS)}")
        identity = entry.get("identity")
        try:
            parsed = None if identity is None else DeviceIdentity.from_json(identity)
        except ValueError as exc:
            raise st.Invalid(str(exc)) from None
        return cls(bdf=st.bdf(entry["bdf"], "bdf"),
                   original_driver=st.driver_name(entry["original_driver"], "original_driver", optional=True),
                   target_driver=st.seize_driver(entry["target_driver"], "target_driver"),
                   persist=st.boolean(entry["persist"], "persist"),
                   seized_at=st.number(entry["seized_at"], "seized_at"),
                   method=method, identity=parsed,
                   released=st.boolean(entry.get("released", False), "released"),
                   name=_name_field(entry.get("name")))


def _name_field(value: object) -> str | None:
    """A device name as xl accepts it (``is_device_name``), or None."""
    if value is None:
        return None
    if not isinstance(value, str) or not is_device_name(value):
        raise st.Invalid(f"name {str(value)[:40]!r} is not a device name ({DEVICE_NAME_RULE})")
    return value


def records_path(state_dir: str | os.PathLike[str], bdf: Bdf | None = None) -> Path:
    """The file of ``bdf``'s record (or, without ``bdf``, the old single file)."""
    if bdf is None:
        return Path(state_dir) / LEGACY_FILE
    return Path(state_dir) / _name(bdf)


def _name(bdf: Bdf) -> str:
    return f"{RECORDS_DIR}/{bdf.xs_key}.json"


def _legacy(store: st.StateStore, data: bytes | None = None) -> dict[Bdf, SeizeRecord]:
    """The old single file's records (``data``: its bytes, when read already)."""
    data = store.read(LEGACY_FILE) if data is None else data
    if data is None:
        return {}
    path = store.path(LEGACY_FILE)
    try:
        top = st.obj(st.parse_json(data), "the file", required={"devices"}, optional={"format"})
        if not isinstance(top["devices"], list):
            raise st.Invalid("devices is not a list")
        records = [SeizeRecord.from_json(entry) for entry in top["devices"]]
    except st.Invalid as exc:
        raise st.corrupt(path, str(exc), FIX) from None
    return {record.bdf: record for record in records}


def _parse(data: bytes, path: Path, expected: Bdf | None) -> SeizeRecord:
    try:
        record = SeizeRecord.from_json(st.parse_json(data))
    except st.Invalid as exc:
        raise st.corrupt(path, str(exc), FIX, device=expected) from None
    if expected is not None and record.bdf != expected:
        raise st.corrupt(path, f"it records {record.bdf}, not the device its name says", FIX, device=expected)
    return record


def load_record(state_dir: str | os.PathLike[str], bdf: Bdf) -> SeizeRecord | None:
    """``bdf``'s record, None if it has none; :class:`StateFileCorrupt` if its file is corrupt."""
    store = st.StateStore(state_dir)
    data = store.read_for(_name(bdf), bdf)
    if data is not None:
        return _parse(data, store.path(_name(bdf)), bdf)
    return _legacy(store).get(bdf)


def load_records(state_dir: str | os.PathLike[str], *,
                 corrupt: list[StateFileCorrupt] | None = None) -> dict[Bdf, SeizeRecord]:
    """Every recorded seize, by address; empty when the state dir does not exist.

    A corrupt file raises :class:`StateFileCorrupt`, unless ``corrupt`` is given: then it is
    appended there and the other records are returned.
    """
    store = st.StateStore(state_dir)

    def parse(name: str, device: Bdf) -> SeizeRecord | None:
        data = store.read_for(name, device)
        return None if data is None else _parse(data, store.path(name), device)

    records = st.load_per_device(store, RECORDS_DIR, "record", lambda: _legacy(store), parse, corrupt)
    return dict(sorted(records.items()))


@dataclass
class RecordSet:
    """Every record as one operation read it (:func:`load_record_set`), so the operation consults
    this instead of reading the files again for each step and device. Whoever holds it under the
    state dir's lock keeps it true: :func:`put_record`/:func:`drop_record` given it update it.

    :meth:`get` answers as :func:`load_record` would have: a corrupt file of the device's own
    raises, so does a corrupt old single file when the device has no file of its own."""

    records: dict[Bdf, SeizeRecord]
    #: Every corrupt record file found (the device's own, the old single file, a misnamed one).
    corrupt: list[StateFileCorrupt]
    #: The devices with a file of their own (valid or not); the others fall back to the old file.
    own: set[Bdf]
    legacy_path: Path
    #: Whether the old single file is there (the first write moves it into per-device files).
    legacy_present: bool = False

    def get(self, bdf: Bdf) -> SeizeRecord | None:
        for problem in self.corrupt:
            if problem.bdf == bdf:
                raise problem
        if bdf not in self.own:
            for problem in self.corrupt:
                if problem.path == self.legacy_path:
                    raise problem
        return self.records.get(bdf)

    def put(self, record: SeizeRecord) -> None:
        """``record`` was written (and the old single file's records moved to files of their own)."""
        self.records[record.bdf] = record
        self.own.update(self.records)
        self.legacy_present = False
        self.corrupt = [p for p in self.corrupt if p.bdf != record.bdf]

    def drop(self, bdf: Bdf) -> None:
        """``bdf``'s file was removed (and the old single file's records moved)."""
        self.records.pop(bdf, None)
        self.own.update(self.records)
        self.legacy_present = False
        self.own.add(bdf)  # its old-file entry, if any, went with the move
        self.corrupt = [p for p in self.corrupt if p.bdf != bdf]


def load_record_set(state_dir: str | os.PathLike[str]) -> RecordSet:
    """Every record, read once; corrupt files are collected, not raised (:meth:`RecordSet.get`
    raises the one about the device asked for)."""
    store = st.StateStore(state_dir)
    own: set[Bdf] = set()
    present = False

    def legacy() -> dict[Bdf, SeizeRecord]:
        nonlocal present
        data = store.read(LEGACY_FILE)
        present = data is not None
        return {} if data is None else _legacy(store, data)

    def parse(name: str, device: Bdf) -> SeizeRecord | None:
        data = store.read_for(name, device)
        if data is None:
            return None
        own.add(device)
        return _parse(data, store.path(name), device)

    corrupt: list[StateFileCorrupt] = []
    records = st.load_per_device(store, RECORDS_DIR, "record", legacy, parse, corrupt)
    return RecordSet(dict(sorted(records.items())), corrupt, own, store.path(LEGACY_FILE), present)


def _migrate(store: st.StateStore) -> None:
    """Move the old single file's records into per-device files (the first write does it)."""
    st.migrate_legacy(store, LEGACY_FILE, lambda data: _legacy(store, data), _name,
                      lambda _bdf, record: _write(store, record))


def _write(store: st.StateStore, record: SeizeRecord) -> None:
    data = {"format": FORMAT, **record.to_json()}
    store.write(_name(record.bdf), (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())


def save_records(state_dir: str | os.PathLike[str], records: dict[Bdf, SeizeRecord]) -> None:
    """Make the record set exactly ``records`` (each file replaced atomically)."""
    store = st.StateStore(state_dir)
    _migrate(store)
    for name in store.list(RECORDS_DIR):
        device = st.bdf_from_key(name[:-5]) if name.endswith(".json") else None
        if device is not None and device not in records:
            store.remove(f"{RECORDS_DIR}/{name}")
    for record in records.values():
        _write(store, record)


def put_record(state_dir: str | os.PathLike[str], record: SeizeRecord, *,
               records: RecordSet | None = None) -> None:
    """Write ``record`` (``records``, the operation's set, follows)."""
    store = st.StateStore(state_dir)
    if records is None or records.legacy_present:
        _migrate(store)
    _write(store, record)
    if records is not None:
        records.put(record)


def drop_record(state_dir: str | os.PathLike[str], bdf: Bdf, *,
                records: RecordSet | None = None) -> SeizeRecord | None:
    """Forget ``bdf``'s record; return it (None if there was none). A corrupt file is removed
    too, since dropping is what its fix asks for. ``records``: the operation's set, consulted
    instead of the file and kept true."""
    store = st.StateStore(state_dir)
    try:
        record = records.get(bdf) if records is not None else load_record(state_dir, bdf)
    except StateFileCorrupt as exc:
        if exc.bdf != bdf:
            raise
        record = None
    if records is None or records.legacy_present:
        _migrate(store)
    store.remove(_name(bdf))
    if records is not None:
        records.drop(bdf)
    return record


"""The durable record of seized devices: which driver each one came from, kept in the state dir.

Why a file of our own: once a device is bound to pciback the kernel forgets which driver had it,
and ``unhide --rebind`` (or ``recover`` after a crash) must give it back to exactly that driver.
The file is ``STATE_DIR/seized.json``, one object per device, replaced atomically (write a
temporary file, fsync it, rename over the old one, fsync the directory) so a crash leaves either
the old or the new record set, never a torn one. Readers never need a lock; writers in this tool
serialise through the journal's lock.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from xenpciback_cli.engine.identity import DeviceIdentity
from xenpciback_cli.errors import InputError, OperationFailed
from xenpciback_cli.pci.address import Bdf

RECORDS_FILE = "seized.json"
FORMAT = 1


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

    def to_json(self) -> dict[str, object]:
        data = asdict(self)
        data["bdf"] = str(self.bdf)
        data["identity"] = None if self.identity is None else self.identity.to_json()
        return data

    @classmethod
    def from_json(cls, data: dict[str, object]) -> SeizeRecord:
        return cls(bdf=Bdf.parse(str(data["bdf"])),
                   original_driver=_opt_str(data.get("original_driver")),
                   target_driver=str(data.get("target_driver") or "pciback"),
                   persist=bool(data.get("persist", False)),
                   seized_at=float(data.get("seized_at") or 0.0),  # type: ignore[arg-type]
                   method=str(data.get("method") or "override"),
                   identity=None if data.get("identity") is None else DeviceIdentity.from_json(data["identity"]),
                   released=bool(data.get("released", False)))


def _opt_str(value: object) -> str | None:
    return None if value in (None, "") else str(value)


def records_path(state_dir: str | os.PathLike[str]) -> Path:
    return Path(state_dir) / RECORDS_FILE


def load_records(state_dir: str | os.PathLike[str]) -> dict[Bdf, SeizeRecord]:
    """Every recorded seize, by address; empty when the state dir or the file does not exist."""
    path = records_path(state_dir)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise OperationFailed(f"cannot read the seize records {path}: {exc.strerror}") from None
    try:
        data = json.loads(text)
        entries = data["devices"]
        records = [SeizeRecord.from_json(entry) for entry in entries]
    except (ValueError, KeyError, TypeError, InputError) as exc:
        raise OperationFailed(f"the seize records {path} are corrupt ({exc}); move the file "
                              "aside and run 'xen-pciback recover'") from None
    return {record.bdf: record for record in records}


def save_records(state_dir: str | os.PathLike[str], records: dict[Bdf, SeizeRecord]) -> None:
    """Replace the record set atomically."""
    data = {"format": FORMAT,
            "devices": [records[bdf].to_json() for bdf in sorted(records)]}
    atomic_write(records_path(state_dir), json.dumps(data, indent=2, sort_keys=True) + "\n")


def put_record(state_dir: str | os.PathLike[str], record: SeizeRecord) -> None:
    records = load_records(state_dir)
    records[record.bdf] = record
    save_records(state_dir, records)


def drop_record(state_dir: str | os.PathLike[str], bdf: Bdf) -> SeizeRecord | None:
    records = load_records(state_dir)
    record = records.pop(bdf, None)
    if record is not None:
        save_records(state_dir, records)
    return record


def atomic_write(path: Path, text: str) -> None:
    """Write temp, fsync, rename, fsync the directory: the file is old or new after any crash."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    except OSError as exc:
        try:
            temporary.unlink()
        except OSError:
            pass
        raise OperationFailed(f"cannot write {path}: {exc.strerror or exc}") from None

"""The intent journal: what a hide or unhide was about to do, so a crash is never silent.

Before the first sysfs write of an operation, its planned writes are stored in
``STATE_DIR/journal/<op>-DDDD-BB-DD-F.json``; after each write the entry is rewritten with the
count of writes done; when the operation (including its record update) is complete the entry is
removed. Any entry still present therefore means "interrupted". The count can lag one write behind
reality (killed between a write and its mark), so recovery (:mod:`engine.recover`) decides from
the device's actual sysfs state and uses the journal for intent: the original driver, the target,
and which steps were planned.

Every file is replaced atomically (temp, fsync, rename, fsync dir), like the seize records.
Writers take ``STATE_DIR/.lock`` (flock) so two commands never interleave their operations.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from xenpciback_cli.engine.identity import DeviceIdentity
from xenpciback_cli.engine.records import atomic_write
from xenpciback_cli.errors import OperationFailed
from xenpciback_cli.pci.address import Bdf

JOURNAL_DIR = "journal"
LOCK_FILE = ".lock"


@dataclass
class PlannedWrite:
    """One sysfs write of a plan, with the words a person reads ("unbind from igb")."""

    path: str
    value: str
    description: str


@dataclass
class JournalEntry:
    """An operation in flight: ``op`` is "hide" or "unhide"."""

    op: str
    bdf: Bdf
    original_driver: str | None
    target_driver: str
    method: str
    steps: list[PlannedWrite]
    done: int = 0
    rebind: bool = False
    persist: bool = False
    started: float = field(default_factory=time.time)
    pid: int = field(default_factory=os.getpid)
    #: What the device was when the operation began; ``recover`` refuses an address that changed.
    identity: DeviceIdentity | None = None

    @property
    def name(self) -> str:
        return f"{self.op}-{self.bdf.xs_key}.json"

    def to_json(self) -> dict[str, object]:
        data = asdict(self)
        data["bdf"] = str(self.bdf)
        data["identity"] = None if self.identity is None else self.identity.to_json()
        return data

    @classmethod
    def from_json(cls, data: dict[str, object]) -> JournalEntry:
        steps = [PlannedWrite(str(s["path"]), str(s["value"]), str(s["description"]))
                 for s in data.get("steps") or []]  # type: ignore[union-attr]
        original = data.get("original_driver")
        return cls(op=str(data["op"]), bdf=Bdf.parse(str(data["bdf"])),
                   original_driver=None if original in (None, "") else str(original),
                   target_driver=str(data["target_driver"]), method=str(data.get("method") or ""),
                   steps=steps, done=int(data.get("done") or 0),  # type: ignore[arg-type]
                   rebind=bool(data.get("rebind")), persist=bool(data.get("persist")),
                   started=float(data.get("started") or 0.0),  # type: ignore[arg-type]
                   pid=int(data.get("pid") or 0),  # type: ignore[arg-type]
                   identity=None if data.get("identity") is None else DeviceIdentity.from_json(data["identity"]))

    def describe(self) -> str:
        """The one warning line every command prints while this entry exists."""
        total = len(self.steps)
        if self.done <= 0:
            where = f"before step 1/{total}"
            if total:
                where += f" ({self.steps[0].description})"
        else:
            last = self.steps[min(self.done, total) - 1].description
            where = f"after step {min(self.done, total)}/{total} ({last})"
        return (f"interrupted operation: {self.op} {self.bdf} stopped {where}; "
                "run 'xen-pciback recover'")


def journal_dir(state_dir: str | os.PathLike[str]) -> Path:
    return Path(state_dir) / JOURNAL_DIR


def pending_operations(state_dir: str | os.PathLike[str]) -> list[JournalEntry]:
    """Interrupted operations, oldest first. Cheap: one listdir when there are none.

    An unreadable entry is reported as a hide/unhide with no steps rather than hidden.
    """
    directory = journal_dir(state_dir)
    try:
        names = sorted(n for n in os.listdir(directory) if n.endswith(".json") and not n.startswith("."))
    except OSError:
        return []
    entries: list[JournalEntry] = []
    for name in names:
        try:
            entries.append(JournalEntry.from_json(json.loads((directory / name).read_text())))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise OperationFailed(f"journal entry {directory / name} is unreadable ({exc}); "
                                  "inspect the device by hand and delete the file") from None
    return sorted(entries, key=lambda e: e.started)


class Journal:
    """Writes the entries of one state dir."""

    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self.state_dir = Path(state_dir)
        self.directory = journal_dir(state_dir)

    def begin(self, entry: JournalEntry) -> None:
        if (self.directory / entry.name).exists():
            raise OperationFailed(f"an interrupted {entry.op} of {entry.bdf} is still in the "
                                  "journal; run 'xen-pciback recover' first")
        self.save(entry)

    def save(self, entry: JournalEntry) -> None:
        atomic_write(self.directory / entry.name, json.dumps(entry.to_json(), indent=1) + "\n")

    def step_done(self, entry: JournalEntry, index: int) -> None:
        entry.done = index + 1
        self.save(entry)

    def finish(self, entry: JournalEntry) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.directory / entry.name)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Exclusive use of the state dir for the duration of one command's mutations."""
        import fcntl

        self.state_dir.mkdir(parents=True, exist_ok=True)
        try:
            handle = open(self.state_dir / LOCK_FILE, "a+")  # noqa: SIM115
        except OSError as exc:
            raise OperationFailed(f"cannot open the state dir {self.state_dir}: "
                                  f"{exc.strerror}") from None
        with handle:
            deadline = time.monotonic() + 30.0
            while True:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise OperationFailed(f"another xen-pciback holds {self.state_dir / LOCK_FILE}"
                                              " for more than 30 s") from None
                    time.sleep(0.05)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

"""The intent journal: what a hide or unhide was about to do, so a crash is never silent.

Before the first sysfs write of an operation, its planned writes are stored in
``STATE_DIR/journal/<op>-DDDD-BB-DD-F.json``; after each write the entry is rewritten with the
count of writes done; when the operation (including its record update) is complete the entry is
removed. The count can lag one write behind reality (killed between a write and its mark), so
recovery decides from the device's actual sysfs state and uses the journal for intent: the
original driver, the target, which steps were planned, and the device's identity.

An entry also names its process (pid, this boot's id, the process's start time), so an entry
whose process still runs reads "in progress (pid N)" and is never offered to ``recover``; any
other entry means "interrupted".

Files go through :mod:`engine.statestore` (no symlink followed, crash-safe); every entry is
validated on reading: a corrupt one is reported for its own device and never blocks the others.
Writers take ``STATE_DIR/.lock`` (flock) so two commands never interleave their operations.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from xenpciback_cli.engine import statestore as st
from xenpciback_cli.engine.identity import DeviceIdentity
from xenpciback_cli.errors import OperationFailed, StateFileCorrupt
from xenpciback_cli.pci.address import Bdf
from xenpciback_cli.pci.drivers import SEIZE_DRIVERS

JOURNAL_DIR = "journal"
LOCK_FILE = st.LOCK_FILE
OPS = ("hide", "unhide", "bind")
METHODS = ("override", "slot", "new_id", "")
MAX_STEPS = 64
#: Where ``/proc`` is (tests point it at a temporary tree).
PROC = "/proc"
FIX = "check the device by hand ('xen-pciback list'), then delete the file"
_ENTRY_NAME = re.compile(r"^(hide|unhide|bind)-([0-9a-f]{4,8}-[0-9a-f]{2}-[0-1][0-9a-f]-[0-7])\.json$")
#: The sysfs writes the engine plans, as (path pattern, value kind). ``{bdf}`` is the entry's
#: device, ``{driver}`` a driver name. Nothing else is ever accepted from a journal entry.
STEP_FORMS: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), kind) for pattern, kind in (
        (r"^bus/pci/devices/(?P<bdf>[^/]+)/driver_override$", "override"),
        (r"^bus/pci/drivers/(?P<driver>[^/]+)/(?:unbind|bind|new_slot|remove_slot)$", "bdf"),
        (r"^bus/pci/drivers/(?P<driver>[^/]+)/(?:new_id|remove_id)$", "ids"),
        (r"^bus/pci/drivers_probe$", "bdf"),
        (r"^bus/pci/devices/(?P<bdf>[^/]+)/reset$", "one"),
    ))
_IDS = re.compile(r"^[0-9a-f]{4} [0-9a-f]{4}$")


@dataclass
class PlannedWrite:
    """One sysfs write of a plan, with the words a person reads ("unbind from igb")."""

    path: str
    value: str
    description: str


def boot_id() -> str | None:
    """This boot's random id (``/proc/sys/kernel/random/boot_id``); None where unreadable."""
    try:
        with open(os.path.join(PROC, "sys/kernel/random/boot_id"), encoding="ascii") as handle:
            return handle.read(64).strip() or None
    except (OSError, ValueError):
        return None


def process_start(pid: int) -> int | None:
    """Field 22 of ``/proc/PID/stat`` (start time in clock ticks since boot); None if gone."""
    try:
        with open(os.path.join(PROC, str(pid), "stat"), "rb") as handle:
            data = handle.read(4096)
    except (OSError, ValueError):
        return None
    try:  # the command name (field 2) may hold spaces and parentheses: split after the last ")"
        return int(data[data.rindex(b")") + 2:].split()[19])
    except (ValueError, IndexError):
        return None


@dataclass
class JournalEntry:
    """An operation in flight: ``op`` is "hide", "unhide" or "bind" (``bind``/``rebind``: any
    host driver, ``target_driver`` "" for the kernel's choice)."""

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
    #: The boot and the process start time that, with ``pid``, name the writing process.
    boot_id: str | None = field(default_factory=boot_id)
    process_start: int | None = field(default_factory=lambda: process_start(os.getpid()))

    @property
    def name(self) -> str:
        return f"{self.op}-{self.bdf.xs_key}.json"

    @property
    def running(self) -> bool:
        """Whether the process that wrote this entry still runs (same boot, same pid and start).

        This process's own entries count as interrupted: its operations run one after another,
        so one it reads is one that stopped (an error left it behind)."""
        if self.boot_id is None or self.process_start is None or self.pid in (0, os.getpid()):
            return False
        return self.boot_id == boot_id() and process_start(self.pid) == self.process_start

    def to_json(self) -> dict[str, object]:
        data = asdict(self)
        data["bdf"] = str(self.bdf)
        data["identity"] = None if self.identity is None else self.identity.to_json()
        return data

    @classmethod
    def from_json(cls, data: object) -> JournalEntry:
        """Strict: raises :class:`statestore.Invalid` (a ``ValueError``) naming the bad field."""
        entry = st.obj(data, "entry", required={"op", "bdf", "original_driver", "target_driver",
                                                "method", "steps"},
                       optional={"done", "rebind", "persist", "started", "pid", "identity",
                                 "boot_id", "process_start"})
        if entry["op"] not in OPS:
            raise st.Invalid(f"op {str(entry['op'])[:20]!r} is not hide, unhide or bind")
        if entry["method"] not in METHODS:
            raise st.Invalid(f"method {str(entry['method'])[:20]!r} is not override, slot or new_id")
        device = st.bdf(entry["bdf"], "bdf")
        original = st.driver_name(entry["original_driver"], "original_driver", optional=True)
        if entry["op"] == "bind":  # any host driver, or "" (the kernel's probe chooses)
            target = entry["target_driver"] if entry["target_driver"] == "" else str(
                st.driver_name(entry["target_driver"], "target_driver"))
        else:
            target = st.seize_driver(entry["target_driver"], "target_driver")
        raw_steps = entry["steps"]
        if not isinstance(raw_steps, list) or len(raw_steps) > MAX_STEPS:
            raise st.Invalid(f"steps must be a list of at most {MAX_STEPS}")
        overrides = (*SEIZE_DRIVERS, target) if target else SEIZE_DRIVERS
        steps = [_step(s, number, device, overrides) for number, s in enumerate(raw_steps, start=1)]
        done = st.integer(entry.get("done", 0), "done", 0, len(steps))
        identity = entry.get("identity")
        try:
            parsed = None if identity is None else DeviceIdentity.from_json(identity)
        except ValueError as exc:
            raise st.Invalid(str(exc)) from None
        boot = entry.get("boot_id")
        if boot is not None and (not isinstance(boot, str) or not re.fullmatch(r"[0-9a-f-]{1,64}", boot)):
            raise st.Invalid("boot_id must be a boot id like /proc/sys/kernel/random/boot_id")
        start = entry.get("process_start")
        return cls(op=entry["op"], bdf=device, original_driver=original, target_driver=target,
                   method=entry["method"], steps=steps, done=done,
                   rebind=st.boolean(entry.get("rebind", False), "rebind"),
                   persist=st.boolean(entry.get("persist", False), "persist"),
                   started=st.number(entry.get("started", 0.0), "started"),
                   pid=st.integer(entry.get("pid", 0), "pid", 0, 1 << 31), identity=parsed,
                   boot_id=boot,
                   process_start=None if start is None else st.integer(start, "process_start", 0, 1 << 63))

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
        if self.running:
            return (f"operation in progress (pid {self.pid}): {self.op} {self.bdf}, now {where}; "
                    "wait for it to finish")
        return (f"interrupted operation: {self.op} {self.bdf} stopped {where}; "
                "run 'xen-pciback recover'")


def _step(value: object, number: int, device: Bdf,
          overrides: tuple[str, ...] = SEIZE_DRIVERS) -> PlannedWrite:
    what = f"step {number}"
    step = st.obj(value, what, required={"path", "value", "description"})
    path = st.text(step["path"], f"{what} path", limit=120)
    text = st.text(step["value"], f"{what} value", limit=20)
    description = st.text(step["description"], f"{what} description")
    for pattern, kind in STEP_FORMS:
        match = pattern.match(path)
        if match is None:
            continue
        groups = match.groupdict()
        if "bdf" in groups and groups["bdf"] != str(device):
            raise st.Invalid(f"{what} path {path!r} is not about {device}")
        if "driver" in groups:
            st.driver_name(groups["driver"], f"{what} driver")
        if ((kind == "bdf" and text != str(device))
                or (kind == "override" and text != "\n" and text not in overrides)
                or (kind == "ids" and not _IDS.match(text)) or (kind == "one" and text != "1")):
            raise st.Invalid(f"{what} value {text[:20]!r} does not fit {path!r}")
        return PlannedWrite(path, text, description)
    raise st.Invalid(f"{what} path {path[:60]!r} is not a write this tool makes")


def journal_dir(state_dir: str | os.PathLike[str]) -> Path:
    return Path(state_dir) / JOURNAL_DIR


def _read_entry(store: st.StateStore, name: str) -> JournalEntry | None:
    path = store.path(f"{JOURNAL_DIR}/{name}")
    match = _ENTRY_NAME.match(name)
    if match is None:
        raise st.corrupt(path, "not a journal entry name (hide|unhide|bind-DDDD-BB-DD-F.json)", "delete the file")
    device = st.bdf_from_key(match[2])
    data = store.read_for(f"{JOURNAL_DIR}/{name}", device)
    if data is None:
        return None  # finished meanwhile
    try:
        entry = JournalEntry.from_json(st.parse_json(data))
    except st.Invalid as exc:
        raise st.corrupt(path, str(exc), FIX, device=device) from None
    if entry.name != name:
        raise st.corrupt(path, f"it is about {entry.op} {entry.bdf}, not what its name says", FIX,
                         device=device)
    return entry


def pending_operations(state_dir: str | os.PathLike[str], *,
                       corrupt: list[StateFileCorrupt] | None = None) -> list[JournalEntry]:
    """Journal entries (interrupted or still running: see ``entry.running``), oldest first.
    Cheap: one listdir when there are none.

    A corrupt entry raises :class:`StateFileCorrupt` unless ``corrupt`` is given: then it is
    appended there and the other entries are returned.
    """
    store = st.StateStore(state_dir)
    entries: list[JournalEntry] = []
    for name in store.list(JOURNAL_DIR):
        try:
            entry = _read_entry(store, name)
        except StateFileCorrupt as exc:
            if corrupt is None:
                raise
            corrupt.append(exc)
            continue
        if entry is not None:
            entries.append(entry)
    return sorted(entries, key=lambda e: e.started)


def interrupted_operations(state_dir: str | os.PathLike[str], *,
                           corrupt: list[StateFileCorrupt] | None = None) -> list[JournalEntry]:
    """The entries whose process no longer runs: what ``recover`` may act on."""
    return [e for e in pending_operations(state_dir, corrupt=corrupt) if not e.running]


class Journal:
    """Writes the entries of one state dir."""

    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self.state_dir = Path(state_dir)
        self.directory = journal_dir(state_dir)
        self.store = st.StateStore(state_dir)

    def entry_for(self, op: str, bdf: Bdf) -> JournalEntry | None:
        """The entry of ``op`` on ``bdf``, if any (:class:`StateFileCorrupt` if it is corrupt)."""
        return _read_entry(self.store, f"{op}-{bdf.xs_key}.json")

    def begin(self, entry: JournalEntry) -> None:
        for op in OPS:
            existing = self.entry_for(op, entry.bdf)  # a corrupt one: StateFileCorrupt, exit 2
            if existing is None:
                continue
            if existing.running:
                raise OperationFailed(f"a {existing.op} of {entry.bdf} is in progress (pid "
                                      f"{existing.pid}); wait for it to finish")
            raise OperationFailed(f"an interrupted {existing.op} of {entry.bdf} is still in the "
                                  "journal; run 'xen-pciback recover' first")
        self.save(entry)

    def save(self, entry: JournalEntry) -> None:
        self.store.write(f"{JOURNAL_DIR}/{entry.name}",
                         (json.dumps(entry.to_json(), indent=1) + "\n").encode())

    def step_done(self, entry: JournalEntry, index: int) -> None:
        entry.done = index + 1
        self.save(entry)

    def finish(self, entry: JournalEntry) -> None:
        self.store.remove(f"{JOURNAL_DIR}/{entry.name}")

    @contextlib.contextmanager
    def locked(self, timeout: float = st.LOCK_TIMEOUT) -> Iterator[None]:
        """Exclusive use of the state dir for the duration of one command's mutations."""
        with self.store.locked(timeout):
            yield

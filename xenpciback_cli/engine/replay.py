"""``replay``: re-execute a trace's ops through the engine (docs/trace-format.md).

Each device is rebuilt from its line's snapshot (an in-memory config space, the identity and
the overlay settings it was exported with) and exported to a :class:`GuestSession` per domain;
every op goes through :meth:`GuestSession.handle`, with an :class:`InterruptControl` that hands
back what the trace says the adapter gave (PIRQs, vectors). With ``check`` each answer is
compared with the recorded one. ``against`` replaces the snapshot by a live device (a sandbox's
or the host's, through serve's adapters): read-only unless ``allow_writes``, and even then
every write goes through the overlay, as a guest's would.

The trace is streamed and memory does not grow with its length (only the first ``MAX_KEPT``
mismatches are kept; all are counted). The per-op path is the hot one (bench/bench_replay.py):
config reads and writes, nearly every op of a trace, are parsed field by field from the line's
object with plain type checks, and anything unusual (a missing or odd field, MSI/MSI-X, an
unknown device) takes the slow path, whose checks name what is wrong.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from xenpciback_cli.backend.ports import ConfigAccess
from xenpciback_cli.backend.session import GuestSession
from xenpciback_cli.backend.topology import Mode
from xenpciback_cli.config.fields import ConfigAccessError, MemoryAccessor
from xenpciback_cli.engine.trace import TraceStream, bad_trace, parse_line
from xenpciback_cli.errors import InputError, OperationFailed
from xenpciback_cli.pci.address import Bdf
from xenpciback_cli.pci.device import PciDevice, Resource
from xenpciback_cli.pci.quirk import parse_quirk
from xenpciback_cli.pv.abi import MSIX_ENTRIES, OP_HEADER, PciOp
from xenpciback_cli.pv.codec import Op, Result
from xenpciback_cli.pv.trace import (
    KINDS,
    DeviceSnapshot,
    TIME_LIMIT,
    TraceFormatError,
    TraceRecord,
    line_time,
    op_code,
    parse_op,
)
from xenpciback_cli.untrusted import decimal

MAX_KEPT = 1000
#: The progress callback is called every this many lines.
PROGRESS_EVERY = 8192
_NAMES = {int(op): op.name.lower() for op in PciOp}
_CONF_READ, _CONF_WRITE = int(PciOp.CONF_READ), int(PciOp.CONF_WRITE)
_CONF_OPS = (_CONF_READ, _CONF_WRITE)
_PACK_HEADER = OP_HEADER.pack
_UNPACK = {1: struct.Struct("<B").unpack_from, 2: struct.Struct("<H").unpack_from,
           4: struct.Struct("<I").unpack_from}
_NO_ENTRIES = bytes(MSIX_ENTRIES.size)
_U32 = 0xFFFFFFFF
_TIME_LIMIT = TIME_LIMIT
#: Guest addresses parsed so far (a trace names a handful; bounded all the same).
_MAX_ADDRESSES = 4096
#: How op lines begin when this tool wrote them (pv.trace.op_dict, compact separators): the
#: rest after ``t`` identifies an op and its answer, so a line seen before is not parsed again.
_OP_PREFIX = '{"kind":"op","t":'
#: A JSON number below pv.trace.TIME_LIMIT in magnitude (``t``'s text on that fastest path;
#: at most 18 digits before the point, an exponent only a negative one).
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]{0,17})(?:\.[0-9]+)?(?:[eE]-[0-9]+)?")
#: At most this many distinct op lines remembered (cleared when full: memory stays bounded);
#: when they were looked up less than half as often as kept, lines are not looked up for the
#: next _PAUSE lines (a trace whose lines do not repeat pays the table no more).
_MAX_SEEN = 8192
_PAUSE = 1 << 16
_GUEST_RE = re.compile(r"[0-9a-f]{4}:[0-9a-f]{2}:[01][0-9a-f]\.[0-7]\Z")


class _Recorded:
    """InterruptControl that answers what the op being replayed recorded."""

    def __init__(self) -> None:
        self.record: TraceRecord | None = None

    def enable_msi(self, domid: int, host: Bdf) -> int:
        return self.record.value if self.record is not None else 0

    def disable_msi(self, domid: int, host: Bdf) -> None:
        return None

    def enable_msix(self, domid: int, host: Bdf, entries: Sequence[int]) -> Sequence[int]:
        vectors = self.record.vectors if self.record is not None else ()
        return [vectors[i] if i < len(vectors) else 0 for i in range(len(entries))]

    def disable_msix(self, domid: int, host: Bdf) -> None:
        return None

    def legacy_pirq(self, domid: int, host: Bdf) -> int:
        return self.record.value if self.record is not None else 0

    def adopt(self, domid: int, host: Bdf, kind: str, entries: Sequence[int],
              pirqs: Sequence[int]) -> None:
        return None


class SnapshotMemory(MemoryAccessor):
    """A snapshot's config space: MemoryAccessor without its write log (a replay of a million
    writes must not keep a million tuples) and with precompiled reads."""

    def read(self, offset: int, size: int) -> int:
        unpack = _UNPACK.get(size)
        if unpack is None or offset < 0 or offset + size > self.readable:
            raise ConfigAccessError()
        value: int = unpack(self.data, offset)[0]
        return value

    def write(self, offset: int, size: int, value: int) -> None:
        if offset < 0 or offset + size > self.readable:
            raise ConfigAccessError()
        self.data[offset:offset + size] = value.to_bytes(size, "little")


class ShadowedConfig:
    """A live device's config space, read-only: what the overlay writes lands in a shadow the
    later reads see, the device is never written. ``writes`` counts the writes kept back."""

    def __init__(self, config: ConfigAccess) -> None:
        self.config = config
        self.shadow: dict[int, int] = {}
        self.writes = 0

    def read(self, offset: int, size: int) -> int:
        value = self.config.read(offset, size)
        if self.shadow:
            for i in range(size):
                byte = self.shadow.get(offset + i)
                if byte is not None:
                    value = (value & ~(0xFF << (8 * i))) | (byte << (8 * i))
        return value

    def write(self, offset: int, size: int, value: int) -> None:
        self.config.read(offset, size)  # an access the device would refuse fails the same way
        self.writes += 1
        for i in range(size):
            self.shadow[offset + i] = (value >> (8 * i)) & 0xFF

    def close(self) -> None:
        close = getattr(self.config, "close", None)
        if close is not None:
            close()


#: ``against``: the live config space to replay a device line on, and where it is.
Against = Callable[[DeviceSnapshot], tuple[ConfigAccess, str]]


def parse_against(text: str, source: Any, sandbox: bool) -> Against:
    """``--against BDF|sandbox`` with the config source the app chose (``sandbox``: whether
    it is a sandbox's); InputError for a bad address or 'sandbox' without one."""
    if text.strip().lower() == "sandbox":
        if not sandbox:
            raise InputError("--against sandbox needs --sandbox DIR (or XEN_PCIBACK_SANDBOX)")
        return live_devices(source, None, "sandbox")
    return live_devices(source, Bdf.parse(text), "sandbox" if sandbox else "host")


def live_devices(source: Any, target: Bdf | None, where: str) -> Against:
    """``replay --against``: each device line replayed on a live device of ``source`` (a
    DeviceSource: ``config(bdf)``): ``target``, or when None the line's own host address
    (``--against sandbox``). A trace of several devices cannot all go to one ``target``."""
    chosen: dict[str, Bdf] = {}

    def open_live(snap: DeviceSnapshot) -> tuple[ConfigAccess, str]:
        bdf = target if target is not None else Bdf.parse(snap.host)
        if target is not None and chosen and snap.host not in chosen:
            raise InputError(f"the trace has devices {next(iter(chosen))} and {snap.host}; "
                             f"--against {target} replays a trace of one device "
                             "(--against sandbox replays each on its own address)")
        chosen[snap.host] = bdf
        try:
            config: ConfigAccess = source.config(bdf)
            config.read(0, 4)
        except (OSError, ConfigAccessError, ValueError) as exc:
            why = getattr(exc, "strerror", None) or f"error {getattr(exc, 'err', exc)}"
            raise OperationFailed(f"cannot read the config space of {bdf} ({where}): "
                                  f"{why}") from None
        return config, f"{bdf} ({where})"
    return open_live


@dataclass
class Mismatch:
    index: int
    line: int
    domid: int
    host: str | None
    op: str
    offset: int
    size: int
    register: str
    recorded: tuple[int, int, tuple[int, ...]]
    replayed: tuple[int, int, tuple[int, ...]]

    def as_dict(self) -> dict[str, object]:
        return {"index": self.index, "line": self.line, "domid": self.domid, "host": self.host,
                "op": self.op, "offset": self.offset, "size": self.size,
                "register": self.register,
                "recorded": {"err": self.recorded[0], "value": self.recorded[1],
                             "vectors": list(self.recorded[2])},
                "replayed": {"err": self.replayed[0], "value": self.replayed[1],
                             "vectors": list(self.replayed[2])}}


@dataclass
class ReplayResult:
    path: str
    devices: int = 0
    ops: int = 0
    checked: int = 0
    events: int = 0
    mismatch_count: int = 0
    mismatches: list[Mismatch] = field(default_factory=list)
    #: With ``against``: where each device was replayed, and the writes kept from it.
    against: dict[str, str] = field(default_factory=dict)
    writes_withheld: int = 0
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {
            "trace": self.path, "devices": self.devices, "ops": self.ops,
            "checked": self.checked, "events": self.events,
            "mismatch_count": self.mismatch_count,
            "mismatches": [m.as_dict() for m in self.mismatches]}
        if self.against:
            out["against"] = dict(self.against)
            out["writes_withheld"] = self.writes_withheld
            out["notes"] = list(self.notes)
        return out


def parse_kinds(text: str | None) -> frozenset[int] | None:
    """``--only``: op names (conf_read, conf_write, enable_msix, ...) or codes, comma-separated."""
    if not text:
        return None
    codes = set()
    for word in text.split(","):
        word = word.strip().lower()
        code = decimal(word, max_digits=3)
        code = op_code(word) if code is None else code
        if code is None:
            raise InputError(f"unknown op kind {word!r} for --only (one of: "
                             f"{', '.join(_NAMES.values())})")
        codes.add(code)
    return frozenset(codes)


class Replayer:
    def __init__(self, path: str, mode: str, against: Against | None = None,
                 allow_writes: bool = False) -> None:
        self.path = path
        self.mode = Mode(mode) if mode in ("vpci", "passthrough") else Mode.VPCI
        self.control = _Recorded()
        self.sessions: dict[int, GuestSession] = {}
        self.known: set[tuple[int, str]] = set()
        self.against = against
        self.allow_writes = allow_writes
        self.live: list[ConfigAccess] = []
        self.where: dict[str, str] = {}
        self.notes: list[str] = []

    def session(self, domid: int) -> GuestSession:
        session = self.sessions.get(domid)
        if session is None:
            session = self.sessions[domid] = GuestSession(domid, self.control, mode=self.mode)
        return session

    def export(self, snap: DeviceSnapshot, number: int) -> None:
        session = self.session(snap.domid)
        host = Bdf.parse(snap.host)
        for dev in list(session.devices.values()):
            if dev.host == host:  # declared again: it was released and exported anew
                session.release(dev.guest)
        physfn = Bdf.parse(snap.physfn) if snap.physfn is not None else None
        device = PciDevice(host, snap.vendor_id, snap.device_id, 0, 0, irq=snap.irq,
                           physfn=physfn,
                           resources=tuple(Resource(*r) for r in snap.resources))
        try:
            quirks = tuple(parse_quirk(q) for q in snap.quirks)
            # a VF's memory decode is its PF's COMMAND: the PF's header from the same line
            physfn_config = SnapshotMemory(snap.physfn_config) \
                if physfn is not None and snap.physfn_config else None
            session.export(host, self._config(snap), device=device,
                           permissive=snap.permissive, quirks=quirks,
                           physfn_config=physfn_config, guest=Bdf.parse(snap.guest))
        except (InputError, ValueError) as exc:
            raise bad_trace(self.path, number, f"device {snap.host}: {exc}") from None
        self.known.add((snap.domid, snap.host))

    def _config(self, snap: DeviceSnapshot) -> ConfigAccess:
        if self.against is None:
            return SnapshotMemory(snap.config)
        live, label = self.against(snap)
        self.where[snap.host] = label
        try:
            ids = live.read(0, 4)
        except ConfigAccessError:
            ids = 0xFFFFFFFF
        if ids != snap.vendor_id | snap.device_id << 16:
            self.notes.append(f"{label} is {ids & 0xFFFF:04x}:{ids >> 16:04x}, the trace's "
                              f"{snap.host} {snap.vendor_id:04x}:{snap.device_id:04x}")
        if not self.allow_writes:
            live = ShadowedConfig(live)
        self.live.append(live)
        return live

    def close(self) -> int:
        """Close the live devices; the writes withheld from them."""
        withheld = 0
        for live in self.live:
            withheld += getattr(live, "writes", 0)
            close = getattr(live, "close", None)
            if close is not None:
                close()
        self.live.clear()
        return withheld

    def register(self, domid: int, record: TraceRecord) -> str:
        op = record.op
        if op.cmd != _CONF_READ and op.cmd != _CONF_WRITE:
            return _NAMES.get(op.cmd, f"op {op.cmd}")
        dev = self.sessions[domid].devices.get((op.domain, op.bus, op.devfn)) \
            if domid in self.sessions else None
        if dev is None:
            return f"{op.offset:#04x}"
        found = dev.overlay.field_at(op.offset)
        return f"{op.offset:#04x} {found.name}" if found is not None else f"{op.offset:#04x}"


def _address(text: str) -> tuple[int, int, int] | None:
    """``DDDD:BB:SS.F`` (as the format spells it) as (domain, bus, devfn); None for anything
    else (the slow path says what is wrong)."""
    if not _GUEST_RE.match(text):
        return None
    return int(text[:4], 16), int(text[5:7], 16), (int(text[8:10], 16) << 3) | int(text[11])


def replay(path: str, *, check: bool = True, until: int | None = None,
           only: frozenset[int] | None = None, against: Against | None = None,
           allow_writes: bool = False,
           progress: Callable[[int, int], None] | None = None) -> ReplayResult:
    """Replay ``path``; InputError (exit 2) for a bad trace, naming the line. ``progress``
    gets ``(bytes read, bytes in all)`` now and then."""
    stream = TraceStream(path)
    rep = Replayer(path, stream.mode, against, allow_writes)
    result = ReplayResult(path)
    try:
        for snap in stream.devices:
            rep.export(snap, 1)
            result.devices += 1
        _run(stream, rep, result, check, until, only, progress)
    finally:
        stream.close()
        result.writes_withheld = rep.close()
        result.against, result.notes = rep.where, rep.notes
    return result


def _run(stream: TraceStream, rep: Replayer, result: ReplayResult, check: bool,
         until: int | None, only: frozenset[int] | None,
         progress: Callable[[int, int], None] | None) -> None:
    path = stream.path
    sessions, known, control = rep.sessions, rep.known, rep.control
    addresses: dict[str, tuple[int, int, int]] = {}
    #: op lines already parsed and checked, by their text after ``t`` (see _OP_PREFIX)
    seen: dict[str, tuple[Any, ...]] = {}
    caching, hits, pause = True, 0, 0
    limit = until if until is not None else -1
    ops = checked = 0
    check_all = check and only is None
    countdown = PROGRESS_EVERY
    number = stream.number
    readline = stream.text.readline
    number_at = _NUMBER.fullmatch
    prefix = len(_OP_PREFIX)
    while True:
        try:
            text = readline()
        except (OSError, EOFError, UnicodeDecodeError, ValueError) as exc:
            raise bad_trace(path, number + 1, f"unreadable ({exc}): truncated?") from None
        if not text:
            break
        number += 1
        if progress is not None:
            countdown -= 1
            if not countdown:
                countdown = PROGRESS_EVERY
                progress(stream.position(), stream.size)
        key = None
        ready = False  # session, op, err, value_out, cmd, domid and host are set: run the op
        if not caching:
            pause -= 1
            if not pause:
                caching, hits = True, 0
        elif text.startswith(_OP_PREFIX):
            # -- the fastest path: an op line seen before, but for its time ------------------
            comma = text.find(",", prefix)
            key = text[comma:]
            hit = seen.get(key)
            if hit is not None and number_at(text, prefix, comma):
                session, op, err, value_out, cmd, domid, host = hit
                if ops == limit:
                    break
                hits += 1
                ready = True
        if not ready:
            if text == "\n" or not text.strip():
                continue
            data = parse_line(path, number, text)
            get = data.get
            if get("kind") == "op":
                # -- the fast path: a config read or write, every field as expected --------
                cmd, domid, offset, size = get("code"), get("domid"), get("offset"), get("size")
                value_in, err, value_out = get("value_in"), get("err"), get("value_out")
                host, t = get("host"), get("t")
                guest = get("guest")
                where = addresses.get(guest) if type(guest) is str else None
                if where is None and type(guest) is str:
                    where = _address(guest)
                    if where is not None and len(addresses) < _MAX_ADDRESSES:
                        addresses[guest] = where
                if (where is not None and type(cmd) is int and cmd in _CONF_OPS
                        and type(domid) is int and type(offset) is int and type(size) is int
                        and type(value_in) is int and type(err) is int
                        and type(value_out) is int
                        and (type(t) is float or type(t) is int) and -_TIME_LIMIT < t < _TIME_LIMIT
                        and 0 <= value_in <= _U32 and 0 <= value_out <= _U32
                        and -0x80000000 <= err <= 0x7FFFFFFF and -0x80000000 <= offset <= 0x7FFFFFFF
                        and -0x80000000 <= size <= 0x7FFFFFFF and 0 <= domid <= 0xFFFF
                        and "entries" not in data and "vectors" not in data
                        and (host is None or (type(host) is str and (domid, host) in known))):
                    if ops == limit:
                        break
                    session = sessions.get(domid)
                    if session is None:
                        session = rep.session(domid)
                    domain, bus, devfn = where
                    op = Op(cmd, 0, domain, bus, devfn, offset, size, value_in, 0,
                            _PACK_HEADER(cmd, 0, domain, bus, devfn, offset, size, value_in, 0)
                            + _NO_ENTRIES)
                    if key is not None:
                        if len(seen) >= _MAX_SEEN:
                            # lines that do not repeat (fewer hits than lines kept): stop
                            # looking them up for a while; either way start afresh
                            caching, pause = hits >= _MAX_SEEN // 2, _PAUSE
                            seen.clear()
                            hits = 0
                        if caching:
                            seen[key] = (session, op, err, value_out, cmd, domid, host)
                    ready = True
        if ready:
            # both fast paths: the op as a config read or write, its answer checked
            got = session.handle(op)
            if check_all or (check and cmd in only):  # type: ignore[operator]
                checked += 1
                if got[0] != err or got[1] & _U32 != value_out or len(got) > 2:
                    _mismatch(rep, result, number, host, domid, ops, got,
                              TraceRecord(domid, op.raw, err, value_out))
            ops += 1
            continue
        # -- the slow path: other kinds, other ops, and whatever the fast path did not like --
        kind = get("kind")
        if kind not in KINDS:
            raise bad_trace(path, number, f"unknown kind {str(kind)[:20]!r}")
        try:
            if kind != "op":
                line_time(data)
            if kind == "device":
                rep.export(DeviceSnapshot.from_dict(data), number)
                result.devices += 1
                continue
            if kind != "op":
                result.events += 1
                continue
            entry = parse_op(data)
        except TraceFormatError as exc:
            raise bad_trace(path, number, str(exc)) from None
        record = entry.record
        if entry.host is not None and (record.domid, entry.host) not in known:
            raise bad_trace(path, number, f"an op for device {entry.host} of domain "
                            f"{record.domid}, which the trace never declared")
        if ops == limit:
            break
        index = ops
        ops += 1
        session = rep.session(record.domid)
        control.record = record
        op = record.op
        got = session.handle(op)
        if not check or (only is not None and op.cmd not in only):
            continue
        checked += 1
        vectors: tuple[int, ...] = got[2] if len(got) > 2 else ()
        if (got[0], got[1] & _U32, vectors) != (record.err, record.value, record.vectors):
            _mismatch(rep, result, number, entry.host, record.domid, index, got, record)
    result.ops, result.checked = ops, checked


def _mismatch(rep: Replayer, result: ReplayResult, number: int, host: object, domid: int,
              index: int, got: Result, record: TraceRecord) -> None:
    result.mismatch_count += 1
    if len(result.mismatches) >= MAX_KEPT:
        return
    op = record.op
    vectors: tuple[int, ...] = got[2] if len(got) > 2 else ()
    replayed = (got[0], got[1] & _U32, vectors)
    result.mismatches.append(Mismatch(
        index, number, domid, host if isinstance(host, str) else None,
        _NAMES.get(op.cmd, str(op.cmd)), op.offset, op.size, rep.register(domid, record),
        (record.err, record.value, record.vectors), replayed))

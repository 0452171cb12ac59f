"""``trace show|stats|diff``: a trace read as registers, summed up, or set beside another.

Every line is annotated from the trace's own device lines: the register an op touched
(:mod:`.trace_names`, from the device's config snapshot) and, for ``show`` and ``stats``,
whether the filter dropped a write ("denied": no field owns those bytes and the device is not
permissive). Whether a write was denied is not on the wire (the guest gets success either way),
so it is found by re-running the ops through the engine as ``replay`` does; it is this engine's
filter that decides. Traces are streamed: ``show`` and ``diff`` hold one line (of each trace)
at a time, ``stats`` its counters.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

from xenpciback_cli.engine.replay import Replayer
from xenpciback_cli.engine.trace import TraceStream, bad_trace
from xenpciback_cli.engine.trace_names import RegisterNames, err_name
from xenpciback_cli.errors import InputError
from xenpciback_cli.pci.address import Bdf
from xenpciback_cli.pv.abi import PciOp
from xenpciback_cli.pv.trace import (
    KINDS,
    DeviceSnapshot,
    TraceFormatError,
    line_time,
    op_code,
    op_name,
    parse_op,
)
from xenpciback_cli.untrusted import decimal

#: ``stats`` lists this many registers, and keeps this many state and AER lines.
TOP = 10
MAX_TIMELINE = 1000
#: ``diff`` lists this many differences after the first.
MAX_DIFFERENCES = 20
_WRITE = int(PciOp.CONF_WRITE)
_EVENT_KINDS = ("device", "state", "aer")


@dataclass
class Event:
    """One line of a trace, annotated. ``index``: the op's number among the ops (from 0)."""

    line: int
    kind: str
    t: float | None
    domid: int
    index: int | None = None
    guest: str | None = None
    host: str | None = None
    op: str = ""
    code: int | None = None
    offset: int = 0
    size: int = 0
    value_in: int = 0
    value_out: int = 0
    err: int = 0
    entries: tuple[int, ...] = ()
    vectors: tuple[int, ...] = ()
    register: str = ""
    denied: bool = False
    detail: str = ""

    @property
    def request(self) -> tuple[object, ...]:
        return (self.code, self.guest, self.offset, self.size, self.value_in, self.entries)

    @property
    def answer(self) -> tuple[int, int, tuple[int, ...]]:
        return (self.err, self.value_out, self.vectors)

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"line": self.line, "kind": self.kind, "t": self.t,
                                  "domid": self.domid}
        if self.kind == "op":
            out.update({"index": self.index, "guest": self.guest, "host": self.host,
                        "op": self.op, "code": self.code, "offset": self.offset,
                        "size": self.size, "register": self.register,
                        "value_in": self.value_in, "value_out": self.value_out,
                        "err": self.err, "err_name": err_name(self.err),
                        "denied": self.denied})
            if self.entries:
                out["entries"] = list(self.entries)
            if self.vectors:
                out["vectors"] = list(self.vectors)
        else:
            out["detail"] = self.detail
        return out

    def summary(self) -> str:
        """What the op asked and got, in one phrase (``conf_write 0x10 BAR0 sizing [4] <-
        0xffffffff: ok``)."""
        if self.kind != "op":
            return f"{self.kind} {self.detail}"
        what = f"{self.op} {self.register}".rstrip() if self.register != self.op else self.op
        if self.code == PciOp.CONF_READ:
            what += f" [{self.size}] -> {_hex(self.value_out, self.size)}"
        elif self.code == PciOp.CONF_WRITE:
            what += f" [{self.size}] <- {_hex(self.value_in, self.size)}"
        elif self.entries:
            what += f" entries {','.join(map(str, self.entries))}"
            if self.vectors:
                what += f" -> vectors {','.join(map(str, self.vectors))}"
        elif self.code in (PciOp.ENABLE_MSI, PciOp.ENABLE_MSIX):
            what += f" -> {self.value_out}"
        what += f": {err_name(self.err)}"
        if self.denied:
            what += " (denied by the filter)"
        return what

    def text(self, start: float | None) -> str:
        """One line for a person: op index, seconds since the trace's first line, domain and
        address, then :meth:`summary`."""
        when = f"{self.t - start:11.6f}" if self.t is not None and start is not None \
            else " " * 11
        number = f"{self.index:>7}" if self.index is not None else " " * 7
        where = self.guest or ""
        return f"{number} {when} d{self.domid:<4} {where:<12} {self.summary()}".rstrip()


def _hex(value: int, size: int) -> str:
    digits = 2 * size if size in (1, 2, 4) else 8
    return f"{value:#0{digits + 2}x}"


@dataclass(frozen=True)
class TraceFilter:
    """``show``'s filters: a device (host or guest address), kinds (op names, or state, aer,
    device), an offset range (config ops touching it), only errors, only denied writes."""

    device: str | None = None
    kinds: frozenset[str] | None = None
    offsets: tuple[int, int] | None = None
    errors: bool = False
    denied: bool = False

    def wants(self, event: Event) -> bool:
        if self.kinds is not None and (event.op if event.kind == "op" else event.kind) \
                not in self.kinds:
            return False
        if self.device is not None and self.device not in (event.host, event.guest):
            return False
        if event.kind != "op":
            return not (self.offsets or self.errors or self.denied)
        if self.errors and not event.err:
            return False
        if self.denied and not event.denied:
            return False
        if self.offsets is not None:
            low, high = self.offsets
            if event.code not in (PciOp.CONF_READ, PciOp.CONF_WRITE) \
                    or event.offset > high or event.offset + max(event.size, 1) - 1 < low:
                return False
        return True


def parse_filter(device: str | None = None, kinds: str | None = None,
                 offsets: str | None = None, errors: bool = False,
                 denied: bool = False) -> TraceFilter:
    """The filter from the options' text; InputError (exit 2) naming what is wrong."""
    kind_set = None
    if kinds:
        kind_set = set()
        for word in kinds.split(","):
            word = word.strip().lower()
            code = decimal(word, max_digits=3)
            if code is not None:
                word = op_name(code)
            elif word not in _EVENT_KINDS and op_code(word) is None:
                raise InputError(f"unknown kind {word!r} for --kind (op names such as "
                                 f"conf_read, conf_write, enable_msix; or {', '.join(_EVENT_KINDS)})")
            kind_set.add(word)
    return TraceFilter(_device(device) if device else None,
                       frozenset(kind_set) if kind_set is not None else None,
                       parse_offsets(offsets) if offsets else None, errors, denied)


def _device(text: str) -> str:
    return str(Bdf.parse(text))


def parse_offsets(text: str) -> tuple[int, int]:
    """``0x10-0x24`` (both ends included), ``0x04`` (one byte), ``0x70+12`` (12 bytes from)."""
    def number(word: str) -> int:
        word = word.strip().lower()
        if not word:
            raise InputError(f"--offset {text!r}: a number is missing (START, START-END or "
                             "START+LENGTH; offsets are not negative)")
        try:
            value = int(word, 16) if word.startswith("0x") else int(word, 10)
        except ValueError:
            raise InputError(f"--offset {text!r}: {word!r} is not a number "
                             "(hex with 0x, or decimal)") from None
        if not 0 <= value < 0x1000:
            raise InputError(f"--offset {text!r}: {word} is beyond config space (0-0xfff)")
        return value
    if "+" in text:
        start, length = text.split("+", 1)
        low = number(start)
        return low, low + max(number(length), 1) - 1
    if "-" in text:
        start, end = text.split("-", 1)
        low, high = number(start), number(end)
        if high < low:
            raise InputError(f"--offset {text!r}: the range ends before it starts")
        return low, high
    low = number(text)
    return low, low


class _Annotator:
    """Reads a trace line by line into :class:`Event` objects; ``engine``: also re-run the ops
    (to tell denied writes), as replay does."""

    def __init__(self, path: str, engine: bool = True) -> None:
        self.stream = TraceStream(path)
        self.path = path
        self.engine = engine
        self.replayer = Replayer(path, self.stream.mode)
        self.names: dict[tuple[int, str], RegisterNames] = {}
        #: for an op on an address no device line declared: offsets only (built once)
        self.unnamed = RegisterNames(b"")
        self.snapshots: list[DeviceSnapshot] = []
        self.start: float | None = None
        self.ops = 0

    def _declare(self, snap: DeviceSnapshot, number: int) -> None:
        self.snapshots.append(snap)
        self.names[(snap.domid, snap.guest)] = RegisterNames(snap.config)
        if self.engine:
            self.replayer.export(snap, number)
        else:
            self.replayer.known.add((snap.domid, snap.host))

    def events(self) -> Iterator[Event]:
        try:
            for snap in self.stream.devices:
                self._declare(snap, 1)
                yield _device_event(snap, 1, None)
            for line in self.stream.lines():
                yield self._event(line.number, line.data)
        finally:
            self.stream.close()

    def _event(self, number: int, data: dict[str, object]) -> Event:
        kind = data.get("kind")
        if kind not in KINDS:
            raise bad_trace(self.path, number, f"unknown kind {str(kind)[:20]!r}")
        try:
            when = line_time(data)
            if when is not None and self.start is None:
                self.start = when
            if kind == "device":
                snap = DeviceSnapshot.from_dict(data)
                self._declare(snap, number)
                return _device_event(snap, number, when)
            if kind != "op":
                return _other_event(str(kind), number, when, data)
            entry = parse_op(data)
        except TraceFormatError as exc:
            raise bad_trace(self.path, number, str(exc)) from None
        record = entry.record
        if entry.host is not None and (record.domid, entry.host) not in self.replayer.known:
            raise bad_trace(self.path, number, f"an op for device {entry.host} of domain "
                            f"{record.domid}, which the trace never declared")
        op = record.op
        guest = f"{op.domain:04x}:{op.bus:02x}:{op.devfn >> 3:02x}.{op.devfn & 7}"
        register = self.names.get((record.domid, guest), self.unnamed) \
            .name(op.offset, op.size, op.cmd, op.value)
        denied = False
        if self.engine:
            session = self.replayer.session(record.domid)
            dev = session.devices.get((op.domain, op.bus, op.devfn))
            before = dev.overlay.dropped_writes if dev is not None else 0
            self.replayer.control.record = record
            session.handle(op)
            denied = dev is not None and op.cmd == _WRITE and \
                dev.overlay.dropped_writes > before
        entries = tuple(e for _, e in op.msix_entries(op.value)) \
            if op.cmd == PciOp.ENABLE_MSIX and "entries" in data else ()
        event = Event(number, "op", when, record.domid, self.ops, guest, entry.host,
                      op_name(op.cmd), op.cmd, op.offset, op.size, op.value, record.value,
                      record.err, entries, record.vectors, register, denied)
        self.ops += 1
        return event


def _device_event(snap: DeviceSnapshot, number: int, when: float | None) -> Event:
    detail = (f"{snap.host} as {snap.guest} [{snap.vendor_id:04x}:{snap.device_id:04x}] "
              f"{len(snap.config)} bytes of config")
    if snap.permissive:
        detail += ", permissive"
    if snap.quirks:
        detail += f", quirks {' '.join(inert(q) for q in snap.quirks)}"
    if snap.physfn:
        detail += f", VF of {snap.physfn}"
    return Event(number, "device", when, snap.domid, guest=snap.guest, host=snap.host,
                 detail=detail)


def inert(value: object, limit: int = 64) -> str:
    """A value a trace holds as text to print: control characters escaped, at most ``limit``
    characters (a trace may come from elsewhere; the terminal must not act on it)."""
    text = value if isinstance(value, str) else json.dumps(value)[:limit + 1]
    text = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text[:limit + 1])
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _other_event(kind: str, number: int, when: float | None, data: dict[str, object]) -> Event:
    domid = data.get("domid")
    domid = domid if isinstance(domid, int) and not isinstance(domid, bool) else -1
    if kind == "state":
        detail = (f"{inert(data.get('end', 'backend'))} {inert(data.get('name'))} "
                  f"({inert(data.get('state'))})")
        return Event(number, kind, when, domid, detail=detail)
    host = data.get("host")
    detail = f"{inert(data.get('step'))} on {inert(host)}: {inert(data.get('result'))}"
    if data.get("outcome"):
        detail += f" ({inert(data.get('outcome'))})"
    return Event(number, kind, when, domid, host=host if isinstance(host, str) else None,
                 detail=detail)


# -- show ----------------------------------------------------------------------------------------
class Shown:
    """``show``'s lines, streamed: iterate for the events that pass the filter; ``start`` is
    the trace's first time (for the relative times of :meth:`Event.text`)."""

    def __init__(self, path: str, wanted: TraceFilter) -> None:
        self.annotator = _Annotator(path)
        self.wanted = wanted

    @property
    def start(self) -> float | None:
        return self.annotator.start

    def __iter__(self) -> Iterator[Event]:
        wanted = self.wanted
        for event in self.annotator.events():
            if wanted.wants(event):
                yield event


def show(path: str, wanted: TraceFilter | None = None) -> Shown:
    return Shown(path, wanted or TraceFilter())


# -- stats ---------------------------------------------------------------------------------------
@dataclass
class TraceStats:
    path: str
    devices: list[str] = field(default_factory=list)
    ops: int = 0
    by_kind: Counter[str] = field(default_factory=Counter)
    writes: int = 0
    denied: int = 0
    denied_registers: Counter[str] = field(default_factory=Counter)
    errors: int = 0
    by_error: Counter[str] = field(default_factory=Counter)
    registers: Counter[str] = field(default_factory=Counter)
    states: list[tuple[float | None, int, str]] = field(default_factory=list)
    aer: list[tuple[float | None, int, str]] = field(default_factory=list)
    start: float | None = None
    end: float | None = None

    @property
    def duration(self) -> float | None:
        return None if self.start is None or self.end is None else self.end - self.start

    def busiest(self, count: int = TOP) -> list[tuple[str, int]]:
        return self.registers.most_common(count)

    def as_dict(self) -> dict[str, object]:
        def rel(t: float | None) -> float | None:
            return None if t is None or self.start is None else round(t - self.start, 6)
        return {
            "trace": self.path, "devices": self.devices, "ops": self.ops,
            "duration": None if self.duration is None else round(self.duration, 6),
            "by_kind": dict(self.by_kind.most_common()), "writes": self.writes,
            "denied": self.denied,
            "denied_registers": dict(self.denied_registers.most_common(TOP)),
            "errors": self.errors, "by_error": dict(self.by_error.most_common()),
            "busiest": [{"register": r, "ops": n} for r, n in self.busiest()],
            "states": [{"t": rel(t), "domid": d, "state": s} for t, d, s in self.states],
            "aer": [{"t": rel(t), "domid": d, "event": s} for t, d, s in self.aer]}


def stats(path: str, device: str | None = None) -> TraceStats:
    """Counts over the whole trace (``device``: only that device's ops and lines)."""
    wanted = TraceFilter(_device(device) if device else None)
    result = TraceStats(path)
    annotator = _Annotator(path)
    for event in annotator.events():
        if event.t is not None:
            result.start = event.t if result.start is None else result.start
            result.end = event.t
        if event.kind == "device":
            if wanted.wants(event):
                result.devices.append(event.detail)
            continue
        if event.kind == "state":
            if len(result.states) < MAX_TIMELINE:
                result.states.append((event.t, event.domid, event.detail))
            continue
        if event.kind == "aer":
            if wanted.wants(event) and len(result.aer) < MAX_TIMELINE:
                result.aer.append((event.t, event.domid, event.detail))
            continue
        if not wanted.wants(event):
            continue
        result.ops += 1
        result.by_kind[event.op] += 1
        if event.code in (PciOp.CONF_READ, PciOp.CONF_WRITE):
            result.registers[event.register] += 1
        if event.code == _WRITE:
            result.writes += 1
            if event.denied:
                result.denied += 1
                result.denied_registers[event.register] += 1
        if event.err:
            result.errors += 1
            result.by_error[err_name(event.err)] += 1
    return result


# -- diff ----------------------------------------------------------------------------------------
@dataclass
class Difference:
    index: int
    line_a: int | None
    line_b: int | None
    a: str
    b: str
    why: str

    def as_dict(self) -> dict[str, object]:
        return {"index": self.index, "line_a": self.line_a, "line_b": self.line_b,
                "a": self.a, "b": self.b, "why": self.why}


@dataclass
class TraceDiff:
    a: str
    b: str
    ops_a: int = 0
    ops_b: int = 0
    same: int = 0
    answers_differ: int = 0
    requests_differ: int = 0
    #: ops before the first difference (the traces agree on all of them)
    common: int = 0
    first: Difference | None = None
    differences: list[Difference] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def differ(self) -> bool:
        return self.first is not None

    def as_dict(self) -> dict[str, object]:
        return {"a": self.a, "b": self.b, "ops_a": self.ops_a, "ops_b": self.ops_b,
                "same": self.same, "answers_differ": self.answers_differ,
                "requests_differ": self.requests_differ, "common": self.common,
                "differ": self.differ,
                "first": self.first.as_dict() if self.first is not None else None,
                "differences": [d.as_dict() for d in self.differences],
                "notes": list(self.notes)}


def diff(path_a: str, path_b: str, device: str | None = None) -> TraceDiff:
    """Line up the ops of two traces of the same device, op by op: the same request answered
    alike, answered differently, or a different request (the guests took other paths). Times,
    domain ids and host addresses are not compared (two runs, two backends, two perspectives
    differ there by nature); guest addresses, op, offset, size, value, MSI-X entries and the
    answers are. ``device`` (host or guest address) keeps one device of each trace."""
    wanted = TraceFilter(_device(device) if device else None, frozenset(
        op.name.lower() for op in PciOp))
    result = TraceDiff(path_a, path_b)
    left, right = _Annotator(path_a, engine=False), _Annotator(path_b, engine=False)
    ops_a = (e for e in left.events() if wanted.wants(e))
    ops_b = (e for e in right.events() if wanted.wants(e))
    index = 0
    while True:
        a, b = next(ops_a, None), next(ops_b, None)
        if a is None and b is None:
            break
        if a is not None:
            result.ops_a += 1
        if b is not None:
            result.ops_b += 1
        if a is None or b is None:
            why = "only in A" if b is None else "only in B"
            _differ(result, index, a, b, why)
            _drain(result, ops_a if b is None else ops_b, b is None)
            break
        if a.request != b.request:
            result.requests_differ += 1
            _differ(result, index, a, b, "the guests asked differently")
        elif a.answer != b.answer:
            result.answers_differ += 1
            _differ(result, index, a, b, "answered differently")
        else:
            result.same += 1
            if result.first is None:
                result.common += 1
        index += 1
    _compare_devices(result, left.snapshots, right.snapshots, wanted)
    return result


def _drain(result: TraceDiff, rest: Iterator[Event], in_a: bool) -> None:
    for _ in rest:
        if in_a:
            result.ops_a += 1
        else:
            result.ops_b += 1


def _differ(result: TraceDiff, index: int, a: Event | None, b: Event | None, why: str) -> None:
    difference = Difference(index, a.line if a else None, b.line if b else None,
                            a.summary() if a else "(trace ended)",
                            b.summary() if b else "(trace ended)", why)
    if result.first is None:
        result.first = difference
    elif len(result.differences) < MAX_DIFFERENCES:
        result.differences.append(difference)


def _compare_devices(result: TraceDiff, left: list[DeviceSnapshot],
                     right: list[DeviceSnapshot], wanted: TraceFilter) -> None:
    """Notes on the devices behind the ops: not the same device, other settings, another
    config space at the start (often why the answers part)."""
    def chosen(snaps: list[DeviceSnapshot]) -> list[DeviceSnapshot]:
        if wanted.device is None:
            return snaps
        return [s for s in snaps if wanted.device in (s.host, s.guest)]
    a, b = chosen(left), chosen(right)
    if len(a) != len(b):
        result.notes.append(f"A declares {len(a)} device(s), B {len(b)}")
    for one, other in zip(a, b):
        if (one.vendor_id, one.device_id) != (other.vendor_id, other.device_id):
            result.notes.append(f"not the same device: A's {one.host} is "
                                f"{one.vendor_id:04x}:{one.device_id:04x}, B's {other.host} "
                                f"{other.vendor_id:04x}:{other.device_id:04x}")
            continue
        if one.permissive != other.permissive:
            result.notes.append(f"{one.guest}: permissive {str(one.permissive).lower()} in A, "
                                f"{str(other.permissive).lower()} in B")
        if one.quirks != other.quirks:
            result.notes.append(f"{one.guest}: quirks {list(one.quirks)} in A, "
                                f"{list(other.quirks)} in B")
        if one.config != other.config:
            common = min(len(one.config), len(other.config))
            at = next((i for i in range(common) if one.config[i] != other.config[i]), common)
            count = sum(1 for i in range(common) if one.config[i] != other.config[i]) \
                + abs(len(one.config) - len(other.config))
            result.notes.append(f"{one.guest}: the config snapshots differ in {count} byte(s), "
                                f"the first at {at:#05x}")

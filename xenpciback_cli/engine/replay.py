"""``replay``: re-execute a trace's ops through the engine (docs/trace-format.md).

Each device is rebuilt from its line's snapshot (an in-memory config space, the identity and
the overlay settings it was exported with) and exported to a :class:`GuestSession` per domain;
every op goes through :meth:`GuestSession.handle`, with an :class:`InterruptControl` that hands
back what the trace says the adapter gave (PIRQs, vectors). With ``check`` each answer is
compared with the recorded one. The trace is streamed: memory does not grow with its length
(only the first ``MAX_KEPT`` mismatches are kept; all are counted).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from xenpciback_cli.backend.session import GuestSession
from xenpciback_cli.backend.topology import Mode
from xenpciback_cli.config.fields import MemoryAccessor
from xenpciback_cli.engine.trace import bad_trace, read_trace
from xenpciback_cli.errors import InputError
from xenpciback_cli.pci.address import Bdf
from xenpciback_cli.pci.device import PciDevice, Resource
from xenpciback_cli.pci.quirk import parse_quirk
from xenpciback_cli.pv.abi import PciOp
from xenpciback_cli.pv.trace import (
    KINDS,
    DeviceSnapshot,
    TraceFormatError,
    TraceRecord,
    op_code,
    parse_op,
)
from xenpciback_cli.untrusted import decimal

MAX_KEPT = 1000
_NAMES = {int(op): op.name.lower() for op in PciOp}
_CONF_READ, _CONF_WRITE = int(PciOp.CONF_READ), int(PciOp.CONF_WRITE)


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

    def as_dict(self) -> dict[str, object]:
        return {"trace": self.path, "devices": self.devices, "ops": self.ops,
                "checked": self.checked, "events": self.events,
                "mismatch_count": self.mismatch_count,
                "mismatches": [m.as_dict() for m in self.mismatches]}


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


class _Replayer:
    def __init__(self, path: str, mode: str) -> None:
        self.path = path
        self.mode = Mode(mode) if mode in ("vpci", "passthrough") else Mode.VPCI
        self.control = _Recorded()
        self.sessions: dict[int, GuestSession] = {}
        self.known: set[tuple[int, str]] = set()

    def export(self, snap: DeviceSnapshot, number: int) -> None:
        session = self.sessions.get(snap.domid)
        if session is None:
            session = self.sessions[snap.domid] = GuestSession(snap.domid, self.control,
                                                                mode=self.mode)
        host = Bdf.parse(snap.host)
        physfn = Bdf.parse(snap.physfn) if snap.physfn is not None else None
        device = PciDevice(host, snap.vendor_id, snap.device_id, 0, 0, irq=snap.irq,
                           physfn=physfn,
                           resources=tuple(Resource(*r) for r in snap.resources))
        try:
            quirks = tuple(parse_quirk(q) for q in snap.quirks)
            # a VF's memory decode is its PF's COMMAND: the PF's header from the same line
            physfn_config = MemoryAccessor(snap.physfn_config) \
                if physfn is not None and snap.physfn_config else None
            session.export(host, MemoryAccessor(snap.config), device=device,
                           permissive=snap.permissive, quirks=quirks,
                           physfn_config=physfn_config, guest=Bdf.parse(snap.guest))
        except (InputError, ValueError) as exc:
            raise bad_trace(self.path, number, f"device {snap.host}: {exc}") from None
        self.known.add((snap.domid, snap.host))

    def register(self, domid: int, record: TraceRecord) -> str:
        op = record.op
        dev = self.sessions[domid].devices.get((op.domain, op.bus, op.devfn)) \
            if domid in self.sessions else None
        if op.cmd != _CONF_READ and op.cmd != _CONF_WRITE:
            return _NAMES.get(op.cmd, f"op {op.cmd}")
        if dev is None:
            return f"{op.offset:#04x}"
        found = dev.overlay.field_at(op.offset)
        return f"{op.offset:#04x} {found.name}" if found is not None else f"{op.offset:#04x}"


def replay(path: str, *, check: bool = True, until: int | None = None,
           only: frozenset[int] | None = None) -> ReplayResult:
    """Replay ``path``; InputError (exit 2) for a bad trace, naming the line."""
    mode, devices, lines = read_trace(path)
    rep = _Replayer(path, mode)
    result = ReplayResult(path)
    for snap in devices:
        rep.export(snap, 1)
        result.devices += 1
    for line in lines:
        kind = line.data.get("kind")
        if kind not in KINDS:
            raise bad_trace(path, line.number, f"unknown kind {str(kind)[:20]!r}")
        try:
            if kind == "device":
                rep.export(DeviceSnapshot.from_dict(line.data), line.number)
                result.devices += 1
                continue
            if kind != "op":
                result.events += 1
                continue
            entry = parse_op(line.data)
        except TraceFormatError as exc:
            raise bad_trace(path, line.number, str(exc)) from None
        record = entry.record
        if entry.host is not None and (record.domid, entry.host) not in rep.known:
            raise bad_trace(path, line.number, f"an op for device {entry.host} of domain "
                            f"{record.domid}, which the trace never declared")
        if until is not None and result.ops >= until:
            break
        index = result.ops
        result.ops += 1
        session = rep.sessions.get(record.domid)
        if session is None:
            session = rep.sessions[record.domid] = GuestSession(record.domid, rep.control,
                                                                 mode=rep.mode)
        rep.control.record = record
        got = session.handle(record.op)
        cmd = record.op.cmd
        if not check or (only is not None and cmd not in only):
            continue
        result.checked += 1
        vectors: tuple[int, ...] = got[2] if len(got) > 2 else ()
        replayed = (got[0], got[1] & 0xFFFFFFFF, vectors)
        recorded = (record.err, record.value, record.vectors)
        if replayed != recorded:
            result.mismatch_count += 1
            if len(result.mismatches) < MAX_KEPT:
                op = record.op
                result.mismatches.append(Mismatch(
                    index, line.number, record.domid, entry.host, _NAMES.get(cmd, str(cmd)),
                    op.offset, op.size, rep.register(record.domid, record), recorded,
                    replayed))
    return result

"""A trace record: one op as it went in and what came out, for record and replay.

The request is the private copy the backend decided on (548 bytes, XSA-155), so replaying a trace
feeds the core exactly what it saw, whatever the page held before or after. The record is a
tuple of plain values; ``as_dict``/``from_dict`` give a JSON-ready form (request in hex).
"""

from __future__ import annotations

import re
import struct
from typing import NamedTuple

from xenpciback_cli.pv.abi import OP_SIZE, SH_INFO_MAX_VEC, PciOp
from xenpciback_cli.pv.codec import Op, PageError, Result, decode_op, encode_op

_BDF_RE = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{2}:[01][0-9a-f]\.[0-7]$")


class TraceRecord(NamedTuple):
    """Domain ``domid`` sent ``request``; the backend answered ``err``, ``value``, ``vectors``."""

    domid: int
    request: bytes
    err: int
    value: int
    vectors: tuple[int, ...] = ()

    @classmethod
    def of(cls, domid: int, request: bytes, result: Result) -> TraceRecord:
        """The record of ``request`` (an op's private copy, undecoded: a record is built for
        every op ``serve`` answers) and the backend's ``result``."""
        vectors: tuple[int, ...] = result[2] if len(result) > 2 else ()
        if vectors:  # what the page carried to the guest: 16 bits each
            vectors = tuple(v & 0xFFFF for v in vectors)
        return cls(domid, request, result[0], result[1] & 0xFFFFFFFF, vectors)

    @property
    def op(self) -> Op:
        return decode_op(self.request)

    @property
    def cmd(self) -> int:
        """The request's whole 32-bit op code (its first byte alone would take 0x101 for 1)."""
        return int.from_bytes(self.request[0:4], "little")

    @property
    def result(self) -> Result:
        return (self.err, self.value, self.vectors) if self.vectors else (self.err, self.value)

    def as_dict(self) -> dict[str, object]:
        return {"domid": self.domid, "request": self.request.hex(), "err": self.err,
                "value": self.value, "vectors": list(self.vectors)}

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> TraceRecord:
        """From :meth:`as_dict`'s form; a malformed record raises :class:`PageError`: a field
        missing, not an integer (JSON's true and false are not: Python would take them for 1
        and 0), or beyond what the wire holds (domid 16 bits, err int32, value uint32,
        vectors 16 bits)."""
        try:
            domid, err, value = (data["domid"], data["err"], data["value"])
            request = bytes.fromhex(str(data["request"]))
            vectors = data.get("vectors", [])
            if not (_is_int(domid) and _is_int(err) and _is_int(value)
                    and isinstance(vectors, list) and all(_is_int(v) for v in vectors)):
                raise TypeError("domid, err, value and vectors must be integers")
        except (KeyError, TypeError, ValueError) as exc:
            raise PageError(f"not a trace record: {exc}") from None
        assert isinstance(domid, int) and isinstance(err, int) and isinstance(value, int)
        if not (0 <= domid <= 0xFFFF and -2**31 <= err < 2**31 and 0 <= value <= 0xFFFFFFFF
                and all(0 <= v <= 0xFFFF for v in vectors)):
            raise PageError("not a trace record: a number out of its field's range "
                            "(domid 0-65535, err int32, value uint32, vectors 0-65535)")
        if len(request) != OP_SIZE or len(vectors) > SH_INFO_MAX_VEC:
            raise PageError(f"a trace request is {OP_SIZE} bytes with at most "
                            f"{SH_INFO_MAX_VEC} vectors")
        return cls(domid, request, err, value, tuple(vectors))


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# -- the trace file's lines (docs/trace-format.md) -------------------------------------------------
#: The format this code writes and reads; a trace with another is refused (exit 2).
FORMAT_VERSION = 1
#: The kinds of line after the header.
KINDS = ("device", "op", "state", "aer")
_OP_NAMES = {int(op): op.name.lower() for op in PciOp}
_OP_CODES = {name: code for code, name in _OP_NAMES.items()}
_ENABLE_MSIX = int(PciOp.ENABLE_MSIX)


class TraceFormatError(ValueError):
    """A line that is not what docs/trace-format.md says (the reader adds its line number)."""


#: A device line's domain is a guest's or dom0's: below DOMID_FIRST_RESERVED (0x7FF0).
DOMID_LIMIT = 0x7FF0
#: Bytes of config space a device line holds at most (PCIe's extended space).
CONFIG_LIMIT = 4096
#: sysfs ``resource`` line numbers a device line may name (the kernel has 17 today).
RESOURCE_LINES = 64
#: A line's ``t`` (seconds) is a finite number below this in magnitude.
TIME_LIMIT = 10**18
_U64 = 2**64 - 1


class DeviceSnapshot(NamedTuple):
    """One exported device as the trace starts it: where it sits, what it is, its config space
    (as read before the export) and the overlay settings it was exported with."""

    domid: int
    host: str
    guest: str
    vendor_id: int
    device_id: int
    irq: int
    #: sysfs ``resource`` lines: ``(index, start, end, flags)``.
    resources: tuple[tuple[int, int, int, int], ...]
    config: bytes
    permissive: bool = False
    quirks: tuple[str, ...] = ()
    #: An SR-IOV VF's PF and the PF's config header: a VF's memory decode is its PF's COMMAND.
    physfn: str | None = None
    physfn_config: bytes = b""

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {
            "kind": "device", "domid": self.domid, "host": self.host, "guest": self.guest,
            "vendor_id": f"{self.vendor_id:#06x}", "device_id": f"{self.device_id:#06x}",
            "irq": self.irq, "resources": [list(r) for r in self.resources],
            "config": self.config.hex(), "permissive": self.permissive,
            "quirks": list(self.quirks)}
        if self.physfn is not None:
            out["physfn"] = self.physfn
            out["physfn_config"] = self.physfn_config.hex()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> DeviceSnapshot:
        """From :meth:`as_dict`'s form; TraceFormatError for a field missing, of the wrong type
        or beyond what it stands for: domid 0-0x7fef, irq an unsigned int, ids 16 bits,
        resources ``[index 0-63, start, end, flags]`` each 64 bits, config 4096 bytes."""
        try:
            resources = tuple(_resource(r) for r in _list(data.get("resources", []), "resources"))
            quirks = tuple(str(q) for q in _list(data.get("quirks", []), "quirks"))
            physfn = data.get("physfn")
            return cls(_int(data["domid"], "domid", 0, DOMID_LIMIT - 1), _bdf(data["host"], "host"),
                       _bdf(data["guest"], "guest"), _hex(data["vendor_id"], "vendor_id"),
                       _hex(data["device_id"], "device_id"),
                       _int(data.get("irq", 0), "irq", 0, _U32), resources,
                       _config(data["config"], "config"),
                       _bool(data.get("permissive", False), "permissive"), quirks,
                       None if physfn is None else _bdf(physfn, "physfn"),
                       _config(data.get("physfn_config", ""), "physfn_config"))
        except KeyError as exc:
            raise TraceFormatError(f"a device line has no {exc.args[0]!r}") from None
        except (TypeError, ValueError) as exc:
            if isinstance(exc, TraceFormatError):
                raise
            raise TraceFormatError(f"a bad device line: {exc}") from None


def header_dict(tool_version: str, mode: str,
                devices: tuple[DeviceSnapshot, ...] = ()) -> dict[str, object]:
    """The first line: what wrote the trace and the devices known at its start."""
    return {"kind": "header", "format": "xen-pciback-trace", "version": FORMAT_VERSION,
            "tool_version": tool_version, "mode": mode,
            "devices": [d.as_dict() for d in devices]}


def check_header(data: object) -> tuple[str, tuple[DeviceSnapshot, ...]]:
    """The header's mode and devices; anything else (another version) raises TraceFormatError."""
    if not isinstance(data, dict) or data.get("kind") != "header":
        raise TraceFormatError("the first line is not a trace header")
    version = data.get("version")
    if version != FORMAT_VERSION:
        raise TraceFormatError(f"trace format version {version!r} is not supported "
                               f"(this tool reads version {FORMAT_VERSION})")
    devices = tuple(DeviceSnapshot.from_dict(_obj(d, "device"))
                    for d in _list(data.get("devices", []), "devices"))
    return str(data.get("mode", "vpci")), devices


def op_dict(record: TraceRecord, time: float, host: str | None) -> dict[str, object]:
    """One op line: the request's fields and the answer (``host``: the device it reached)."""
    op = record.op
    out: dict[str, object] = {
        "kind": "op", "t": round(time, 6), "domid": record.domid,
        "guest": f"{op.domain:04x}:{op.bus:02x}:{op.devfn >> 3:02x}.{op.devfn & 7}",
        "host": host, "op": _OP_NAMES.get(op.cmd, "unknown"), "code": op.cmd,
        "offset": op.offset, "size": op.size, "value_in": op.value,
        "value_out": record.value, "err": record.err,
    }
    if op.cmd == _ENABLE_MSIX and 0 < op.value <= SH_INFO_MAX_VEC:
        out["entries"] = [list(e) for e in op.msix_entries(op.value)]
    if record.vectors:
        out["vectors"] = list(record.vectors)
    return out


class OpLine(NamedTuple):
    """An op line read back: the record to replay and the device it was served on."""

    record: TraceRecord
    host: str | None
    time: float


def parse_op(data: dict[str, object]) -> OpLine:
    """An op line's record (the request rebuilt from its fields); TraceFormatError if bad."""
    try:
        guest = _bdf(data["guest"], "guest")
        domain, rest = guest.split(":", 1)
        bus, slot_fn = rest.split(":")
        slot, fn = slot_fn.split(".")
        devfn = (int(slot, 16) << 3) | int(fn)
        entries = tuple((_int(e[0], "entry"), _int(e[1], "entry"))  # type: ignore[index]
                        for e in _list(data.get("entries", []), "entries"))
        vectors = tuple(_int(v, "vector", 0, 0xFFFF)
                        for v in _list(data.get("vectors", []), "vectors"))
        if len(entries) > SH_INFO_MAX_VEC or len(vectors) > SH_INFO_MAX_VEC:
            raise TraceFormatError(f"at most {SH_INFO_MAX_VEC} MSI-X entries")
        request = encode_op(_int(data["code"], "code"), int(domain, 16), int(bus, 16), devfn,
                            _int(data["offset"], "offset"), _int(data["size"], "size"),
                            _int(data["value_in"], "value_in", 0, _U32),
                            msix_entries=entries)
        record = TraceRecord(_int(data["domid"], "domid", 0, 0xFFFF), request,
                             _int(data["err"], "err", -2**31, 2**31 - 1),
                             _int(data["value_out"], "value_out", 0, _U32), vectors)
        host = data.get("host")
        time = line_time(data)
    except KeyError as exc:
        raise TraceFormatError(f"an op line has no {exc.args[0]!r}") from None
    except (struct.error, TypeError, ValueError, IndexError) as exc:
        if isinstance(exc, TraceFormatError):
            raise
        raise TraceFormatError(f"a bad op line: {exc}") from None
    return OpLine(record, None if host is None else _bdf(host, "host"), 0.0 if time is None else time)


def line_time(data: dict[str, object]) -> float | None:
    """A line's ``t`` in seconds (None when it has none); TraceFormatError unless a finite
    number below TIME_LIMIT in magnitude (JSON's true, NaN and Infinity are not)."""
    time = data.get("t")
    if time is None:
        return None
    if isinstance(time, bool) or not isinstance(time, (int, float)) or not -TIME_LIMIT < time < TIME_LIMIT:
        raise TraceFormatError(f"t {repr(time)[:20]} is not a finite number of seconds "
                               "(below 1e18 in magnitude)")
    return float(time)


def state_dict(time: float, domid: int, state: int, name: str,
               end: str = "backend") -> dict[str, object]:
    """A xenbus state change of one end (the backend's own, in serve's traces; the frontend's,
    in a simulated guest's)."""
    return {"kind": "state", "t": round(time, 6), "domid": domid, "state": state, "name": name,
            "end": end}


def aer_dict(time: float, domid: int, host: str, step: str, result: str,
             outcome: str | None = None) -> dict[str, object]:
    """An AER event relayed to the guest (one recovery step, the guest's answer and how the
    backend decided: relayed, timeout, no handler...)."""
    out: dict[str, object] = {"kind": "aer", "t": round(time, 6), "domid": domid, "host": host,
                              "step": step, "result": result}
    if outcome is not None:
        out["outcome"] = outcome
    return out


def op_code(name: str) -> int | None:
    return _OP_CODES.get(name)


def op_name(code: int) -> str:
    """``conf_read`` and the like; ``op N`` for a code PciOp does not name."""
    return _OP_NAMES.get(code, f"op {code}")


def _obj(value: object, what: str) -> dict[str, object]:
    if not isinstance(value, dict):
        raise TraceFormatError(f"{what} is not an object")
    return value


def _list(value: object, what: str) -> list[object]:
    if not isinstance(value, list):
        raise TraceFormatError(f"{what} is not a list")
    return value


_U32 = 0xFFFFFFFF


def _int(value: object, what: str, low: int | None = None, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TraceFormatError(f"{what} is not an integer")
    if (low is not None and value < low) or (high is not None and value > high):
        raise TraceFormatError(f"{what} {value} is out of range ({low} to {high})")
    return value


def _bool(value: object, what: str) -> bool:
    if not isinstance(value, bool):
        raise TraceFormatError(f"{what} is not true or false")
    return value


def _hex(value: object, what: str) -> int:
    """A 16-bit id written in hex ("0x8086")."""
    try:
        number = int(str(value), 16)
    except ValueError:
        raise TraceFormatError(f"{what} is not a hex number") from None
    if not 0 <= number <= 0xFFFF:
        raise TraceFormatError(f"{what} {str(value)[:20]} is out of range (0x0 to 0xffff)")
    return number


def _resource(value: object) -> tuple[int, int, int, int]:
    fields = _list(value, "a resource")
    if len(fields) != 4:
        raise TraceFormatError("a resource is [index, start, end, flags]")
    return (_int(fields[0], "resource index", 0, RESOURCE_LINES - 1),
            _int(fields[1], "resource start", 0, _U64), _int(fields[2], "resource end", 0, _U64),
            _int(fields[3], "resource flags", 0, _U64))


def _config(value: object, what: str) -> bytes:
    data = bytes.fromhex(str(value))
    if len(data) > CONFIG_LIMIT:
        raise TraceFormatError(f"{what} is {len(data)} bytes, more than {CONFIG_LIMIT}")
    return data


def _bdf(value: object, what: str) -> str:
    text = str(value)
    if not _BDF_RE.match(text):
        raise TraceFormatError(f"{what} {text[:20]!r} is not an address DDDD:BB:SS.F")
    return text

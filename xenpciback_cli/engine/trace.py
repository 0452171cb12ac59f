"""Trace files (docs/trace-format.md): the writer ``serve --record`` uses, and the streaming reader
``replay`` uses. The lines themselves are ``pv/trace.py``'s (sans-IO); this module owns the file:
one JSON object per line, flushed per line, ``.gz`` read and written through :mod:`gzip`.
"""

from __future__ import annotations

import gzip
import io
import json
import json.scanner
import os
import time
from collections.abc import Iterator
from typing import IO, Any

from xenpciback_cli.backend.ports import ConfigAccess
from xenpciback_cli.config.fields import ConfigAccessError
from xenpciback_cli.errors import InputError
from xenpciback_cli.pci.address import Bdf
from xenpciback_cli.pci.device import PciDevice
from xenpciback_cli.pv.abi import OP_HEADER
from xenpciback_cli.pv.trace import (
    DeviceSnapshot,
    TraceFormatError,
    TraceRecord,
    aer_dict,
    check_header,
    header_dict,
    op_dict,
    state_dict,
)
from xenpciback_cli.toolstack.xenbus import XenbusState
from xenpciback_cli.untrusted import decimal

#: Config space is snapshotted up to this many bytes (the extended space), dword by dword.
MAX_CONFIG = 4096
#: Of a VF's PF, the standard header is kept (its COMMAND decides the VF's memory decode).
PHYSFN_CONFIG = 64


def snapshot_config(config: ConfigAccess, limit: int = MAX_CONFIG) -> bytes:
    """The device's config space as far as it can be read (dwords, stopping at the first one
    that cannot): what the overlay will be built over."""
    out = bytearray()
    for offset in range(0, limit, 4):
        try:
            out += config.read(offset, 4).to_bytes(4, "little")
        except ConfigAccessError:
            break
    return bytes(out)


def device_snapshot(domid: int, host: Bdf, guest: Bdf, config: ConfigAccess,
                    device: PciDevice | None, options: dict[str, object],
                    physfn: ConfigAccess | None = None) -> DeviceSnapshot:
    """A ``device`` line's content: identity and resources as the host knows them, the config
    space as read now (before the export, or before the guest's first op), the overlay
    settings, and for a VF its PF's header."""
    data = snapshot_config(config)
    vendor = int.from_bytes(data[0:2], "little") if len(data) >= 4 else 0xFFFF
    ident = int.from_bytes(data[2:4], "little") if len(data) >= 4 else 0xFFFF
    resources: tuple[tuple[int, int, int, int], ...] = ()
    irq = 0
    if device is not None:
        vendor, ident, irq = device.vendor_id, device.device_id, device.irq or 0
        resources = tuple((r.index, r.start, r.end, r.flags) for r in device.resources)
    quirks: Any = options.get("quirks", ())
    pf = device.physfn if device is not None else None
    return DeviceSnapshot(domid, str(host), str(guest), vendor, ident, irq, resources, data,
                          bool(options.get("permissive", False)), tuple(str(q) for q in quirks),
                          None if pf is None else str(pf),
                          snapshot_config(physfn, PHYSFN_CONFIG) if physfn is not None and pf
                          is not None else b"")


def open_text(path: str, mode: str) -> IO[str]:
    """``path`` as text, through gzip when it ends in ``.gz``. Writing ``.zst`` is refused
    (InputError): only reading it is supported (compress a finished trace with ``zstd``)."""
    if "w" in mode and path.endswith(".zst"):
        raise InputError(f"cannot write {path}: traces are written plain or .gz; "
                         "compress a finished one with zstd")
    if path.endswith(".gz"):
        return gzip.open(path, mode + "t", encoding="utf-8")  # type: ignore[return-value]
    return open(path, mode, encoding="utf-8", buffering=1 if "r" not in mode else -1)


_unpack_header = OP_HEADER.unpack_from
_CONF_NAMES = {0: "conf_read", 1: "conf_write"}
#: pv.trace.op_dict's line for a config op, as json.dumps(separators=(",", ":")) writes it.
_OP_LINE = ('{"kind":"op","t":%s,"domid":%d,"guest":"%s","host":%s,"op":"%s","code":%d,'
            '"offset":%d,"size":%d,"value_in":%d,"value_out":%d,"err":%d}\n')

#: ``--record-max-size``: the smallest size accepted, and how many files are kept by default.
MIN_ROTATE = 64 * 1024
DEFAULT_KEEP = 5
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def parse_size(text: str) -> int:
    """``--record-max-size``: bytes, or with K, M or G (powers of 1024); InputError when it is
    not one or is below 64K."""
    word = text.strip().lower().removesuffix("ib").removesuffix("b")
    unit = word[-1:] if word[-1:] in _UNITS else ""
    number = decimal(word[:len(word) - len(unit)], max_digits=12)
    if number is None:
        raise InputError(f"--record-max-size {text!r}: a size in bytes, or with K, M or G "
                         "(e.g. 64M)")
    size = number * _UNITS[unit]
    if size < MIN_ROTATE:
        raise InputError(f"--record-max-size {text!r}: at least 64K")
    return size


def rotation_options(record: str | None, max_size: str | None,
                     keep: int | None) -> tuple[int | None, int]:
    """``--record-max-size`` and ``--record-keep``: each goes with ``--record FILE`` (InputError
    otherwise, rather than an option quietly ignored); the size parsed, ``keep`` defaulted."""
    for given, name in ((max_size, "--record-max-size"), (keep, "--record-keep")):
        if given is not None and not record:
            raise InputError(f"{name} goes with --record FILE")
    return (parse_size(max_size) if max_size is not None else None,
            DEFAULT_KEEP if keep is None else keep)


def rotated_name(path: str, number: int) -> str:
    """``trace.jsonl`` -> ``trace.jsonl.1``; ``trace.jsonl.gz`` -> ``trace.jsonl.1.gz``."""
    if path.endswith(".gz"):
        return f"{path[:-3]}.{number}.gz"
    return f"{path}.{number}"


class TraceWriter:
    """Writes a trace: the header, then device, op, state and AER lines as they come, each
    flushed as it is written (a crash loses at most the line being written).

    ``mode=None`` defers the header until :meth:`begin` names the mode (a simulated guest
    learns it from the backend's devices), or the first line, or :meth:`close` (then vpci).

    ``max_size``: when the lines after the header reach it (text, before compression), the file
    is closed and renamed ``FILE.1`` (``FILE.1`` to ``FILE.2``..., the oldest beyond ``keep``
    removed) and a new FILE begins: its header lists the devices declared so far (the last line
    of each), so every file reads on its own."""

    def __init__(self, path: str, *, tool_version: str, mode: str | None,
                 clock: Any = time.time, max_size: int | None = None,
                 keep: int = DEFAULT_KEEP) -> None:
        self.clock = clock
        self.path = path
        self.tool_version = tool_version
        self.max_size = max_size
        self.keep = max(1, keep)
        self.out = open_text(path, "w")
        self.mode: str | None = None
        self.written = self.header_size = 0
        self.rotations = 0
        #: (domid, host) -> its device line, for the header of the next file
        self.devices: dict[tuple[int, str], DeviceSnapshot] = {}
        self._guests: dict[tuple[int, int, int], str] = {}
        self._hosts: dict[Bdf, str] = {}
        self._begun = False
        if mode is not None:
            self.begin(mode)

    def begin(self, mode: str) -> None:
        """Write the header (once)."""
        if not self._begun:
            self._begun = True
            self.mode = mode
            self._line(header_dict(self.tool_version, mode))

    def _line(self, data: dict[str, object]) -> None:
        if not self._begun:
            self.begin("vpci")
        text = json.dumps(data, separators=(",", ":")) + "\n"
        self.out.write(text)
        self.out.flush()
        self.written += len(text)
        if self.max_size is not None and self.written - self.header_size >= self.max_size:
            self._rotate()

    def _rotate(self) -> None:
        self.out.close()
        oldest = rotated_name(self.path, self.keep)
        if os.path.exists(oldest):
            os.unlink(oldest)
        for number in range(self.keep - 1, 0, -1):
            older = rotated_name(self.path, number)
            if os.path.exists(older):
                os.replace(older, rotated_name(self.path, number + 1))
        os.replace(self.path, rotated_name(self.path, 1))
        self.rotations += 1
        self.out = open_text(self.path, "w")
        text = json.dumps(header_dict(self.tool_version, self.mode or "vpci",
                                      tuple(self.devices.values())),
                          separators=(",", ":")) + "\n"
        self.out.write(text)
        self.out.flush()
        self.written = self.header_size = len(text)

    def device(self, snap: DeviceSnapshot) -> None:
        self.devices.pop((snap.domid, snap.host), None)
        self.devices[(snap.domid, snap.host)] = snap
        self._line(snap.as_dict())

    def op(self, record: TraceRecord, host: str | None) -> None:
        """An op line. A config read or write (nearly every op) is formatted here, to the very
        text ``json.dumps(op_dict(...))`` gives (a test holds them equal), in a fifth of its
        time: recording sits on the backend's per-op path."""
        cmd, _, domain, bus, devfn, offset, size, value, _ = _unpack_header(record.request)
        if (cmd != 0 and cmd != 1) or record.vectors or not self._begun:
            self._line(op_dict(record, self.clock(), host))
            return
        guest = self._guests.get((domain, bus, devfn))
        if guest is None:
            guest = f"{domain:04x}:{bus:02x}:{devfn >> 3:02x}.{devfn & 7}"
            if len(self._guests) < 4096:
                self._guests[(domain, bus, devfn)] = guest
        text = _OP_LINE % (repr(round(float(self.clock()), 6)), record.domid, guest,
                           "null" if host is None else f'"{host}"', _CONF_NAMES[cmd], cmd,
                           offset, size, value, record.value, record.err)
        self.out.write(text)
        self.out.flush()
        self.written += len(text)
        if self.max_size is not None and self.written - self.header_size >= self.max_size:
            self._rotate()

    def text_of(self, host: Bdf) -> str:
        text = self._hosts.get(host)
        if text is None:
            text = str(host)
            if len(self._hosts) < 4096:
                self._hosts[host] = text
        return text

    def state(self, domid: int, state: int, name: str, end: str = "backend") -> None:
        self._line(state_dict(self.clock(), domid, state, name, end))

    def xenbus_state(self, domid: int, value: str, end: str = "backend") -> None:
        """A state node's new value as written (``"4"``): named after ``io/xenbus.h``."""
        number = decimal(value.strip(), max_digits=2)
        if number is None:
            return
        try:
            name = XenbusState(number).label
        except ValueError:
            name = f"state {number}"
        self.state(domid, number, name, end)

    def aer(self, domid: int, host: str, step: str, result: str,
            outcome: str | None = None) -> None:
        self._line(aer_dict(self.clock(), domid, host, step, result, outcome))

    def close(self) -> None:
        if not self._begun:
            self.begin("vpci")
        self.out.close()


def snapshot_from(source: Any, settings: Any, domid: int, host: Bdf,
                  guest: Bdf) -> DeviceSnapshot | None:
    """``device_snapshot`` of ``host`` through serve's adapters (``source``: a DeviceSource,
    ``settings``: bdf -> overlay options); None when its config space cannot be opened."""
    try:
        config = source.config(host)
    except (OSError, ValueError, LookupError):
        return None
    physfn = None
    try:
        device = source.device(host)
        if device is not None and device.physfn is not None:
            try:
                physfn = source.config(device.physfn)
            except (OSError, ValueError, LookupError):
                physfn = None
        return device_snapshot(domid, host, guest, config, device, dict(settings(host)), physfn)
    finally:
        for access in (config, physfn):
            close = getattr(access, "close", None)
            if close is not None:
                close()


class TraceLine:
    """One line read: its number and its object (``kind`` checked by the caller)."""

    __slots__ = ("data", "number")

    def __init__(self, number: int, data: dict[str, object]) -> None:
        self.number, self.data = number, data


def bad_trace(path: str, number: int, why: str) -> InputError:
    return InputError(f"{path}: line {number}: {why}")


#: One JSON value from a str at an index: the C scanner json.loads runs, without its wrappers
#: (a third of the per-line cost of a replay).
_scan: Any = json.scanner.make_scanner(json.JSONDecoder())  # type: ignore[arg-type]


def parse_line(path: str, number: int, text: str) -> dict[str, object]:
    """One line's object; InputError naming the line when it is truncated or not an object."""
    if text[-1:] != "\n":
        raise bad_trace(path, number, "truncated (the line has no end)")
    try:
        data, end = _scan(text, 0)
    except (ValueError, StopIteration, RecursionError):
        raise bad_trace(path, number, "not JSON") from None
    if end != len(text) - 1 and text[end:].strip():
        raise bad_trace(path, number, "not JSON (more after the object)")
    if type(data) is not dict:
        raise bad_trace(path, number, "not a JSON object")
    return data


class TraceStream:
    """An open trace, its header read: ``mode``, ``devices``; then the lines after it, streamed
    (:meth:`lines`: numbered objects; :meth:`texts`: numbered raw lines, for a reader that
    parses them itself). ``position``/``size``: bytes of the file read so far and in all (of
    the compressed file for .gz/.zst), for a progress bar."""

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            self.raw: IO[bytes] = open(path, "rb")  # noqa: SIM115 - closed by close()
        except OSError as exc:
            raise InputError(f"cannot read trace {path}: {exc.strerror or exc}") from None
        try:
            self.text = _text_reader(path, self.raw)
            self.size = os.fstat(self.raw.fileno()).st_size
            self.number = 0
            first = self._next_text()
            if first is None:
                raise bad_trace(path, 1, "the trace is empty (no header)")
            try:
                self.mode, self.devices = check_header(parse_line(path, 1, first))
            except TraceFormatError as exc:
                raise bad_trace(path, 1, str(exc)) from None
        except BaseException:
            self.raw.close()
            raise

    def _next_text(self) -> str | None:
        try:
            text = self.text.readline()
        except (OSError, EOFError, UnicodeDecodeError, ValueError) as exc:
            raise bad_trace(self.path, self.number + 1, f"unreadable ({exc}): truncated?") \
                from None
        if not text:
            return None
        self.number += 1
        return text

    def position(self) -> int:
        try:
            return self.raw.tell()
        except (OSError, ValueError):
            return 0

    def texts(self) -> Iterator[tuple[int, str]]:
        """``(number, text)`` of every line after the header (blank ones skipped); a read
        error (a damaged .gz) is InputError naming the line."""
        number = self.number
        path = self.path
        try:
            for text in self.text:
                number += 1
                if text == "\n" or not text.strip():
                    continue
                yield number, text
        except (OSError, EOFError, UnicodeDecodeError, ValueError) as exc:
            raise bad_trace(path, number + 1, f"unreadable ({exc}): truncated?") from None
        finally:
            self.number = number

    def lines(self) -> Iterator[TraceLine]:
        path = self.path
        for number, text in self.texts():
            yield TraceLine(number, parse_line(path, number, text))

    def close(self) -> None:
        try:
            self.text.close()
        finally:
            self.raw.close()

    def __enter__(self) -> TraceStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _text_reader(path: str, raw: IO[bytes]) -> IO[str]:
    """The lines of ``raw`` as text: through gzip for .gz, zstandard for .zst."""
    binary: Any = raw
    if path.endswith(".gz"):
        binary = gzip.GzipFile(fileobj=raw, mode="rb")
    elif path.endswith(".zst"):
        binary = _zstd_reader(path, raw)
    return io.TextIOWrapper(binary, encoding="utf-8", newline="\n")


def _zstd_reader(path: str, raw: IO[bytes]) -> Any:
    try:
        import zstandard  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        raise InputError(f"cannot read {path}: .zst traces need the Python package "
                         "'zstandard' (pip install zstandard), or 'zstd -d' it first") from None
    reader = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
    return io.BufferedReader(reader)


def read_trace(path: str) -> tuple[str, tuple[DeviceSnapshot, ...], Iterator[TraceLine]]:
    """Open ``path`` and read its header: ``(mode, devices, the rest, streamed)``. A bad header,
    a line that is not JSON or a truncated last line raise InputError naming the line."""
    stream = TraceStream(path)

    def rest() -> Iterator[TraceLine]:
        try:
            yield from stream.lines()
        finally:
            stream.close()
    return stream.mode, stream.devices, rest()

"""Trace files (docs/trace-format.md): the writer ``serve --record`` uses, and the streaming reader
``replay`` uses. The lines themselves are ``pv/trace.py``'s (sans-IO); this module owns the file:
one JSON object per line, flushed per line, ``.gz`` read and written through :mod:`gzip`.
"""

from __future__ import annotations

import gzip
import json
import time
from collections.abc import Iterator
from typing import IO, Any

from xenpciback_cli.backend.ports import ConfigAccess
from xenpciback_cli.config.fields import ConfigAccessError
from xenpciback_cli.errors import InputError
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

#: Config space is snapshotted up to this many bytes (the extended space), dword by dword.
MAX_CONFIG = 4096


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


def open_text(path: str, mode: str) -> IO[str]:
    """``path`` as text, through gzip when it ends in ``.gz``."""
    if path.endswith(".gz"):
        return gzip.open(path, mode + "t", encoding="utf-8")  # type: ignore[return-value]
    return open(path, mode, encoding="utf-8", buffering=1 if "r" not in mode else -1)


class TraceWriter:
    """Writes a trace: the header at once, then device, op, state and AER lines as they come."""

    def __init__(self, path: str, *, tool_version: str, mode: str,
                 clock: Any = time.time) -> None:
        self.clock = clock
        self.out = open_text(path, "w")
        self._line(header_dict(tool_version, mode))

    def _line(self, data: dict[str, object]) -> None:
        self.out.write(json.dumps(data, separators=(",", ":")) + "\n")
        self.out.flush()

    def device(self, snap: DeviceSnapshot) -> None:
        self._line(snap.as_dict())

    def op(self, record: TraceRecord, host: str | None) -> None:
        self._line(op_dict(record, self.clock(), host))

    def state(self, domid: int, state: int, name: str) -> None:
        self._line(state_dict(self.clock(), domid, state, name))

    def aer(self, domid: int, host: str, step: str, result: str) -> None:
        self._line(aer_dict(self.clock(), domid, host, step, result))

    def close(self) -> None:
        self.out.close()


class TraceLine:
    """One line read: its number and its object (``kind`` checked by the caller)."""

    __slots__ = ("data", "number")

    def __init__(self, number: int, data: dict[str, object]) -> None:
        self.number, self.data = number, data


def bad_trace(path: str, number: int, why: str) -> InputError:
    return InputError(f"{path}: line {number}: {why}")


def read_trace(path: str) -> tuple[str, tuple[DeviceSnapshot, ...], Iterator[TraceLine]]:
    """Open ``path`` and read its header: ``(mode, devices, the rest, streamed)``. A bad header,
    a line that is not JSON or a truncated last line raise InputError naming the line."""
    try:
        stream = open_text(path, "r")
    except OSError as exc:
        raise InputError(f"cannot read trace {path}: {exc.strerror or exc}") from None
    lines = _numbered(path, stream)
    first = next(lines, None)
    if first is None:
        stream.close()
        raise bad_trace(path, 1, "the trace is empty (no header)")
    try:
        mode, devices = check_header(first.data)
    except TraceFormatError as exc:
        stream.close()
        raise bad_trace(path, 1, str(exc)) from None
    return mode, devices, lines


def _numbered(path: str, stream: IO[str]) -> Iterator[TraceLine]:
    number = 0
    try:
        while True:
            try:
                text = stream.readline()
            except (OSError, EOFError, UnicodeDecodeError) as exc:
                raise bad_trace(path, number + 1, f"unreadable ({exc}): truncated?") from None
            if not text:
                return
            number += 1
            if not text.endswith("\n"):
                raise bad_trace(path, number, "truncated (the line has no end)")
            if not text.strip():
                continue
            try:
                data = json.loads(text)
            except ValueError:
                raise bad_trace(path, number, "not JSON") from None
            if not isinstance(data, dict):
                raise bad_trace(path, number, "not a JSON object")
            yield TraceLine(number, data)
    finally:
        stream.close()

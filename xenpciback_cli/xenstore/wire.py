"""The xenstore wire protocol as a sans-IO codec: bytes in, messages out, bytes back.

Two rules hold the whole module together:

1. Nothing here reads or writes a file descriptor. The client, the embedded daemon and the tests
   all use the same :class:`Decoder` (fed whatever bytes arrived) and the same ``encode`` helpers.
2. A peer that breaks the framing (a length over :data:`PAYLOAD_MAX`) is a *remote* error
   (:class:`ProtocolError`); the decoder refuses it rather than buffering without bound, which
   is what both real daemons do too (C xenstored drops the connection).

The frame is ``struct xsd_sockmsg {u32 type, req_id, tx_id, len}`` in host (little-endian) order
followed by ``len`` payload bytes, identical on a unix socket and on ``/dev/xen/xenbus``.
"""

from __future__ import annotations

import errno as _errno
import struct
from enum import IntEnum
from typing import NamedTuple
from xenpciback_cli.untrusted import decimal

HEADER = struct.Struct("<IIII")
HEADER_SIZE = HEADER.size
PAYLOAD_MAX = 4096  # XENSTORE_PAYLOAD_MAX
ABS_PATH_MAX = 3072  # XENSTORE_ABS_PATH_MAX
REL_PATH_MAX = 2048  # XENSTORE_REL_PATH_MAX


class MessageType(IntEnum):
    """``enum xsd_sockmsg_type`` from xen/io/xs_wire.h."""

    CONTROL = 0  # was DEBUG
    DIRECTORY = 1
    READ = 2
    GET_PERMS = 3
    WATCH = 4
    UNWATCH = 5
    TRANSACTION_START = 6
    TRANSACTION_END = 7
    INTRODUCE = 8
    RELEASE = 9
    GET_DOMAIN_PATH = 10
    WRITE = 11
    MKDIR = 12
    RM = 13
    SET_PERMS = 14
    WATCH_EVENT = 15
    ERROR = 16
    IS_DOMAIN_INTRODUCED = 17
    RESUME = 18
    SET_TARGET = 19
    RESET_WATCHES = 21
    DIRECTORY_PART = 22
    INVALID = 0xFFFF


#: Error names a daemon may answer with (``xsd_errors`` in xs_wire.h), name -> errno value.
ERROR_NAMES: dict[str, int] = {
    "EINVAL": _errno.EINVAL,
    "EACCES": _errno.EACCES,
    "EEXIST": _errno.EEXIST,
    "EISDIR": _errno.EISDIR,
    "ENOENT": _errno.ENOENT,
    "ENOMEM": _errno.ENOMEM,
    "ENOSPC": _errno.ENOSPC,
    "EIO": _errno.EIO,
    "ENOTEMPTY": _errno.ENOTEMPTY,
    "ENOSYS": _errno.ENOSYS,
    "EROFS": _errno.EROFS,
    "EBUSY": _errno.EBUSY,
    "EAGAIN": _errno.EAGAIN,
    "EISCONN": _errno.EISCONN,
    "E2BIG": _errno.E2BIG,
    "EPERM": _errno.EPERM,
    "EQUOTA": _errno.EDQUOT,  # Xen's EQUOTA is not in the table; kept for decoding only
}

OK = b"OK\0"


class ProtocolError(Exception):
    """The peer sent bytes that are not a valid xenstore frame."""


class Message(NamedTuple):
    """One decoded frame. ``type`` is an int (a :class:`MessageType` when known)."""

    type: int
    req_id: int
    tx_id: int
    payload: bytes


class Perm(NamedTuple):
    """One permission entry: ``Perm(5, 'r')`` is ``"r5"`` on the wire.

    In a list of permissions the first entry names the owner and the default access for every
    domain not listed after it.
    """

    domid: int
    access: str  # 'n' none, 'r' read, 'w' write, 'b' both

    def __str__(self) -> str:
        return f"{self.access}{self.domid}"

    @classmethod
    def parse(cls, text: str) -> Perm:
        """``"r5"`` -> ``Perm(5, 'r')``; raises ValueError on anything else."""
        domid = decimal(text[1:])
        if not text or text[0] not in "nrwb" or domid is None:
            raise ValueError(f"bad permission {text!r} (want n|r|w|b followed by a domain id)")
        return cls(domid, text[0])


# -- encoding -----------------------------------------------------------------------------------
_pack = HEADER.pack


def encode(msg_type: int, req_id: int, tx_id: int, payload: bytes) -> bytes:
    """One frame (header + payload). Does not check the size: senders do (see :func:`check`)."""
    return _pack(msg_type, req_id, tx_id, len(payload)) + payload


def check(payload: bytes) -> None:
    """Refuse a payload a daemon would not accept (raise ValueError)."""
    if len(payload) > PAYLOAD_MAX:
        raise ValueError(f"payload of {len(payload)} bytes is over the {PAYLOAD_MAX}-byte limit")


def to_bytes(value: bytes | str) -> bytes:
    """Strings here may carry undecodable bytes a peer sent (decoded with surrogateescape):
    encode them back to exactly those bytes instead of failing."""
    return value.encode("utf-8", "surrogateescape") if isinstance(value, str) else bytes(value)


def args(*items: bytes | str) -> bytes:
    """Request arguments: each string NUL-terminated (``"a\\0b\\0"``)."""
    return b"".join(to_bytes(i) + b"\0" for i in items)


def write_payload(path: str, value: bytes | str) -> bytes:
    """WRITE is the exception: ``"path\\0value"`` with the value raw, not NUL-terminated."""
    return to_bytes(path) + b"\0" + to_bytes(value)


def perms_payload(perms: list[Perm] | tuple[Perm, ...]) -> bytes:
    return b"".join(f"{p.access}{p.domid}".encode() + b"\0" for p in perms)


# -- decoding -----------------------------------------------------------------------------------
class Decoder:
    """Incremental frame decoder: ``feed(data)`` then iterate over complete messages.

    ``max_payload`` bounds what we buffer for one frame; a larger ``len`` raises
    :class:`ProtocolError` (the caller should drop the connection).
    """

    __slots__ = ("_buf", "max_payload")

    def __init__(self, max_payload: int = PAYLOAD_MAX) -> None:
        self._buf = bytearray()
        self.max_payload = max_payload

    def feed(self, data: bytes) -> None:
        self._buf += data

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def next_message(self) -> Message | None:
        """The next complete message, or None if more bytes are needed."""
        buf = self._buf
        if len(buf) < HEADER_SIZE:
            return None
        msg_type, req_id, tx_id, length = HEADER.unpack_from(buf)
        if length > self.max_payload:
            raise ProtocolError(f"frame length {length} over the {self.max_payload}-byte limit")
        end = HEADER_SIZE + length
        if len(buf) < end:
            return None
        payload = bytes(buf[HEADER_SIZE:end])
        del buf[:end]
        return Message(msg_type, req_id, tx_id, payload)

    def __iter__(self) -> Decoder:
        return self

    def __next__(self) -> Message:
        msg = self.next_message()
        if msg is None:
            raise StopIteration
        return msg


# -- payload helpers ----------------------------------------------------------------------------
def split_strings(payload: bytes) -> list[str]:
    """``"a\\0b\\0"`` -> ``["a", "b"]`` (an empty payload gives ``[]``)."""
    if not payload:
        return []
    parts = payload.split(b"\0")
    if parts[-1] == b"":
        parts.pop()
    return [p.decode("utf-8", "surrogateescape") for p in parts]


def parse_perms(payload: bytes) -> list[Perm]:
    return [Perm.parse(t) for t in split_strings(payload)]


def parse_error(payload: bytes) -> str:
    """The errno name of an ERROR reply (``b"ENOENT\\0"`` -> ``"ENOENT"``)."""
    return payload.split(b"\0", 1)[0].decode("ascii", "replace") or "EINVAL"


def parse_watch_event(payload: bytes) -> tuple[str, str]:
    """``"path\\0token\\0"`` -> ``(path, token)``.

    The token may itself contain NULs in theory; like libxenstore we take the first string as
    the path and the second as the token.
    """
    parts = payload.split(b"\0")
    if len(parts) < 2:
        raise ProtocolError(f"malformed watch event {payload!r}")
    return (parts[0].decode("utf-8", "surrogateescape"),
            parts[1].decode("utf-8", "surrogateescape"))


def parse_directory_part(payload: bytes) -> tuple[str, list[str], bool]:
    """``"gen\\0a\\0b\\0[\\0]"`` -> ``(generation, children, is_last)``.

    The final chunk ends with an extra empty string (two NULs in a row, or just ``gen\\0\\0``).
    """
    gen, _, rest = payload.partition(b"\0")
    last = rest.endswith(b"\0\0") or rest == b"\0" or rest == b""
    body = rest[:-1] if last and rest else rest
    return gen.decode("ascii", "replace"), split_strings(body), last


def error_name_for(errno_value: int) -> str:
    """errno value -> wire name (EINVAL for anything the table does not know, as xenstored)."""
    for name, value in ERROR_NAMES.items():
        if value == errno_value:
            return name
    return "EINVAL"


def type_name(msg_type: int) -> str:
    try:
        return MessageType(msg_type).name
    except ValueError:
        return f"TYPE_{msg_type}"

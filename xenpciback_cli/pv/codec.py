"""Reading an op out of the shared page and writing its result back (sans-IO).

Rules (Linux pciback ``pciback_ops.c``; XSA-155):
  1. The op is copied out of the page **once** - one read of its 548 bytes - and every decision
     is made on that private copy. The guest may rewrite the page at any moment; nothing here reads
     the page twice.
  2. Only ``err``, ``value`` and, for a successful ``enable_msix``, the first ``n`` vectors are
     written back, ``n`` being the count taken from the private copy. ``cmd``, the address, the
     offset, size, info and the entries' table indices stay as the guest left them.
  3. Every value decodes: the fields are fixed-width integers, so any 548 bytes are an op. Only a
     page too short to hold one is an error (:class:`PageError`); unknown ``cmd`` values are the
     dispatcher's business (``XEN_PCI_ERR_not_implemented``).
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from xenpciback_cli.pv.abi import (
    AER_OP,
    AER_OP_OFFSET,
    ERR,
    ERR_OFFSET,
    FLAGS,
    FLAGS_OFFSET,
    MSIX_ENTRIES,
    MSIX_OFFSET,
    OP_END,
    OP_HEADER,
    OP_OFFSET,
    OP_SIZE,
    SH_INFO_MAX_VEC,
    VALUE,
    VALUE_OFFSET,
    VECTOR,
)

#: What a handler answers: ``(err, value)`` or ``(err, value, vectors)``; ``vectors`` are the
#: MSI-X ``vector`` fields to write back, entry 0 first.
Result = tuple[int, int] | tuple[int, int, tuple[int, ...]]

_unpack_header = OP_HEADER.unpack_from
_pack_err = ERR.pack_into
_pack_value = VALUE.pack_into
_pack_vector = VECTOR.pack_into
_INT32 = range(-(2**31), 2**31)
#: The one copy (rule 1): the op's 548 bytes as one ``bytes`` object, taken straight from the
#: page's buffer. Cheaper than ``bytes(page[4:552])``, which builds a memoryview slice first
#: (~2,500 against ~1,300 instructions: it is most of a conf_read's cost), and it raises
#: ``struct.error`` instead of copying short when the buffer cannot hold an op.
#: ``GuestSession.process`` calls it directly (the per-op path; bench/bench_dispatch.py).
OP_COPY = struct.Struct(f"{OP_SIZE}s")
assert OP_COPY.size == OP_SIZE == OP_END - OP_OFFSET
_copy = OP_COPY.unpack_from


class PageError(ValueError):
    """The buffer cannot hold a shared page's op (a local error: the caller's buffer is wrong)."""


class Op(NamedTuple):
    """One ``xen_pci_op`` as copied out of the page. ``raw`` is that private copy (548 bytes)."""

    cmd: int
    err: int
    domain: int
    bus: int
    devfn: int
    offset: int
    size: int
    value: int
    info: int
    raw: bytes

    def msix_entries(self, count: int = SH_INFO_MAX_VEC) -> tuple[tuple[int, int], ...]:
        """The first ``count`` ``(vector, entry)`` pairs, decoded from the private copy."""
        flat = MSIX_ENTRIES.unpack_from(self.raw, OP_HEADER.size)
        count = max(0, min(count, SH_INFO_MAX_VEC))
        return tuple((flat[2 * i], flat[2 * i + 1]) for i in range(count))


def copy_op(page: bytes | bytearray | memoryview) -> bytes:
    """The op's 548 bytes, copied out of the page in one read (XSA-155)."""
    try:
        raw: bytes = _copy(page, OP_OFFSET)[0]
    except struct.error:
        raise short_page(page) from None
    return raw


def short_page(page: bytes | bytearray | memoryview) -> PageError:
    """The error for a buffer too short to hold an op (the caller raises it)."""
    return PageError(f"a shared page holds its op at bytes {OP_OFFSET}-{OP_END}; "
                     f"this buffer has {len(page)} bytes")


def decode_op(raw: bytes) -> Op:
    """An :class:`Op` from a private copy made by :func:`copy_op` (or a trace record)."""
    if len(raw) != OP_SIZE:
        raise PageError(f"an op is {OP_SIZE} bytes, not {len(raw)}")
    return _decode(raw)


def _decode(raw: bytes) -> Op:
    cmd, err, domain, bus, devfn, offset, size, value, info = _unpack_header(raw)
    return Op(cmd, err, domain, bus, devfn, offset, size, value, info, raw)


def read_op(page: bytes | bytearray | memoryview) -> Op:
    """Copy the op out of ``page`` once and decode it from the copy."""
    return _decode(copy_op(page))


def write_result(page: bytearray | memoryview, result: Result) -> None:
    """Write ``err``, ``value`` and the MSI-X vectors (if any) into ``page``; nothing else.

    ``result`` comes from the backend, not the guest: an ``err`` outside int32 or more than
    ``SH_INFO_MAX_VEC`` vectors is a bug and raises ``ValueError`` before anything is written.
    """
    err = result[0]
    if err not in _INT32:
        raise ValueError(f"err {err} does not fit int32")
    vectors: tuple[int, ...] = result[2] if len(result) > 2 else ()
    if len(vectors) > SH_INFO_MAX_VEC:
        raise ValueError(f"{len(vectors)} MSI-X vectors; the page holds {SH_INFO_MAX_VEC}")
    if len(page) < OP_END:
        raise PageError(f"a shared page needs {OP_END} bytes; this buffer has {len(page)}")
    _pack_err(page, ERR_OFFSET, err)
    _pack_value(page, VALUE_OFFSET, result[1] & 0xFFFFFFFF)
    for i, vector in enumerate(vectors):
        _pack_vector(page, MSIX_OFFSET + 4 * i, vector & 0xFFFF)


def encode_op(cmd: int, domain: int = 0, bus: int = 0, devfn: int = 0, offset: int = 0,
              size: int = 0, value: int = 0, info: int = 0, err: int = 0,
              msix_entries: tuple[tuple[int, int], ...] = ()) -> bytes:
    """A whole 548-byte ``xen_pci_op`` (what a frontend writes; tests and the simulated guest)."""
    if len(msix_entries) > SH_INFO_MAX_VEC:
        raise ValueError(f"at most {SH_INFO_MAX_VEC} MSI-X entries")
    flat: list[int] = [0] * (2 * SH_INFO_MAX_VEC)
    for i, (vector, entry) in enumerate(msix_entries):
        flat[2 * i], flat[2 * i + 1] = vector, entry
    return OP_HEADER.pack(cmd, err, domain, bus, devfn, offset, size, value, info) + \
        MSIX_ENTRIES.pack(*flat)


# -- flags and the AER op ----------------------------------------------------------------------
def read_flags(page: bytes | bytearray | memoryview) -> int:
    """``xen_pci_sharedinfo.flags`` (bit 0: op waiting; bit 1: AER handler; bit 2: AER waiting)."""
    value: int = FLAGS.unpack_from(page, FLAGS_OFFSET)[0]
    return value


def set_flag_bits(page: bytearray | memoryview, set_mask: int = 0, clear_mask: int = 0) -> int:
    """Read-modify-write of the flags word only (bits 0-2 of the uint32 at page offset 0);
    returns the new value. Atomicity against the guest is the transport's business."""
    flags = (read_flags(page) | set_mask) & ~clear_mask & 0xFFFFFFFF
    FLAGS.pack_into(page, FLAGS_OFFSET, flags)
    return flags


class AerOp(NamedTuple):
    """``struct xen_pcie_aer_op`` (backend to frontend): cmd, err, guest-view domain/bus/devfn."""

    cmd: int
    err: int
    domain: int
    bus: int
    devfn: int


def read_aer_op(page: bytes | bytearray | memoryview) -> AerOp:
    """The AER op area, copied once (the frontend writes its answer into ``err``)."""
    raw = bytes(page[AER_OP_OFFSET:AER_OP_OFFSET + AER_OP.size])
    if len(raw) != AER_OP.size:
        raise PageError(f"the AER op is at bytes {AER_OP_OFFSET}-{AER_OP_OFFSET + AER_OP.size}; "
                        f"this buffer has {len(page)} bytes")
    return AerOp(*AER_OP.unpack(raw))


def write_aer_op(page: bytearray | memoryview, op: AerOp) -> None:
    """Fill the AER op area (the backend's request; it then sets ``_XEN_PCIB_active``)."""
    AER_OP.pack_into(page, AER_OP_OFFSET, op.cmd, op.err, op.domain, op.bus, op.devfn)

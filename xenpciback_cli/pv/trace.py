"""A trace record: one op as it went in and what came out, for record and replay.

The request is the private copy the backend decided on (548 bytes, XSA-155), so replaying a trace
feeds the core exactly what it saw, whatever the page held before or after. The record is a
tuple of plain values; ``as_dict``/``from_dict`` give a JSON-ready form (request in hex).
"""

from __future__ import annotations

from typing import NamedTuple

from xenpciback_cli.pv.abi import OP_SIZE, SH_INFO_MAX_VEC
from xenpciback_cli.pv.codec import Op, PageError, Result, decode_op


class TraceRecord(NamedTuple):
    """Domain ``domid`` sent ``request``; the backend answered ``err``, ``value``, ``vectors``."""

    domid: int
    request: bytes
    err: int
    value: int
    vectors: tuple[int, ...] = ()

    @classmethod
    def of(cls, domid: int, op: Op, result: Result) -> TraceRecord:
        vectors: tuple[int, ...] = result[2] if len(result) > 2 else ()
        return cls(domid, op.raw, result[0], result[1] & 0xFFFFFFFF, vectors)

    @property
    def op(self) -> Op:
        return decode_op(self.request)

    @property
    def result(self) -> Result:
        return (self.err, self.value, self.vectors) if self.vectors else (self.err, self.value)

    def as_dict(self) -> dict[str, object]:
        return {"domid": self.domid, "request": self.request.hex(), "err": self.err,
                "value": self.value, "vectors": list(self.vectors)}

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> TraceRecord:
        """From :meth:`as_dict`'s form; a malformed record raises :class:`PageError`."""
        try:
            domid, err, value = (data["domid"], data["err"], data["value"])
            request = bytes.fromhex(str(data["request"]))
            vectors = data.get("vectors", [])
            if not (isinstance(domid, int) and isinstance(err, int) and isinstance(value, int)
                    and isinstance(vectors, list) and all(isinstance(v, int) for v in vectors)):
                raise TypeError("domid, err, value and vectors must be integers")
        except (KeyError, TypeError, ValueError) as exc:
            raise PageError(f"not a trace record: {exc}") from None
        if len(request) != OP_SIZE or len(vectors) > SH_INFO_MAX_VEC:
            raise PageError(f"a trace request is {OP_SIZE} bytes with at most "
                            f"{SH_INFO_MAX_VEC} vectors")
        return cls(domid, request, err, value, tuple(vectors))

"""``pv/trace.py``'s records and lines refuse what JSON allows but the format does not: a bool
where an integer goes (JSON true is Python's 1), and a number outside the field's 32 bits."""

from __future__ import annotations

import pytest

from xenpciback_cli.pv.abi import PciOp
from xenpciback_cli.pv.codec import PageError, encode_op
from xenpciback_cli.pv.trace import TraceRecord


def good() -> dict[str, object]:
    record = TraceRecord.of(7, encode_op(PciOp.CONF_READ, 0, 0, 8, 4, 2), (0, 0x10))
    return record.as_dict()


def test_a_good_record_round_trips():
    record = TraceRecord.from_dict(good())
    assert (record.domid, record.err, record.value, record.op.offset) == (7, 0, 0x10, 4)


@pytest.mark.parametrize("key, value", [
    ("domid", True), ("err", False), ("value", True), ("vectors", [1, True]),
])
def test_a_bool_is_not_an_integer(key, value):
    with pytest.raises(PageError, match="integer"):
        TraceRecord.from_dict(dict(good(), **{key: value}))


@pytest.mark.parametrize("key, value", [
    ("value", 2**32), ("value", -1), ("err", 2**31), ("err", -2**31 - 1), ("domid", -1),
    ("domid", 2**16), ("vectors", [2**16]), ("vectors", [-1]),
])
def test_a_number_beyond_its_field_is_refused(key, value):
    with pytest.raises(PageError, match=r"range|fit"):
        TraceRecord.from_dict(dict(good(), **{key: value}))


@pytest.mark.parametrize("value", [0, 2**32 - 1])
def test_the_edges_of_value_are_kept(value):
    assert TraceRecord.from_dict(dict(good(), value=value)).value == value


def _op_line(**change):
    from xenpciback_cli.pv.trace import op_dict

    record = TraceRecord.from_dict(good())
    return dict(op_dict(record, 1.5, "0000:03:00.0"), **change)


@pytest.mark.parametrize("change", [
    {"value_in": 2**32}, {"value_in": -1}, {"value_out": 2**32}, {"err": 2**31},
    {"domid": 2**16}, {"size": True}, {"offset": False}, {"vectors": [2**16]},
    {"offset": 2**31}, {"t": "soon"}, {"t": True}, {"t": float("nan")}, {"t": float("inf")},
    {"t": -float("inf")}, {"t": 10**18}, {"t": 10**400},
])
def test_an_op_line_out_of_range_or_not_an_integer_is_refused(change):
    from xenpciback_cli.pv.trace import TraceFormatError, parse_op

    parse_op(_op_line())
    with pytest.raises(TraceFormatError):
        parse_op(_op_line(**change))


def test_a_record_names_its_whole_op_code_not_its_first_byte():
    """serve picks MSI records and denied-write logs by the op code: 0x101 is no conf_write."""
    import struct as _struct

    from xenpciback_cli.pv.trace import TraceRecord

    request = _struct.pack("<I", 0x101) + bytes(544)
    assert TraceRecord(1, request, -4, 0).cmd == 0x101
    assert TraceRecord(1, _struct.pack("<I", 1) + bytes(544), 0, 0).cmd == 1

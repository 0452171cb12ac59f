"""The shared page codec against layouts written out by hand from pciif.h (golden bytes), and
fuzzed: any page decodes or gives a typed error."""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xenpciback_cli.pv import abi
from xenpciback_cli.pv.abi import PciOp, XenPciErr
from xenpciback_cli.pv.codec import (
    AerOp,
    PageError,
    encode_op,
    read_aer_op,
    read_flags,
    read_op,
    set_flag_bits,
    write_aer_op,
    write_result,
)
from xenpciback_cli.pv.trace import TraceRecord


def hand_page(cmd, domain, bus, devfn, offset, size, value, info=0, err=0, entries=(), flags=1):
    """A page laid out field by field at the byte offsets of pciif.h (spec §1.2), not with our
    Structs: flags@0, cmd@4, err@8, domain@12, bus@16, devfn@20, offset@24, size@28,
    value@32, info@36, msix_entries@40 (vector, entry: 2+2 bytes each), aer_op@552."""
    page = bytearray(4096)
    struct.pack_into("<I", page, 0, flags)
    struct.pack_into("<I", page, 4, cmd)
    struct.pack_into("<i", page, 8, err)
    struct.pack_into("<I", page, 12, domain)
    struct.pack_into("<I", page, 16, bus)
    struct.pack_into("<I", page, 20, devfn)
    struct.pack_into("<i", page, 24, offset)
    struct.pack_into("<i", page, 28, size)
    struct.pack_into("<I", page, 32, value)
    struct.pack_into("<I", page, 36, info)
    for i, (vector, entry) in enumerate(entries):
        struct.pack_into("<HH", page, 40 + 4 * i, vector, entry)
    return page


def test_constants_are_pciif_h():
    assert [int(o) for o in PciOp] == list(range(11))
    assert PciOp.ENABLE_MSIX == 4 and PciOp.AER_SLOTRESET == 9
    assert [int(e) for e in XenPciErr] == [0, -1, -2, -3, -4, -5]
    assert (abi.XEN_PCIF_ACTIVE, abi.XEN_PCIB_AERHANDLER, abi.XEN_PCIB_ACTIVE) == (1, 2, 4)
    assert abi.SH_INFO_MAX_VEC == 128 and abi.XEN_PCI_MAGIC == "7"
    assert (abi.OP_HEADER.size, abi.MSIX_ENTRY.size, abi.PCI_OP.size, abi.AER_OP.size,
            abi.SHARED_INFO_SIZE) == (36, 4, 548, 20, 572)
    assert (abi.ERR_OFFSET, abi.VALUE_OFFSET, abi.MSIX_OFFSET, abi.AER_OP_OFFSET) == (8, 32, 40, 552)


def test_golden_conf_read_decodes():
    page = hand_page(0, 0, 0, (3 << 3) | 1, 0x10, 4, 0xDEADBEEF, info=9, err=-7)
    op = read_op(page)
    assert op[:9] == (0, -7, 0, 0, 0x19, 0x10, 4, 0xDEADBEEF, 9)
    assert op.raw == bytes(page[4:552])


def test_golden_encode_matches_hand_layout():
    entries = ((0xFFFF, 0), (0xFFFF, 5), (0xFFFF, 127))
    page = hand_page(4, 1, 2, 0xFF, -4, 2, 3, info=1, entries=entries)
    assert encode_op(4, 1, 2, 0xFF, -4, 2, 3, info=1, msix_entries=entries) == bytes(page[4:552])
    assert read_op(page).msix_entries(3) == entries


def test_signed_fields_decode_signed():
    op = read_op(hand_page(1, 0xFFFFFFFF, 0, 0, -0x80000000, -1, 0xFFFFFFFF))
    assert (op.domain, op.offset, op.size, op.value) == (0xFFFFFFFF, -0x80000000, -1, 0xFFFFFFFF)


def test_op_is_copied_once_page_changes_do_not_reach_it():
    """XSA-155: the decoded op and its entries come from the private copy."""
    page = hand_page(4, 0, 0, 0, 0, 0, 2, entries=((0, 1), (0, 2)))
    view = memoryview(page)
    op = read_op(view)
    struct.pack_into("<I", page, 4, 0xFFFFFFFF)  # the guest flips cmd and the entries
    struct.pack_into("<HH", page, 40, 0, 99)
    assert op.cmd == 4 and op.msix_entries(2) == ((0, 1), (0, 2))


def test_write_result_touches_only_err_value_and_vectors():
    entries = ((0xFFFF, 3), (0xFFFF, 4), (0xFFFF, 5))
    page = hand_page(4, 0, 0, 8, 0, 0, 2, entries=entries)
    struct.pack_into("<IiIII", page, 552, 6, 2, 0, 0, 8)
    before = bytes(page)
    write_result(page, (-114, 0x12345678, (0x21, 0x22)))
    changed = {i for i in range(4096) if page[i] != before[i]}
    assert changed <= set(range(8, 12)) | set(range(32, 36)) | {40, 41, 44, 45}
    assert struct.unpack_from("<i", page, 8)[0] == -114
    assert struct.unpack_from("<I", page, 32)[0] == 0x12345678
    # vectors only for the first two entries; the table indices and the third entry untouched
    assert [struct.unpack_from("<HH", page, 40 + 4 * i) for i in range(3)] == \
        [(0x21, 3), (0x22, 4), (0xFFFF, 5)]


def test_write_result_refuses_backend_bugs_before_writing():
    page = bytearray(4096)
    with pytest.raises(ValueError):
        write_result(page, (2**31, 0))
    with pytest.raises(ValueError):
        write_result(page, (0, 0, (1,) * 129))
    assert page == bytearray(4096)


def test_short_buffers_are_typed_errors():
    with pytest.raises(PageError):
        read_op(bytes(551))
    with pytest.raises(PageError):
        write_result(bytearray(100), (0, 0))
    assert read_op(bytes(552)).cmd == 0  # exactly flags + op is enough


def test_flags_and_aer_op():
    page = hand_page(0, 0, 0, 0, 0, 1, 0, flags=abi.XEN_PCIF_ACTIVE | abi.XEN_PCIB_AERHANDLER)
    assert read_flags(page) == 3
    assert set_flag_bits(page, abi.XEN_PCIB_ACTIVE, abi.XEN_PCIF_ACTIVE) == 6
    assert page[4:8] == b"\0\0\0\0"  # only the flags word
    write_aer_op(page, AerOp(PciOp.AER_DETECTED, 2, 0, 0, 0x08))
    assert struct.unpack_from("<IiIII", page, 552) == (6, 2, 0, 0, 8)
    assert read_aer_op(page) == (6, 2, 0, 0, 8)


def test_trace_record_round_trip():
    page = hand_page(0, 0, 0, 8, 4, 2, 0)
    op = read_op(page)
    record = TraceRecord.of(3, op.raw, (0, 0x0406))
    again = TraceRecord.from_dict(record.as_dict())
    assert again == record and again.op == op and again.result == (0, 0x0406)
    with pytest.raises(PageError):
        TraceRecord.from_dict({"domid": 1, "request": "00", "err": 0, "value": 0})
    with pytest.raises(PageError):
        TraceRecord.from_dict({"domid": "x"})


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=0, max_size=4200))
def test_any_buffer_decodes_or_gives_a_typed_error(data):
    try:
        op = read_op(data)
    except PageError:
        assert len(data) < 552
        return
    assert op.raw == data[4:552] and 0 <= op.cmd < 2**32 and -(2**31) <= op.offset < 2**31
    assert len(op.msix_entries(op.value)) == min(op.value, 128)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.large_base_example])
@given(st.binary(min_size=4096, max_size=4096))
def test_any_4096_byte_page_decodes(data):
    op = read_op(memoryview(data))
    assert encode_op(op.cmd, op.domain, op.bus, op.devfn, op.offset, op.size, op.value, op.info,
                     op.err, op.msix_entries()) == data[4:552]

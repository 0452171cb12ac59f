"""The sans-IO codec: exact bytes for each kind of frame, incremental decoding, hostile input."""

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xenpciback_cli.xenstore import wire
from xenpciback_cli.xenstore.wire import Message, MessageType as T, Perm


def test_header_is_four_little_endian_u32():
    frame = wire.encode(T.READ, 7, 3, b"/a\0")
    assert frame == b"\x02\0\0\0" b"\x07\0\0\0" b"\x03\0\0\0" b"\x03\0\0\0" b"/a\0"


def test_write_payload_keeps_binary_value_raw():
    assert wire.write_payload("/a/b", b"\0\xff") == b"/a/b\0\0\xff"
    assert wire.args("/a", "tok") == b"/a\0tok\0"


def test_message_types_match_xs_wire_h():
    assert (T.DIRECTORY, T.WATCH_EVENT, T.ERROR, T.RESET_WATCHES, T.DIRECTORY_PART) == (1, 15, 16, 21, 22)


def test_decoder_yields_messages_fed_one_byte_at_a_time():
    data = wire.encode(T.WATCH_EVENT, 0, 0, b"/a\0tok\0") + wire.encode(T.WRITE, 5, 0, b"OK\0")
    dec = wire.Decoder()
    got = []
    for i in range(len(data)):
        dec.feed(data[i:i + 1])
        got.extend(dec)
    assert got == [Message(15, 0, 0, b"/a\0tok\0"), Message(11, 5, 0, b"OK\0")]
    assert dec.buffered == 0


def test_decoder_refuses_oversized_frame_before_buffering_it():
    dec = wire.Decoder()
    dec.feed(struct.pack("<IIII", 2, 1, 0, wire.PAYLOAD_MAX + 1))
    with pytest.raises(wire.ProtocolError):
        dec.next_message()


def test_payload_helpers():
    assert wire.split_strings(b"a\0b\0") == ["a", "b"]
    assert wire.split_strings(b"") == []
    assert wire.parse_perms(b"n0\0r5\0") == [Perm(0, "n"), Perm(5, "r")]
    assert wire.perms_payload([Perm(3, "b"), Perm(0, "r")]) == b"b3\0r0\0"
    assert wire.parse_error(b"ENOENT\0") == "ENOENT"
    assert wire.parse_watch_event(b"/x/y\0tok\0") == ("/x/y", "tok")
    with pytest.raises(wire.ProtocolError):
        wire.parse_watch_event(b"no-nul")
    with pytest.raises(ValueError):
        Perm.parse("x5")
    with pytest.raises(ValueError):
        Perm.parse("r")


@pytest.mark.parametrize("payload,expected", [
    (b"12\0a\0b\0\0", ("12", ["a", "b"], True)),
    (b"12\0a\0b\0", ("12", ["a", "b"], False)),
    (b"12\0\0", ("12", [], True)),
])
def test_directory_part_chunks(payload, expected):
    assert wire.parse_directory_part(payload) == expected


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.integers(min_value=1, max_value=64))
def test_decoder_never_crashes_on_garbage(data, step):
    dec = wire.Decoder()
    for i in range(0, len(data), step):
        dec.feed(data[i:i + step])
        try:
            for msg in dec:
                assert len(msg.payload) <= wire.PAYLOAD_MAX
        except wire.ProtocolError:
            return


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 22), st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1),
                          st.binary(max_size=wire.PAYLOAD_MAX)), max_size=5))
def test_roundtrip(messages):
    dec = wire.Decoder()
    dec.feed(b"".join(wire.encode(*m) for m in messages))
    assert [tuple(m) for m in dec] == messages

"""Bdf: the address value type and its plain parser."""

from __future__ import annotations

import pytest

from xenpciback_cli.errors import InputError
from xenpciback_cli.pci.address import Bdf


@pytest.mark.parametrize("text, expected", [
    ("0000:03:00.0", Bdf(0, 3, 0, 0)),
    ("03:00.1", Bdf(0, 3, 0, 1)),
    ("  0001:ff:1f.7\n", Bdf(1, 0xFF, 0x1F, 7)),
    ("A:0B:1c.3", Bdf(0xA, 0x0B, 0x1C, 3)),
    ("ffff:00:00.0", Bdf(0xFFFF, 0, 0, 0)),
    ("10000:e1:00.0", Bdf(0x10000, 0xE1, 0, 0)),  # Intel VMD domains
])
def test_parse_valid(text, expected):
    assert Bdf.parse(text) == expected


@pytest.mark.parametrize("text", [
    "", "03:00", "03:00.8", "03:20.0", "3:00.0.0", "123456789:03:00.0", "003:00.0", "g3:00.0",
    "03-00.0", "03:00.*", "0000:03:00:0", "03:00.0 ", "0x03:00.0", "03:000.0",
])
def test_parse_invalid_is_one_line_input_error(text):
    if text == "03:00.0 ":  # surrounding whitespace is tolerated
        assert Bdf.parse(text) == Bdf(0, 3, 0, 0)
        return
    with pytest.raises(InputError) as info:
        Bdf.parse(text)
    message = str(info.value)
    assert "\n" not in message and repr(text) in message


def test_formats():
    bdf = Bdf(0, 0x3A, 0x1F, 7)
    assert str(bdf) == "0000:3a:1f.7"
    assert bdf.xs_key == "0000-3a-1f-7"
    assert bdf.devfn == 0xFF
    assert Bdf.from_devfn(0, 0x3A, 0xFF) == bdf
    assert Bdf.parse(str(bdf)) == bdf


def test_sorting_is_by_address():
    values = [Bdf.parse(t) for t in ("0001:00:00.0", "0000:03:00.1", "0000:03:00.0", "0000:00:1f.0")]
    assert [str(b) for b in sorted(values)] == ["0000:00:1f.0", "0000:03:00.0", "0000:03:00.1", "0001:00:00.0"]

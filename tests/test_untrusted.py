"""The one parser for numbers a guest, a peer or the environment hands us."""

import pytest

from xenpciback_cli.untrusted import decimal


@pytest.mark.parametrize("text, value", [("0", 0), ("7", 7), ("0042", 42), ("4294967295", 4294967295)])
def test_plain_ascii_decimals(text, value):
    assert decimal(text) == value


@pytest.mark.parametrize("text", [None, "", " 4", "4 ", "4\n", "+4", "-4", "1_0", "0x10", "4.0",
                                  "\u00b2", "\u0663", "\uff14", "1\u00b2"])
def test_everything_else_is_refused_without_raising(text):
    assert decimal(text) is None


def test_length_bound_is_checked_before_converting():
    assert decimal("9" * 10_000, max_digits=5) is None
    assert decimal("12345", max_digits=5) == 12345

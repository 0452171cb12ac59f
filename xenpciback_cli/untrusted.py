"""Parsing numbers that come from outside: a guest's xenstore nodes, the wire, sysfs, the environment.

``str.isdigit()`` is the wrong gate for ``int()``: it accepts superscripts such as ``'²'`` that
``int()`` then rejects with ValueError, while ``int()`` itself accepts non-ASCII digits (``'٣'``)
and underscores (``'1_0'``) that no C peer would write. A guest choosing its own node values
could crash a parser with the first and smuggle odd spellings with the others. Every such value
goes through :func:`decimal` instead.
"""

from __future__ import annotations


def decimal(text: str | None, *, max_digits: int | None = None) -> int | None:
    """The value of ``text`` if it is a plain ASCII decimal number (no sign, no spaces), else None.

    ``max_digits`` bounds the length before any conversion, so a hostile megabyte of digits costs
    nothing.
    """
    if not text or not text.isascii() or not text.isdigit():
        return None
    if max_digits is not None and len(text) > max_digits:
        return None
    return int(text)

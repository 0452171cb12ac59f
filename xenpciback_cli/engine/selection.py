"""What ``hide``, ``unhide``, ``bind`` and ``rebind`` act on, from the words a person typed.

One function, so the four commands accept the same selectors and say the same things about
them: a PCI address or pattern (xl's ``03:00.0``, ``03:00.*``, lspci's ``-s`` forms ``03:00``,
``03:``, ``:00.0``), else one device per word by name (``hide --name``, ``xl
pci-assignable-add -n``), host network interface (``eth1``) or block device (``nvme0n1``), as
driverctl and dpdk-devbind accept; and lspci's ``-d [VENDOR]:[DEVICE][:CLASS]``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from xenpciback_cli.engine.inventory import held_patterns, seize_patterns
from xenpciback_cli.errors import InputError
from xenpciback_cli.host.model import Host
from xenpciback_cli.pci.spec import BdfPattern, IdSelector, parse_device_selector


def select_patterns(host: Host, state_dir: str | os.PathLike[str], words: Sequence[str],
                    ids_text: str | None = None, *, verb: str,
                    xenstore: Callable[[], Any] = lambda: None, held: bool = False) -> list[BdfPattern]:
    """The devices ``words`` and ``ids_text`` select, as patterns the seize engine, the persisted
    config and the kernel's hide list take (:func:`~xenpciback_cli.engine.inventory.seize_patterns`).

    ``verb`` completes "name the devices to ...", the error when neither is given (exit 2).
    ``xenstore`` gives the client that knows xl's device names; it is asked only for a word
    that is not an address. ``held`` (``unhide``): with ``ids_text``, only the selected devices
    a seize driver holds or a record keeps, possibly none (nothing to do, not an error)."""
    if not words and ids_text is None:
        raise InputError(f"name the devices to {verb}: DEVICE... or -d VENDOR:DEVICE")
    ids = IdSelector.parse(ids_text) if ids_text is not None else None
    patterns = [_word(word, host, state_dir, xenstore) for word in words]
    if held and ids is not None:
        return held_patterns(host, Path(state_dir), patterns, ids)
    return seize_patterns(host, patterns, ids)


def _word(word: str, host: Host, state_dir: str | os.PathLike[str], xenstore: Callable[[], Any]) -> BdfPattern:
    """One word: an address or pattern, else the one device a name, interface or disk is."""
    try:
        return parse_device_selector(word)
    except InputError as exc:
        problem = exc
    from xenpciback_cli.engine.names import resolve_device_word

    bdf = resolve_device_word(word, host, state_dir, xenstore())
    if bdf is None:
        raise InputError(f"{problem}; nor is {word!r} a device name, network interface or "
                         "block device on this host")
    return BdfPattern(bdf.domain, bdf.bus, bdf.slot, bdf.function)

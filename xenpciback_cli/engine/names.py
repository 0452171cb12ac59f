"""The words an administrator uses for a device besides its address.

* A device *name*, xl's (``xl pci-assignable-add -n NAME``): libxl keeps it at
  ``/libxl/pci/DDDD-BB-DD-F/name`` (``tools/libs/light/libxl_pci.c``: at most 64 characters,
  each ``isgraph``), and ``name=NAME`` in a PCI_SPEC_STRING finds the device by it. ``hide
  --name`` writes the same node when a xenstore is reachable and keeps the name in the seize
  record too, so it works without one. A name belongs to one device.
* A host interface or block device name (``eth1``, ``nvme0n1``), as driverctl and dpdk-devbind
  accept: the PCI function below which the kernel shows it (``Host.pci_device_of``).

Nothing here prints; errors are the project's typed errors.
"""

from __future__ import annotations

import os
from typing import Any

from xenpciback_cli import errors
from xenpciback_cli.engine.records import load_records
from xenpciback_cli.pci.address import Bdf
from xenpciback_cli.pci.spec import device_name


def name_key(bdf: Bdf) -> str:
    """libxl's node for the name given at assignable-add."""
    return f"/libxl/pci/{bdf.xs_key}/name"


def xenstore_names(xenstore: Any | None) -> dict[Bdf, str]:
    """Every ``/libxl/pci/*/name`` (xl's names); empty without a xenstore. Values may have been
    written by anyone with dom0's rights: one that is not a valid name is ignored."""
    if xenstore is None:
        return {}
    from xenpciback_cli.pci.spec import is_device_name
    from xenpciback_cli.toolstack.libxl_layout import LIBXL_PCI_ROOT, parse_libxl_key
    from xenpciback_cli.toolstack.xsexec import list_or_empty, read_or_none

    names: dict[Bdf, str] = {}
    for key in sorted(list_or_empty(xenstore, LIBXL_PCI_ROOT)):
        bdf = parse_libxl_key(key)
        value = read_or_none(xenstore, f"{LIBXL_PCI_ROOT}/{key}/name") if bdf else None
        if bdf is not None and value is not None and is_device_name(value):
            names[bdf] = value
    return names


def device_names(state_dir: str | os.PathLike[str], xenstore: Any | None = None) -> dict[Bdf, str]:
    """Bdf -> name of every named device: our seize records (live ones), then xl's nodes in
    xenstore (which win: ``xl pci-assignable-add -n`` may have renamed it since). A corrupt
    record is skipped here (the command about its device reports it)."""
    corrupt: list[errors.StateFileCorrupt] = []
    names = {bdf: r.name for bdf, r in load_records(state_dir, corrupt=corrupt).items()
             if r.name and not r.released}
    names.update(xenstore_names(xenstore))
    return dict(sorted(names.items()))


def bdf_for_name(name: str, state_dir: str | os.PathLike[str], xenstore: Any | None = None) -> Bdf | None:
    """The device named ``name`` (None if no device has that name)."""
    for bdf, given in device_names(state_dir, xenstore).items():
        if given == name:
            return bdf
    return None


def check_name_free(name: str, bdf: Bdf, state_dir: str | os.PathLike[str],
                    xenstore: Any | None = None) -> str:
    """``name`` if it is a valid name that no other device has; InputError (exit 2) otherwise."""
    device_name(name)
    holder = bdf_for_name(name, state_dir, xenstore)
    if holder is not None and holder != bdf:
        raise errors.InputError(f"the name {name!r} is already {holder}'s; choose another "
                                f"(or 'xen-pciback unhide {holder}' first)")
    return name


def resolve_device_word(word: str, host: Any, state_dir: str | os.PathLike[str],
                        xenstore: Any | None = None) -> Bdf | None:
    """The device a word that is not a PCI address names: a device name (xl's), else a host
    network interface (``eth1``), else a block device (``nvme0n1``); None if it names none."""
    bdf = bdf_for_name(word, state_dir, xenstore)
    if bdf is not None:
        return bdf
    for klass in ("net", "block"):
        found: Bdf | None = host.pci_device_of(klass, word)
        if found is not None:
            return found
    return None

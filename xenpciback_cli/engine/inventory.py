"""The rows of ``xen-pciback list``: every device with its state in the passthrough lifecycle.

State rules (one place, so ``list``, ``hide`` and the docs agree):

* ``attached`` - a guest has it (a domid is known from the attachments mapping);
* ``seized``   - bound to a stub driver (pciback, pci-stub, vfio-pci), ready for a guest;
* ``host``     - anything else: a host driver has it, or nothing does.

``attachable`` (JSON) says whether ``attach`` takes the device as it is (one rule,
``pci.drivers.serving_drivers``): a device bound to pciback (or already attached) is; so is one
held by pci-stub when the kernel's pciback is not loaded (the userspace backend, ``serve``,
serves it). A device seized by vfio-pci, or by pci-stub while pciback is loaded, is held for
another consumer (VFIO users, KVM's legacy assignment): ``attach`` refuses it with or without
``--seize`` and says to ``unhide`` it first.

``original_driver`` comes from the seize records (engine.records, kept by hide/unhide), so a
seized device still says where it came from.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from enum import StrEnum
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from xenpciback_cli.errors import DeviceNotFound, InputError
from xenpciback_cli.host.model import Host
from xenpciback_cli.pci.device import PciDevice
from xenpciback_cli.pci.address import Bdf
from xenpciback_cli.pci.drivers import PCIBACK_DRIVER, SEIZE_DRIVERS, serving_drivers

if TYPE_CHECKING:  # pci.spec (three dataclasses) is imported by list only when it filters
    from xenpciback_cli.pci.spec import BdfPattern, IdSelector

#: ``--class`` names -> (class value, number of significant hex digits from the top).
CLASS_NAMES: dict[str, tuple[int, int]] = {
    "storage": (0x01, 2), "network": (0x02, 2), "display": (0x03, 2), "gpu": (0x03, 2),
    "multimedia": (0x04, 2), "audio": (0x0403, 4), "memory": (0x05, 2), "bridge": (0x06, 2),
    "communication": (0x07, 2), "system": (0x08, 2), "input": (0x09, 2), "processor": (0x0B, 2),
    "serial": (0x0C, 2), "usb": (0x0C03, 4), "wireless": (0x0D, 2), "accelerator": (0x12, 2),
    "nvme": (0x0108, 4), "ethernet": (0x0200, 4), "vga": (0x0300, 4),
}


@cache
def _hex() -> re.Pattern[str]:
    """Compiled on first use: ``list`` without ``--class`` never needs it."""
    return re.compile(r"^(?:0x)?([0-9a-fA-F]{1,6})$")


class ClassFilter(NamedTuple):
    """Matches devices whose 24-bit class code starts with ``value`` (``digits`` hex digits)."""

    value: int
    digits: int

    @classmethod
    def parse(cls, text: str) -> ClassFilter:
        word = text.strip().lower()
        if word in CLASS_NAMES:
            return cls(*CLASS_NAMES[word])
        match = _hex().match(word)
        if not match:
            raise InputError(f"invalid class {text!r}: give hex (02, 0x0200, 0x020000) or a name "
                             f"({', '.join(sorted(CLASS_NAMES))})")
        digits = match[1]
        if len(digits) % 2:
            digits = "0" + digits
        return cls(int(digits, 16), len(digits))

    def matches(self, class_code: int) -> bool:
        return (class_code >> (4 * (6 - self.digits))) == self.value


class DeviceState(StrEnum):
    """Where a device is in its lifecycle: the host's, seized (a stub driver holds it), or
    attached to a guest."""

    HOST = "host"
    SEIZED = "seized"
    ATTACHED = "attached"


class InventoryRow(NamedTuple):
    """One line of ``list``: a device, its lifecycle state, the guest holding it (domid) and
    the driver it had before it was seized."""

    device: PciDevice
    state: DeviceState
    domid: int | None
    original_driver: str | None
    #: The drivers whose devices a Xen guest is given on this host (``serving_drivers``).
    serving: frozenset[str] = frozenset({PCIBACK_DRIVER})

    @property
    def bdf(self) -> Bdf:
        return self.device.bdf

    @property
    def attachable(self) -> bool:
        return self.state is DeviceState.ATTACHED or self.device.driver in self.serving

    def as_json(self) -> dict[str, Any]:
        d = self.device
        return {
            "bdf": str(d.bdf),
            "vendor_id": f"0x{d.vendor_id:04x}",
            "device_id": f"0x{d.device_id:04x}",
            "class": f"0x{d.class_code:06x}",
            "revision": f"0x{d.revision:02x}",
            "subsystem_vendor_id": None if d.subsystem_vendor_id is None else f"0x{d.subsystem_vendor_id:04x}",
            "subsystem_device_id": None if d.subsystem_device_id is None else f"0x{d.subsystem_device_id:04x}",
            "vendor_name": d.vendor_name,
            "device_name": d.device_name,
            "class_name": d.class_name,
            "driver": d.driver,
            "state": self.state,
            "attachable": self.attachable,
            "domid": self.domid,
            "original_driver": self.original_driver,
            "iommu_group": d.iommu_group,
            "numa_node": d.numa_node,
            "driver_override": d.driver_override,
            "physfn": None if d.physfn is None else str(d.physfn),
            "virtfns": [str(v) for v in d.virtfns],
        }


def device_state(device: PciDevice, domid: int | None) -> DeviceState:
    if domid is not None:
        return DeviceState.ATTACHED
    if device.driver in SEIZE_DRIVERS:
        return DeviceState.SEIZED
    return DeviceState.HOST


def load_original_drivers(state_dir: Path | None) -> dict[Bdf, str | None]:
    """Original drivers from the seize records; empty when there are none (or no records module)."""
    if state_dir is None or not os.path.lexists(state_dir):  # never used: no records to import
        return {}
    try:
        from xenpciback_cli.engine.records import load_records
    except ImportError:
        return {}
    # A corrupt record is the warning line of cli.pending.warn_pending; the listing goes on.
    return {bdf: record.original_driver for bdf, record in load_records(state_dir, corrupt=[]).items()}


def select_devices(host: Host, patterns: Iterable[BdfPattern] = (),
                   ids: IdSelector | None = None, *, brief: bool = True,
                   override: bool = True) -> list[PciDevice]:
    """The devices lspci's ``-s PATTERN`` (any of ``patterns``) and ``-d ids`` select, sorted;
    every device when neither is given. ``brief``, ``override``: see :func:`inventory`."""
    pattern_list = list(patterns)
    if pattern_list:
        devices = []
        for bdf in host.addresses():
            if any(p.matches(bdf) for p in pattern_list):
                try:
                    devices.append(host.device(bdf))
                except DeviceNotFound:  # removed meanwhile (a VF destroyed, hot unplug)
                    continue
    else:
        devices = list(host.brief_devices(override=override) if brief else host.devices())
    if ids is not None:
        devices = [d for d in devices if ids.matches(d.vendor_id, d.device_id, d.class_code)]
    return devices


def seize_patterns(host: Host, patterns: Sequence[BdfPattern],
                   ids: IdSelector | None = None) -> list[BdfPattern]:
    """What ``hide``/``unhide`` act on, as patterns the persisted config and the kernel's hide
    list can hold: xl's forms stay as given (``03:00.*`` is persisted as a wildcard); lspci's
    wider ones (``03:``, ``:00.0``) and a ``-d`` selection become the addresses they select now.
    A selection that names no device is an error, as for an exact address."""
    from xenpciback_cli.pci.spec import BdfPattern

    if ids is None and all(p.hide_list_form for p in patterns):
        return list(patterns)
    chosen = select_devices(host, patterns, ids)
    if not chosen:
        what = " ".join([*(str(p) for p in patterns), *([f"-d {ids}"] if ids else [])])
        raise DeviceNotFound(f"no PCI device matches {what} on this host")
    return [BdfPattern(d.bdf.domain, d.bdf.bus, d.bdf.slot, d.bdf.function) for d in chosen]


def held_patterns(host: Host, state_dir: Path, patterns: Sequence[BdfPattern],
                  ids: IdSelector) -> list[BdfPattern]:
    """What ``unhide -d`` acts on: of the devices ``patterns`` and ``ids`` select, those a seize
    driver holds or a record keeps (released, awaiting ``--rebind``). No device selected is an
    error (as for hide); devices selected but none seized is nothing to do (idempotent)."""
    from xenpciback_cli.engine.records import load_records
    from xenpciback_cli.pci.spec import BdfPattern

    records = load_records(state_dir) if os.path.lexists(state_dir) else {}
    selected = select_devices(host, patterns, ids)
    if not selected:
        what = " ".join([*(str(p) for p in patterns), f"-d {ids}"])
        raise DeviceNotFound(f"no PCI device matches {what} on this host")
    chosen = [d for d in selected if d.driver in SEIZE_DRIVERS or d.bdf in records]
    return [BdfPattern(d.bdf.domain, d.bdf.bus, d.bdf.slot, d.bdf.function) for d in chosen]


def inventory(host: Host, *, state_dir: Path | None = None,
              attachments: Mapping[Bdf, int] | None = None,
              patterns: Iterable[Any] = (), class_filter: ClassFilter | None = None,
              seized_only: bool = False, brief: bool = False, override: bool = True,
              ids: IdSelector | None = None) -> list[InventoryRow]:
    """Rows for every device matching the filters, sorted by address.

    ``patterns`` are :class:`~xenpciback_cli.pci.spec.BdfPattern` (any of them may match);
    ``ids`` is lspci's ``-d VENDOR:DEVICE[:CLASS]``.
    ``brief``: the caller shows only ids, names, class, driver and IOMMU group, so a host that
    can load just those (``brief_devices``) may leave the other device attributes at defaults.
    ``override``: with ``brief``, false when ``driver_override`` is not shown either.
    """
    originals = load_original_drivers(state_dir)
    serving = serving_drivers(host.loaded_drivers())
    attachments = attachments or {}
    rows = []
    for device in select_devices(host, patterns, ids, brief=brief, override=override):
        if class_filter is not None and not class_filter.matches(device.class_code):
            continue
        domid = attachments.get(device.bdf)
        state = device_state(device, domid)
        if seized_only and state is DeviceState.HOST:
            continue
        rows.append(InventoryRow(device, state, domid, originals.get(device.bdf), serving))
    return rows

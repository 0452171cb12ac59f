"""Where exported devices appear on the guest's PCI buses: Linux pciback's two modes.

* **vpci** (``vpci.c``, the default): one virtual root bus ``0000:00`` with 32 slots. The
  functions of one host device (same domain, bus and slot) share a virtual slot and keep their
  function number; anything else takes the lowest empty slot. An SR-IOV virtual function at
  function 0 takes a slot of its own, and no function joins such a slot (a VF is not a
  multi-function device; guests would stop scanning at it).
* **passthrough** (``passthrough.c``): the guest sees the host addresses; the roots are the buses
  of the exported devices, except a device whose upstream bridge is exported too.

Sans-IO: these are tables the session and the xenbus core keep; nothing here reads the host.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from xenpciback_cli.pci.address import Bdf

#: The root bus vpci mode publishes.
VPCI_ROOT = (0, 0)
VPCI_SLOTS = 32


class Mode(Enum):
    VPCI = "vpci"
    PASSTHROUGH = "passthrough"


class BusFull(Exception):
    """No virtual slot left ("No more space on root virtual PCI bus")."""


@dataclass
class VpciBus:
    """The virtual bus of one guest: virtual slot -> {function: host address}."""

    slots: dict[int, dict[int, Bdf]] = field(default_factory=dict)
    #: Slots whose first function is an SR-IOV VF at function 0 (kept alone).
    lone: set[int] = field(default_factory=set)

    def add(self, host: Bdf, *, is_virtfn: bool = False) -> Bdf:
        """The guest address for ``host``, assigning a slot as ``__xen_pcibk_add_pci_dev``."""
        for slot, funcs in sorted(self.slots.items()):
            if host in funcs.values():
                return Bdf(0, 0, slot, host.function)
        if not is_virtfn or host.function:
            for slot, funcs in sorted(self.slots.items()):
                if slot in self.lone or not funcs:
                    continue
                first = next(iter(funcs.values()))
                if (first.domain, first.bus, first.slot) == (host.domain, host.bus, host.slot) \
                        and host.function not in funcs:
                    funcs[host.function] = host
                    return Bdf(0, 0, slot, host.function)
        for slot in range(VPCI_SLOTS):
            if not self.slots.get(slot):
                self.slots[slot] = {host.function: host}
                if is_virtfn and not host.function:
                    self.lone.add(slot)
                return Bdf(0, 0, slot, host.function)
        raise BusFull("No more space on root virtual PCI bus")

    def place(self, host: Bdf, guest: Bdf) -> bool:
        """Put ``host`` at ``guest`` as already published (a backend restarting); False if the
        address is not on this bus or is taken by another device."""
        if guest.domain or guest.bus or not 0 <= guest.slot < VPCI_SLOTS:
            return False
        funcs = self.slots.setdefault(guest.slot, {})
        if funcs.get(guest.function, host) != host:
            return False
        funcs[guest.function] = host
        return True

    def remove(self, guest: Bdf) -> Bdf | None:
        """Forget the device at guest address ``guest``; its host address, or None."""
        funcs = self.slots.get(guest.slot)
        if guest.domain or guest.bus or not funcs or guest.function not in funcs:
            return None
        host = funcs.pop(guest.function)
        if not funcs:
            del self.slots[guest.slot]
            self.lone.discard(guest.slot)
        return host

    def clear(self) -> None:
        self.slots.clear()
        self.lone.clear()

    @property
    def exported(self) -> dict[Bdf, Bdf]:
        """Host address -> guest address."""
        return {host: Bdf(0, 0, slot, func) for slot, funcs in self.slots.items()
                for func, host in funcs.items()}


def passthrough_roots(devices: dict[Bdf, tuple[Bdf, ...]]) -> list[tuple[int, int]]:
    """The (domain, bus) roots to publish for host devices -> their upstream bridges (nearest
    first): each device's bus unless one of its bridges is exported too; each root once."""
    roots: list[tuple[int, int]] = []
    for host, bridges in devices.items():
        if any(bridge in devices for bridge in bridges):
            continue
        root = (host.domain, host.bus)
        if root not in roots:
            roots.append(root)
    return roots

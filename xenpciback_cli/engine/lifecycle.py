"""A device's life on the host, as one table: host -> seized -> attached, and back.

Rules:
  1. Every move is one command, and every command that changes a device's place is a row here:
     the engine function that carries it out is named in the row.
  2. A device is *seized* when a stub driver (pciback, pci-stub, vfio-pci) holds it, *attached*
     when a guest holds it through libxl's xenstore layout; it is never attached without being
     seized (``attach --seize`` does both, in that order).
  3. Going back is the mirror: detach leaves the device seized; unhide gives it back to the host
     (its original driver, recorded at seize time), and refuses while a guest holds it.
docs/architecture.md draws its diagram from :data:`TRANSITIONS` (``tools/gen_architecture.py``).
"""

from __future__ import annotations

from enum import Enum


class Place(Enum):
    """Where a PCI function is."""

    HOST = "host"  # bound to its own driver (or none), used by dom0
    SEIZED = "seized"  # held by a stub driver, ready for a guest
    ATTACHED = "attached"  # exported to a guest over pciback/pcifront


#: (from, to, command, engine function that does it)
TRANSITIONS: tuple[tuple[Place, Place, str, str], ...] = (
    (Place.HOST, Place.SEIZED, "hide", "engine.seize.Seizer.hide"),
    (Place.HOST, Place.SEIZED, "restore (boot)", "engine.seize.Seizer.restore"),
    (Place.SEIZED, Place.ATTACHED, "attach", "engine.attach.attach"),
    (Place.HOST, Place.ATTACHED, "attach --seize", "engine.attach.attach"),
    (Place.ATTACHED, Place.SEIZED, "detach", "engine.detach.detach"),
    (Place.SEIZED, Place.HOST, "unhide", "engine.seize.Seizer.unhide"),
)

"""What the backend core needs from the world, as two small protocols.

Adapters implement them (the sandbox host, sysfs ``config`` and ``resource*``, Xen's physdev
map-pirq through libxenctrl); tests use fakes. The core never imports an adapter: it is handed
these objects, so the same core serves the sandbox and real Xen.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from xenpciback_cli.config.fields import ConfigAccessError, HardwareAccessor
from xenpciback_cli.pci.address import Bdf

__all__ = [
    "ConfigAccess",
    "ConfigAccessError",
    "EventChannel",
    "GrantMapping",
    "InterruptControl",
    "InterruptError",
    "Transport",
    "TransportError",
]


class ConfigAccess(HardwareAccessor, Protocol):
    """One device's real config space: ``read(offset, size) -> int`` and
    ``write(offset, size, value)``, both raising :class:`ConfigAccessError` (carrying the wire
    code or ``-errno`` the guest gets) when the device cannot be accessed. The overlay is the
    only caller: every guest access is filtered before it reaches this."""


class InterruptError(Exception):
    """Allocating or mapping interrupts failed; ``errno`` is the negative Linux errno
    (``-ENOSPC``, ``-ENOMEM``, ...) that ``enable_msix`` passes to the guest."""

    def __init__(self, errno: int, message: str = "") -> None:
        super().__init__(message or f"interrupt setup failed ({errno})")
        self.errno = -abs(int(errno)) or -5


class InterruptControl(Protocol):
    """The host side of MSI and MSI-X for the devices one backend serves: enable the capability
    on the host device and map the resulting interrupts into the guest's domain as PIRQs
    (Linux: ``pci_enable_msi``/``pci_enable_msix_exact`` and ``xen_pirq_from_irq``; userspace:
    ``xc_physdev_map_pirq_msi`` for the guest's domain). The core has already done the XSA-157
    checks (already enabled, memory decode, vector count) before calling."""

    def enable_msi(self, domid: int, host: Bdf) -> int:
        """Enable MSI with one vector; the guest's PIRQ (0 if none). Raises InterruptError."""
        ...

    def disable_msi(self, domid: int, host: Bdf) -> None:
        """Disable MSI and unmap its PIRQ."""
        ...

    def enable_msix(self, domid: int, host: Bdf, entries: Sequence[int]) -> Sequence[int]:
        """Enable MSI-X with exactly these table entries; one PIRQ per entry (0: none given).
        Raises InterruptError."""
        ...

    def disable_msix(self, domid: int, host: Bdf) -> None:
        """Disable MSI-X and unmap its PIRQs."""
        ...

    def legacy_pirq(self, domid: int, host: Bdf) -> int:
        """The guest's PIRQ for the device's INTx line (0 when it has none, e.g. a VF)."""
        ...

    def adopt(self, domid: int, host: Bdf, kind: str, entries: Sequence[int],
              pirqs: Sequence[int]) -> None:
        """Take over a mapping an earlier run of the backend made and that is still in place
        (``kind`` ``"msi"`` or ``"msix"``; ``entries`` empty for MSI): nothing is mapped, but a
        later ``disable_*`` unmaps exactly these PIRQs and a second enable is refused."""
        ...


class TransportError(Exception):
    """Mapping a guest's page or binding its event channel failed, or the channel broke.
    Carries a one-line reason; the event loop closes that one guest and never crashes."""


class EventChannel(Protocol):
    """One bound interdomain event channel, the backend's end."""

    def fileno(self) -> int:
        """Readable when the peer notified."""
        ...

    def drain(self) -> int:
        """Consume pending notifications (they may be coalesced); return how many. The channel
        may stay quiet (masked) until :meth:`rearm`."""
        ...

    def rearm(self) -> None:
        """Let the peer's notifications wake the backend again after a :meth:`drain` (one that
        came in between is delivered then, not lost)."""
        ...

    def notify(self) -> None:
        """Notify the peer (a peer that has gone away is not an error)."""
        ...

    def close(self) -> None: ...


class GrantMapping(Protocol):
    """One mapped 4096-byte page a guest granted."""

    page: memoryview

    def close(self) -> None: ...


class Transport(Protocol):
    """How one backend process reaches its guests: the sandbox's files and datagram sockets,
    or real Xen's gntdev and evtchn. Both calls raise :class:`TransportError`."""

    def map_grant(self, domid: int, ref: int) -> GrantMapping: ...

    def bind_interdomain(self, domid: int, remote_port: int) -> EventChannel: ...

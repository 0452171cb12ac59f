"""The guest's side of the sandbox: a simulated pcifront, as a sans-IO state machine.

In the sandbox nobody plays the guest's pcifront, yet attach and detach are only right if the
handshake they start finishes with real peers. :class:`SimFrontend` is that peer, written from what
Linux's ``xen-pcifront.c`` does: publish ``pci-op-ref``/``event-channel``/``magic``
(-> Initialised), scan roots when the backend is Connected (-> Connected), drop ``state-K=5``
devices when the backend is Reconfiguring (-> Reconfiguring), rescan when it is Reconfigured
(-> Connected). The backend's side is not simulated: it is the backend's own core,
:class:`~xenpciback_cli.backend.xenbus.XenbusBackend`, which the sandbox's kernel pciback runs.

Like the kernel, it is fed a :class:`~xenpciback_cli.backend.xenbus.Snapshot` (both directories as
read), reacts to *changes* of the other end's state, and returns the operations to write.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from xenpciback_cli.backend.xenbus import XEN_PCI_MAGIC, Snapshot
from xenpciback_cli.pci.address import Bdf
from xenpciback_cli.toolstack.libxl_layout import BackendView, frontend_path
from xenpciback_cli.toolstack.plan import Op, Write
from xenpciback_cli.toolstack.xenbus import XenbusState

S = XenbusState


@dataclass
class SimFrontend:
    """pcifront in guest ``domid``; ``devices`` is what the guest's PCI core currently sees."""

    domid: int
    devices: set[Bdf] = field(default_factory=set)
    last_backend: XenbusState | None = None
    grant_ref: int = 8
    port: int = 8

    @property
    def path(self) -> str:
        return frontend_path(self.domid)

    def _set_state(self, state: XenbusState) -> Write:
        return Write(f"{self.path}/state", str(int(state)))

    def _scan(self, snap: Snapshot) -> None:
        """Rescan the root buses: the guest finds every exported function (state-i = 3)."""
        view = BackendView(self.domid, snap.backend)
        self.devices = {e.vdev for e in view.entries
                        if e.state == S.INITIALISED and e.vdev is not None}

    def step(self, snap: Snapshot) -> list[Op]:
        if not snap.frontend:
            self.devices.clear()
            self.last_backend = None
            return []
        own = snap.frontend_state
        be = snap.backend_state
        be_changed = be != self.last_backend
        self.last_backend = be
        if own == S.INITIALISING and "magic" not in snap.frontend:  # probe: publish, then 3
            return [Write(f"{self.path}/pci-op-ref", str(self.grant_ref)),
                    Write(f"{self.path}/event-channel", str(self.port)),
                    Write(f"{self.path}/magic", XEN_PCI_MAGIC),
                    self._set_state(S.INITIALISED)]
        if not be_changed and not (own == S.INITIALISED and be == S.CONNECTED):
            return []
        if be == S.CONNECTED and own == S.INITIALISED:
            self._scan(snap)
            return [self._set_state(S.CONNECTED)]
        if be == S.RECONFIGURING and own in (S.CONNECTED, S.INITIALISED):
            view = BackendView(self.domid, snap.backend)
            for entry in view.entries:
                if entry.state == S.CLOSING and entry.vdev is not None:
                    self.devices.discard(entry.vdev)
            return [self._set_state(S.RECONFIGURING)]
        if be == S.RECONFIGURED and own == S.RECONFIGURING:
            self._scan(snap)
            return [self._set_state(S.CONNECTED)]
        if be in (S.CLOSING, S.CLOSED) and own not in (S.CLOSING, S.CLOSED):
            self.devices.clear()
            return [self._set_state(S.CLOSED)]
        return []

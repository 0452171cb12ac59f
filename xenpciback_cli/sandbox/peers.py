"""Simulated PV PCI peers: Linux pciback's xenbus side and pcifront, as sans-IO state machines.

In the sandbox nobody plays the kernel backend or the guest's pcifront, yet attach and detach
are only right if the handshake they start finishes with real peers. These two classes are those
peers, written from ``pciback.md`` §2.5-§2.7 (what ``xenbus.c`` and ``xen-pcifront.c`` do):

* :class:`SimBackend` - probe (Initialising -> InitWait), setup (export every ``dev-i``, write
  ``vdev-i``/``state-i=3``, publish root ``0000:00``, -> Initialised), attach when the frontend
  is Initialised and its ``magic`` is ``7`` (-> Connected), the Reconfiguring round (export
  ``state-i=1``, release ``state-i=5``, -> Reconfigured, -> Connected when the frontend is),
  and the Initialised-mode pick-up of devices added before the guest connected.
* :class:`SimFrontend` - publish ``pci-op-ref``/``event-channel``/``magic`` (-> Initialised),
  scan roots when the backend is Connected (-> Connected), drop ``state-K=5`` devices when the
  backend is Reconfiguring (-> Reconfiguring), rescan when it is Reconfigured (-> Connected).

Each is fed a :class:`Snapshot` (both directories as read) and returns the operations to write,
nothing else. Like the kernel, each reacts to *changes* of the other end's state (a watch on the
other end fires on writes, not on levels), and to its own directory being written. Values are
parsed defensively: both peers face a party that may write junk.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from xenpciback_cli.pci.address import Bdf
from xenpciback_cli.toolstack.libxl_layout import (
    DeviceEntry,
    BackendView,
    backend_path,
    format_vdev,
    frontend_path,
    parse_dev,
)
from xenpciback_cli.toolstack.plan import Op, Write
from xenpciback_cli.toolstack.xenbus import XenbusState, parse_state
from xenpciback_cli.untrusted import decimal

S = XenbusState
XEN_PCI_MAGIC = "7"
#: The root bus pciback's vpci mode publishes (one virtual bus per guest).
VPCI_ROOT = "0000:00"


@dataclass(frozen=True)
class Snapshot:
    """Both ends of one PV PCI device, as read: relative key -> value."""

    backend: Mapping[str, str]
    frontend: Mapping[str, str]

    @property
    def backend_state(self) -> XenbusState | None:
        return parse_state(self.backend.get("state"))

    @property
    def frontend_state(self) -> XenbusState | None:
        return parse_state(self.frontend.get("state"))


def _unsigned(text: str | None) -> bool:
    value = decimal(text.strip(), max_digits=10) if text is not None else None
    return value is not None and value < 2**32


@dataclass
class SimBackend:
    """pciback (vpci mode) serving one guest; keeps the guest's virtual bus in ``slots``."""

    domid: int
    #: virtual slot -> {function: host address}
    slots: dict[int, dict[int, Bdf]] = field(default_factory=dict)
    last_frontend: XenbusState | None = None
    errors: list[str] = field(default_factory=list)

    @property
    def path(self) -> str:
        return backend_path(self.domid)

    @property
    def exported(self) -> dict[Bdf, Bdf]:
        """Host address -> guest address of every exported device."""
        return {host: Bdf(0, 0, slot, func) for slot, funcs in self.slots.items()
                for func, host in funcs.items()}

    def _set_state(self, state: XenbusState) -> Write:
        return Write(f"{self.path}/state", str(int(state)))

    def _fatal(self, errno_value: int, message: str) -> list[Op]:
        """``xenbus_dev_fatal``: the error node under dom0's ``error/`` tree, then Closing."""
        self.errors.append(message)
        node = f"/local/domain/0/error/backend/pci/{self.domid}/0/error"
        return [Write(node, f"{errno_value} {message}"), self._set_state(S.CLOSING)]

    def _add(self, host: Bdf) -> Bdf:
        """``__xen_pcibk_add_pci_dev`` (vpci): functions of one host slot share a virtual slot,
        functions keep their number; otherwise the first free virtual slot."""
        for slot, funcs in sorted(self.slots.items()):
            some = next(iter(funcs.values()))
            if (some.domain, some.bus, some.slot) == (host.domain, host.bus, host.slot) \
                    and host.function not in funcs:
                funcs[host.function] = host
                return Bdf(0, 0, slot, host.function)
        for slot in range(32):
            if not self.slots.get(slot):
                self.slots[slot] = {host.function: host}
                return Bdf(0, 0, slot, host.function)
        raise OverflowError("no free virtual slot")

    def _remove(self, guest: Bdf) -> bool:
        funcs = self.slots.get(guest.slot)
        if guest.domain or guest.bus or not funcs or guest.function not in funcs:
            return False
        del funcs[guest.function]
        if not funcs:
            del self.slots[guest.slot]
        return True

    def _export(self, index: int, dev_text: str | None, roots: Mapping[str, str]) -> list[Op]:
        host = parse_dev(dev_text)
        if host is None:
            return self._fatal(22, f"Error reading or parsing dev-{index}")
        if host in self.exported:
            guest = self.exported[host]
        else:
            try:
                guest = self._add(host)
            except OverflowError:
                return self._fatal(28, f"no free virtual slot for {host}")
        ops: list[Op] = [Write(f"{self.path}/vdev-{index}", format_vdev(guest)),
                         Write(f"{self.path}/state-{index}", str(int(S.INITIALISED)))]
        return ops + self._publish_root(roots)

    def _publish_root(self, values: Mapping[str, str]) -> list[Op]:
        """``xen_pcibk_publish_pci_root``: add ``root-<n>`` unless the bus is already listed."""
        text = values.get("root_num", "0")
        count = decimal(text, max_digits=3) or 0
        for k in range(count):
            if values.get(f"root-{k}", "").strip().lower() == VPCI_ROOT:
                return []
        return [Write(f"{self.path}/root-{count}", VPCI_ROOT),
                Write(f"{self.path}/root_num", str(count + 1))]

    def _export_entry(self, entry: DeviceEntry, roots: dict[str, str]) -> list[Op]:
        """Export one ``dev-i``; ``roots`` tracks the root nodes this round has written so far,
        so a second device on the same bus does not publish its root twice."""
        step = self._export(entry.index, entry.raw.get("dev"), roots)
        for op in step:
            if isinstance(op, Write) and op.path.startswith(self.path + "/root"):
                roots[op.path.rsplit("/", 1)[1]] = op.value
        return step

    def _reconfigure(self, view: BackendView, values: Mapping[str, str]) -> list[Op]:
        ops: list[Op] = []
        roots = dict(values)
        for entry in view.entries:
            if entry.state == S.INITIALISING:
                ops += self._export_entry(entry, roots)
                if self.errors:
                    return ops
            elif entry.state == S.CLOSING:
                guest = entry.vdev
                if guest is None:
                    return ops + self._fatal(22, f"Error reading or parsing vdev-{entry.index}")
                self._remove(guest)  # already gone is fine: the round may be replayed
        return ops

    def step(self, snap: Snapshot) -> list[Op]:
        values = snap.backend
        if not values:
            self.slots.clear()
            self.last_frontend = None
            return []
        view = BackendView(self.domid, values)
        own = view.state
        fe = snap.frontend_state
        fe_changed = fe != self.last_frontend
        self.last_frontend = fe
        if own == S.INITIALISING:  # a new backend directory: probe
            self.slots.clear()
            return [self._set_state(S.INIT_WAIT)]
        if own == S.INIT_WAIT:  # setup: every dev-i, state-i not consulted
            ops: list[Op] = []
            roots = dict(values)
            for entry in view.entries:
                ops += self._export_entry(entry, roots)
                if self.errors:
                    return ops
            if not view.entries:
                return self._fatal(22, "Error reading number of devices")
            ops += self._publish_root(roots)
            return ops + [self._set_state(S.INITIALISED)]
        if own == S.INITIALISED:
            ops = self._reconfigure(view, values)
            if ops:
                return ops
            if fe == S.INITIALISED:
                return self._connect(snap)
            return []
        if not fe_changed:
            return []
        if fe == S.RECONFIGURING and own == S.RECONFIGURING:
            return self._reconfigure(view, values) + [self._set_state(S.RECONFIGURED)]
        if fe == S.CONNECTED and own != S.CONNECTED and own in (S.RECONFIGURED, S.INITIALISED):
            return [self._set_state(S.CONNECTED)]
        if fe == S.CLOSING and own not in (S.CLOSING, S.CLOSED):
            return [self._set_state(S.CLOSING)]
        if fe == S.CLOSED and own != S.CLOSED:
            return [self._set_state(S.CLOSED)]
        return []

    def _connect(self, snap: Snapshot) -> list[Op]:
        """``xen_pcibk_attach``: needs the frontend's ring reference, port and magic."""
        fe = snap.frontend
        if not (_unsigned(fe.get("pci-op-ref")) and _unsigned(fe.get("event-channel"))) \
                or "magic" not in fe:
            return self._fatal(22, "Error reading configuration from frontend")
        if fe["magic"] != XEN_PCI_MAGIC:
            return self._fatal(14, f"version mismatch ({fe['magic']!r}/{XEN_PCI_MAGIC})")
        return [self._set_state(S.CONNECTED)]


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

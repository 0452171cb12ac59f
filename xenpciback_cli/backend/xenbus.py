"""pciback's xenbus side: the backend's state machine for one guest, sans-IO.

This is the xenbus logic of the backend (what Linux's ``drivers/xen/xen-pciback/xenbus.c`` does
in vpci mode): fed a :class:`Snapshot` of the backend and frontend directories as read, it answers
with the xenstore operations to write, and does nothing else. The sandbox's simulated kernel
pciback runs it (``sandbox/guest.py``); ``serve`` will run the same core against the real xenstore.

Rules (Linux pciback xenbus.c; Xen's ``io/pciif.h`` for the magic):
  1. React to *changes* of the frontend's state (a watch fires on writes, not on levels), and to
     writes in our own directory (the toolstack adding ``dev-i`` or opening a round).
  2. Values are untrusted - the guest writes the frontend directory: parse, never raise; a value
     that cannot be used is ``xenbus_dev_fatal`` (an ``error`` node, then Closing).
  3. Devices of one host slot share one virtual slot and keep their function number; otherwise
     the first free virtual slot (``__xen_pcibk_add_pci_dev``; ``topology.VpciBus``, shared with
     the op dispatcher's ``GuestSession``).
  4. The transitions are :data:`TRANSITIONS`, one row per move, in the order :meth:`step` tries
     them; docs/architecture.md draws its diagram from that table.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from xenpciback_cli.backend.topology import BusFull, VpciBus
from xenpciback_cli.pci.address import Bdf
from xenpciback_cli.toolstack.libxl_layout import (
    BackendView,
    DeviceEntry,
    backend_path,
    format_vdev,
    parse_dev,
)
from xenpciback_cli.toolstack.plan import Op, Write
from xenpciback_cli.toolstack.xenbus import XenbusState, parse_state
from xenpciback_cli.untrusted import decimal

S = XenbusState
XEN_PCI_MAGIC = "7"
#: The root bus pciback's vpci mode publishes (one virtual bus per guest).
VPCI_ROOT = "0000:00"


#: (own state, what it waits for, what it does, own state after). ``None`` after: unchanged.
TRANSITIONS: tuple[tuple[XenbusState, str, str, XenbusState | None], ...] = (
    (S.INITIALISING, "its directory exists", "probe", S.INIT_WAIT),
    (S.INIT_WAIT, "the toolstack's dev-i", "export every dev-i (vdev-i, state-i=3), publish root",
     S.INITIALISED),
    (S.INITIALISED, "a new dev-i (state-i=1)", "export it (pick-up before the guest connects)", None),
    (S.INITIALISED, "frontend Initialised, magic 7", "map the ring, bind the event channel",
     S.CONNECTED),
    (S.RECONFIGURING, "frontend Reconfiguring", "export state-i=1, release state-i=5",
     S.RECONFIGURED),
    (S.RECONFIGURED, "frontend Connected", "the round is over", S.CONNECTED),
    (S.CONNECTED, "frontend Closing", "close", S.CLOSING),
    (S.CONNECTED, "frontend Closed", "close", S.CLOSED),
)


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
class XenbusBackend:
    """pciback (vpci mode) serving one guest; keeps the guest's virtual bus in ``slots``."""

    domid: int
    bus: VpciBus = field(default_factory=VpciBus)
    last_frontend: XenbusState | None = None
    errors: list[str] = field(default_factory=list)

    @property
    def path(self) -> str:
        return backend_path(self.domid)

    @property
    def slots(self) -> dict[int, dict[int, Bdf]]:
        """Virtual slot -> {function: host address}."""
        return self.bus.slots

    @property
    def exported(self) -> dict[Bdf, Bdf]:
        """Host address -> guest address of every exported device."""
        return self.bus.exported

    def _set_state(self, state: XenbusState) -> Write:
        return Write(f"{self.path}/state", str(int(state)))

    def _fatal(self, errno_value: int, message: str) -> list[Op]:
        """``xenbus_dev_fatal``: the error node under dom0's ``error/`` tree, then Closing."""
        self.errors.append(message)
        node = f"/local/domain/0/error/backend/pci/{self.domid}/0/error"
        return [Write(node, f"{errno_value} {message}"), self._set_state(S.CLOSING)]

    def _add(self, host: Bdf) -> Bdf:
        return self.bus.add(host)

    def _remove(self, guest: Bdf) -> bool:
        return self.bus.remove(guest) is not None

    def _export(self, index: int, dev_text: str | None, roots: Mapping[str, str]) -> list[Op]:
        host = parse_dev(dev_text)
        if host is None:
            return self._fatal(22, f"Error reading or parsing dev-{index}")
        if host in self.exported:
            guest = self.exported[host]
        else:
            try:
                guest = self._add(host)
            except BusFull:
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
            self.bus.clear()
            self.last_frontend = None
            return []
        view = BackendView(self.domid, values)
        own = view.state
        fe = snap.frontend_state
        fe_changed = fe != self.last_frontend
        self.last_frontend = fe
        if own == S.INITIALISING:  # a new backend directory: probe
            self.bus.clear()
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

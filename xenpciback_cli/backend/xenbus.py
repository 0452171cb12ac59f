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
from typing import NamedTuple

from xenpciback_cli.backend.topology import BusFull, Mode, VpciBus
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
    (S.RECONFIGURING, "frontend Reconfiguring", "export state-i=1 (-> 3), release state-i=5 (-> 6)",
     S.RECONFIGURED),
    (S.RECONFIGURED, "frontend Connected", "the round is over", S.CONNECTED),
    (S.CONNECTED, "frontend Closing", "close", S.CLOSING),
    (S.CONNECTED, "frontend Closed", "close", S.CLOSED),
)


#: The node a userspace backend (``serve``) writes in a backend directory it claims; only dom0
#: writes there. Another backend (the sandbox's simulated kernel pciback) leaves such a directory
#: alone, and ``serve`` finds its guests again by it after a restart.
OWNER_NODE = "backend-owner"
SERVE_OWNER = "xen-pciback-serve"


# -- what a backend does besides writing xenstore (``local_actions=True``) ----------------------
class Connect(NamedTuple):
    """Map the frontend's page ``ref`` and bind its event channel ``port`` (before Connected)."""

    ref: int
    port: int


class Export(NamedTuple):
    """Give the device ``host`` to the guest at ``guest`` (``dev-<entry>``)."""

    entry: int
    host: Bdf
    guest: Bdf


class Release(NamedTuple):
    """Take back the device the guest has at ``guest``."""

    guest: Bdf


class Disconnect(NamedTuple):
    """Unmap the page and unbind the channel (the guest is closing or gone)."""


LocalAction = Connect | Export | Release | Disconnect
Action = Op | LocalAction
LOCAL_ACTIONS = (Connect, Export, Release, Disconnect)


def xenstore_ops(actions: list[Action]) -> list[Op]:
    """The xenstore writes among ``actions`` (what a backend with nothing to map carries out)."""
    return [a for a in actions if not isinstance(a, LOCAL_ACTIONS)]


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


def _unsigned(text: str | None) -> int | None:
    """A uint32 node value (surrounding whitespace allowed), else None."""
    value = decimal(text.strip(), max_digits=10) if text is not None else None
    return value if value is not None and value < 2**32 else None


@dataclass
class XenbusBackend:
    """pciback (vpci mode) serving one guest; keeps the guest's virtual bus in ``slots``."""

    domid: int
    bus: VpciBus = field(default_factory=VpciBus)
    last_frontend: XenbusState | None = None
    errors: list[str] = field(default_factory=list)
    #: Also answer :data:`LocalAction` s (map, bind, export, release) for a backend that carries
    #: them out (``serve``); the simulated kernel pciback only writes xenstore.
    local_actions: bool = False
    #: Where devices appear: vpci (one virtual root bus) or passthrough (host addresses).
    mode: Mode = Mode.VPCI
    #: This backend's :data:`OWNER_NODE` value; a directory another owner claimed is left alone.
    owner: str | None = None
    #: Passthrough mode: guest address (= host address) -> host address.
    passthrough: dict[Bdf, Bdf] = field(default_factory=dict)

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
        if self.mode is Mode.PASSTHROUGH:
            return dict(self.passthrough)
        return self.bus.exported

    def _set_state(self, state: XenbusState) -> Write:
        return Write(f"{self.path}/state", str(int(state)))

    def fatal(self, errno_value: int, message: str) -> list[Action]:
        """``xenbus_dev_fatal`` for a failure outside the core (mapping, binding, exporting)."""
        return list(self._fatal(errno_value, message)) + self._local(Disconnect())

    def _local(self, action: LocalAction) -> list[Action]:
        return [action] if self.local_actions else []

    def _fatal(self, errno_value: int, message: str) -> list[Op]:
        """``xenbus_dev_fatal``: the error node under dom0's ``error/`` tree, then Closing."""
        self.errors.append(message)
        node = f"/local/domain/0/error/backend/pci/{self.domid}/0/error"
        return [Write(node, f"{errno_value} {message}"), self._set_state(S.CLOSING)]

    def _add(self, host: Bdf) -> Bdf:
        if self.mode is Mode.PASSTHROUGH:
            return host
        return self.bus.add(host)

    def _root_of(self, guest: Bdf) -> str:
        if self.mode is Mode.PASSTHROUGH:
            return f"{guest.domain:04x}:{guest.bus:02x}"
        return VPCI_ROOT

    def _remove(self, guest: Bdf) -> bool:
        if self.mode is Mode.PASSTHROUGH:
            return False
        return self.bus.remove(guest) is not None

    def _export(self, index: int, dev_text: str | None, roots: Mapping[str, str]) -> list[Action]:
        host = parse_dev(dev_text)
        if host is None:
            return list(self._fatal(22, f"Error reading or parsing dev-{index}"))
        if host in self.exported:
            guest = self.exported[host]
        elif self.mode is Mode.PASSTHROUGH:
            guest = host
            self.passthrough[host] = host
        else:
            try:
                guest = self._add(host)
            except BusFull:
                return list(self._fatal(28, f"no free virtual slot for {host}"))
        ops: list[Action] = self._local(Export(index, host, guest))
        ops += [Write(f"{self.path}/vdev-{index}", format_vdev(guest)),
                Write(f"{self.path}/state-{index}", str(int(S.INITIALISED)))]
        return ops + self._publish_root(roots, self._root_of(guest))

    def _publish_root(self, values: Mapping[str, str], root: str = VPCI_ROOT) -> list[Action]:
        """``xen_pcibk_publish_pci_root``: add ``root-<n>`` unless the bus is already listed."""
        text = values.get("root_num", "0")
        count = decimal(text, max_digits=3) or 0
        for k in range(count):
            if values.get(f"root-{k}", "").strip().lower() == root:
                return []
        return [Write(f"{self.path}/root-{count}", root),
                Write(f"{self.path}/root_num", str(count + 1))]

    def _export_entry(self, entry: DeviceEntry, roots: dict[str, str]) -> list[Action]:
        """Export one ``dev-i``; ``roots`` tracks the root nodes this round has written so far,
        so a second device on the same bus does not publish its root twice."""
        step = self._export(entry.index, entry.raw.get("dev"), roots)
        for op in step:
            if isinstance(op, Write) and op.path.startswith(self.path + "/root"):
                roots[op.path.rsplit("/", 1)[1]] = op.value
        return step

    def _reconfigure(self, view: BackendView, values: Mapping[str, str]) -> list[Action]:
        ops: list[Action] = []
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
                if self._remove(guest) or self.passthrough.pop(guest, None) is not None:
                    ops += self._local(Release(guest))
                # already gone is fine: the round may be replayed; either way the entry is
                # Closed now (xen_pcibk_reconfigure writes state-i = 6 after the removal)
                ops.append(Write(f"{self.path}/state-{entry.index}", str(int(S.CLOSED))))
        return ops

    def claimed_by_other(self, values: Mapping[str, str]) -> bool:
        """Another backend owns this directory (its :data:`OWNER_NODE` names someone else)."""
        marker = values.get(OWNER_NODE)
        return marker is not None and marker != self.owner

    def resume(self, snap: Snapshot) -> list[Action]:
        """A backend restarted with the guest already set up: rebuild the virtual bus from the
        published ``vdev-i`` (state-i = 3) and answer the actions that bring the guest back -
        export each device where the guest already sees it, then map and bind if Connected.
        Nothing is written: the guest sees no change. Only with ``local_actions``."""
        values = snap.backend
        own = parse_state(values.get("state"))
        if not self.local_actions or own is None or own in (S.INITIALISING, S.INIT_WAIT):
            return []
        self.last_frontend = snap.frontend_state
        if own in (S.CLOSING, S.CLOSED):
            return []
        view = BackendView(self.domid, values)
        actions: list[Action] = []
        for entry in view.entries:
            host, guest = parse_dev(entry.raw.get("dev")), entry.vdev
            if entry.state != S.INITIALISED or host is None or guest is None:
                continue
            if self.mode is Mode.PASSTHROUGH:
                self.passthrough[guest] = host
            elif not self.bus.place(host, guest):
                continue
            actions.append(Export(entry.index, host, guest))
        if own in (S.CONNECTED, S.RECONFIGURING, S.RECONFIGURED):
            connect = self._ring(snap)
            if connect is None:
                return actions + self.fatal(22, "Error reading configuration from frontend")
            actions.append(connect)
        return actions

    def _ring(self, snap: Snapshot) -> Connect | None:
        fe = snap.frontend
        ref, port = _unsigned(fe.get("pci-op-ref")), _unsigned(fe.get("event-channel"))
        if ref is None or port is None:
            return None
        return Connect(ref, port)

    def step(self, snap: Snapshot) -> list[Action]:
        values = snap.backend
        if not values:
            had = bool(self.bus.slots) or bool(self.passthrough)
            self.bus.clear()
            self.passthrough.clear()
            self.last_frontend = None
            return self._local(Disconnect()) if had else []
        if self.claimed_by_other(values):
            return []
        view = BackendView(self.domid, values)
        own = view.state
        fe = snap.frontend_state
        fe_changed = fe != self.last_frontend
        self.last_frontend = fe
        if own == S.INITIALISING:  # a new backend directory: probe
            self.bus.clear()
            self.passthrough.clear()
            return [self._set_state(S.INIT_WAIT)]
        if own == S.INIT_WAIT:  # setup: every dev-i, state-i not consulted
            ops: list[Action] = []
            roots = dict(values)
            for entry in view.entries:
                ops += self._export_entry(entry, roots)
                if self.errors:
                    return ops
            if not view.entries:
                return list(self._fatal(22, "Error reading number of devices"))
            if self.mode is Mode.VPCI:
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
            return self._local(Disconnect()) + [self._set_state(S.CLOSING)]
        if fe == S.CLOSED and own != S.CLOSED:
            return self._local(Disconnect()) + [self._set_state(S.CLOSED)]
        return []

    def _connect(self, snap: Snapshot) -> list[Action]:
        """``xen_pcibk_attach``: needs the frontend's ring reference, port and magic; then the
        ring is mapped and the channel bound (:class:`Connect`) before Connected is written."""
        fe = snap.frontend
        connect = self._ring(snap)
        if connect is None or "magic" not in fe:
            return list(self._fatal(22, "Error reading configuration from frontend"))
        if fe["magic"] != XEN_PCI_MAGIC:
            return list(self._fatal(14, f"version mismatch ({fe['magic']!r}/{XEN_PCI_MAGIC})"))
        return self._local(connect) + [self._set_state(S.CONNECTED)]

"""``serve``: the userspace pciback's event loop - xenstore, every guest's channel, one process.

The loop owns the I/O; the decisions are the sans-IO cores': :class:`XenbusBackend` (the xenbus
handshake, one per guest, the same machine the sandbox's simulated kernel pciback runs) answers
xenstore writes and local actions (map, bind, export, release), which :class:`Server` carries
out; :class:`GuestSession` answers the ops on the guest's page. Adapters come from ``app.py``: a
:class:`Transport` (page and channel), an :class:`InterruptControl` and a :class:`DeviceSource`.

Rules:
  1. Which guests: every ``/local/domain/0/backend/pci/D/0`` no other backend serves. ``serve``
     claims a new directory (state 1, Initialising) by writing the dom0-only node
     ``backend-owner = xen-pciback-serve`` in one transaction with a re-read of the state; a
     directory past Initialising without that node was probed by another backend (the kernel's
     pciback, or a sandbox domain's simulated one) and is left alone, and so is any domain the
     ``others_serve`` predicate names (a sandbox domain with its simulated guest running).
     ``--domid`` limits the set further. A claimed directory is resumed after a restart.
  2. Fairness: per wake-up each guest whose channel fired gets at most one op (the protocol has
     one op in flight per guest anyway); a guest notifying far more often than it has ops
     (XSA-332) is taken off the selector for a while, logged once.
  3. Isolation: anything one guest causes - a bad page, a vanished socket, garbage xenstore
     values, an adapter failure - ends that guest (``error`` node, Closing) and only it.
  4. SIGTERM: the op in progress is finished (ops are handled synchronously), then the loop
     returns; xenstore is left as it is so a restarted ``serve`` resumes every guest.
  5. MSI/MSI-X survive a restart: every change a guest's op makes (enabled: kind, table
     entries, the PIRQs the adapter mapped; disabled or released: nothing) is written to
     ``RUN/interrupts/D-BDF.json`` (the state store's rules: 0600, no symlink, atomic) before
     the guest sees the answer. A restarted ``serve`` exporting the device again reads it back,
     checks it against the device's enable bit (the hardware wins: a record the device
     contradicts is dropped, one log line) and hands it to the session and the adapter
     (``InterruptControl.adopt``), so the guest's next disable unmaps those PIRQs once.
     The guest's COMMAND view (the overlay's virtual bits, not in the hardware) is kept the
     same way in ``RUN/views/D-BDF.json`` and taken back only when resuming after a restart.
  6. AER (``backend/aer.py``): a host error on an exported device (:meth:`Server.raise_aer`; in a
     sandbox through the control socket, ``sandbox aer``; on a real host from the kernel's
     error-recovery uevents, an :class:`AerFeed`, after the host's own recovery) runs the host's recovery sequence for
     that device, each step relayed to the guest through ``aer_op``; the loop polls the answer
     on every round and wakes up at the relay's deadline, so a guest that never answers costs
     the others nothing. One recovery per guest at a time, later ones queue (bounded).
"""

from __future__ import annotations

import errno
import functools
import json
import os
import selectors
import socket
import time
from collections import deque
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from xenpciback_cli.backend.aer import (
    AER_FAIL,
    AER_STATE_NODE,
    DEFAULT_TIMEOUT,
    SEVERITIES,
    AerDecision,
    AerRelay,
    AerRequest,
    AerStep,
    next_step,
    result_name,
)
from xenpciback_cli.backend.ports import (
    ConfigAccess,
    EventChannel,
    GrantMapping,
    InterruptControl,
    Transport,
    TransportError,
)
from xenpciback_cli.backend.session import ExportedDevice, GuestSession
from xenpciback_cli.backend.topology import Mode
from xenpciback_cli.backend.xenbus import (
    OWNER_NODE,
    SERVE_OWNER,
    Action,
    Connect,
    Disconnect,
    Export,
    Release,
    Snapshot,
    XenbusBackend,
    xenstore_ops,
)
from xenpciback_cli.engine import statestore
from xenpciback_cli.engine.busypoll import AUTO, PollWindow
from xenpciback_cli.engine.statestore import StateStore
from xenpciback_cli.engine.trace import TraceWriter, device_snapshot
from xenpciback_cli.errors import InputError, XenPcibackError
from xenpciback_cli.pci.address import Bdf
from xenpciback_cli.pci.device import PciDevice
from xenpciback_cli.pv.abi import PciOp
from xenpciback_cli.pv.trace import TraceRecord
from xenpciback_cli.toolstack.libxl_layout import backend_path, frontend_path
from xenpciback_cli.toolstack.xenbus import XenbusState
from xenpciback_cli.toolstack.xsexec import apply_ops, list_or_empty, read_dir_values
from xenpciback_cli.untrusted import decimal

BACKEND_ROOT = "/local/domain/0/backend/pci"
TOKEN = "xen-pciback-serve"
ACTIVE = 1  # _XEN_PCIF_active
_NOT_ACTIVE = 0xFF & ~ACTIVE
_CONF_READ = int(PciOp.CONF_READ)
_CONF_WRITE = int(PciOp.CONF_WRITE)
MAX_STEPS = 32
#: XSA-332: more than this many notifications in a window, beyond FLOOD_RATIO per op answered,
#: and the guest's channel is left alone for THROTTLE seconds.
FLOOD_WINDOW = 1.0
FLOOD_MIN = 2000
FLOOD_RATIO = 8
THROTTLE = 0.2
#: Ops answered by polling after one wake-up, at most, before the other guests get their turn.
MAX_POLLED = 16
#: AER recoveries waiting per guest beyond the one in flight; more are refused.
MAX_AER_QUEUE = 8
#: A control-socket request line is at most this long.
MAX_REQUEST = 4096
#: The ops that change a device's MSI/MSI-X state (enable/disable MSI, MSI-X).
INTERRUPT_OPS = frozenset({int(PciOp.ENABLE_MSI), int(PciOp.DISABLE_MSI),
                           int(PciOp.ENABLE_MSIX), int(PciOp.DISABLE_MSIX)})
InterruptState = tuple[str, tuple[int, ...], tuple[int, ...]]


class DeviceSource(Protocol):
    """A device's config space and what the host knows about it (resources, ids)."""

    def config(self, bdf: Bdf) -> ConfigAccess: ...

    def device(self, bdf: Bdf) -> PciDevice | None: ...


class AerFeed(Protocol):
    """The host's AER events (``host/uevents.py`` on a real host): a file descriptor for the
    selector, and the ``(device, severity)`` pairs waiting among the exported devices."""

    def fileno(self) -> int: ...

    def poll(self, exported: Collection[Bdf]) -> list[tuple[Bdf, str]]: ...

    def close(self) -> None: ...


SettingsLoader = Callable[[Bdf], dict[str, object]]
Reply = Callable[[dict[str, Any]], None]


@dataclass(eq=False)
class Recovery:
    """The host's recovery of one device after one AER error: its steps so far, and who asked
    (``reply`` gets the summary when it is over)."""

    host: Bdf
    error: str
    request: AerRequest | None
    reply: Reply | None = None
    steps: list[dict[str, Any]] = field(default_factory=list)
    aerfail: bool = False

    def summary(self, domid: int | None, recovered: bool) -> dict[str, Any]:
        return {"bdf": str(self.host), "error": self.error, "domid": domid,
                "steps": self.steps, "aerfail": self.aerfail, "recovered": recovered}


@dataclass(eq=False)
class Guest:
    domid: int
    xenbus: XenbusBackend
    session: GuestSession
    mapping: GrantMapping | None = None
    channel: EventChannel | None = None
    configs: dict[Bdf, ConfigAccess] = field(default_factory=dict)
    physfn_configs: dict[Bdf, ConfigAccess] = field(default_factory=dict)
    pending: bool = False
    closed: str | None = None
    errors: int = 0
    notifications: int = 0
    window_start: float = 0.0
    window_notes: int = 0
    window_ops: int = 0
    throttled_until: float = 0.0
    throttle_logged: bool = False
    denied_logged: set[tuple[Bdf, int]] = field(default_factory=set)
    writes_denied: int = 0
    last: TraceRecord | None = None
    aer: AerRelay | None = None
    recoveries: deque[Recovery] = field(default_factory=deque)
    aer_relayed: int = 0
    aer_failed: int = 0
    #: The MSI/MSI-X state last recorded per device (what the run dir's record says).
    recorded: dict[Bdf, InterruptState | None] = field(default_factory=dict)
    #: The guest's COMMAND view last recorded per device (what ``RUN/views`` says).
    views: dict[Bdf, tuple[int, bool] | None] = field(default_factory=dict)
    #: True while the exports of a restart are carried out (a recorded view is taken back).
    resuming: bool = False
    #: How long to watch the page for the guest's next op after an answer (engine/busypoll.py).
    poll: PollWindow = field(default_factory=PollWindow)
    #: Ops answered by polling the page, with no wake-up (the rest came by event channel).
    ops_polled: int = 0

    @property
    def state(self) -> str:
        return self.closed or ("connected" if self.channel is not None else "waiting")


class Server:
    def __init__(self, client: Any, transport: Transport, interrupts: InterruptControl,
                 devices: DeviceSource, *, mode: Mode = Mode.VPCI,
                 domids: Iterable[int] = (), settings: SettingsLoader | None = None,
                 others_serve: Callable[[int], bool] | None = None,
                 trace: TraceWriter | None = None,
                 log: Callable[[str], None] = lambda line: None,
                 control: str | None = None, aer_timeout: float = DEFAULT_TIMEOUT,
                 interrupt_records: StateStore | None = None,
                 view_records: StateStore | None = None,
                 busy_poll: float | None = AUTO,
                 aer_feed: AerFeed | None = None) -> None:
        self.client = client
        self.transport = transport
        self.interrupts = interrupts
        self.devices = devices
        self.mode = mode
        self.domids = frozenset(domids)
        self.settings = settings or (lambda bdf: {})
        self.others_serve = others_serve or (lambda domid: False)
        self.trace = trace
        self.log = log
        self.control_path = control
        self.aer_timeout = aer_timeout
        self.interrupt_records = interrupt_records
        self.view_records = view_records
        self.busy_poll = busy_poll
        self.aer_feed = aer_feed
        self.guests: dict[int, Guest] = {}
        self.stopping = False
        self.started = time.time()
        self.selector = selectors.DefaultSelector()
        self._control: socket.socket | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)

    # -- lifecycle ---------------------------------------------------------------------------
    def wakeup_fd(self) -> int:
        """For ``signal.set_wakeup_fd``: a signal wakes the selector."""
        return self._wake_w.fileno()

    def stop(self) -> None:
        self.stopping = True
        try:
            self._wake_w.send(b"\0")
        except OSError:
            pass

    def start(self) -> None:
        """Watch, open the control socket, take up every guest already there (a restart)."""
        self.selector.register(self.client.fileno(), selectors.EVENT_READ, None)
        self.selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        if self.control_path:
            self._open_control(self.control_path)
        if self.aer_feed is not None:
            self.selector.register(self.aer_feed.fileno(), selectors.EVENT_READ, "aer-feed")
        self.client.watch(BACKEND_ROOT, TOKEN)
        for name in list_or_empty(self.client, BACKEND_ROOT):
            domid = decimal(name, max_digits=5)
            if domid is not None:
                self.settle(domid)

    def run(self, ready: Callable[[], None] | None = None) -> None:
        self.start()
        if ready is not None:
            ready()
        while not self.stopping:
            self.run_once(0.5)
        self.close()

    def close(self) -> None:
        for guest in self.guests.values():
            self._disconnect(guest)
            self._abandon_recoveries(guest, "serve stopped")
        if self.aer_feed is not None:
            self.aer_feed.close()
        if self._control is not None:
            self._control.close()
            try:
                os.unlink(self.control_path or "")
            except OSError:
                pass
        self.selector.close()
        self._wake_r.close()
        self._wake_w.close()

    # -- one round -----------------------------------------------------------------------------
    def run_once(self, timeout: float) -> None:
        now = time.monotonic()
        for guest in self.guests.values():
            if guest.throttled_until and now >= guest.throttled_until and guest.channel:
                guest.throttled_until = 0.0
                self._register(guest)
                guest.pending = True
        if self.client.pending_events() or any(g.pending for g in self.guests.values()):
            timeout = 0
        for guest in self.guests.values():
            deadline = guest.aer.deadline if guest.aer is not None else None
            if deadline is not None:
                timeout = max(0.0, min(timeout, deadline - now))
        ready = self.selector.select(timeout)
        dirty: set[int] = set()
        # xenstore is asked only when its socket is readable or the client holds something: a
        # poll of it every round is one more system call per op, dear under a PV dom0.
        xenstore_ready = bool(self.client.pending_events() or self.client.buffered())
        for key, _ in ready:
            if key.data is None:
                xenstore_ready = True
            elif key.data == "wake":
                try:
                    while self._wake_r.recv(64):
                        pass
                except OSError:
                    pass
            elif key.data == "control":
                self._accept_control()
            elif key.data == "aer-feed":
                self._host_aer()
            elif isinstance(key.data, _ControlClient):
                self._read_control(key.data)
            elif isinstance(key.data, Guest):
                key.data.pending = True
        while xenstore_ready:
            event = self.client.next_event(0)
            if event is None:
                break
            domid = _domid_of(event.path)
            if domid is not None:
                dirty.add(domid)
            elif event.path.rstrip("/") == BACKEND_ROOT:
                dirty.update(d for n in list_or_empty(self.client, BACKEND_ROOT)
                             if (d := decimal(n, max_digits=5)) is not None)
        for domid in sorted(dirty):
            self.settle(domid)
        self._serve_pending()
        for guest in list(self.guests.values()):
            if guest.recoveries:
                self._aer_progress(guest)

    # -- xenstore side ------------------------------------------------------------------------
    def _snapshot(self, domid: int) -> Snapshot:
        def read(tx: Any) -> Snapshot:
            return Snapshot(_values(tx, backend_path(domid)), _values(tx, frontend_path(domid)))
        snapshot: Snapshot = self.client.transact(read)
        return snapshot

    def _claim(self, domid: int, snap: Snapshot) -> bool:
        if self.domids and domid not in self.domids:
            return False
        values = snap.backend
        marker = values.get(OWNER_NODE)
        if marker == SERVE_OWNER:
            return True
        if marker is not None or values.get("state") != str(int(XenbusState.INITIALISING)):
            return False
        if self.others_serve(domid):
            return False

        def claim(tx: Any) -> bool:
            path = backend_path(domid)
            state = _read(tx, f"{path}/state")
            if state != str(int(XenbusState.INITIALISING)) or _read(tx, f"{path}/{OWNER_NODE}"):
                return False
            tx.write(f"{path}/{OWNER_NODE}", SERVE_OWNER)
            return True
        claimed: bool = self.client.transact(claim)
        return claimed

    def settle(self, domid: int) -> None:
        """Bring guest ``domid``'s handshake up to date; a failure ends that guest only."""
        try:
            self._settle(domid)
        except Exception as exc:  # noqa: BLE001 - isolation: one guest, one line
            guest = self.guests.get(domid)
            if guest is not None:
                self._fail(guest, f"{type(exc).__name__}: {exc}")
            else:
                self.log(f"domain {domid}: skipped: {type(exc).__name__}: {exc}")

    def _settle(self, domid: int) -> None:
        snap = self._snapshot(domid)
        guest = self.guests.get(domid)
        if guest is None:
            if not snap.backend or not self._claim(domid, snap):
                return
            snap = self._snapshot(domid)
            guest = self._new_guest(domid)
            self.client.watch(frontend_path(domid), TOKEN)
            resumed = guest.xenbus.resume(snap)
            if resumed:
                self.log(f"domain {domid}: resuming after a restart "
                         f"({sum(isinstance(a, Export) for a in resumed)} device(s))")
                guest.resuming = True
                try:
                    self._carry_out(guest, resumed)
                finally:
                    guest.resuming = False
        elif not snap.backend:
            self._carry_out(guest, guest.xenbus.step(snap))
            self._disconnect(guest)
            del self.guests[domid]
            self.log(f"domain {domid}: backend directory removed; guest forgotten")
            return
        for _ in range(MAX_STEPS):
            actions = guest.xenbus.step(snap)
            if not actions:
                return
            self._carry_out(guest, actions)
            self._answer_posted_ops()
            if self.guests.get(domid) is not guest:
                return
            snap = self._snapshot(domid)
        self._fail(guest, "the xenbus handshake did not settle")

    def _answer_posted_ops(self) -> None:
        """Answer the ops guests have already posted, between the steps of a handshake.

        Found on real Xen (tests/realxen): each step re-reads the backend and frontend
        directories, xenstore round trips that took seconds in an emulated dom0, while a real
        pcifront that rescans on Reconfigured waits 2 s per op and then gives up ("pciback not
        responding"): the hot-plugged device never appeared. Level-triggered: whatever else is
        ready is reported again by the next select."""
        for key, _ in self.selector.select(0):
            if isinstance(key.data, Guest):
                key.data.pending = True
        self._serve_pending()

    def _serve_pending(self) -> None:
        """Serve every guest with an op or notification pending that is not throttled."""
        for guest in list(self.guests.values()):
            if guest.pending and not guest.throttled_until:
                guest.pending = False
                self.serve_one(guest)

    def _new_guest(self, domid: int) -> Guest:
        xenbus = XenbusBackend(domid, local_actions=True, mode=self.mode, owner=SERVE_OWNER)
        guest = Guest(domid, xenbus, GuestSession(domid, self.interrupts, mode=self.mode),
                      poll=PollWindow(self.busy_poll))
        guest.aer = AerRelay(domid, guest.session.guest_address, timeout=self.aer_timeout)
        # The session hands each op's record over; keeping it is a C call, no Python frame.
        guest.session.recorder = functools.partial(setattr, guest, "last")
        self.guests[domid] = guest
        self.log(f"domain {domid}: serving its PCI backend")
        return guest

    def _carry_out(self, guest: Guest, actions: list[Action]) -> None:
        """Do the local actions in order; on a failure the rest is replaced by the fatal
        error's writes. Then write the xenstore part in one transaction."""
        done: list[Action] = []
        for action in actions:
            try:
                self._do(guest, action)
            except (TransportError, OSError, ValueError, LookupError) as exc:
                ops = xenstore_ops(done) + xenstore_ops(guest.xenbus.fatal(
                    errno.EIO, f"{type(action).__name__.lower()}: {exc}"))
                self.client.transact(lambda tx, ops=ops: apply_ops(tx, ops))
                self._trace_states(guest, ops)
                self._close(guest, str(exc))
                return
            done.append(action)
        ops = xenstore_ops(actions)
        if ops:
            self.client.transact(lambda tx: apply_ops(tx, ops))
            self._trace_states(guest, ops)

    def _do(self, guest: Guest, action: Action) -> None:
        if isinstance(action, Export):
            self._export(guest, action)
        elif isinstance(action, Release):
            released = guest.session.release(action.guest)
            if released is not None:
                self._record_interrupts(guest, released)
                self._record_view(guest, released)
                _close(guest.configs.pop(released.host, None))
                _close(guest.physfn_configs.pop(released.host, None))
                self.log(f"domain {guest.domid}: device {released.host} released")
        elif isinstance(action, Connect):
            self._connect(guest, action)
        elif isinstance(action, Disconnect):
            self._disconnect(guest)
            if guest.closed is None:
                guest.closed = "closed"
                self.log(f"domain {guest.domid}: guest closed")

    def _export(self, guest: Guest, action: Export) -> None:
        for dev in guest.session.devices.values():
            if dev.host == action.host:
                return  # already exported (a replayed round)
        config = self.devices.config(action.host)
        device = self.devices.device(action.host)
        # a VF's memory decode is its PF's COMMAND (Linux: pci_physfn): export it with the PF's
        physfn = self.devices.config(device.physfn) if device is not None and device.physfn \
            else None
        options = dict(self.settings(action.host))
        if self.trace is not None:  # before the export: what the overlay is built over
            self._trace_device(guest, action, config, device, options, physfn)
        try:
            guest.session.export(action.host, config, device=device, physfn_config=physfn,
                                 guest=action.guest, **options)  # type: ignore[arg-type]
        except BaseException:
            for access in (config, physfn):
                _close(access)
            raise
        guest.configs[action.host] = config
        if physfn is not None:
            guest.physfn_configs[action.host] = physfn
        extra = ", permissive" if options.get("permissive") else ""
        quirks = options.get("quirks") or ()
        extra += f", {len(quirks)} quirk(s)" if quirks else ""  # type: ignore[arg-type]
        self.log(f"domain {guest.domid}: device {action.host} exported as {action.guest}{extra}")
        self._restore_view(guest, action.host)
        self._restore_interrupts(guest, action.host)
        self._flush_events(guest)

    def _connect(self, guest: Guest, action: Connect) -> None:
        self._disconnect(guest)
        mapping = self.transport.map_grant(guest.domid, action.ref)
        try:
            channel = self.transport.bind_interdomain(guest.domid, action.port)
        except BaseException:
            mapping.close()
            raise
        guest.mapping, guest.channel = mapping, channel
        guest.closed = None
        self._register(guest)
        guest.pending = True  # an op left pending before a restart is answered now
        self.log(f"domain {guest.domid}: guest connected (page {action.ref}, "
                 f"event channel {action.port})")

    def _register(self, guest: Guest) -> None:
        if guest.channel is not None:
            try:
                self.selector.register(guest.channel.fileno(), selectors.EVENT_READ, guest)
            except (KeyError, ValueError):
                pass

    def _unregister(self, guest: Guest) -> None:
        if guest.channel is not None:
            try:
                self.selector.unregister(guest.channel.fileno())
            except (KeyError, ValueError):
                pass

    def _disconnect(self, guest: Guest) -> None:
        self._unregister(guest)
        for thing in (guest.channel, guest.mapping):
            if thing is not None:
                try:
                    thing.close()
                except Exception:  # noqa: BLE001 - closing never fails the loop
                    pass
        guest.channel = guest.mapping = None
        guest.pending = False

    def _close(self, guest: Guest, why: str) -> None:
        self._disconnect(guest)
        self._abandon_recoveries(guest, "the guest closed with an error")
        guest.closed = f"error: {why}"
        guest.errors += 1
        self.log(f"domain {guest.domid}: guest closed with an error: {why}")

    def _fail(self, guest: Guest, why: str) -> None:
        """Fatal for this guest: ``error`` node, Closing; never for the loop."""
        try:
            ops = xenstore_ops(guest.xenbus.fatal(errno.EIO, why[:200]))
            self.client.transact(lambda tx: apply_ops(tx, ops))
            self._trace_states(guest, ops)
        except Exception as exc:  # noqa: BLE001
            self.log(f"domain {guest.domid}: could not write the error node: {exc}")
        self._close(guest, why)

    # -- ops -----------------------------------------------------------------------------------
    def serve_one(self, guest: Guest) -> None:
        """Drain the guest's notifications and answer the op waiting, then the ones the guest
        posts while its poll window is open (engine/busypoll.py)."""
        channel, mapping = guest.channel, guest.mapping
        if channel is None or mapping is None:
            return
        try:
            count = channel.drain()
            if self._flooding(guest, count):
                return  # left masked while throttled: the flood costs dom0 nothing
            try:
                self._answer_burst(guest, channel, mapping.page)
            finally:
                channel.rearm()  # a notification that came meanwhile fires now
        except Exception as exc:  # noqa: BLE001 - isolation: a bad guest ends alone
            self._fail(guest, f"{type(exc).__name__}: {exc}")

    def _answer_burst(self, guest: Guest, channel: EventChannel, page: memoryview) -> None:
        """Answer the op waiting, then those the guest posts while the poll window is open. The
        clock is read once per op answered (and once per 32 looks while polling): on a PV dom0
        whose TSC Xen does not call stable, each reading is a system call."""
        if not page[0] & ACTIVE:
            return
        poll = guest.poll
        poll.woken(time.perf_counter())
        answered = self._answer(guest, channel, page)
        for _ in range(MAX_POLLED):
            window = poll.may_poll(answered)
            if window <= 0:
                return
            caught, seen = self._poll_page(page, answered, window)
            poll.polled(seen - answered)
            if not caught:
                return
            guest.ops_polled += 1
            answered = self._answer(guest, channel, page)
        guest.pending = True  # a long burst: the others' turn; this guest's next round soon

    def _answer(self, guest: Guest, channel: EventChannel, page: memoryview) -> float:
        """Serve the op in the page, clear ``_XEN_PCIF_active``, notify the guest. The path of
        every op: a conf_read does nothing here beyond the session's dispatch, the flag and the
        notify (an emulated dom0 pays for each Python step)."""
        guest.window_ops += 1
        guest.session.process(page)
        record = guest.last
        cmd = record.cmd if record is not None else -1
        if cmd != _CONF_READ:
            if cmd in INTERRUPT_OPS:
                dev = guest.session.recorded_device  # the op's device, looked up once
                if dev is not None:
                    self._record_interrupts(guest, dev)  # before the guest sees the answer
            elif cmd == _CONF_WRITE:
                dev = guest.session.recorded_device
                if dev is not None:
                    self._record_view(guest, dev)  # a COMMAND write: before the answer too
        # Bit 0 of the flags word's first byte; a read-modify-write of that byte as of the word
        # before it (the guest owns bit 0 only while it is clear).
        page[0] &= _NOT_ACTIVE
        channel.notify()
        answered = time.perf_counter()
        guest.poll.answered(answered)
        if self.trace is not None and record is not None:
            self._trace_op(guest, record)  # after the answer: off the guest's round trip
        if cmd == _CONF_WRITE:
            self._after_write(guest, record)
        if guest.session.events:
            self._flush_events(guest)
        return answered

    @staticmethod
    def _poll_page(page: memoryview, start: float, window: float) -> tuple[bool, float]:
        """Watch the page's active bit from ``start`` for up to ``window`` seconds: (an op is
        waiting, the clock when last read). The clock is read once per 32 looks at the page (a
        look is a byte read), and every 8th time the CPU is offered to whatever else is
        runnable on it (the frontend in a sandbox, a daemon in dom0)."""
        clock, give_way = time.perf_counter, os.sched_yield
        deadline = start + window
        seen, rounds = start, 0
        while True:
            for _ in range(32):
                if page[0] & ACTIVE:
                    return True, seen
            seen = clock()
            if seen >= deadline:
                return False, seen
            rounds += 1
            if not rounds & 7:
                give_way()

    # -- MSI/MSI-X records (rule 5) ---------------------------------------------------------------
    def _record_interrupts(self, guest: Guest, dev: ExportedDevice) -> None:
        """Write (or remove) the device's record when its MSI/MSI-X state changed."""
        state = None if dev not in guest.session.devices.values() else dev.interrupts()
        fields = {} if state is None else {"kind": state[0], "entries": list(state[1]),
                                            "pirqs": list(state[2])}
        self._keep_record(self.interrupt_records, guest.recorded, guest, dev.host, state, fields,
                          "MSI/MSI-X state")

    def _keep_record(self, store: StateStore | None, kept: dict[Bdf, Any], guest: Guest,
                     host: Bdf, value: object, fields: Mapping[str, object], what: str) -> None:
        """``RUN/<store>/D-BDF.json`` follows ``value``: written with ``fields`` when it changed
        from what ``kept`` says was last recorded, removed when it became None. A failed write
        is one log line, and ``kept`` is left as it was so the next change tries again."""
        if store is None or kept.get(host) == value:
            return
        name = record_name(guest.domid, host)
        try:
            if value is None:
                store.remove(name)
            else:
                store.write(name, json.dumps({"domid": guest.domid, "host": str(host),
                                              **fields}).encode())
        except (XenPcibackError, OSError) as exc:
            self.log(f"domain {guest.domid}: could not record the {what} of {host}: {exc}")
            return
        kept[host] = value

    def _restore_interrupts(self, guest: Guest, host: Bdf) -> None:
        """A restart: take over the MSI/MSI-X state an earlier run recorded for ``host``. On a
        first export a record left from an attachment ``serve`` did not see end is only
        removed: its PIRQs are not this attachment's to unmap."""
        store = self.interrupt_records
        if store is None:
            return
        name = record_name(guest.domid, host)
        try:
            if not guest.resuming:
                store.remove(name)
                return
            data = store.read(name)
            if data is None:
                return
            kind, entries, pirqs = parse_record(data, guest.domid, host)
        except (XenPcibackError, OSError, statestore.Invalid) as exc:
            why: str | None = f"unreadable record: {exc}"
        else:
            why = guest.session.restore_interrupts(host, kind, entries, pirqs)
            if why is None:
                guest.recorded[host] = (kind, entries, pirqs)
                return
        self.log(f"domain {guest.domid}: MSI/MSI-X record of {host} dropped: {why}")
        try:
            store.remove(name)
        except (XenPcibackError, OSError):
            pass

    # -- the guest's COMMAND view (rule 5 too) ---------------------------------------------------
    def _record_view(self, guest: Guest, dev: ExportedDevice) -> None:
        """Write (or remove) ``RUN/views/D-BDF.json`` when the guest's COMMAND view changed: the
        overlay's virtual COMMAND is not in the hardware, so a restart would otherwise rebuild
        it from bits the backend set itself (INTx-disable with MSI, decode the host left on)."""
        view = dev.overlay.guest_command() if dev in guest.session.devices.values() else None
        fields = {} if view is None else {"command": view[0], "enabled": view[1]}
        self._keep_record(self.view_records, guest.views, guest, dev.host, view, fields,
                          "COMMAND view")

    def _restore_view(self, guest: Guest, host: Bdf) -> None:
        """On export: when resuming after a restart, the view the earlier run recorded for
        ``host`` is handed back to the overlay; then the current view is recorded (on a first
        export this replaces a record left from an attachment ``serve`` did not see end)."""
        dev = guest.session.exported(host)
        store = self.view_records
        if dev is None or store is None:
            return
        name = record_name(guest.domid, host)
        try:
            data = store.read(name) if guest.resuming else None
            if data is not None:
                command, enabled = parse_view(data, guest.domid, host)
                dev.overlay.restore_guest_command(command, enabled)
                guest.views[host] = (command, enabled)
        except (XenPcibackError, OSError, statestore.Invalid) as exc:
            self.log(f"domain {guest.domid}: COMMAND view record of {host} dropped: {exc}")
        self._record_view(guest, dev)

    def _flooding(self, guest: Guest, count: int) -> bool:
        guest.notifications += count
        now = time.monotonic()
        if now - guest.window_start > FLOOD_WINDOW:
            guest.window_start, guest.window_notes, guest.window_ops = now, 0, 0
        guest.window_notes += count
        if guest.window_notes > FLOOD_MIN + FLOOD_RATIO * guest.window_ops:
            guest.throttled_until = now + THROTTLE
            guest.window_start, guest.window_notes, guest.window_ops = now, 0, 0
            self._unregister(guest)
            if not guest.throttle_logged:
                guest.throttle_logged = True
                self.log(f"domain {guest.domid}: notification flood (XSA-332): throttled "
                         "(logged once)")
            return True
        return False

    def _trace_op(self, guest: Guest, record: TraceRecord) -> None:
        assert self.trace is not None
        dev = guest.session.recorded_device  # the session's lookup for this op, not a second one
        self.trace.op(record, None if dev is None else self.trace.text_of(dev.host))

    def _trace_device(self, guest: Guest, action: Export, config: ConfigAccess,
                      device: PciDevice | None, options: dict[str, object],
                      physfn: ConfigAccess | None) -> None:
        assert self.trace is not None
        self.trace.device(device_snapshot(guest.domid, action.host, action.guest, config,
                                          device, options, physfn))

    def _trace_states(self, guest: Guest, ops: list[Any]) -> None:
        """A ``state`` line for each write of the backend's own ``state`` node."""
        if self.trace is not None:
            node = f"{backend_path(guest.domid)}/state"
            for op in ops:
                if getattr(op, "path", None) == node and hasattr(op, "value"):
                    self.trace.xenbus_state(guest.domid, op.value)

    def _after_write(self, guest: Guest, record: TraceRecord | None) -> None:
        dev = guest.session.recorded_device
        if record is None or dev is None:
            return
        dev.overlay.events.clear()  # the overlay's own log lines: serve logs denials itself
        if dev.overlay.dropped_writes:
            op = record.op
            key = (dev.host, op.offset)
            total = sum(d.overlay.dropped_writes for d in guest.session.devices.values())
            if total > guest.writes_denied:
                guest.writes_denied = total
                if key not in guest.denied_logged and len(guest.denied_logged) < 256:
                    guest.denied_logged.add(key)
                    self.log(f"domain {guest.domid}: write denied to {dev.host} config "
                             f"{op.offset:#x} (size {op.size}; logged once per register)")

    def _flush_events(self, guest: Guest) -> None:
        events = guest.session.events
        while events:
            line = events.popleft()
            if "MSI" in line or "failed" in line:
                self.log(line)

    # -- AER -------------------------------------------------------------------------------------
    def raise_aer(self, host: Bdf, error: str, reply: Reply | None = None) -> None:
        """A host AER error of severity ``error`` (fatal, nonfatal, corrected) on ``host``: run
        the host's recovery for it, relaying each step to the guest that holds the device.
        ``reply`` gets the summary when the recovery is over (at once if nothing is relayed)."""
        holder = next((g for g in self.guests.values()
                       if g.session.guest_address(host) is not None), None)
        domid = holder.domid if holder is not None else None
        state = SEVERITIES.get(error)
        if state is None:  # corrected: the hardware fixed it; Linux's AER core calls no driver
            self.log(f"AER corrected error on {host}: logged only, nothing relayed "
                     "(no driver is called for a corrected error)")
            if reply is not None:
                reply(Recovery(host, error, None).summary(domid, True))
            return
        recovery = Recovery(host, error, AerRequest(host, AerStep.ERROR_DETECTED, state), reply)
        if holder is None:
            self.log(f"AER {error} error on {host}: no guest served here holds it; "
                     "the host recovers it alone")
            if reply is not None:
                reply(recovery.summary(None, False) | {"why": "not exported to a served guest"})
            return
        if len(holder.recoveries) > MAX_AER_QUEUE:
            self.log(f"domain {domid}: AER {error} error on {host}: refused, "
                     f"{len(holder.recoveries)} recoveries waiting already")
            if reply is not None:
                reply(recovery.summary(domid, False) | {"why": "too many AER recoveries queued"})
            return
        self.log(f"domain {domid}: AER {error} error on {host}: starting recovery")
        holder.recoveries.append(recovery)
        self._aer_progress(holder)

    def _host_aer(self) -> None:
        """The host's AER feed had something: relay each error on an exported device. The
        host's recovery has already run (the device's kernel driver, pci-stub, has no handlers):
        the guest hears of it afterwards and its answer only decides ``aerState``."""
        assert self.aer_feed is not None
        exported = {dev.host for guest in self.guests.values()
                    for dev in guest.session.devices.values()}
        for host, error in self.aer_feed.poll(exported):
            self.log(f"host AER: {error} error on {host} (the host's recovery has run)")
            self.raise_aer(host, error)

    def _aer_progress(self, guest: Guest) -> None:
        """Advance the guest's current recovery as far as it goes without waiting."""
        relay = guest.aer
        assert relay is not None
        page = guest.mapping.page if guest.mapping is not None else None
        while guest.recoveries:
            recovery = guest.recoveries[0]
            if relay.busy:
                decision = relay.poll(page, time.monotonic())
                if decision is None:
                    return
            else:
                request = recovery.request
                if request is None:
                    self._finish(guest, recovery, True)
                    continue
                try:
                    decision = relay.start(request, page, time.monotonic())
                except Exception as exc:  # noqa: BLE001 - a bad page ends that guest only
                    self._abandon_recoveries(guest, f"{type(exc).__name__}: {exc}")
                    return
                if decision is None:
                    self._notify(guest)
                    continue
            self._decided(guest, recovery, decision)

    def _decided(self, guest: Guest, recovery: Recovery, decision: AerDecision) -> None:
        self.log(decision.line)
        if self.trace is not None:
            self.trace.aer(guest.domid, str(recovery.host), decision.request.step.label,
                           result_name(decision.result), decision.outcome.value)
        recovery.steps.append({"step": decision.request.step.label,
                               "outcome": decision.outcome.value,
                               "result": result_name(decision.result),
                               "aerfail": decision.aerfail})
        if decision.outcome.value == "relayed":
            guest.aer_relayed += 1
        if decision.aerfail:
            guest.aer_failed += 1
            recovery.aerfail = True
            self._write_aerfail(guest)
            if decision.outcome.value != "relayed":  # timed out, or the guest is gone
                recovery.request = None
                self._finish(guest, recovery, False)
                return
            # The guest answered (NONE: no driver of its own took part). As on Linux, the host's
            # recovery goes on with the next callback and the guest hears of each, though it is
            # marked for destruction (the real-Xen tier saw pciback relay three steps).
        step = next_step(decision.request, decision.result)
        if step is None:
            self._finish(guest, recovery,
                         decision.request.step is AerStep.RESUME and not recovery.aerfail)
        else:
            recovery.request = AerRequest(recovery.host, step)

    def _finish(self, guest: Guest, recovery: Recovery, recovered: bool) -> None:
        if guest.recoveries and guest.recoveries[0] is recovery:
            guest.recoveries.popleft()
        if recovery.steps:
            how = "recovered" if recovered else "not recovered by the guest"
            self.log(f"domain {guest.domid}: AER recovery of {recovery.host}: {how}")
        if recovery.reply is not None:
            recovery.reply(recovery.summary(guest.domid, recovered))
            recovery.reply = None

    def _abandon_recoveries(self, guest: Guest, why: str) -> None:
        if guest.aer is not None and guest.aer.cancel() is not None:
            self.log(f"domain {guest.domid}: AER request abandoned: {why}")
        while guest.recoveries:
            recovery = guest.recoveries.popleft()
            if recovery.reply is not None:
                recovery.reply(recovery.summary(guest.domid, False) | {"why": why})

    def _write_aerfail(self, guest: Guest) -> None:
        """``aerState = aerfail`` in the backend directory (never re-creating a removed one)."""
        path = backend_path(guest.domid)

        def write(tx: Any) -> None:
            if _read(tx, f"{path}/state") is not None:
                tx.write(f"{path}/{AER_STATE_NODE}", AER_FAIL)
        try:
            self.client.transact(write)
        except Exception as exc:  # noqa: BLE001
            self.log(f"domain {guest.domid}: could not write {AER_STATE_NODE}: {exc}")

    def _notify(self, guest: Guest) -> None:
        if guest.channel is not None:
            try:
                guest.channel.notify()
            except TransportError as exc:
                self.log(f"domain {guest.domid}: AER notification failed: {exc}")

    # -- status ----------------------------------------------------------------------------------
    def status(self) -> dict[str, object]:
        guests = []
        for guest in sorted(self.guests.values(), key=lambda g: g.domid):
            devices = [{"host": str(d.host), "guest": str(d.guest), "msi": d.msi_enabled,
                        "msix": d.msix_enabled, "writes_denied": d.overlay.dropped_writes}
                       for d in guest.session.devices.values()]
            guests.append({"domid": guest.domid, "state": guest.state, "devices": devices,
                           "ops_served": guest.session.ops_served,
                           "ops_polled": guest.ops_polled,
                           "poll_window_us": round(guest.poll.window * 1e6, 1),
                           "poll_limit_us": round(guest.poll.limit * 1e6, 1),
                           "last_wake_gap_us": None if guest.poll.last_gap is None
                           else round(guest.poll.last_gap * 1e6, 1),
                           "notifications": guest.notifications,
                           "writes_denied": sum(d["writes_denied"] for d in devices),  # type: ignore[misc]
                           "errors": guest.errors, "throttled": guest.throttle_logged,
                           "aer_relayed": guest.aer_relayed, "aer_failed": guest.aer_failed})
        return {"pid": os.getpid(), "mode": self.mode.value, "uptime": round(time.time()
                                                                              - self.started, 1),
                "guests": guests}

    def _open_control(self, path: str) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(path)
        os.chmod(path, 0o600)
        sock.listen(8)
        sock.setblocking(False)
        self._control = sock
        self.selector.register(sock, selectors.EVENT_READ, "control")

    def _accept_control(self) -> None:
        assert self._control is not None
        try:
            conn, _ = self._control.accept()
        except OSError:
            return
        conn.setblocking(False)
        client = _ControlClient(conn)
        self.selector.register(conn, selectors.EVENT_READ, client)

    def _read_control(self, client: _ControlClient) -> None:
        """One request line: ``{"op": "status"}`` (also an empty line or EOF) or ``{"op": "aer",
        "bdf": B, "error": "fatal|nonfatal|corrected"}``; one JSON line back, then close."""
        try:
            data = client.conn.recv(MAX_REQUEST)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        client.buffer += data
        if data and b"\n" not in client.buffer and len(client.buffer) < MAX_REQUEST:
            return
        self.selector.unregister(client.conn)
        line = client.buffer.split(b"\n", 1)[0].strip()
        try:
            request = json.loads(line) if line else {"op": "status"}
            if not isinstance(request, dict):
                raise ValueError("not an object")
        except (ValueError, RecursionError):  # RecursionError: a deeply nested line
            client.send({"error": "a request is one JSON object on one line"})
            return
        op = request.get("op", "status")
        if op == "status":
            client.send(self.status())
        elif op == "aer":
            error = request.get("error")
            try:
                host = Bdf.parse(str(request.get("bdf")))
            except (ValueError, InputError) as exc:
                client.send({"error": f"bad bdf: {exc}"})
                return
            if error not in ("fatal", "nonfatal", "corrected"):
                client.send({"error": "error must be fatal, nonfatal or corrected"})
                return
            self.raise_aer(host, str(error), client.send)
        else:
            client.send({"error": f"unknown op {op!r}"})


class _ControlClient:
    """One connection to the control socket; answered once, then closed."""

    def __init__(self, conn: socket.socket) -> None:
        self.conn = conn
        self.buffer = b""

    def send(self, answer: dict[str, Any]) -> None:
        try:
            self.conn.settimeout(1.0)
            self.conn.sendall(json.dumps(answer).encode() + b"\n")
        except OSError:
            pass
        finally:
            self.conn.close()


def record_name(domid: int, host: Bdf) -> str:
    """The run-dir record of ``host``'s MSI/MSI-X state for guest ``domid``."""
    return f"{domid}-{host.domain:04x}-{host.bus:02x}-{host.slot:02x}-{host.function}.json"


def parse_record(data: bytes, domid: int, host: Bdf) -> InterruptState:
    """A record's ``(kind, entries, pirqs)``, every field checked (``statestore.Invalid``)."""
    value = statestore.obj(statestore.parse_json(data), "the record",
                           required={"domid", "host", "kind", "entries", "pirqs"})
    if statestore.integer(value["domid"], "domid", 0, 0x7FEF) != domid \
            or statestore.bdf(value["host"], "host") != host:
        raise statestore.Invalid("it names another guest or device")
    kind = value["kind"]
    if kind not in ("msi", "msix"):
        raise statestore.Invalid("kind must be msi or msix")
    entries, pirqs = value["entries"], value["pirqs"]
    if not isinstance(entries, list) or not isinstance(pirqs, list):
        raise statestore.Invalid("entries and pirqs must be lists")
    entry_t = tuple(statestore.integer(e, "an entry", 0, 2047) for e in entries)
    pirq_t = tuple(statestore.integer(p, "a PIRQ", 0, 2**31 - 1) for p in pirqs)
    if kind == "msi" and (entry_t or len(pirq_t) != 1):
        raise statestore.Invalid("MSI has no entries and one PIRQ")
    if kind == "msix" and (not entry_t or len(entry_t) != len(pirq_t) or len(entry_t) > 128):
        raise statestore.Invalid("MSI-X has one PIRQ per entry (1 to 128)")
    return kind, entry_t, pirq_t


def parse_view(data: bytes, domid: int, host: Bdf) -> tuple[int, bool]:
    """A view record's ``(command, enabled)``, every field checked (``statestore.Invalid``)."""
    value = statestore.obj(statestore.parse_json(data), "the record",
                           required={"domid", "host", "command", "enabled"})
    if statestore.integer(value["domid"], "domid", 0, 0x7FEF) != domid \
            or statestore.bdf(value["host"], "host") != host:
        raise statestore.Invalid("it names another guest or device")
    if not isinstance(value["enabled"], bool):
        raise statestore.Invalid("enabled must be true or false")
    return statestore.integer(value["command"], "command", 0, 0xFFFF), value["enabled"]


def _close(access: object) -> None:
    close = getattr(access, "close", None)
    if close is not None:
        close()


def _values(node: Any, path: str) -> dict[str, str]:
    try:
        return read_dir_values(node, path)
    except Exception as exc:  # noqa: BLE001
        if getattr(exc, "errno_name", None) in ("ENOENT", "EACCES"):
            return {}
        raise


def _read(node: Any, path: str) -> str | None:
    try:
        return bytes(node.read(path)).decode(errors="replace")
    except Exception as exc:  # noqa: BLE001
        if getattr(exc, "errno_name", None) == "ENOENT":
            return None
        raise


def _domid_of(path: str) -> int | None:
    for prefix in (BACKEND_ROOT + "/", "/local/domain/"):
        if path.startswith(prefix):
            head = path[len(prefix):].split("/", 1)[0]
            if prefix != "/local/domain/" or "/device/pci/" in path:
                return decimal(head, max_digits=5)
    return None


def read_status(path: str, timeout: float = 3.0) -> dict[str, Any]:
    """Ask a running ``serve`` for its status through its control socket."""
    return control_request(path, {"op": "status"}, timeout)


def control_request(path: str, request: dict[str, Any], timeout: float = 3.0) -> dict[str, Any]:
    """One request to a running ``serve``'s control socket, its one JSON answer."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
        sock.sendall(json.dumps(request).encode() + b"\n")
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    finally:
        sock.close()
    result: dict[str, Any] = json.loads(data)
    return result


def served_guest(path: str, domid: int, timeout: float = 1.0) -> dict[str, Any] | None:
    """What a running ``serve`` says of guest ``domid`` (its status entry plus serve's pid), or
    None when no ``serve`` answers on ``path`` or it does not serve that guest."""
    if not os.path.exists(path):
        return None
    try:
        data = read_status(path, timeout)
    except (OSError, ValueError):
        return None
    for guest in data.get("guests", ()):
        if isinstance(guest, dict) and guest.get("domid") == domid:
            return dict(guest, pid=data.get("pid"))
    return None


def notify_ready(environ: dict[str, str] | None = None) -> bool:
    """systemd's ``sd_notify(READY=1)`` by hand: one datagram to ``$NOTIFY_SOCKET`` (a leading
    ``@`` is Linux's abstract namespace). False when not run by systemd."""
    target = (environ if environ is not None else dict(os.environ)).get("NOTIFY_SOCKET")
    if not target:
        return False
    address = "\0" + target[1:] if target.startswith("@") else target
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.connect(address)
        sock.sendall(b"READY=1")
    except OSError:
        return False
    finally:
        sock.close()
    return True

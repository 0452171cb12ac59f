"""A simulated pcifront over the sandbox transport: what Linux's ``xen-pcifront`` does in a guest.

Written from ``docs/sandbox-protocol.md`` (the frontend's side) and Xen's ``io/pciif.h`` only, so
it is an independent frontend: it would talk to any backend that keeps the contract.

1. Connect (``xen-pcifront.c``'s probe and ``pcifront_connect``): wait for the backend to be past
   InitWait, grant the page and bind the channel (:mod:`.front_transport`), publish
   ``pci-op-ref``/``event-channel``/``magic`` and Initialised, wait for Connected, read
   ``root_num``/``root-K``.
2. Scan (``pcifront_scan_root``/``pcifront_scan_bus``): every devfn 0-255 of every root bus, one
   ``conf_read`` of the vendor id each; pcifront scans each devfn on its own (vpci may place
   functions anywhere), so the header type's multi-function bit is only reported.
3. Probe each device as a driver would: read the header, turn memory decode (and bus mastering)
   on in COMMAND, size every BAR (all ones, read back, restore), find MSI-X in the capability list
   and enable it with a few vectors, then disable it. Every op's result is kept, with its error
   named after ``pv.abi``.

4. AER (``pcifront_do_aer``/``pcifront_common_process``): the frontend sets
   ``_XEN_PCIB_AERHANDLER`` when it grants the page; when the backend sets ``_XEN_PCIB_active``
   it reads ``aer_op``, calls the guest "driver"'s handler for that step, writes the
   ``pci_ers_result`` into ``aer_op.err``, clears the bit and notifies. The driver here answers
   by policy (:data:`AER_POLICIES`).

5. Hot-plug and unplug (``pcifront_backend_changed``), while staying: the backend Reconfiguring
   (the toolstack opened a round) -> the frontend detaches every device whose ``state-i`` is 5
   (Closing), found by ``vdev-i`` (``pcifront_detach_devices``), and goes Reconfiguring; the
   backend Reconfigured (it exported and released) -> the frontend rescans its root buses for
   devfns it has no device at (``pcifront_attach_devices``: ``pci_scan_child_bus`` skips the
   present ones) and goes Connected. One line per device that appears or goes.

One op at a time, as the contract says: write it at byte 4, set bit 0 of the flags word, notify,
wait for a notification *and* the bit clear. Nothing here trusts the backend to answer: every
wait is bounded, and a timeout names the backend's state and whose move it is.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xenpciback_cli.errors import InputError, OperationFailed
from xenpciback_cli.pci.address import Bdf
from xenpciback_cli.pv.abi import (
    OP_END,
    OP_OFFSET,
    XEN_PCI_MAGIC,
    XEN_PCIB_ACTIVE,
    XEN_PCIB_AERHANDLER,
    XEN_PCIF_ACTIVE,
    ChannelState,
    ErsResult,
    Errno,
    PciOp,
    XenPciErr,
)
from xenpciback_cli.pv.codec import (
    AerOp,
    encode_op,
    read_aer_op,
    read_flags,
    read_op,
    set_flag_bits,
    write_aer_op,
)
from xenpciback_cli.sandbox.front_transport import FrontChannel, GrantedPage

#: XenbusState numbers (``io/xenbus.h``) and their names, for the lines a person reads.
STATE_NAMES = {0: "Unknown", 1: "Initialising", 2: "InitWait", 3: "Initialised", 4: "Connected",
               5: "Closing", 6: "Closed", 7: "Reconfiguring", 8: "Reconfigured"}
INIT_WAIT, INITIALISED, CONNECTED, CLOSING, CLOSED = 2, 3, 4, 5, 6
RECONFIGURING, RECONFIGURED = 7, 8
#: The grant reference and port this frontend picks (any free values would do).
DEFAULT_REF = 8
DEFAULT_PORT = 8
#: MSI-X vectors the probe asks for (fewer if the table is smaller).
PROBE_VECTORS = 3
#: How often a wait re-reads the page or re-sends a notification nobody took.
POLL = 0.05

_COMMAND, _STATUS, _CAP_PTR, _HEADER_TYPE = 0x04, 0x06, 0x34, 0x0E
_CMD_IO, _CMD_MEMORY, _CMD_MASTER = 0x1, 0x2, 0x4
_STATUS_CAP_LIST = 0x10
_CAP_MSI, _CAP_MSIX = 0x05, 0x11
#: ``--aer-result``: how the guest's driver answers AER requests. ``driver``: as a typical
#: driver (error_detected: NEED_RESET when the link is frozen, else CAN_RECOVER; mmio_enabled
#: and slot_reset: RECOVERED); a result name: that answer to every step; ``no-handler``: the
#: frontend does not advertise an AER handler; ``ignore``: advertises one and never answers.
_AER_STEPS: dict[int, str] = {PciOp.AER_DETECTED: "error_detected", PciOp.AER_MMIO: "mmio_enabled",
              PciOp.AER_SLOTRESET: "slot_reset", PciOp.AER_RESUME: "resume"}
AER_POLICIES = ("driver", "recovered", "can_recover", "need_reset", "disconnect", "none",
                "no-handler", "ignore")


def err_name(err: int) -> str:
    """``XEN_PCI_ERR_*`` or ``-E*`` name of an op's ``err`` (``pv.abi``)."""
    if err == 0:
        return "success"
    for enum in (XenPciErr, Errno):
        try:
            return enum(err).name.lower() if enum is XenPciErr else f"-{enum(err).name}"
        except ValueError:
            continue
    return f"error {err}"


def op_label(cmd: int) -> str:
    """``conf_read``, ``enable_msix``... (``op 42`` for a number pciif.h does not name)."""
    try:
        return PciOp(cmd).name.lower()
    except ValueError:
        return f"op {cmd}"


class FrontendTimeout(OperationFailed):
    """No backend answered in time; the message names the state and whose move it is."""


@dataclass(frozen=True)
class OpResult:
    """One op as sent and as answered."""

    cmd: int
    address: Bdf
    offset: int
    size: int
    value_in: int
    err: int
    value: int
    vectors: tuple[int, ...] = ()
    entries: tuple[int, ...] = ()

    @property
    def op_name(self) -> str:
        return op_label(self.cmd)

    @property
    def ok(self) -> bool:
        return self.err == 0

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"op": self.op_name, "cmd": self.cmd, "bdf": str(self.address),
                               "offset": self.offset, "size": self.size, "value": self.value_in}
        if self.entries:
            out["entries"] = list(self.entries)
        out["result"] = {"err": self.err, "err_name": err_name(self.err), "value": self.value,
                         "vectors": list(self.vectors)}
        return out


@dataclass
class GuestDevice:
    """A function the scan found, as the guest sees it."""

    address: Bdf
    vendor: int
    device: int
    class_code: int
    revision: int
    header_type: int
    subsystem: tuple[int, int] = (0, 0)

    @property
    def multifunction(self) -> bool:
        return bool(self.header_type & 0x80)

    def class_name(self) -> str:
        from xenpciback_cli.pci.names import BASE_CLASS_NAMES, database

        ids = database()
        name = ids.class_name(self.class_code) if ids is not None else None
        return name or BASE_CLASS_NAMES.get(self.class_code >> 16, "Unknown class")

    def names(self) -> tuple[str | None, str | None]:
        from xenpciback_cli.pci.names import database

        ids = database()
        if ids is None:
            return None, None
        return ids.vendor(self.vendor), ids.device(self.vendor, self.device)

    def to_json(self) -> dict[str, Any]:
        vendor_name, device_name = self.names()
        return {"bdf": str(self.address), "vendor": f"{self.vendor:04x}",
                "device": f"{self.device:04x}", "class": f"{self.class_code:06x}",
                "class_name": self.class_name(), "revision": self.revision,
                "header_type": self.header_type & 0x7F, "multifunction": self.multifunction,
                "subsystem": f"{self.subsystem[0]:04x}:{self.subsystem[1]:04x}",
                "vendor_name": vendor_name, "device_name": device_name}


@dataclass
class ProbeStep:
    """One step of the driver-like probe: what was tried, what came back, in words."""

    device: Bdf
    step: str
    ok: bool
    detail: str
    ops: list[OpResult] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"bdf": str(self.device), "step": self.step, "ok": self.ok, "detail": self.detail,
                "ops": [op.to_json() for op in self.ops]}


class Recorder:
    """``--record FILE``: the guest's side as a version 1 trace (docs/trace-format.md): a
    ``device`` line per function the backend exported (``snapshot``: host -> its line, taken
    before the guest's first op on it), the ops as the guest sent them and their answers, and
    the frontend's own xenbus states. The header's mode is vpci unless every device sits at its
    host address (passthrough)."""

    def __init__(self, writer: Any, domid: int,
                 snapshot: Callable[[Bdf, Bdf], Any] | None = None) -> None:
        self.writer = writer
        self.domid = domid
        self.snapshot = snapshot
        #: guest address -> host address, as the backend's ``vdev-i``/``dev-i`` say
        self.hosts: dict[Bdf, Bdf] = {}
        self.declared: set[Bdf] = set()
        #: frontend states before the mode is known (the header comes first)
        self.pending: list[int] | None = []

    def devices(self, pairs: list[tuple[Bdf, Bdf]]) -> None:
        """The backend's exported functions now (guest, host): declare the new ones."""
        if pairs:
            self.writer.begin("passthrough" if all(g == h for g, h in pairs) else "vpci")
        self._flush_states()
        for guest, host in pairs:
            self.hosts[guest] = host
            if host in self.declared or self.snapshot is None:
                continue
            snap = self.snapshot(host, guest)
            if snap is not None:
                self.writer.device(snap)
                self.declared.add(host)

    def state(self, value: int) -> None:
        if self.pending is not None and value not in (CLOSING, CLOSED):
            self.pending.append(value)  # the header, which needs the devices, comes first
            return
        self._flush_states()
        self.writer.xenbus_state(self.domid, str(value), end="frontend")

    def _flush_states(self) -> None:
        pending, self.pending = self.pending, None
        for value in pending or ():
            self.writer.xenbus_state(self.domid, str(value), end="frontend")

    def __call__(self, result: OpResult) -> None:
        from xenpciback_cli.pv.trace import TraceRecord

        address = result.address
        request = encode_op(result.cmd, address.domain, address.bus, address.devfn,
                            result.offset, result.size, result.value_in & 0xFFFFFFFF,
                            msix_entries=tuple((0, e) for e in result.entries))
        host = self.hosts.get(address)
        reached = host is not None and host in self.declared \
            and result.err != XenPciErr.DEV_NOT_FOUND
        self.writer.op(TraceRecord(self.domid, request, result.err, result.value & 0xFFFFFFFF,
                                   result.vectors), str(host) if reached else None)


class PciFront:
    """pcifront for domain ``domid`` in sandbox ``sandbox``, over its xenstore socket."""

    def __init__(self, sandbox: Path, domid: int, *, timeout: float = 10.0,
                 ref: int = DEFAULT_REF, port: int = DEFAULT_PORT,
                 recorder: Callable[[OpResult], None] | None = None,
                 xenstore_socket: str | None = None, aer_policy: str = "driver",
                 on_aer: Callable[[str], None] | None = None,
                 on_change: Callable[[str], None] | None = None) -> None:
        self.sandbox = Path(sandbox)
        self.domid = domid
        self.timeout = timeout
        self.ref, self.port = ref, port
        self.recorder = recorder
        self.socket = xenstore_socket or str(self.sandbox / "xenstore" / "socket.d" / str(domid))
        self.frontend = f"/local/domain/{domid}/device/pci/0"
        self.backend = f"/local/domain/0/backend/pci/{domid}/0"
        self.client: Any = None
        self.grant: GrantedPage | None = None
        self.channel: FrontChannel | None = None
        self.roots: list[tuple[int, int]] = []
        self.results: list[OpResult] = []
        #: The functions the guest has now (scan, then hot-plug and unplug): address -> device.
        self.devices: dict[Bdf, GuestDevice] = {}
        self.on_change = on_change
        if aer_policy not in AER_POLICIES:
            raise ValueError(f"AER policy {aer_policy!r}: one of {', '.join(AER_POLICIES)}")
        self.aer_policy = aer_policy
        self.on_aer = on_aer
        self.aer_ops: list[tuple[AerOp, int | None]] = []
        self._token = f"xen-pciback-pcifront-{domid}"

    # -- xenstore ---------------------------------------------------------------------------
    def _read(self, path: str) -> str | None:
        from xenpciback_cli.xenstore.client import XenstoreError

        try:
            value: bytes = self.client.read(path)
        except XenstoreError as exc:
            if exc.errno_name in ("ENOENT", "EACCES"):
                return None
            raise
        return value.decode("utf-8", "replace").strip()

    def _state(self, path: str) -> int | None:
        text = self._read(f"{path}/state")
        return int(text) if text is not None and text.isdigit() and len(text) < 3 else None

    def backend_state(self) -> int | None:
        return self._state(self.backend)

    def frontend_state(self) -> int | None:
        return self._state(self.frontend)

    def _wait_state(self, wanted: Callable[[int | None], bool], deadline: float,
                    phase: str) -> int | None:
        while True:
            state = self.backend_state()
            if wanted(state):
                return state
            left = deadline - time.monotonic()
            if left <= 0:
                raise FrontendTimeout(self.stuck(phase))
            self.client.next_event(min(left, 0.5))
            while self.client.next_event(0) is not None:
                pass

    def stuck(self, phase: str) -> str:
        """One line: how long we waited, for what, the backend's state and whose move it is."""
        try:
            be, fe = self.backend_state(), self.frontend_state()
        except Exception:  # noqa: BLE001 - the diagnosis must not fail: say we cannot tell
            be = fe = None
        waited = f"no backend answered within {self.timeout:g}s ({phase})"
        if be is None:
            return (f"{waited}: domain {self.domid} has no PCI backend directory "
                    f"({self.backend}): the toolstack's move - attach a device to it")
        where = f"the backend of domain {self.domid} is {STATE_NAMES.get(be, be)} ({be})"
        if fe is not None:
            where += f", the frontend {STATE_NAMES.get(fe, fe)} ({fe})"
        if be in (0, 1):
            whose = "the backend's move: it has not probed (is 'xen-pciback serve foreground' running?)"
        elif be in (INIT_WAIT, INITIALISED) and fe == INITIALISED:
            whose = ("the backend's move: it has not mapped the page and connected "
                     "(is 'xen-pciback serve foreground' running?)")
        elif be == INIT_WAIT:
            whose = "the toolstack's move: no device exported yet (attach one)"
        elif be == CONNECTED:
            whose = ("the backend's move: it is Connected but did not answer the op "
                     "(is 'xen-pciback serve foreground' still running?)")
        elif be in (CLOSING, CLOSED):
            whose = "the backend is going away: detach and attach again"
        else:
            whose = "the backend's move"
        return f"{waited}: {where}; {whose}"

    # -- connect ----------------------------------------------------------------------------
    def connect(self) -> list[tuple[int, int]]:
        """Steps 1-5 of the contract; returns the root buses to scan."""
        from xenpciback_cli.xenstore.client import XenstoreClient

        deadline = time.monotonic() + self.timeout
        try:
            self.client = XenstoreClient.open_socket(self.socket, timeout=self.timeout)
        except OSError as exc:
            raise OperationFailed(f"cannot reach domain {self.domid}'s xenstore at "
                                  f"{self.socket}: {exc.strerror or exc}") from None
        self.client.watch(f"{self.backend}/state", self._token)
        self._wait_state(lambda s: s in (INIT_WAIT, INITIALISED), deadline,
                         "waiting for the backend to reach InitWait")
        self.grant = GrantedPage(self.sandbox, self.domid, self.ref)
        self.channel = FrontChannel(self.sandbox, self.domid, self.port)
        if self.aer_policy != "no-handler":  # pcifront: flags := 0, then set the AER handler bit
            set_flag_bits(self.grant.page, set_mask=XEN_PCIB_AERHANDLER)

        def publish(tx: Any) -> None:
            tx.write(f"{self.frontend}/pci-op-ref", str(self.ref))
            tx.write(f"{self.frontend}/event-channel", str(self.port))
            tx.write(f"{self.frontend}/magic", XEN_PCI_MAGIC)
            tx.write(f"{self.frontend}/state", str(INITIALISED))

        self.client.transact(publish)
        self._recorded_state(INITIALISED)
        self._wait_state(lambda s: s == CONNECTED, deadline,
                         "waiting for the backend to connect")
        self.client.write(f"{self.frontend}/state", str(CONNECTED))
        self._recorded_state(CONNECTED)
        self.roots = self.read_roots()
        self._declare()
        return self.roots

    def exported(self) -> list[tuple[Bdf, Bdf]]:
        """The backend's functions now, ``(guest, host)``: every ``dev-i``/``vdev-i`` pair not
        being closed (what a trace's ``device`` lines need)."""
        text = self._read(f"{self.backend}/num_devs") or "0"
        count = int(text) if text.isdigit() and len(text) < 4 else 0
        pairs = []
        for i in range(count):
            if self._read(f"{self.backend}/state-{i}") in (str(CLOSING), str(CLOSED)):
                continue
            guest = _parse_vdev(self._read(f"{self.backend}/vdev-{i}"))
            try:
                host = Bdf.parse(self._read(f"{self.backend}/dev-{i}") or "")
            except (ValueError, OperationFailed, InputError):
                continue
            if guest is not None:
                pairs.append((guest, host))
        return pairs

    def _declare(self) -> None:
        devices = getattr(self.recorder, "devices", None)
        if devices is not None:
            devices(self.exported())

    def _recorded_state(self, state: int) -> None:
        record = getattr(self.recorder, "state", None)
        if record is not None:
            record(state)

    def read_roots(self) -> list[tuple[int, int]]:
        count_text = self._read(f"{self.backend}/root_num") or "0"
        count = int(count_text) if count_text.isdigit() and len(count_text) < 4 else 0
        roots = []
        for k in range(count):
            text = self._read(f"{self.backend}/root-{k}") or ""
            parts = text.split(":")
            try:
                domain, bus = int(parts[0], 16), int(parts[1], 16)
            except (IndexError, ValueError):
                continue  # pcifront: "Error reading PCI root"; skip it
            if 0 <= domain <= 0xFFFF and 0 <= bus <= 0xFF and (domain, bus) not in roots:
                roots.append((domain, bus))
        return roots

    # -- ops --------------------------------------------------------------------------------
    def op(self, cmd: int, address: Bdf, offset: int = 0, size: int = 0, value: int = 0,
           entries: Iterable[int] = ()) -> OpResult:
        """Send one op and wait for its answer (step 6 of the contract)."""
        assert self.grant is not None and self.channel is not None, "connect() first"
        page, channel = self.grant.page, self.channel
        entry_list = tuple(entries)
        raw = encode_op(cmd, address.domain, address.bus, address.devfn, offset, size, value,
                        msix_entries=tuple((0, e) for e in entry_list))
        # Stale notifications must not be taken for this op's answer: drained before the bit is
        # set, never after (a backend polling the page may answer at once, and its notification
        # would be drained with them).
        channel.drain()
        page[OP_OFFSET:OP_END] = raw
        flags = read_flags(page) | XEN_PCIF_ACTIVE
        page[0:4] = flags.to_bytes(4, "little")
        deadline = time.monotonic() + self.timeout
        notified = channel.notify()
        answered = False
        while True:
            left = deadline - time.monotonic()
            if channel.wait(min(POLL, max(left, 0))):
                answered = True
            if answered and not read_flags(page) & XEN_PCIF_ACTIVE:
                break
            if left <= 0:
                raise FrontendTimeout(self.stuck(f"{op_label(cmd)} on {address} not answered"))
            if not notified:  # no backend bound at .back yet (starting, restarting): retry
                notified = channel.notify()
        answer = read_op(page)
        vectors = tuple(v for v, _ in answer.msix_entries(len(entry_list))) \
            if cmd == PciOp.ENABLE_MSIX and answer.err == 0 else ()
        result = OpResult(cmd, address, offset, size, value, answer.err, answer.value, vectors,
                          entry_list)
        self.results.append(result)
        if self.recorder is not None:
            self.recorder(result)
        self.handle_aer()  # pcifront schedules its AER work if bit 2 was set meanwhile
        return result

    # -- AER --------------------------------------------------------------------------------
    def aer_answer(self, cmd: int, state: int) -> int | None:
        """The guest driver's ``pci_ers_result`` for one AER step (None: no answer)."""
        policy = self.aer_policy
        if policy == "ignore":
            return None
        if cmd == PciOp.AER_RESUME:
            return int(ErsResult.NONE)  # resume returns nothing (pcifront answers NONE)
        if policy == "driver":
            if cmd == PciOp.AER_DETECTED:
                frozen = state in (ChannelState.FROZEN, ChannelState.PERM_FAILURE)
                return int(ErsResult.NEED_RESET if frozen else ErsResult.CAN_RECOVER)
            if cmd in (PciOp.AER_MMIO, PciOp.AER_SLOTRESET):
                return int(ErsResult.RECOVERED)
            return int(ErsResult.NONE)  # pcifront: "bad request in aer recovery operation!"
        return int(ErsResult[policy.upper()])

    def handle_aer(self) -> bool:
        """Answer the AER request waiting in ``aer_op`` (``_XEN_PCIB_active`` set), if any."""
        if self.grant is None or self.channel is None:
            return False
        page = self.grant.page
        if not read_flags(page) & XEN_PCIB_ACTIVE:
            return False
        request = read_aer_op(page)
        if self.aer_ops and self.aer_ops[-1][0] == request and self.aer_ops[-1][1] is None:
            return False  # ignored already (policy "ignore"): not printed twice
        answer = self.aer_answer(request.cmd, request.err)
        self.aer_ops.append((request, answer))
        address = Bdf.from_devfn(request.domain, request.bus, request.devfn)
        what = _AER_STEPS.get(request.cmd, op_label(request.cmd))
        if request.cmd == PciOp.AER_DETECTED:
            try:
                what += f" ({ChannelState(request.err).name.lower()})"
            except ValueError:
                what += f" (channel state {request.err})"
        if answer is None:
            line = f"AER {what} on {address}: not answered (--aer-result ignore)"
        else:
            try:
                named = ErsResult(answer).name.lower()
            except ValueError:
                named = str(answer)
            write_aer_op(page, request._replace(err=answer))
            set_flag_bits(page, clear_mask=XEN_PCIB_ACTIVE)
            self.channel.notify()
            line = f"AER {what} on {address}: driver answered {named}"
        if self.on_aer is not None:
            self.on_aer(line)
        return True

    def conf_read(self, address: Bdf, offset: int, size: int) -> OpResult:
        return self.op(PciOp.CONF_READ, address, offset, size)

    def conf_write(self, address: Bdf, offset: int, size: int, value: int) -> OpResult:
        return self.op(PciOp.CONF_WRITE, address, offset, size, value)

    # -- scan -------------------------------------------------------------------------------
    def scan(self) -> list[GuestDevice]:
        """Every devfn of every root bus (``pcifront_scan_bus``), then each found function's
        header; a devfn the guest has a device at already is skipped (a rescan)."""
        found = []
        for domain, bus in self.roots:
            for devfn in range(256):
                address = Bdf(domain, bus, devfn >> 3, devfn & 7)
                if address in self.devices:
                    continue
                ids = self.conf_read(address, 0, 4)
                if ids.err != 0 or ids.value & 0xFFFF in (0xFFFF, 0x0000):
                    continue
                cls = self.conf_read(address, 0x08, 4)
                header = self.conf_read(address, _HEADER_TYPE, 1)
                subsys = self.conf_read(address, 0x2C, 4)
                found.append(GuestDevice(
                    address, ids.value & 0xFFFF, ids.value >> 16,
                    cls.value >> 8 if cls.ok else 0xFF0000, cls.value & 0xFF if cls.ok else 0,
                    header.value & 0xFF if header.ok else 0,
                    (subsys.value & 0xFFFF, subsys.value >> 16) if subsys.ok else (0, 0)))
                self.devices[address] = found[-1]
        return found

    # -- hot-plug and unplug ----------------------------------------------------------------
    def follow(self) -> bool:
        """One step of a Reconfiguring round, if the backend's state asks for one
        (``pcifront_backend_changed``); True if the frontend moved."""
        backend, frontend = self.backend_state(), self.frontend_state()
        if backend == RECONFIGURING and frontend == CONNECTED:
            self.detach_closing()
            self.client.write(f"{self.frontend}/state", str(RECONFIGURING))
            self._recorded_state(RECONFIGURING)
            return True
        if backend == RECONFIGURED and frontend == RECONFIGURING:
            self._declare()
            self.rescan()
            self.client.write(f"{self.frontend}/state", str(CONNECTED))
            self._recorded_state(CONNECTED)
            return True
        return False

    def detach_closing(self) -> list[Bdf]:
        """``pcifront_detach_devices``: every ``dev-i`` the toolstack marked Closing (5) goes,
        found by its ``vdev-i``."""
        gone = []
        text = self._read(f"{self.backend}/num_devs") or "0"
        count = int(text) if text.isdigit() and len(text) < 4 else 0
        for i in range(count):
            if self._read(f"{self.backend}/state-{i}") != str(CLOSING):
                continue
            address = _parse_vdev(self._read(f"{self.backend}/vdev-{i}"))
            if address is None:
                self._said(f"hot-unplug: dev-{i}: unreadable vdev-{i}, skipped")
                continue
            if self.devices.pop(address, None) is None:
                self._said(f"hot-unplug: {address}: no such device here, skipped")
                continue
            gone.append(address)
            self._said(f"hot-unplug: {address} removed")
        return gone

    def rescan(self) -> list[GuestDevice]:
        """``pcifront_attach_devices``: re-read the roots, scan the devfns with no device."""
        for root in self.read_roots():
            if root not in self.roots:
                self.roots.append(root)
        found = self.scan()
        for dev in found:
            self._said(f"hot-plug: {device_line(dev)}")
        return found

    def _said(self, line: str) -> None:
        if self.on_change is not None:
            self.on_change(line)

    # -- probe ------------------------------------------------------------------------------
    def probe(self, dev: GuestDevice) -> list[ProbeStep]:
        """What a driver does first: header, memory decode on, BAR sizes, MSI-X on and off."""
        steps = [self._probe_header(dev), self._enable_decode(dev)]
        steps += self._size_bars(dev)
        steps += self._msix(dev)
        return steps

    def _probe_header(self, dev: GuestDevice) -> ProbeStep:
        ops = [self.conf_read(dev.address, off, 4) for off in range(0, 0x40, 4)]
        bad = [op for op in ops if not op.ok]
        detail = (f"64-byte header read; {len(bad)} reads refused ({err_name(bad[0].err)})" if bad
                  else "64-byte header read")
        return ProbeStep(dev.address, "header", not bad, detail, ops)

    def _enable_decode(self, dev: GuestDevice) -> ProbeStep:
        before = self.conf_read(dev.address, _COMMAND, 2)
        wanted = (before.value | _CMD_MEMORY | _CMD_MASTER) & 0xFFFF
        write = self.conf_write(dev.address, _COMMAND, 2, wanted)
        after = self.conf_read(dev.address, _COMMAND, 2)
        on = after.ok and bool(after.value & _CMD_MEMORY)
        detail = (f"COMMAND {before.value:#06x} -> wrote {wanted:#06x} ({err_name(write.err)}) "
                  f"-> reads {after.value:#06x}: memory decode {'on' if on else 'OFF'}")
        return ProbeStep(dev.address, "memory decode", write.ok and on, detail,
                         [before, write, after])

    def _size_bars(self, dev: GuestDevice) -> list[ProbeStep]:
        count = {0: 6, 1: 2}.get(dev.header_type & 0x7F, 0)
        steps = []
        index = 0
        while index < count:
            offset = 0x10 + 4 * index
            orig = self.conf_read(dev.address, offset, 4)
            ops = [orig]
            is_io = bool(orig.value & 1)
            is_64 = not is_io and (orig.value >> 1) & 3 == 2
            ops.append(self.conf_write(dev.address, offset, 4, 0xFFFFFFFF))
            probe = self.conf_read(dev.address, offset, 4)
            ops += [probe, self.conf_write(dev.address, offset, 4, orig.value)]
            mask = 0xFFFFFFFC if is_io else 0xFFFFFFF0
            size_bits = probe.value & mask
            high_bits = 0xFFFFFFFF
            if is_64 and index + 1 < count:
                orig_hi = self.conf_read(dev.address, offset + 4, 4)
                ops += [orig_hi, self.conf_write(dev.address, offset + 4, 4, 0xFFFFFFFF)]
                probe_hi = self.conf_read(dev.address, offset + 4, 4)
                ops += [probe_hi, self.conf_write(dev.address, offset + 4, 4, orig_hi.value)]
                high_bits = probe_hi.value
            restored = self.conf_read(dev.address, offset, 4)
            ops.append(restored)
            ok = all(op.ok for op in ops) and restored.value == orig.value
            if size_bits == 0:
                detail = "not implemented (reads back 0)"
            else:
                full = (high_bits << 32 | size_bits) if is_64 else size_bits
                width = 64 if is_64 else 32
                size = (~full & ((1 << width) - 1)) + 1
                if is_io:
                    size &= 0xFFFF
                kind = "I/O" if is_io else f"memory {width}-bit" + \
                    (", prefetchable" if orig.value & 8 else "")
                detail = f"{kind}, size {_human(size)}, restored to {orig.value:#010x}" + \
                    ("" if restored.value == orig.value else
                     f" (reads back {restored.value:#010x}!)")
            steps.append(ProbeStep(dev.address, f"BAR{index}", ok, detail, ops))
            index += 2 if is_64 else 1
        return steps

    def capabilities(self, dev: GuestDevice) -> dict[int, int]:
        """Capability id -> offset, walked through conf_read as the PCI core does."""
        status = self.conf_read(dev.address, _STATUS, 2)
        if not status.ok or not status.value & _STATUS_CAP_LIST:
            return {}
        caps: dict[int, int] = {}
        ptr = self.conf_read(dev.address, _CAP_PTR, 1).value & 0xFC
        for _ in range(48):  # PCI_FIND_CAP_TTL
            if ptr < 0x40:
                break
            head = self.conf_read(dev.address, ptr, 2)
            if not head.ok:
                break
            caps.setdefault(head.value & 0xFF, ptr)
            ptr = (head.value >> 8) & 0xFC
        return caps

    def _msix(self, dev: GuestDevice) -> list[ProbeStep]:
        caps = self.capabilities(dev)
        cap = caps.get(_CAP_MSIX)
        if cap is None:
            return [ProbeStep(dev.address, "MSI-X", True, "no MSI-X capability: skipped")]
        control = self.conf_read(dev.address, cap + 2, 2)
        table = (control.value & 0x7FF) + 1
        count = min(PROBE_VECTORS, table)
        enable = self.op(PciOp.ENABLE_MSIX, dev.address, value=count, entries=range(count))
        if enable.ok:
            detail = (f"enabled with {count} of {table} vectors: PIRQs "
                      + ", ".join(str(v) for v in enable.vectors))
        else:
            detail = f"enable with {count} vectors refused: {err_name(enable.err)} ({enable.err})"
        steps = [ProbeStep(dev.address, "MSI-X enable", enable.ok, detail, [control, enable])]
        disable = self.op(PciOp.DISABLE_MSIX, dev.address)
        steps.append(ProbeStep(dev.address, "MSI-X disable", disable.ok,
                               f"disabled: {err_name(disable.err)}, legacy PIRQ {disable.value}",
                               [disable]))
        return steps

    # -- staying and leaving ----------------------------------------------------------------
    def stay(self, stop: threading.Event) -> None:
        """Hold the connection: take notifications until ``stop`` or the backend closes."""
        assert self.channel is not None
        while not stop.is_set():
            self.channel.wait(0.1)
            self.handle_aer()
            while self.client.next_event(0) is not None:  # the state watch: re-read below
                pass
            state = self.backend_state()
            if state in (CLOSING, CLOSED):
                return
            self.follow()

    def close(self) -> None:
        """Step 7: Closing, Closed; remove the grant file and the socket."""
        try:
            if self.client is not None and self.frontend_state() is not None:
                self.client.write(f"{self.frontend}/state", str(CLOSING))
                self._recorded_state(CLOSING)
                self.client.write(f"{self.frontend}/state", str(CLOSED))
                self._recorded_state(CLOSED)
        except Exception:  # noqa: BLE001 - leaving: the daemon may be gone already
            pass
        finally:
            if self.channel is not None:
                self.channel.close()
                self.channel = None
            if self.grant is not None:
                self.grant.close()
                self.grant = None
            if self.client is not None:
                try:
                    self.client.close()
                except OSError:
                    pass
                self.client = None


def _parse_vdev(text: str | None) -> Bdf | None:
    """``vdev-i`` as the backend writes it (``0000:00:01.00``); None if unreadable."""
    try:
        head, function = (text or "").strip().rsplit(".", 1)
        domain, bus, slot = (int(part, 16) for part in head.split(":"))
        return Bdf(domain, bus, slot, int(function, 16))
    except (ValueError, TypeError):
        return None


def _human(size: int) -> str:
    for unit, shift in (("G", 30), ("M", 20), ("K", 10)):
        if size >= 1 << shift and size % (1 << shift) == 0:
            return f"{size >> shift}{unit}"
    return str(size)


@dataclass
class GuestRun:
    """What ``sandbox guest N`` did: the roots, the devices found, the probe's steps."""

    domid: int
    roots: list[tuple[int, int]]
    devices: list[GuestDevice]
    probe: list[ProbeStep]
    ops: int

    def to_json(self) -> dict[str, Any]:
        return {"domid": self.domid,
                "roots": [f"{d:04x}:{b:02x}" for d, b in self.roots],
                "devices": [d.to_json() for d in self.devices],
                "probe": [s.to_json() for s in self.probe], "ops": self.ops}


def run_guest(front: PciFront) -> GuestRun:
    """Connect, scan, probe every device found (the caller closes ``front``)."""
    roots = front.connect()
    devices = front.scan()
    steps: list[ProbeStep] = []
    for dev in devices:
        steps += front.probe(dev)
    return GuestRun(front.domid, roots, devices, steps, len(front.results))


def check_domain(sandbox: Path, client: Any, domid: int) -> None:
    """``sandbox guest N`` plays domain N's pcifront: the domain must exist and have no simulated
    guest of its own (that one is the frontend already)."""
    from xenpciback_cli.errors import InputError, SafetyRefusal
    from xenpciback_cli.sandbox import guest as simguest

    if not 0 < domid < 0x7FF0:
        raise InputError(f"invalid domain id {domid}: guests are 1-32751 (0 is dom0)")
    if not client.exists(f"/local/domain/{domid}"):
        raise InputError(f"unknown domain {domid}: create it with "
                         f"'sandbox domain create {domid} --no-guest'")
    if simguest.pid_file(Path(sandbox), domid).exists():
        raise SafetyRefusal(f"domain {domid} has a simulated guest already (its pcifront): "
                            f"'sandbox guest' is for domains created with "
                            f"'sandbox domain create {domid} --no-guest'")


def device_line(dev: GuestDevice) -> str:
    """One function as lspci shows it: address, class, names, [vendor:device]."""
    vendor_name, device_name = dev.names()
    name = " ".join(x for x in (vendor_name, device_name) if x) or "device"
    rev = f" (rev {dev.revision:02x})" if dev.revision else ""
    return (f"{dev.address} {dev.class_name()} [{dev.class_code >> 8:04x}]: {name} "
            f"[{dev.vendor:04x}:{dev.device:04x}]{rev}")


def format_view(run: GuestRun) -> list[str]:
    """The guest's lspci-like view, then the probe's results: the lines a person reads."""
    roots = ", ".join(f"{d:04x}:{b:02x}" for d, b in run.roots) or "none"
    lines = [f"# domain {run.domid}'s PCI view (root buses: {roots})"]
    if not run.devices:
        lines.append("no devices")
    for dev in run.devices:
        lines.append(device_line(dev))
    if run.probe:
        lines.append("")
        lines.append("# driver-like probe")
    for step in run.probe:
        lines.append(f"{step.device} {step.step}: {'ok' if step.ok else 'FAILED'} - {step.detail}")
    lines.append("")
    lines.append(f"{run.ops} ops answered")
    return lines

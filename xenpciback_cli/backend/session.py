"""One guest's side of the shared page: the devices it was given and the ops it sends (sans-IO).

A :class:`GuestSession` owns the devices exported to one guest - each with its own config-space
overlay (``config/overlay.py``) - and answers ops: bytes of the shared page in, ``(err, value[,
vectors])`` out. The event loop (not built yet) maps the page and calls :meth:`process` when the
guest's event channel fires; the xenbus core (``xenbus.py``) decides when devices come and go.

Rules (Linux ``pciback_ops.c``, ``vpci.c``, ``passthrough.c``; spec ``pciback.md`` §3):
  1. The op is copied out of the page once and decided on from the copy (XSA-155); only ``err``,
     ``value`` and the MSI-X vectors go back (``pv/codec.py``).
  2. Every field is untrusted. The device is looked up first by the exact (domain, bus, devfn)
     the guest names: not exported is ``XEN_PCI_ERR_dev_not_found`` (-1), whatever ``cmd`` says.
     Then ``cmd``: conf_read/conf_write go to the overlay (bad offset or size: its -2); ops 2-5
     are MSI/MSI-X with the XSA-157 checks and exactly the codes of spec §3.5; anything else -4.
  3. Guest input never raises out of :meth:`GuestSession.handle`: a guest-caused problem is an
     error code. An exception is a bug in the core or an adapter and is left to propagate.
  4. ``value`` is echoed unchanged where Linux leaves it (not found, not implemented, conf_write,
     the MSI-X pre-checks), as the kernel writes its private copy's ``value`` back.
"""

from __future__ import annotations

from collections import deque
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from xenpciback_cli.backend.ports import ConfigAccess, InterruptControl, InterruptError
from xenpciback_cli.backend.topology import VPCI_ROOT, BusFull, Mode, VpciBus, passthrough_roots
from xenpciback_cli.config.fields import ConfigAccessError
from xenpciback_cli.config.overlay import OverlayDevice, Policy
from xenpciback_cli.config.registers import CapId, Command, Reg
from xenpciback_cli.pci.address import Bdf
from xenpciback_cli.pci.device import PciDevice
from xenpciback_cli.pci.quirk import Quirk
from xenpciback_cli.pv.abi import (
    ERR,
    ERR_OFFSET,
    OP_HEADER,
    OP_OFFSET,
    SH_INFO_MAX_VEC,
    VALUE,
    VALUE_OFFSET,
    Errno,
    PciOp,
)
from xenpciback_cli.pv.codec import OP_COPY, Op, Result, decode_op, short_page, write_result
from xenpciback_cli.pv.trace import TraceRecord

_NOT_FOUND = -1
_NOT_IMPLEMENTED = -4
_OP_FAILED = -5
_CONF_READ = int(PciOp.CONF_READ)
_CONF_WRITE = int(PciOp.CONF_WRITE)
_MEMORY = int(Command.MEMORY)
_EINVAL, _ENXIO, _ENOSPC, _EALREADY = (int(e) for e in (Errno.EINVAL, Errno.ENXIO, Errno.ENOSPC,
                                                       Errno.EALREADY))
#: The header fields an op is served on, from the private copy: cmd, (domain, bus, devfn) as the
#: 12 bytes the guest wrote (the route key: an exact match on the three uint32s, no tuple built),
#: offset, size, value. ``err`` and ``info`` are skipped; the MSI-X entries are decoded only for
#: ``enable_msix`` (``_enable_msix``).
_CONF_HEADER = struct.Struct("<I4x12siiI")
assert _CONF_HEADER.size == OP_HEADER.size - 4 and OP_HEADER.format == "<IiIIIiiII"
_unpack_conf = _CONF_HEADER.unpack_from
_copy_op = OP_COPY.unpack_from
_ADDRESS = struct.Struct("<III")
_pack_err = ERR.pack_into
_pack_value = VALUE.pack_into
#: Log lines kept for the event loop to drain (older ones are dropped, never unbounded).
MAX_EVENTS = 256


class ExportError(ValueError):
    """A device cannot be exported (already exported to this guest, or no virtual slot left).
    A local error: the xenbus core turns it into ``xenbus_dev_fatal``."""


@dataclass(eq=False, slots=True)
class ExportedDevice:
    """One device as this guest has it: where it is on both sides and its interrupt state."""

    host: Bdf
    guest: Bdf
    overlay: OverlayDevice
    config: ConfigAccess
    #: The SR-IOV physical function's config space (a VF's memory decode is the PF's).
    physfn_config: ConfigAccess | None = None
    bridges: tuple[Bdf, ...] = ()
    msi_enabled: bool = False
    msix_enabled: bool = False
    #: What the adapter mapped while enabled: MSI-X table entries (empty for MSI) and PIRQs.
    entries: tuple[int, ...] = ()
    pirqs: tuple[int, ...] = ()
    #: Linux's ``ack_intr``: the fake INTx handler acks while no MSI/MSI-X is on (spec §3.7).
    ack_intr: bool = True
    #: Failed enable ops; the first of each kind is logged, the rest only counted (XSA-157).
    failed_enables: int = 0
    warned: set[str] = field(default_factory=set)

    def interrupts(self) -> tuple[str, tuple[int, ...], tuple[int, ...]] | None:
        """``(kind, entries, pirqs)`` while MSI (``"msi"``) or MSI-X (``"msix"``) is enabled:
        what a restarted backend needs to take the mapping over (``restore_interrupts``)."""
        if self.msix_enabled:
            return "msix", self.entries, self.pirqs
        if self.msi_enabled:
            return "msi", (), self.pirqs
        return None


class GuestSession:
    """The devices exported to guest ``domid`` and the dispatcher for its ops."""

    def __init__(self, domid: int, interrupts: InterruptControl, *, mode: Mode = Mode.VPCI,
                 policy: Policy | None = None,
                 recorder: Callable[[TraceRecord], None] | None = None) -> None:
        self.domid = domid
        self.mode = mode
        self.interrupts = interrupts
        self.policy = policy if policy is not None else Policy()
        self.recorder = recorder
        self.vpci = VpciBus()
        #: (domain, bus, devfn) as the guest names it -> the device.
        self.devices: dict[tuple[int, int, int], ExportedDevice] = {}
        #: The same devices keyed on their packed (domain, bus, devfn) bytes, with the overlay's
        #: conf_read/conf_write closures: the per-op lookup (kept in step by export/release).
        self._routes: dict[bytes, tuple[Callable[..., tuple[int, int]],
                                        Callable[..., tuple[int, int]], ExportedDevice]] = {}
        self.ops_served = 0
        #: The device the op being recorded was routed to (None: no device at that address),
        #: set just before each call of ``recorder``: the recorder's owner needs no lookup.
        self.recorded_device: ExportedDevice | None = None
        self.events: deque[str] = deque(maxlen=MAX_EVENTS)
        self._other_ops: dict[int, Callable[[ExportedDevice, int, bytes], Result]] = {
            PciOp.ENABLE_MSI: self._enable_msi, PciOp.DISABLE_MSI: self._disable_msi,
            PciOp.ENABLE_MSIX: self._enable_msix, PciOp.DISABLE_MSIX: self._disable_msix,
        }

    # -- devices ---------------------------------------------------------------------------
    def export(self, host: Bdf, config: ConfigAccess, *, device: PciDevice | None = None,
               permissive: bool = False, quirks: Iterable[Quirk] = (),
               allow_interrupt_control: bool = False, is_virtfn: bool | None = None,
               physfn_config: ConfigAccess | None = None,
               bridges: tuple[Bdf, ...] = (), guest: Bdf | None = None) -> ExportedDevice:
        """Give ``host`` to the guest: build its overlay over ``config`` (with the device's
        resources, IRQ and ids from ``device`` when known, ``permissive``/``quirks`` from
        ``engine.backend_settings``), do the export-time hardware step (``prepare_export``) and
        place it on the guest's bus. ``bridges``: its upstream bridges, nearest first
        (passthrough roots). ``guest``: the address the xenbus core already chose (vpci)."""
        if any(dev.host == host for dev in self.devices.values()):
            raise ExportError(f"{host} is already exported to domain {self.domid}")
        if is_virtfn is None:
            is_virtfn = device is not None and device.physfn is not None
        options = {"permissive": permissive, "quirks": tuple(quirks),
                   "allow_interrupt_control": allow_interrupt_control, "policy": self.policy}
        overlay = OverlayDevice.for_device(config, device, **options) if device is not None \
            else OverlayDevice(config, **options)  # type: ignore[arg-type]
        if self.mode is Mode.VPCI and guest is not None:
            if not self.vpci.place(host, guest):
                raise ExportError(f"{guest} is taken on domain {self.domid}'s bus")
        elif self.mode is Mode.VPCI:
            try:
                guest = self.vpci.add(host, is_virtfn=is_virtfn)
            except BusFull as exc:
                raise ExportError(f"{exc} (exporting {host} to domain {self.domid})") from None
        else:
            guest = host
        overlay.prepare_export()
        exported = ExportedDevice(host, guest, overlay, config, physfn_config, bridges)
        self.devices[(guest.domain, guest.bus, guest.devfn)] = exported
        self._routes[_ADDRESS.pack(guest.domain, guest.bus, guest.devfn)] = (
            overlay.op_read, overlay.op_write, exported)
        self._event(f"device {host} exported to domain {self.domid} as {guest}")
        return exported

    def release(self, guest: Bdf) -> ExportedDevice | None:
        """Take the device at guest address ``guest`` back (``xen_pcibk_reset_device``): MSI-X
        and MSI off, the overlay reset. None if the guest has no device there."""
        exported = self.devices.pop((guest.domain, guest.bus, guest.devfn), None)
        if exported is None:
            return None
        del self._routes[_ADDRESS.pack(guest.domain, guest.bus, guest.devfn)]
        if self.mode is Mode.VPCI:
            self.vpci.remove(guest)
        try:
            if exported.msix_enabled:
                self.interrupts.disable_msix(self.domid, exported.host)
            if exported.msi_enabled:
                self.interrupts.disable_msi(self.domid, exported.host)
        except InterruptError as exc:
            self._event(f"device {exported.host}: could not disable MSI/MSI-X on release: {exc}")
        exported.msi_enabled = exported.msix_enabled = False
        exported.entries = exported.pirqs = ()
        exported.overlay.reset()
        self._event(f"device {exported.host} released from domain {self.domid}")
        return exported

    def roots(self) -> list[tuple[int, int]]:
        """The (domain, bus) root buses to publish as ``root-K``."""
        if self.mode is Mode.VPCI:
            return [VPCI_ROOT] if self.devices else []
        return passthrough_roots({d.host: d.bridges for d in self.devices.values()})

    def exported(self, host: Bdf) -> ExportedDevice | None:
        """The device exported from ``host``, or None."""
        return next((d for d in self.devices.values() if d.host == host), None)

    def guest_address(self, host: Bdf) -> Bdf | None:
        """Where the guest sees ``host`` (for AER requests); None if not exported."""
        dev = self.exported(host)
        return None if dev is None else dev.guest

    def restore_interrupts(self, host: Bdf, kind: str, entries: tuple[int, ...],
                           pirqs: tuple[int, ...]) -> str | None:
        """After a restart: MSI or MSI-X was enabled on exported ``host`` by an earlier run
        (its record). Checked against the device's enable bit - the hardware wins: a device
        reset meanwhile has it clear - then the flags are set again and the adapter takes the
        mapping over (``InterruptControl.adopt``), so the guest's next disable unmaps it and a
        second enable gets -EALREADY/-EBUSY, not a second mapping. None when restored, else
        why the record is dropped (one line for the log)."""
        dev = self.exported(host)
        if dev is None:
            return f"{host} is not exported to domain {self.domid}"
        if dev.msi_enabled or dev.msix_enabled:
            return f"{host} already has MSI or MSI-X enabled for domain {self.domid}"
        cap_id, bit = (CapId.MSIX, 0x8000) if kind == "msix" else (CapId.MSI, 0x0001)
        cap = dev.overlay.caps.find(cap_id)
        if cap is None:
            return f"{host} has no {kind.upper()} capability"
        try:
            enabled = bool(dev.config.read(cap.offset + 2, 2) & bit)
        except ConfigAccessError:
            return f"{host}'s config space cannot be read"
        if not enabled:
            return (f"{host}'s {'MSI-X' if kind == 'msix' else 'MSI'} enable bit is clear "
                    "(the device was reset meanwhile?)")
        try:
            self.interrupts.adopt(self.domid, host, kind, entries, pirqs)
        except InterruptError as exc:
            return str(exc)
        if kind == "msix":
            dev.msix_enabled = True
        else:
            dev.msi_enabled = True
        dev.entries, dev.pirqs = entries, pirqs
        dev.ack_intr = False
        self._event(f"domain {self.domid}: {'MSI-X' if kind == 'msix' else 'MSI'} on {host} "
                    f"taken over after a restart ({len(pirqs)} PIRQ(s))")
        return None

    # -- ops -------------------------------------------------------------------------------
    def process(self, page: bytearray | memoryview) -> Result:
        """Serve the op waiting in ``page``: copy it out once, dispatch, write the result back
        (``err``, ``value``, MSI-X vectors). Clearing ``_XEN_PCIF_active`` and notifying the
        guest are the event loop's. A buffer too short for an op raises ``PageError``.

        This is the per-op path (bench/bench_dispatch.py), so it is :meth:`_dispatch` written
        out for the two conf ops: one copy (``OP_COPY``, a single C call), one unpack of the
        fields served on, one dict lookup for the device, one call into its overlay, and the
        two ``pack_into`` of ``err`` and ``value`` - no Op, no frames besides the overlay's.
        """
        try:
            raw = _copy_op(page, OP_OFFSET)[0]  # the one copy (XSA-155)
        except struct.error:
            raise short_page(page) from None
        cmd, address, offset, size, value = _unpack_conf(raw)
        self.ops_served += 1
        route = self._routes.get(address)
        result: Result
        if route is None:
            result = _NOT_FOUND, value
        elif cmd == _CONF_READ:
            result = route[0](offset, size)
        elif cmd == _CONF_WRITE:
            result = route[1](offset, size, value)[0], value
        else:
            handler = self._other_ops.get(cmd)
            if handler is None:
                result = _NOT_IMPLEMENTED, value
            else:
                result = handler(route[2], value, raw)
            write_result(page, result)  # may carry MSI-X vectors
            if self.recorder is not None:
                self._record(raw, result, route[2])
            return result
        # A conf op's or a miss's (err, value): a wire code and a uint32 (the copy's value or
        # what the overlay read), so write_result's checks are not needed here.
        _pack_err(page, ERR_OFFSET, result[0])
        _pack_value(page, VALUE_OFFSET, result[1])
        if self.recorder is not None:
            self._record(raw, result, None if route is None else route[2])
        return result

    def _record(self, raw: bytes, result: Result, device: ExportedDevice | None) -> None:
        """Hand the op as decided on (the private copy) and its answer to the recorder, with
        ``recorded_device`` set to the device it was routed to (None: not exported) so the
        recorder's owner needs no second lookup."""
        assert self.recorder is not None
        self.recorded_device = device
        self.recorder(TraceRecord.of(self.domid, raw, result))

    def handle(self, op: Op) -> Result:
        """The answer to an op already copied out of the page (``pv.codec.read_op``)."""
        return self._dispatch(op.raw)

    def _dispatch(self, raw: bytes) -> Result:
        cmd, address, offset, size, value = _unpack_conf(raw)
        self.ops_served += 1
        route = self._routes.get(address)
        if route is None:
            return _NOT_FOUND, value
        if cmd == _CONF_READ:
            return route[0](offset, size)
        if cmd == _CONF_WRITE:
            return route[1](offset, size, value)[0], value
        handler = self._other_ops.get(cmd)
        if handler is None:
            return _NOT_IMPLEMENTED, value
        return handler(route[2], value, raw)

    # -- MSI and MSI-X (XSA-157; spec §3.5) --------------------------------------------------
    def _event(self, line: str) -> None:
        self.events.append(line)

    def _enable_failed(self, dev: ExportedDevice, kind: str, why: str) -> None:
        dev.failed_enables += 1
        if kind not in dev.warned:  # rate limit: a guest retrying in a loop fills no log
            dev.warned.add(kind)
            self._event(f"domain {self.domid}: enabling {kind} on {dev.host} failed: {why} "
                        "(logged once per device)")

    def _enable_msi(self, dev: ExportedDevice, value: int, raw: bytes) -> Result:
        if dev.msi_enabled:
            self._enable_failed(dev, "MSI", "MSI already enabled")
            return _OP_FAILED, 0
        if dev.msix_enabled:
            self._enable_failed(dev, "MSI", "MSI-X is enabled")
            return _OP_FAILED, 0
        if dev.overlay.caps.find(CapId.MSI) is None:
            self._enable_failed(dev, "MSI", "no MSI capability")
            return _OP_FAILED, 0
        try:
            pirq = self.interrupts.enable_msi(self.domid, dev.host)
        except InterruptError as exc:
            self._enable_failed(dev, "MSI", str(exc))
            return _OP_FAILED, 0
        dev.msi_enabled = True
        dev.entries, dev.pirqs = (), (pirq,)
        dev.ack_intr = False
        self._event(f"domain {self.domid}: MSI enabled on {dev.host} (pirq {pirq})")
        return 0, pirq & 0xFFFFFFFF

    def _disable_msi(self, dev: ExportedDevice, value: int, raw: bytes) -> Result:
        return self._disable(dev, dev.msi_enabled, "MSI", self.interrupts.disable_msi)

    def _disable(self, dev: ExportedDevice, enabled: bool, kind: str,
                 disable: Callable[[int, Bdf], None]) -> Result:
        """disable_msi / disable_msix: off if ``enabled`` (else nothing changes, XSA-157; MSI
        and MSI-X are never on together, so both flags end clear), then the legacy PIRQ."""
        if enabled:
            try:
                disable(self.domid, dev.host)
            except InterruptError as exc:
                self._event(f"domain {self.domid}: disabling {kind} on {dev.host} failed: {exc}")
            dev.msi_enabled = dev.msix_enabled = False
            dev.entries = dev.pirqs = ()
            dev.ack_intr = True
        return 0, self.interrupts.legacy_pirq(self.domid, dev.host) & 0xFFFFFFFF

    def _enable_msix(self, dev: ExportedDevice, value: int, raw: bytes) -> Result:
        count = value  # saved before anything else: the write-back count (XSA-155 follow-up)
        if count > SH_INFO_MAX_VEC:
            return _EINVAL, value
        if dev.msix_enabled:
            return _EALREADY, value
        try:  # memory decode as the hardware has it; a VF's is its PF's
            command = (dev.physfn_config or dev.config).read(Reg.COMMAND, 2)
        except ConfigAccessError:
            command = 0
        if dev.msi_enabled or not command & _MEMORY:
            return _ENXIO, value
        entries = decode_op(raw).msix_entries(count)
        indices = [entry for _, entry in entries]
        err = self._msix_table_check(dev, indices)
        if err:
            self._enable_failed(dev, "MSI-X", f"error {err}")
            dev.ack_intr = False
            return err, err & 0xFFFFFFFF
        try:
            pirqs = list(self.interrupts.enable_msix(self.domid, dev.host, indices))
        except InterruptError as exc:
            self._enable_failed(dev, "MSI-X", str(exc))
            dev.ack_intr = False
            return exc.errno, exc.errno & 0xFFFFFFFF
        if len(pirqs) != count:
            raise RuntimeError(f"enable_msix gave {len(pirqs)} PIRQs for {count} entries")
        dev.msix_enabled = True
        dev.entries, dev.pirqs = tuple(indices), tuple(pirqs)
        dev.ack_intr = False
        vectors = tuple(pirq & 0xFFFF if pirq else vector
                        for pirq, (vector, _) in zip(pirqs, entries))
        self._event(f"domain {self.domid}: MSI-X enabled on {dev.host} with {count} vectors")
        return 0, 0, vectors

    def _msix_table_check(self, dev: ExportedDevice, entries: list[int]) -> int:
        """What the PCI core refuses before enabling, in its order: no MSI-X capability or no
        entries (-EINVAL), an entry twice (-EINVAL), more entries than the table has (-ENOSPC),
        an entry outside the table (-EINVAL)."""
        cap = dev.overlay.caps.find(CapId.MSIX)
        if cap is None or not entries or len(set(entries)) != len(entries):
            return _EINVAL
        try:
            table_size = (dev.config.read(cap.offset + 2, 2) & 0x7FF) + 1
        except ConfigAccessError:
            return _ENXIO
        if len(entries) > table_size:
            return _ENOSPC
        if max(entries) >= table_size:
            return _EINVAL
        return 0

    def _disable_msix(self, dev: ExportedDevice, value: int, raw: bytes) -> Result:
        return self._disable(dev, dev.msix_enabled, "MSI-X", self.interrupts.disable_msix)

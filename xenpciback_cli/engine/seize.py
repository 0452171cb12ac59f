"""Hide (seize) and unhide (release) as plans of sysfs writes, run through the Host and journalled.

A plan is computed from the device's current state, shown whole by ``--dry-run``, and executed
write by write with the journal marking each one, so a crash at any point is recoverable
(:func:`recover`). The engine never prints; it returns results the CLI renders.

Seize methods, by what the kernel offers:

* ``override``: ``driver_override=<target>``, unbind from the current driver, ``drivers_probe``
  (the kernel's preferred way; nothing else can grab the device in between).
* ``slot`` (pciback on a kernel without driver_override): ``new_slot`` unless ``slots`` lists it
  already, unbind, ``bind``.
* ``new_id`` (pci-stub / vfio-pci without driver_override): unbind, ``new_id "vvvv dddd"``, which
  makes the driver probe matching unbound devices.

Rollback or completion after a crash hinges on one point of no return: the unbind from the host
driver (hide) or from the seize driver (unhide). Before it, the host still had / the guest side
still holds the device, so the operation is rolled back; after it, it is completed.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Protocol, TypeVar

from xenpciback_cli import errors
from xenpciback_cli.engine.journal import OPS, Journal, JournalEntry, PlannedWrite, pending_operations
from xenpciback_cli.engine.identity import DeviceIdentity, differences, identity_of
from xenpciback_cli.engine.preflight import Preflight, check_hide
from xenpciback_cli.engine import persist as persisted
from xenpciback_cli.engine.backend_settings import load_settings, record_release
from xenpciback_cli.engine.records import (
    RecordSet,
    SeizeRecord,
    drop_record,
    load_record,
    load_record_set,
    put_record,
)
from xenpciback_cli.host.model import AttributeWrite, Host, WriteHook, driver_name
from xenpciback_cli.pci.device import PciDevice
from xenpciback_cli.pci.address import Bdf
from xenpciback_cli.pci.drivers import PCIBACK_DRIVER, SEIZE_DRIVERS
from xenpciback_cli.pci.spec import BdfPattern
from xenpciback_cli.untrusted import decimal

T = TypeVar("T")


class XenstoreClient(Protocol):
    def write(self, path: str, value: str) -> None: ...
    def read(self, path: str) -> bytes: ...
    def rm(self, path: str) -> None: ...


def driver_path_key(bdf: Bdf) -> str:
    """libxl's record of the original driver, used by ``xl pci-assignable-remove -r``."""
    return f"/libxl/pci/{bdf.xs_key}/driver_path"


# -- plans ------------------------------------------------------------------------------------
def _w(path: str, value: str, description: str) -> PlannedWrite:
    return PlannedWrite(path, value, description)


def _unbind(bdf: Bdf, driver: str) -> PlannedWrite:
    return _w(f"bus/pci/drivers/{driver_name(driver)}/unbind", str(bdf), f"unbind from {driver}")


def _clear_override(bdf: Bdf) -> PlannedWrite:
    return _w(f"bus/pci/devices/{bdf}/driver_override", "\n", "clear driver_override")


def _ids(device: PciDevice) -> str:
    """The ``new_id``/``remove_id`` value for the device: "vvvv dddd"."""
    return f"{device.vendor_id:04x} {device.device_id:04x}"


def _added_slot(entry: JournalEntry) -> bool:
    """Whether the journalled plan had reached its ``new_slot`` write (ours to remove)."""
    return any(s.path.endswith("/new_slot") for s in entry.steps[:entry.done + 1])


def plan_hide(host: Host, device: PciDevice, target: str) -> tuple[str, list[PlannedWrite]]:
    """The writes that move ``device`` from its current driver to ``target``."""
    bdf, original = device.bdf, device.driver
    driver_name(target)
    steps: list[PlannedWrite] = []
    if host.supports_driver_override(bdf):
        steps.append(_w(f"bus/pci/devices/{bdf}/driver_override", target, f"set driver_override to {target}"))
        if original:
            steps.append(_unbind(bdf, original))
        steps.append(_w("bus/pci/drivers_probe", str(bdf), f"probe, binding {target}"))
        return "override", steps
    if target == PCIBACK_DRIVER:
        if str(bdf) not in host.pciback_slots():
            steps.append(_w(f"bus/pci/drivers/{target}/new_slot", str(bdf), "add to pciback slots"))
        if original:
            steps.append(_unbind(bdf, original))
        steps.append(_w(f"bus/pci/drivers/{target}/bind", str(bdf), f"bind {target}"))
        return "slot", steps
    if original:
        steps.append(_unbind(bdf, original))
    ids = _ids(device)
    steps.append(_w(f"bus/pci/drivers/{driver_name(target)}/new_id", ids, f"add id {ids} to {target}"))
    return "new_id", steps


def plan_release(host: Host, device: PciDevice, target: str, original: str | None, *,
                 rebind: bool, remove_slot: bool = True, method: str = "override") -> list[PlannedWrite]:
    """The writes that take ``device`` away from ``target`` and (with rebind) back to ``original``.

    Only a seize driver is ever unbound: a device some host driver has already is left with it
    (and not rebound), whatever the journal or the record say."""
    bdf = device.bdf
    driver_name(target)
    original = host_driver(original)
    steps: list[PlannedWrite] = []
    if device.driver_override:
        steps.append(_clear_override(bdf))
    held = device.driver in SEIZE_DRIVERS
    if held and device.driver is not None:
        steps.append(_unbind(bdf, device.driver))
    if method == "new_id":  # or the stub driver grabs the device again at the next probe
        ids = _ids(device)
        steps.append(_w(f"bus/pci/drivers/{target}/remove_id", ids, f"remove id {ids} from {target}"))
    if remove_slot and target == PCIBACK_DRIVER and str(bdf) in host.pciback_slots():
        steps.append(_w(f"bus/pci/drivers/{PCIBACK_DRIVER}/remove_slot", str(bdf), "remove from pciback slots"))
    if rebind and (device.driver is None or held):
        if original and original in host.loaded_drivers():
            steps.append(_w(f"bus/pci/drivers/{original}/bind", str(bdf), f"bind {original}"))
        else:
            steps.append(_w("bus/pci/drivers_probe", str(bdf), "probe for a host driver"))
    return steps


def host_driver(name: str | None) -> str | None:
    """The name as an original (host) driver: a seize driver is never one (a device that was on
    pci-stub has no host driver to go back to; the kernel's probe finds one), and a name read
    from a state file must be a name."""
    if not name or name in SEIZE_DRIVERS:
        return None
    return driver_name(name)


# -- results ----------------------------------------------------------------------------------
class DeviceStatus(StrEnum):
    """What an operation did (or would do) to one device; restore adds refused/failed/missing."""

    SEIZED = "seized"
    ALREADY_SEIZED = "already-seized"
    RELEASED = "released"
    NOT_SEIZED = "not-seized"
    PLANNED = "planned"
    REFUSED = "refused"
    FAILED = "failed"
    MISSING = "missing"
    BOUND = "bound"
    ALREADY_BOUND = "already-bound"


@dataclass
class DeviceResult:
    bdf: Bdf
    status: DeviceStatus
    original_driver: str | None = None
    driver: str | None = None
    method: str | None = None
    checks: list[dict[str, object]] = field(default_factory=list)
    writes: list[dict[str, str]] = field(default_factory=list)
    forced: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        """Whether this device was (or, planned, would be) changed: Ansible's ``changed``."""
        return self.status in (DeviceStatus.SEIZED, DeviceStatus.RELEASED, DeviceStatus.BOUND,
                               DeviceStatus.PLANNED)

    def to_json(self) -> dict[str, object]:
        return {"bdf": str(self.bdf), "status": self.status, "changed": self.changed,
                "original_driver": self.original_driver,
                "driver": self.driver, "method": self.method, "checks": self.checks,
                "writes": self.writes, "forced": self.forced}


class Listener:
    """What a whole operation tells its caller as it goes; the CLI renders it, the default ignores
    it. Every call happens inside the operation's lock, so what it reports is the truth then."""

    def pending(self, entries: list[JournalEntry], problems: list[errors.StateFileCorrupt]) -> None:
        """The journal's entries (interrupted, or running in a process that does not take the
        lock) and the state files found corrupt (each concerns its own device only)."""

    def checked(self, preflights: list[Preflight]) -> None:
        """The pre-flight verdicts, before they are enforced."""

    def forced(self, lines: list[str]) -> None:
        """What ``--force`` overrode, before the first write."""

    def each(self, items: Sequence[T], description: str) -> Iterable[T]:
        """The devices an operation works through (the CLI shows progress)."""
        return items

    def done(self, result: DeviceResult) -> None:
        """One device finished."""


@dataclass
class HideReport:
    preflights: list[Preflight]
    forced: list[str]
    results: list[DeviceResult]
    persisted: str | None = None
    #: Whether --persist changed (or, in a dry run, would change) the persisted config.
    persist_changed: bool = False

    @property
    def changed(self) -> bool:
        return self.persist_changed or any(r.changed for r in self.results)


@dataclass
class UnhideReport:
    results: list[DeviceResult]
    unpersisted: bool = False

    @property
    def changed(self) -> bool:
        return self.unpersisted or any(r.changed for r in self.results)


@dataclass
class RestoreReport:
    config: str
    listed: int
    devices: list[dict[str, object]]

    @property
    def changed(self) -> bool:
        return any(d.get("changed") for d in self.devices)

    @property
    def refused(self) -> int:
        return sum(1 for d in self.devices if d["status"] == DeviceStatus.REFUSED)

    @property
    def failed(self) -> int:
        return sum(1 for d in self.devices if d["status"] in (DeviceStatus.FAILED, DeviceStatus.MISSING))


class Seizer:
    """Hide and unhide against one host and one state dir.

    The whole operations (:meth:`hide_devices`, :meth:`unhide_devices`, :meth:`recover`,
    :meth:`restore`) hold the state dir's lock from their first read (journal, records, the
    host's state for the pre-flight checks and the plan) to their last write, so two commands
    never decide from a state the other is changing. Dry runs take no lock and write nothing.
    The single-device steps (:meth:`preflight`, :meth:`enforce`, :meth:`hide`, :meth:`unhide`)
    take no lock: a caller composing them (``attach --seize``) holds ``Journal(state_dir).locked()``
    or :meth:`locked` around them.
    """

    def __init__(self, host: Host, state_dir: str | os.PathLike[str], *,
                 xenstore: XenstoreClient | None = None,
                 attachments: Mapping[Bdf, int] | None = None) -> None:
        self.host = host
        self.state_dir = Path(state_dir)
        self.journal = Journal(state_dir)
        self.xenstore = xenstore
        self.attachments = dict(attachments or {})
        self._lock_depth = 0
        # recover's dry run: the writes it would make (planned, as hide's dry run), the device
        # states they would leave, and no state-dir or xenstore write.
        self._dry = False
        self._planned: list[PlannedWrite] = []
        self._predicted: dict[Bdf, PciDevice] = {}

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """The state dir's lock (``Journal.locked``), re-entrant within this Seizer."""
        if self._lock_depth:
            self._lock_depth += 1
            try:
                yield
            finally:
                self._lock_depth -= 1
            return
        with self.journal.locked():
            self._lock_depth = 1
            try:
                yield
            finally:
                self._lock_depth = 0

    def _operation(self, dry_run: bool) -> contextlib.AbstractContextManager[None]:
        # A dry run writes nothing, not even the state dir: it works without root.
        return contextlib.nullcontext() if dry_run else self.locked()

    # -- whole operations -------------------------------------------------------------------
    def hide_devices(self, patterns: Sequence[BdfPattern], target: str, *, force: bool = False,
                     persist: bool = False, config: str | os.PathLike[str] | None = None,
                     config_named: bool = False, dry_run: bool = False,
                     listener: Listener | None = None, name: str | None = None) -> HideReport:
        """``hide``: select, check, enforce, seize each device and persist, all under the lock.
        ``config_named``: the person named the config (its directory must exist already).
        ``name``: xl's device name (one device only; no other device may have it)."""
        listener = listener or Listener()
        self._present(patterns)
        if name is not None and len(self.select(patterns)) != 1:
            raise errors.InputError("hide --name names one device: give exactly one address")
        with self._operation(dry_run):
            records = self._pending(listener)
            persisting = persist and not dry_run
            if persisting:
                if config is None:
                    raise errors.InputError("hide --persist needs a config path")
                _check_config_target(config, config_named)  # before any sysfs write
            bdfs = self.select(patterns)
            if not dry_run:
                self._validate(bdfs, records)
            if name is not None:
                from xenpciback_cli.engine.names import check_name_free

                check_name_free(name, bdfs[0], self.state_dir, self.xenstore)
            preflights = self.preflight(bdfs, target, records=records)
            listener.checked(preflights)
            forced = self.enforce(preflights, force=force)
            listener.forced(forced)
            results: list[DeviceResult] = []
            for preflight in listener.each(preflights, "seizing"):
                result = self.hide(preflight, target, persist=persist, dry_run=dry_run, name=name,
                                   records=records)
                result.forced = [f for f in forced if f.startswith(f"{result.bdf}:")]
                results.append(result)
                listener.done(result)
            persist_changed = False
            if persist and config is not None:
                persist_changed = persisted.would_change(config, list(patterns), target)
            if persisting and persist_changed:
                assert config is not None
                persisted.add(config, list(patterns), target, create_parent=not config_named)
            return HideReport(preflights, forced, results, str(config) if persisting else None,
                              persist_changed)

    def unhide_devices(self, patterns: Sequence[BdfPattern], *, rebind: bool = False,
                       force: bool = False, config: str | os.PathLike[str] | None = None,
                       config_named: bool = False, dry_run: bool = False,
                       listener: Listener | None = None) -> UnhideReport:
        """``unhide``: release each selected device and drop it from the persisted config."""
        listener = listener or Listener()
        self._present(patterns)
        with self._operation(dry_run):
            records = self._pending(listener)
            if not dry_run and config is not None:
                persisted.load(config, must_exist=config_named)  # before any sysfs write
            bdfs = self.select(patterns)
            if not dry_run:
                self._validate(bdfs, records)
            if force:
                listener.forced([f"releasing {bdf} while attached to domain {self.attachments[bdf]}"
                                 for bdf in bdfs if bdf in self.attachments])
            results: list[DeviceResult] = []
            for bdf in listener.each(bdfs, "releasing"):
                result = self.unhide(bdf, rebind=rebind, force=force, dry_run=dry_run, records=records)
                results.append(result)
                listener.done(result)
            unpersisted = False
            # The entries as typed and those of each device released (a wildcard's too).
            gone = [*patterns, *(BdfPattern(b.domain, b.bus, b.slot, b.function) for b in bdfs)]
            if not dry_run and config is not None:
                unpersisted = persisted.remove(config, gone, must_exist=config_named)
            elif config is not None and os.path.exists(config):
                unpersisted = persisted.would_change(config, gone, None)
            return UnhideReport(results, unpersisted)

    def restore(self, config: str | os.PathLike[str], *, config_named: bool = False, force: bool = False,
                dry_run: bool = False, listener: Listener | None = None) -> RestoreReport:
        """``restore``: seize every persisted device; one refused, missing or with a corrupt
        record does not stop the rest. Each is checked like a hide, and against the identity
        its record kept (a different device at the address is refused)."""
        listener = listener or Listener()
        with self._operation(dry_run):
            records = self._pending(listener)
            devices = persisted.load(config, must_exist=config_named)
            present = self.host.addresses()
            report: list[dict[str, object]] = []
            for entry in devices:
                selected = entry.pattern.select(present)
                if not selected:
                    report.append({"bdf": str(entry.pattern), "status": DeviceStatus.MISSING, "changed": False,
                                   "detail": "no such device"})
                    continue
                for bdf in selected:
                    try:
                        [pre] = self.preflight([bdf], entry.driver, restoring=True, records=records)
                        self.enforce([pre], force=force)
                        result = self.hide(pre, entry.driver, persist=True, dry_run=dry_run, records=records)
                        report.append({"bdf": str(bdf), "status": result.status, "changed": result.changed,
                                       "detail": f"{result.original_driver or 'no driver'} -> {result.driver}"})
                    except errors.SafetyRefusal as exc:
                        report.append({"bdf": str(bdf), "status": DeviceStatus.REFUSED, "changed": False,
                                       "detail": str(exc)})
                    except errors.XenPcibackError as exc:
                        report.append({"bdf": str(bdf), "status": DeviceStatus.FAILED, "changed": False,
                                       "detail": str(exc)})
            return RestoreReport(str(config), len(devices), report)

    def _present(self, patterns: Sequence[BdfPattern]) -> None:
        """Fail on a device that is not there before taking the lock (which creates the state
        dir): a command that can do nothing leaves nothing behind. Everything is read again
        under the lock; this decides nothing."""
        present = set(self.host.addresses())
        for bdf in self.select(patterns):
            if bdf not in present:
                raise errors.DeviceNotFound(f"no PCI device {bdf} on this host", bdf=bdf)

    def _validate(self, bdfs: Iterable[Bdf], records: RecordSet) -> None:
        """Check the state files of these devices (journal entries, records) so a corrupt one
        stops the operation (exit 2, naming the file) before its first sysfs write, not half-way.
        Backend settings need no check: a release ends them, a corrupt file included."""
        for bdf in bdfs:
            records.get(bdf)
            for op in OPS:  # Journal.begin reads each op's entry too
                self.journal.entry_for(op, bdf)

    def _pending(self, listener: Listener) -> RecordSet:
        """Tell ``listener`` the journal's entries and every corrupt state file (reported, not
        raised: the command about that device refuses it); return the seize records, read here
        once for the whole operation."""
        problems: list[errors.StateFileCorrupt] = []
        entries = pending_operations(self.state_dir, corrupt=problems)
        records = load_record_set(self.state_dir)
        problems += records.corrupt
        load_settings(self.state_dir, corrupt=problems)
        listener.pending(entries, problems)
        return records

    def select(self, patterns: Iterable[BdfPattern]) -> list[Bdf]:
        """The devices ``patterns`` name, in order, once each: a wildcard expands to the functions
        present on this host (none is an error), a plain address stands as typed (a missing
        device is reported by the pre-flight check that names it)."""
        present = self.host.addresses()
        bdfs: list[Bdf] = []
        for pattern in patterns:
            single = pattern.as_bdf()  # None for a wildcard
            selected = pattern.select(present) if single is None else [single]
            if not selected:
                raise errors.DeviceNotFound(f"no PCI device matches {pattern} on this host")
            bdfs += [b for b in selected if b is not None and b not in bdfs]
        return bdfs

    # -- hide -------------------------------------------------------------------------------
    def preflight(self, bdfs: Collection[Bdf], target: str, *, restoring: bool = False,
                  records: RecordSet | None = None) -> list[Preflight]:
        """The checks of each device. ``restoring``: the records' identities are what must be
        found at their addresses (a different device there is refused). ``records``: the
        operation's records (read here when not given)."""
        if records is None:
            records = load_record_set(self.state_dir)
        for problem in records.corrupt:  # another device's corrupt record does not stop this one
            if problem.bdf is None or problem.bdf in bdfs:
                raise problem
        known = records.records
        by_address = {d.bdf: d for d in self.host.devices()}
        return [check_hide(self.host, bdf, target, records=known, hiding=bdfs, by_address=by_address,
                           expected=known[bdf].identity if restoring and bdf in known else None)
                for bdf in bdfs]

    @staticmethod
    def enforce(preflights: list[Preflight], *, force: bool) -> list[str]:
        """Raise for a missing device, then for what cannot work (a target driver that is not
        loaded: exit 1, --force would not help), then for refusals --force cannot override, then
        for the others unless forced (exit 3); return what force overrode."""
        for result in preflights:
            for check in result.fatal:
                if check.name == "device-exists":
                    raise errors.DeviceNotFound(check.detail, bdf=result.bdf)
        for result in preflights:
            for check in result.fatal:
                raise errors.OperationFailed(f"cannot hide {result.bdf}: {check.detail}")
        for result in preflights:
            for check in result.refusals:
                if not check.forceable:
                    raise errors.SafetyRefusal(f"refusing to hide {result.bdf}: {check.name}: "
                                               f"{check.detail}", [check.detail])
        overridden: list[str] = []
        for result in preflights:
            for check in result.refusals:
                if not force:
                    raise errors.SafetyRefusal(
                        f"refusing to hide {result.bdf}: {check.name}: {check.detail} "
                        "(--force overrides)", [check.detail])
                overridden.append(f"{result.bdf}: {check.name}: {check.detail}")
        return overridden

    def hide(self, preflight: Preflight, target: str, *, persist: bool = False,
             dry_run: bool = False, name: str | None = None,
             records: RecordSet | None = None) -> DeviceResult:
        """Seize one device whose pre-flight has passed (or was forced). ``records``: the
        operation's records (read here when not given), kept true as this writes."""
        device = preflight.device
        assert device is not None
        if records is None:
            records = load_record_set(self.state_dir)
        checks = [c.to_json() for c in preflight.checks]
        existing = records.get(device.bdf)
        identity = identity_of(self.host, device.bdf)
        if preflight.already_seized:
            if not dry_run:
                self._keep_record(device, existing, identity, self._original_for(device, existing, identity),
                                  target, "override", persist, name, records=records)
            kept = records.get(device.bdf)
            return DeviceResult(device.bdf, DeviceStatus.ALREADY_SEIZED, kept.original_driver if kept else None,
                                target, checks=checks)
        original = self._original_for(device, existing, identity)
        method, steps = plan_hide(self.host, device, target)
        # The journal's original is where a rollback returns the device (it may be pci-stub);
        # the record's is the host driver only (never a seize driver).
        entry = JournalEntry("hide", device.bdf, device.driver, target, method, steps, persist=persist,
                             identity=identity)
        writes = self._run(entry, dry_run)
        if dry_run:
            return DeviceResult(device.bdf, DeviceStatus.PLANNED, device.driver, target, method, checks, writes)
        now = self.host.device(device.bdf)
        if now.driver != target:
            raise errors.OperationFailed(
                f"hide {device.bdf}: {target} did not bind it (driver now "
                f"{now.driver or 'none'}); run 'xen-pciback recover'")
        self._keep_record(device, None, identity, original, target, method, persist, name, records=records)
        self.journal.finish(entry)
        return DeviceResult(device.bdf, DeviceStatus.SEIZED, original, target, method, checks, writes)

    def _original_for(self, device: PciDevice, existing: SeizeRecord | None,
                      identity: DeviceIdentity) -> str | None:
        """The host driver to record: the one bound now if it is a host driver; otherwise (no
        driver, or a seize driver: ``hide --force`` over pci-stub) the first record's, if that
        record is this very device's."""
        if device.driver is not None and device.driver not in SEIZE_DRIVERS:
            return host_driver(device.driver)
        if existing is not None and (existing.identity is None or not differences(existing.identity, identity)):
            return host_driver(existing.original_driver)
        return None

    # -- unhide -----------------------------------------------------------------------------
    def unhide(self, bdf: Bdf, *, rebind: bool = False, force: bool = False,
               dry_run: bool = False, records: RecordSet | None = None) -> DeviceResult:
        """Release one device. ``records``: the operation's records (read here when not given)."""
        domid = self.attachments.get(bdf)
        if domid is not None and not force:
            raise errors.SafetyRefusal(f"refusing to unhide {bdf}: it is attached to domain {domid} "
                                       f"(detach it first with 'xl pci-detach {domid} {bdf}')")
        device = self.host.device(bdf)
        if records is None:
            records = load_record_set(self.state_dir)
        record = records.get(bdf)
        held = device.driver in SEIZE_DRIVERS
        if record is not None and record.released and not held:
            # Released by a plain unhide: only --rebind has something left to do, and only while
            # no host driver has taken the device meanwhile.
            if not rebind or device.driver is not None:
                if device.driver is not None and not dry_run:
                    drop_record(self.state_dir, bdf, records=records)  # a host driver has it: spent
                return DeviceResult(bdf, DeviceStatus.NOT_SEIZED, record.original_driver, device.driver)
        elif record is None and not held:
            return DeviceResult(bdf, DeviceStatus.NOT_SEIZED, None, device.driver)
        elif record is not None and not held and device.driver is not None:
            if not dry_run:
                drop_record(self.state_dir, bdf, records=records)  # stale: the host has the device
            return DeviceResult(bdf, DeviceStatus.NOT_SEIZED, None, device.driver)
        target = record.target_driver if record else str(device.driver)
        original = host_driver(record.original_driver) if record else None
        if rebind and original and original not in self.host.loaded_drivers():
            # The kernel never loads a module for a sysfs bind: fail before any write, so the
            # device stays fully seized and a retry after modprobe finds its record.
            raise errors.OperationFailed(f"cannot rebind {bdf} to {original}: that driver is not "
                                         f"loaded (modprobe {original}, then unhide again)")
        method = record.method if record else "override"
        steps = plan_release(self.host, device, target, original, rebind=rebind, method=method)
        identity = identity_of(self.host, bdf)
        entry = JournalEntry("unhide", bdf, original, target, method, steps, rebind=rebind, identity=identity)
        writes = self._run(entry, dry_run)
        if dry_run:
            return DeviceResult(bdf, DeviceStatus.PLANNED, original, device.driver, writes=writes)
        now = self.host.device(bdf)
        if now.driver == target:
            raise errors.OperationFailed(f"unhide {bdf}: still bound to {target}; run 'xen-pciback recover'")
        self._released(bdf, record, identity, original, target, method, keep=not rebind, records=records)
        self.journal.finish(entry)
        return DeviceResult(bdf, DeviceStatus.RELEASED, original, now.driver, writes=writes)

    # -- bind / rebind (driverctl's set-override / unset-override) ---------------------------
    def bind_devices(self, bdfs: Sequence[Bdf], target: str | None, *, force: bool = False,
                     dry_run: bool = False, listener: Listener | None = None) -> list[DeviceResult]:
        """``bind BDF DRIVER`` (``target``) or ``rebind BDF`` (None: the kernel's probe chooses),
        for host drivers: driver_override + unbind + drivers_probe, journalled, under the lock.
        A device attached to a guest, or one the host uses, is refused (exit 3) unless forced.
        A device that was seized leaves its seize record behind (it is the host's again)."""
        listener = listener or Listener()
        if target is not None:
            driver_name(target)
        with self._operation(dry_run):
            records = self._pending(listener)
            present = set(self.host.addresses())
            for bdf in bdfs:
                if bdf not in present:
                    raise errors.DeviceNotFound(f"no PCI device {bdf} on this host", bdf=bdf)
            if not dry_run:
                self._validate(bdfs, records)
            verb = f"bind {target} to" if target else "rebind"
            forced: list[str] = []
            for bdf in bdfs:
                domid = self.attachments.get(bdf)
                if domid is not None:
                    if not force:
                        raise errors.SafetyRefusal(f"refusing to {verb} {bdf}: it is attached to domain "
                                                   f"{domid} (detach it first)")
                    forced.append(f"{bdf}: attached to domain {domid}")
                device = self.host.device(bdf)
                if device.driver is not None and not _bind_done(device, target):
                    usage = self.host.usage(bdf)
                    if usage.in_use:
                        if not force:
                            raise errors.SafetyRefusal(
                                f"refusing to {verb} {bdf}: host-usage: {'; '.join(usage.reasons)} "
                                "(--force overrides)", list(usage.reasons))
                        forced += [f"{bdf}: host-usage: {reason}" for reason in usage.reasons]
            if target is not None and target not in self.host.loaded_drivers() and not dry_run:
                raise errors.OperationFailed(f"cannot bind {target}: that driver is not loaded "
                                             f"(modprobe {target}, or leave out --no-load)")
            listener.forced(forced)
            results: list[DeviceResult] = []
            for bdf in listener.each(list(bdfs), "binding"):
                result = self.bind(bdf, target, dry_run=dry_run, records=records)
                result.forced = [f for f in forced if f.startswith(f"{bdf}:")]
                results.append(result)
                listener.done(result)
            return results

    def bind(self, bdf: Bdf, target: str | None, *, dry_run: bool = False,
             records: RecordSet | None = None) -> DeviceResult:
        """One device to ``target`` (or to the kernel's choice); the caller holds the lock."""
        device = self.host.device(bdf)
        if _bind_done(device, target):
            return DeviceResult(bdf, DeviceStatus.ALREADY_BOUND, device.driver, device.driver)
        method = "override" if self.host.supports_driver_override(bdf) else ""
        steps = plan_bind(self.host, device, target)
        entry = JournalEntry("bind", bdf, device.driver, target or "", method, steps,
                             identity=identity_of(self.host, bdf))
        writes = self._run(entry, dry_run)
        if dry_run:
            return DeviceResult(bdf, DeviceStatus.PLANNED, device.driver, target, method, writes=writes)
        now = self.host.device(bdf)
        self._bound(bdf, device, now, records)
        self.journal.finish(entry)
        if target is not None and now.driver != target:
            raise errors.OperationFailed(f"bind {bdf}: {target} did not take it (driver now "
                                         f"{now.driver or 'none'}; its probe refused the device?)")
        return DeviceResult(bdf, DeviceStatus.BOUND, device.driver, now.driver, method, writes=writes)

    def _bound(self, bdf: Bdf, before: PciDevice, now: PciDevice, records: RecordSet | None = None) -> None:
        """After a bind: a device that left a seize driver for a host one is no longer seized."""
        if self._dry:
            return
        if before.driver in SEIZE_DRIVERS and now.driver not in SEIZE_DRIVERS:
            with contextlib.suppress(errors.StateFileCorrupt):
                drop_record(self.state_dir, bdf, records=records)
            self._forget(bdf)

    def _recover_bind(self, entry: JournalEntry, device: PciDevice, outcome: dict[str, object]) -> None:
        """A bind is finished from wherever it stopped (recover checked identity and host usage)."""
        target = entry.target_driver or None
        if not _bind_done(device, target):
            self._execute(entry.bdf, plan_bind(self.host, device, target))
        now = self._device(entry.bdf)
        if device.driver in SEIZE_DRIVERS or entry.original_driver in SEIZE_DRIVERS:
            self._bound(entry.bdf, replace(device, driver=entry.original_driver), now)
        outcome.update(action="completed", reason=f"finished the bind: now {now.driver or 'no driver'}")

    # -- shared -----------------------------------------------------------------------------
    def _run(self, entry: JournalEntry, dry_run: bool) -> list[dict[str, str]]:
        """Execute the plan: journal first, then each write, marking it done."""
        writes = [{"path": s.path, "value": s.value, "description": s.description} for s in entry.steps]
        if dry_run:
            return writes
        self.journal.begin(entry)
        for index, step in enumerate(entry.steps):
            try:
                self._write_step(entry.bdf, step)
            except errors.HostError as exc:
                raise errors.OperationFailed(
                    f"{entry.op} {entry.bdf} failed at step {index + 1}/{len(entry.steps)} "
                    f"({step.description}): {exc}; run 'xen-pciback recover'") from None
            self.journal.step_done(entry, index)
        return writes

    def _keep_record(self, device: PciDevice, existing: SeizeRecord | None, identity: DeviceIdentity | None,
                     original: str | None, target: str, method: str, persist: bool,
                     name: str | None = None, *, records: RecordSet | None = None) -> None:
        """Record a seize; an existing live record is kept (the first record knows the original).
        A name (``hide --name``) goes in the record and, like libxl's, at /libxl/pci/BDF/name."""
        if self._dry:
            return
        bdf = device.bdf
        if name is not None:
            self._write_name(bdf, name)
        if existing is not None and not existing.released:
            kept = replace(existing, persist=existing.persist or persist, identity=existing.identity or identity,
                           original_driver=host_driver(existing.original_driver) or original,
                           name=name or existing.name)
            if existing.target_driver != target:  # moved from one seize driver to another
                kept = replace(kept, target_driver=target, method=method)
            if kept != existing:
                put_record(self.state_dir, kept, records=records)
            return
        put_record(self.state_dir, SeizeRecord(bdf, original, target, persist, method=method, identity=identity,
                                               name=name), records=records)
        if self.xenstore is not None and original:
            self.xenstore.write(driver_path_key(bdf), f"/sys/bus/pci/drivers/{original}")

    def _write_name(self, bdf: Bdf, name: str) -> None:
        if self.xenstore is not None:
            from xenpciback_cli.engine.names import name_key

            self.xenstore.write(name_key(bdf), name)

    def _released(self, bdf: Bdf, record: SeizeRecord | None, identity: DeviceIdentity | None,
                  original: str | None, target: str, method: str, *, keep: bool,
                  records: RecordSet | None = None) -> None:
        """The device left the seize driver: forget it, or (a plain unhide, driverless now) keep
        what a later ``unhide --rebind`` needs, marked released."""
        if self._dry:
            return
        if keep and original:
            kept = record if record is not None else SeizeRecord(bdf, original, target, method=method)
            put_record(self.state_dir, replace(kept, original_driver=original, released=True,
                                               identity=kept.identity or identity, name=None), records=records)
        else:
            drop_record(self.state_dir, bdf, records=records)
        self._forget(bdf)

    def _forget(self, bdf: Bdf) -> None:
        """What ends with the seize: backend settings and libxl's "assignable" driver_path and
        name. A node already gone (ENOENT) is nothing to forget; any other xenstore failure is
        raised, before the journal entry is finished, so ``recover`` retries the removal."""
        record_release(self.state_dir, bdf)  # permissive and quirks end with the seize
        if self.xenstore is not None:
            from xenpciback_cli.engine.names import name_key
            from xenpciback_cli.xenstore.client import XenstoreError

            for key in (driver_path_key(bdf), name_key(bdf)):
                try:
                    self.xenstore.rm(key)
                except XenstoreError as exc:
                    if exc.errno_name == "ENOENT":  # absent already
                        continue
                    raise errors.OperationFailed(
                        f"{bdf} left its seize driver, but removing {key} from xenstore failed "
                        f"({exc}); once xenstore answers, run 'xen-pciback recover'") from None

    # -- recover ----------------------------------------------------------------------------
    def recover(self, *, dry_run: bool = False) -> list[dict[str, object]]:
        """Complete or roll back every interrupted operation; idempotent. Holds the lock, so an
        operation still running in another process is waited for, never "recovered".

        With ``dry_run`` the same decisions are made from the same reads, but every sysfs write
        is planned rather than made (each outcome's ``writes``, as hide's dry run), and nothing
        is written to the state dir or xenstore; no lock is taken.

        Each operation ends in a stated state (``action``: completed, rolled back, dropped,
        left unbound) or is refused (``refused``: nothing written for it, the entry stays) when
        the device at the address is not the one journalled, or the host now uses it."""
        outcomes: list[dict[str, object]] = []
        self._dry, self._predicted = dry_run, {}
        with self._operation(dry_run):
            corrupt: list[errors.StateFileCorrupt] = []
            for entry in pending_operations(self.state_dir, corrupt=corrupt):
                if entry.running:  # its process lives on (without the lock): not ours to judge
                    outcomes.append({"op": entry.op, "bdf": str(entry.bdf), "stopped": entry.describe(),
                                     "action": "skipped", "reason": f"in progress (pid {entry.pid})"})
                    continue
                try:
                    load_record(self.state_dir, entry.bdf)
                except errors.StateFileCorrupt as exc:
                    corrupt.append(exc)
                    continue
                self._planned = []
                outcome = self._recover_one(entry)
                if dry_run:
                    outcome["writes"] = [{"path": s.path, "value": s.value, "description": s.description}
                                         for s in self._planned]
                outcomes.append(outcome)
            for problem in corrupt:  # left for a person: nothing is written from an untrusted entry
                name = Path(str(problem.path or "")).name
                op = next((o for o in ("unhide", "hide", "bind") if name.startswith(f"{o}-")), "unknown")
                outcomes.append({"op": op, "bdf": str(problem.bdf) if problem.bdf else None,
                                 "action": "skipped", "corrupt": True, "reason": str(problem)})
        return outcomes

    def _recover_one(self, entry: JournalEntry) -> dict[str, object]:
        bdf = entry.bdf
        outcome: dict[str, object] = {"op": entry.op, "bdf": str(bdf), "stopped": entry.describe()}
        try:
            device = self.host.device(bdf)
        except errors.DeviceNotFound:
            self._finish(entry)
            self._drop(bdf)
            outcome.update(action="dropped", reason="the device is gone from the host")
            return outcome
        if entry.identity is not None:
            found = differences(entry.identity, identity_of(self.host, bdf))
            if found:
                return self._refused(entry, outcome, "the device there is not the one journalled: "
                                     + "; ".join(found))
        if entry.op == "bind" and _bind_done(device, entry.target_driver or None):
            self._recover_bind(entry, device, outcome)  # only the journal's last mark was missing
            self._finish(entry)
            outcome["driver"] = device.driver
            return outcome
        usage = self.host.usage(bdf)
        if usage.in_use:
            return self._refused(entry, outcome, "the host uses the device there now: " + "; ".join(usage.reasons))
        try:
            if entry.op == "bind":
                self._recover_bind(entry, device, outcome)
            elif entry.op == "hide":
                self._recover_hide(entry, device, outcome)
            else:
                self._recover_unhide(entry, device, outcome)
        except _Refused as refusal:
            return self._refused(entry, outcome, str(refusal))
        self._finish(entry)
        outcome["driver"] = self._device(bdf).driver
        return outcome

    def _device(self, bdf: Bdf) -> PciDevice:
        """The device as recover left it (in a dry run: as its planned writes would)."""
        predicted = self._predicted.get(bdf) if self._dry else None
        return predicted if predicted is not None else self.host.device(bdf)

    def _finish(self, entry: JournalEntry) -> None:
        if not self._dry:
            self.journal.finish(entry)

    def _drop(self, bdf: Bdf) -> None:
        if not self._dry:
            drop_record(self.state_dir, bdf)

    def _refused(self, entry: JournalEntry, outcome: dict[str, object], why: str) -> dict[str, object]:
        path = self.journal.directory / entry.name
        outcome.update(action="refused", driver=self.host.device(entry.bdf).driver,
                       reason=f"{why}; nothing was written. If the entry is stale, check the device "
                       f"and delete {path}")
        return outcome

    def _recover_hide(self, entry: JournalEntry, device: PciDevice, outcome: dict[str, object]) -> None:
        bdf, target = entry.bdf, entry.target_driver
        if device.driver is not None and device.driver != target and (
                device.driver == entry.original_driver or device.driver not in SEIZE_DRIVERS):
            # The host (or the driver it came from) still has it: undo only what we added.
            self._execute(bdf, self._undo_hide(entry, device))
            if load_record(self.state_dir, bdf) is not None and device.driver not in SEIZE_DRIVERS:
                self._drop(bdf)
            outcome.update(action="rolled back", reason=f"still bound to {device.driver}: the host "
                           "had not lost it yet")
            return
        original = host_driver(entry.original_driver)
        if entry.identity is None:
            # Nothing proves this is the device the hide was for: never complete a seize from it.
            # Giving a driverless (or just-seized) device back to a host driver releases nothing
            # the host uses, so that is the direction taken.
            self._give_back(entry, device, outcome, "the entry carries no device identity, so the "
                            "seize was not completed")
            return
        pre = check_hide(self.host, bdf, target, records={}, expected=entry.identity)
        blocking = [c for c in pre.refusals if c.name in ("host-usage", "device-kind", "identity")]
        if blocking:
            raise _Refused("; ".join(f"{c.name}: {c.detail}" for c in blocking))
        try:
            self._seize_from_here(device, target, entry.method)
        except errors.XenPcibackError as exc:
            self._give_back(entry, self._device(bdf), outcome, f"{target} would not take it ({exc})")
            return
        existing = load_record(self.state_dir, bdf)
        recorded = original or self._original_for(replace(device, driver=None), existing, entry.identity)
        self._keep_record(device, existing, entry.identity, recorded, target, entry.method, entry.persist)
        outcome.update(action="completed", reason=f"already unbound from {entry.original_driver or 'no driver'}: "
                       "finished the seize")

    def _undo_hide(self, entry: JournalEntry, device: PciDevice) -> list[PlannedWrite]:
        """What a hide that never unbound its device added: our driver_override, our pciback
        slot, our dynamic id. No driver is unbound or bound."""
        bdf, target = entry.bdf, entry.target_driver
        steps: list[PlannedWrite] = []
        if device.driver_override == target:
            steps.append(_clear_override(bdf))
        added_slot = _added_slot(entry)
        if added_slot and str(bdf) in self.host.pciback_slots():
            steps.append(_w(f"bus/pci/drivers/{PCIBACK_DRIVER}/remove_slot", str(bdf), "remove from pciback slots"))
        if entry.method == "new_id" and any(s.path.endswith("/new_id") for s in entry.steps[:entry.done + 1]):
            ids = _ids(device)
            steps.append(_w(f"bus/pci/drivers/{driver_name(target)}/remove_id", ids, f"remove id {ids} from {target}"))
        return steps

    def _give_back(self, entry: JournalEntry, device: PciDevice, outcome: dict[str, object], why: str) -> None:
        """Roll a hide back toward the host: off the seize driver, back to the original or to
        whatever the kernel's probe finds. A bind that cannot be done leaves it unbound, said."""
        bdf = entry.bdf
        original = host_driver(entry.original_driver)
        added_slot = _added_slot(entry)
        steps = plan_release(self.host, device, entry.target_driver, original, rebind=True,
                             remove_slot=added_slot, method=entry.method)
        try:
            self._execute(bdf, steps)
        except errors.XenPcibackError as exc:
            now = self.host.device(bdf)
            if now.driver not in SEIZE_DRIVERS and now.driver is not None:
                pass  # a host driver took it anyway
            else:
                self._left_unbound(entry, now, outcome, f"{why}; giving it back failed ({exc})")
                return
        now = self._device(bdf)
        record = load_record(self.state_dir, bdf)
        if now.driver in SEIZE_DRIVERS:
            self._left_unbound(entry, now, outcome, f"{why}; it stayed with {now.driver}")
            return
        if record is not None and not record.released:
            self._drop(bdf)
        outcome.update(action="rolled back", reason=f"{why}; given back to "
                       f"{now.driver or 'no driver'}" + ("" if now.driver else
                       f" (bind a host driver: modprobe {original or 'its driver'}, then "
                       f"'xen-pciback unhide --rebind {bdf}')"))

    def _left_unbound(self, entry: JournalEntry, device: PciDevice, outcome: dict[str, object], why: str) -> None:
        outcome.update(action="left unbound" if device.driver is None else f"left with {device.driver}",
                       reason=f"{why}; no guest and no host driver uses it now: bind one with "
                       f"'xen-pciback unhide --rebind {entry.bdf}' (modprobe the driver first) or hide it again")

    def _recover_unhide(self, entry: JournalEntry, device: PciDevice, outcome: dict[str, object]) -> None:
        bdf, target = entry.bdf, entry.target_driver
        record = load_record(self.state_dir, bdf)
        original = host_driver(entry.original_driver)
        if device.driver == target:
            # The release had not started: keep it held (this takes nothing from the host).
            self._seize_from_here(device, target, entry.method)
            outcome.update(action="rolled back", reason=f"still bound to {target}: the release had not started")
            return
        if device.driver is not None and device.driver not in SEIZE_DRIVERS:
            # A host driver has it: the release is done; clear only a leftover override of ours.
            if device.driver_override == target:
                self._execute(bdf, [_clear_override(bdf)])
            self._released(bdf, record, entry.identity, original, target, entry.method, keep=False)
            outcome.update(action="completed", reason=f"already with {device.driver}: finished the release")
            return
        steps = plan_release(self.host, device, target, original, rebind=entry.rebind, method=entry.method)
        try:
            self._execute(bdf, steps)
        except errors.XenPcibackError as exc:
            now = self.host.device(bdf)
            if now.driver == target:  # the release itself failed: it stays held, said so
                self._seize_from_here(now, target, entry.method)
                outcome.update(action="rolled back", reason=f"releasing it from {target} failed ({exc}); "
                               f"it stays seized by {target}")
                return
            if now.driver is None and entry.rebind:
                with contextlib.suppress(errors.XenPcibackError):
                    self.host.probe(bdf)  # the recorded driver would not: let the kernel choose
                now = self.host.device(bdf)
            if now.driver is None or now.driver in SEIZE_DRIVERS:
                self._released(bdf, record, entry.identity, original, target, entry.method, keep=True)
                self._left_unbound(entry, now, outcome, f"released from {target}; binding "
                                   f"{original or 'a host driver'} failed ({exc})")
                return
            self._released(bdf, record, entry.identity, original, target, entry.method, keep=False)
            outcome.update(action="completed", reason=f"released from {target}; {original or 'the recorded driver'} "
                           f"would not bind ({exc}), the kernel's probe gave it to {now.driver}")
            return
        now = self._device(bdf)
        self._released(bdf, record, entry.identity, original, target, entry.method,
                       keep=not entry.rebind or now.driver is None)
        outcome.update(action="completed", reason=f"already unbound from {target}: finished the release")

    def _seize_from_here(self, device: PciDevice, target: str, method: str) -> None:
        """Bring a device, in whatever state a crash left it, to held-by-target."""
        bdf = device.bdf
        if device.driver == target:
            if method == "override" and device.driver_override != target:
                self._execute(bdf, [_w(f"bus/pci/devices/{bdf}/driver_override", target,
                                       f"set driver_override to {target}")])
            if method == "slot" and str(bdf) not in self.host.pciback_slots():
                self._execute(bdf, [_w(f"bus/pci/drivers/{PCIBACK_DRIVER}/new_slot", str(bdf),
                                       "add to pciback slots")])
            return
        _, steps = plan_hide(self.host, device, target)
        self._execute(bdf, steps)
        if self._device(bdf).driver != target:
            raise errors.OperationFailed(f"recover {bdf}: {target} would not bind it")

    def _execute(self, bdf: Bdf, steps: list[PlannedWrite]) -> None:
        if self._dry:  # planned, not made; the device as the kernel would leave it
            self._planned += steps
            device = self._device(bdf)
            for step in steps:
                device = _after_write(device, step)
            self._predicted[bdf] = device
            return
        for step in steps:
            self._write_step(bdf, step)

    def _write_step(self, bdf: Bdf, step: PlannedWrite) -> None:
        """One planned write, tolerating the two outcomes that mean "already so" for dynamic ids."""
        try:
            self.host.write_attribute(step.path, step.value, bdf)
        except errors.HostError as exc:
            if step.path.endswith("/remove_id") and exc.errno == errno.ENODEV:
                return  # another device's unhide removed the shared id already
            if step.path.endswith("/new_id") and exc.errno == errno.EEXIST:
                self.host.bind(bdf, step.path.split("/")[-2])  # the id is there: bind explicitly
                return
            raise


def _after_write(device: PciDevice, step: PlannedWrite) -> PciDevice:
    """The device after one planned write, as the kernel would leave it when the write works
    (a probe without an override: the host driver the kernel would choose is not known here)."""
    parts = step.path.split("/")
    if parts[-1] == "driver_override":
        return replace(device, driver_override=step.value.strip() or None)
    if parts[-1] == "unbind":
        return replace(device, driver=None)
    if parts[-1] in ("bind", "new_id") and device.driver is None:
        return replace(device, driver=parts[-2])
    if parts[-1] == "drivers_probe" and device.driver is None:
        return replace(device, driver=device.driver_override)
    return device


def _bind_done(device: PciDevice, target: str | None) -> bool:
    """Whether a bind has nothing left to do: bound to ``target`` with our override set, or
    (rebind) bound to a driver with no override."""
    if target is None:
        return device.driver is not None and not device.driver_override
    return device.driver == target and device.driver_override in (target, None)


def plan_bind(host: Host, device: PciDevice, target: str | None) -> list[PlannedWrite]:
    """driverctl's set-override (``target``) / unset-override (None): the override, the unbind
    from the current driver, a probe. Without driver_override: unbind, then bind or probe."""
    bdf = device.bdf
    steps: list[PlannedWrite] = []
    override = host.supports_driver_override(bdf)
    if override and target is not None and device.driver_override != target:
        steps.append(_w(f"bus/pci/devices/{bdf}/driver_override", driver_name(target),
                        f"set driver_override to {target}"))
    if override and target is None and device.driver_override:
        steps.append(_clear_override(bdf))
    if device.driver is not None and device.driver != target:
        steps.append(_unbind(bdf, device.driver))
    if target != PCIBACK_DRIVER and str(bdf) in host.pciback_slots():  # or pciback's probe takes it
        steps.append(_w(f"bus/pci/drivers/{PCIBACK_DRIVER}/remove_slot", str(bdf), "remove from pciback slots"))
    if device.driver is None or device.driver != target:
        if target is not None and not override:
            steps.append(_w(f"bus/pci/drivers/{driver_name(target)}/bind", str(bdf), f"bind {target}"))
        else:
            steps.append(_w("bus/pci/drivers_probe", str(bdf),
                            f"probe, binding {target}" if target else "probe for a host driver"))
    return steps


def _check_config_target(config: str | os.PathLike[str], named: bool) -> None:
    """The persisted config will be readable and writable: read it now (a corrupt one is exit 2)
    and, for a path a person named, make sure its directory exists (none is ever created)."""
    persisted.load(config)
    parent = Path(config).parent
    if named and not parent.is_dir():
        raise errors.InputError(f"cannot persist in {config}: directory {parent} does not exist")


class _Refused(Exception):
    """recover will not touch this entry's device (why: the message)."""


# -- test-only crash injection ----------------------------------------------------------------
KILL_ENV = "XEN_PCIBACK_TEST_KILL_AFTER_WRITES"


class InjectedFailure(Exception):
    """Raised by the test-only failure hook (not a XenPcibackError: it stands for a crash)."""


def failure_hook(after: int, *, kill: bool) -> WriteHook:
    """A write hook that lets ``after`` writes through, then SIGKILLs the process or raises.

    TEST ONLY. Installed by the hide/unhide/recover commands when ``XEN_PCIBACK_TEST_KILL_AFTER_WRITES``
    is set, so the crash tests can kill a real process at each write of a plan.
    """
    count = [0]

    def hook(write: AttributeWrite) -> None:
        if count[0] >= after:
            if kill:
                os.kill(os.getpid(), signal.SIGKILL)
            raise InjectedFailure(f"injected failure before write {count[0] + 1}: {write.path}")
        count[0] += 1

    return hook


def install_test_hooks(host: Host) -> None:
    value = os.environ.get(KILL_ENV)
    count = decimal(value.strip()) if value else None
    if count is not None:
        host.write_hooks.append(failure_hook(count, kill=True))

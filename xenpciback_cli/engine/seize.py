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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar

from xenpciback_cli import errors
from xenpciback_cli.engine.journal import Journal, JournalEntry, PlannedWrite, pending_operations
from xenpciback_cli.engine.preflight import Preflight, check_hide
from xenpciback_cli.engine import persist as persisted
from xenpciback_cli.engine.backend_settings import load_settings, record_release
from xenpciback_cli.engine.records import SeizeRecord, drop_record, load_records, put_record
from xenpciback_cli.host.model import PCIBACK_DRIVER, STUB_DRIVERS, AttributeWrite, Host, PciDevice
from xenpciback_cli.pci.address import Bdf
from xenpciback_cli.pci.spec import BdfPattern
from xenpciback_cli.untrusted import decimal

TARGET_DRIVERS = STUB_DRIVERS
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


def plan_hide(host: Host, device: PciDevice, target: str) -> tuple[str, list[PlannedWrite]]:
    """The writes that move ``device`` from its current driver to ``target``."""
    bdf, original = device.bdf, device.driver
    steps: list[PlannedWrite] = []
    if host.supports_driver_override(bdf):
        steps.append(_w(f"bus/pci/devices/{bdf}/driver_override", target, f"set driver_override to {target}"))
        if original:
            steps.append(_w(f"bus/pci/drivers/{original}/unbind", str(bdf), f"unbind from {original}"))
        steps.append(_w("bus/pci/drivers_probe", str(bdf), f"probe, binding {target}"))
        return "override", steps
    if target == PCIBACK_DRIVER:
        if str(bdf) not in host.pciback_slots():
            steps.append(_w(f"bus/pci/drivers/{target}/new_slot", str(bdf), "add to pciback slots"))
        if original:
            steps.append(_w(f"bus/pci/drivers/{original}/unbind", str(bdf), f"unbind from {original}"))
        steps.append(_w(f"bus/pci/drivers/{target}/bind", str(bdf), f"bind {target}"))
        return "slot", steps
    if original:
        steps.append(_w(f"bus/pci/drivers/{original}/unbind", str(bdf), f"unbind from {original}"))
    ids = f"{device.vendor_id:04x} {device.device_id:04x}"
    steps.append(_w(f"bus/pci/drivers/{target}/new_id", ids, f"add id {ids} to {target}"))
    return "new_id", steps


def plan_release(host: Host, device: PciDevice, target: str, original: str | None, *,
                 rebind: bool, remove_slot: bool = True, method: str = "override") -> list[PlannedWrite]:
    """The writes that take ``device`` away from ``target`` and (with rebind) back to ``original``."""
    bdf = device.bdf
    steps: list[PlannedWrite] = []
    if device.driver_override:
        steps.append(_w(f"bus/pci/devices/{bdf}/driver_override", "\n", "clear driver_override"))
    if device.driver and device.driver != original:
        steps.append(_w(f"bus/pci/drivers/{device.driver}/unbind", str(bdf), f"unbind from {device.driver}"))
    if method == "new_id":  # or the stub driver grabs the device again at the next probe
        ids = f"{device.vendor_id:04x} {device.device_id:04x}"
        steps.append(_w(f"bus/pci/drivers/{target}/remove_id", ids, f"remove id {ids} from {target}"))
    if remove_slot and target == PCIBACK_DRIVER and str(bdf) in host.pciback_slots():
        steps.append(_w(f"bus/pci/drivers/{PCIBACK_DRIVER}/remove_slot", str(bdf), "remove from pciback slots"))
    if rebind and (device.driver is None or device.driver != original):
        if original and original in host.loaded_drivers():
            steps.append(_w(f"bus/pci/drivers/{original}/bind", str(bdf), f"bind {original}"))
        else:
            steps.append(_w("bus/pci/drivers_probe", str(bdf), "probe for a host driver"))
    return steps


# -- results ----------------------------------------------------------------------------------
@dataclass
class DeviceResult:
    bdf: Bdf
    status: str  # seized, already-seized, released, not-seized, planned, refused
    original_driver: str | None = None
    driver: str | None = None
    method: str | None = None
    checks: list[dict[str, object]] = field(default_factory=list)
    writes: list[dict[str, str]] = field(default_factory=list)
    forced: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return {"bdf": str(self.bdf), "status": self.status, "original_driver": self.original_driver,
                "driver": self.driver, "method": self.method, "checks": self.checks,
                "writes": self.writes, "forced": self.forced}


class Listener:
    """What a whole operation tells its caller as it goes; the CLI renders it, the default ignores
    it. Every call happens inside the operation's lock, so what it reports is the truth then."""

    def pending(self, entries: list[JournalEntry]) -> None:
        """Interrupted operations found in the journal (their process is gone: we hold the lock)."""

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


@dataclass
class UnhideReport:
    results: list[DeviceResult]
    unpersisted: bool = False


@dataclass
class RestoreReport:
    config: str
    listed: int
    devices: list[dict[str, object]]

    @property
    def refused(self) -> int:
        return sum(1 for d in self.devices if d["status"] == "refused")

    @property
    def failed(self) -> int:
        return sum(1 for d in self.devices if d["status"] in ("failed", "missing"))


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
                     dry_run: bool = False, listener: Listener | None = None) -> HideReport:
        """``hide``: select, check, enforce, seize each device and persist, all under the lock."""
        listener = listener or Listener()
        with self._operation(dry_run):
            listener.pending(pending_operations(self.state_dir))
            persisting = persist and not dry_run
            if persisting:
                if config is None:
                    raise errors.InputError("hide --persist needs a config path")
                persisted.load(config)  # a bad config fails here, before any sysfs write
            bdfs = self.select(patterns)
            preflights = self.preflight(bdfs, target)
            listener.checked(preflights)
            forced = self.enforce(preflights, force=force)
            listener.forced(forced)
            results: list[DeviceResult] = []
            for preflight in listener.each(preflights, "seizing"):
                result = self.hide(preflight, target, persist=persist, dry_run=dry_run)
                result.forced = [f for f in forced if f.startswith(f"{result.bdf}:")]
                results.append(result)
                listener.done(result)
            if persisting:
                assert config is not None
                persisted.add(config, list(patterns), target)
            return HideReport(preflights, forced, results, str(config) if persisting else None)

    def unhide_devices(self, patterns: Sequence[BdfPattern], *, rebind: bool = False,
                       force: bool = False, config: str | os.PathLike[str] | None = None,
                       dry_run: bool = False, listener: Listener | None = None) -> UnhideReport:
        """``unhide``: release each selected device and drop it from the persisted config."""
        listener = listener or Listener()
        with self._operation(dry_run):
            listener.pending(pending_operations(self.state_dir))
            if not dry_run:
                self._validate_state()
                if config is not None:
                    persisted.load(config)  # a bad config fails here, before any sysfs write
            bdfs = self.select(patterns)
            if force:
                listener.forced([f"releasing {bdf} while attached to domain {self.attachments[bdf]}"
                                 for bdf in bdfs if bdf in self.attachments])
            results: list[DeviceResult] = []
            for bdf in listener.each(bdfs, "releasing"):
                result = self.unhide(bdf, rebind=rebind, force=force, dry_run=dry_run)
                results.append(result)
                listener.done(result)
            unpersisted = False
            if not dry_run and config is not None:
                unpersisted = persisted.remove(config, list(patterns))
            return UnhideReport(results, unpersisted)

    def restore(self, config: str | os.PathLike[str], *, force: bool = False,
                listener: Listener | None = None) -> RestoreReport:
        """``restore``: seize every persisted device; one refused or missing does not stop the rest."""
        listener = listener or Listener()
        with self.locked():
            listener.pending(pending_operations(self.state_dir))
            devices = persisted.load(config)
            self._validate_state()
            present = self.host.addresses()  # type: ignore[attr-defined]
            report: list[dict[str, object]] = []
            for entry in devices:
                selected = entry.pattern.select(present)
                if not selected:
                    report.append({"bdf": str(entry.pattern), "status": "missing", "detail": "no such device"})
                    continue
                for bdf in selected:
                    try:
                        [pre] = self.preflight([bdf], entry.driver, restoring=True)
                        self.enforce([pre], force=force)
                        result = self.hide(pre, entry.driver, persist=True)
                        report.append({"bdf": str(bdf), "status": result.status,
                                       "detail": f"{result.original_driver or 'no driver'} -> {result.driver}"})
                    except errors.SafetyRefusal as exc:
                        report.append({"bdf": str(bdf), "status": "refused", "detail": str(exc)})
                    except errors.XenPcibackError as exc:
                        report.append({"bdf": str(bdf), "status": "failed", "detail": str(exc)})
            return RestoreReport(str(config), len(devices), report)

    def _validate_state(self) -> None:
        """Read every state file an operation may rewrite, so a corrupt one stops it before its
        first sysfs write instead of half-way."""
        load_records(self.state_dir)
        load_settings(self.state_dir)

    def select(self, patterns: Iterable[BdfPattern]) -> list[Bdf]:
        """The devices ``patterns`` name, in order, once each: a wildcard expands to the functions
        present on this host (none is an error), a plain address stands as typed (a missing
        device is reported by the pre-flight check that names it)."""
        present = self.host.addresses()  # type: ignore[attr-defined]
        bdfs: list[Bdf] = []
        for pattern in patterns:
            selected = pattern.select(present) if pattern.is_wildcard else [pattern.as_bdf()]
            if not selected:
                raise errors.DeviceNotFound(f"no PCI device matches {pattern} on this host")
            bdfs += [b for b in selected if b is not None and b not in bdfs]
        return bdfs

    # -- hide -------------------------------------------------------------------------------
    def preflight(self, bdfs: Collection[Bdf], target: str, *, restoring: bool = False) -> list[Preflight]:
        records = load_records(self.state_dir)
        by_address = {d.bdf: d for d in self.host.devices()}
        return [check_hide(self.host, bdf, target, records=records, hiding=bdfs, by_address=by_address)
                for bdf in bdfs]

    @staticmethod
    def enforce(preflights: list[Preflight], *, force: bool) -> list[str]:
        """Raise for a missing device, then for refusals unless forced (exit 3 names the danger
        even when the target driver is also missing), then for other fatal checks; return what
        force overrode."""
        for result in preflights:
            for check in result.fatal:
                if check.name == "device-exists":
                    raise errors.DeviceNotFound(check.detail, bdf=result.bdf)
        overridden: list[str] = []
        for result in preflights:
            for check in result.refusals:
                if check.fatal:
                    continue
                if not force:
                    raise errors.SafetyRefusal(
                        f"refusing to hide {result.bdf}: {check.name}: {check.detail} "
                        "(--force overrides)", [check.detail])
                overridden.append(f"{result.bdf}: {check.name}: {check.detail}")
        for result in preflights:
            for check in result.fatal:
                raise errors.OperationFailed(f"cannot hide {result.bdf}: {check.detail}")
        return overridden

    def hide(self, preflight: Preflight, target: str, *, persist: bool = False,
             dry_run: bool = False) -> DeviceResult:
        """Seize one device whose pre-flight has passed (or was forced)."""
        device = preflight.device
        assert device is not None
        checks = [c.to_json() for c in preflight.checks]
        if preflight.already_seized:
            self._ensure_record(device.bdf, load_records(self.state_dir).get(device.bdf), None,
                                target, "override", persist, dry_run)
            return DeviceResult(device.bdf, "already-seized", self._original(device.bdf), target,
                                checks=checks)
        method, steps = plan_hide(self.host, device, target)
        entry = JournalEntry("hide", device.bdf, device.driver, target, method, steps, persist=persist)
        writes = self._run(entry, dry_run)
        if dry_run:
            return DeviceResult(device.bdf, "planned", device.driver, target, method, checks, writes)
        now = self.host.device(device.bdf)
        if now.driver != target:
            raise errors.OperationFailed(
                f"hide {device.bdf}: {target} did not bind it (driver now "
                f"{now.driver or 'none'}); run 'xen-pciback recover'")
        self._ensure_record(device.bdf, None, device.driver, target, method, persist, False)
        self.journal.finish(entry)
        return DeviceResult(device.bdf, "seized", device.driver, target, method, checks, writes)

    # -- unhide -----------------------------------------------------------------------------
    def unhide(self, bdf: Bdf, *, rebind: bool = False, force: bool = False,
               dry_run: bool = False) -> DeviceResult:
        domid = self.attachments.get(bdf)
        if domid is not None and not force:
            raise errors.SafetyRefusal(f"refusing to unhide {bdf}: it is attached to domain {domid} "
                                       f"(detach it first with 'xl pci-detach {domid} {bdf}')")
        device = self.host.device(bdf)
        record = load_records(self.state_dir).get(bdf)
        if record is None and device.driver not in STUB_DRIVERS:
            return DeviceResult(bdf, "not-seized", None, device.driver)
        target = record.target_driver if record else str(device.driver)
        original = record.original_driver if record else None
        if rebind and original and original not in self.host.loaded_drivers():
            # The kernel never loads a module for a sysfs bind: fail before any write, so the
            # device stays fully seized and a retry after modprobe finds its record.
            raise errors.OperationFailed(f"cannot rebind {bdf} to {original}: that driver is not "
                                         f"loaded (modprobe {original}, then unhide again)")
        method = record.method if record else "override"
        steps = plan_release(self.host, device, target, original, rebind=rebind, method=method)
        entry = JournalEntry("unhide", bdf, original, target, method, steps, rebind=rebind)
        writes = self._run(entry, dry_run)
        if dry_run:
            return DeviceResult(bdf, "planned", original, device.driver, writes=writes)
        now = self.host.device(bdf)
        if now.driver == target:
            raise errors.OperationFailed(f"unhide {bdf}: still bound to {target}; run 'xen-pciback recover'")
        self._forget(bdf)
        self.journal.finish(entry)
        return DeviceResult(bdf, "released", original, now.driver, writes=writes)

    # -- shared -----------------------------------------------------------------------------
    def _run(self, entry: JournalEntry, dry_run: bool) -> list[dict[str, str]]:
        """Execute the plan: journal first, then each write, marking it done."""
        writes = [{"path": s.path, "value": s.value, "description": s.description} for s in entry.steps]
        if dry_run:
            for step in entry.steps:
                self.host.recorded.append(AttributeWrite(step.path, step.value))
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

    def _original(self, bdf: Bdf) -> str | None:
        record = load_records(self.state_dir).get(bdf)
        return record.original_driver if record else None

    def _ensure_record(self, bdf: Bdf, existing: SeizeRecord | None, original: str | None,
                       target: str, method: str, persist: bool, dry_run: bool) -> None:
        if dry_run:
            return
        if existing is not None:
            if persist and not existing.persist:
                put_record(self.state_dir, SeizeRecord(bdf, existing.original_driver, existing.target_driver,
                                                       True, existing.seized_at, existing.method))
            return
        put_record(self.state_dir, SeizeRecord(bdf, original, target, persist, method=method))
        if self.xenstore is not None and original:
            self.xenstore.write(driver_path_key(bdf), f"/sys/bus/pci/drivers/{original}")

    def _forget(self, bdf: Bdf) -> None:
        drop_record(self.state_dir, bdf)
        record_release(self.state_dir, bdf)  # permissive and quirks end with the seize
        if self.xenstore is not None:
            try:
                self.xenstore.rm(driver_path_key(bdf))
            except Exception:  # absent already: nothing to forget
                pass

    # -- recover ----------------------------------------------------------------------------
    def recover(self) -> list[dict[str, object]]:
        """Complete or roll back every interrupted operation; idempotent. Holds the lock, so an
        operation still running in another process is waited for, never "recovered"."""
        outcomes: list[dict[str, object]] = []
        with self.locked():
            for entry in pending_operations(self.state_dir):
                outcomes.append(self._recover_one(entry))
        return outcomes

    def _recover_one(self, entry: JournalEntry) -> dict[str, object]:
        bdf = entry.bdf
        outcome: dict[str, object] = {"op": entry.op, "bdf": str(bdf), "stopped": entry.describe()}
        try:
            device = self.host.device(bdf)
        except errors.DeviceNotFound:
            self.journal.finish(entry)
            drop_record(self.state_dir, bdf)
            outcome.update(action="dropped", reason="the device is gone from the host")
            return outcome
        if entry.op == "hide":
            if entry.original_driver and device.driver == entry.original_driver:
                added_slot = any(s.path.endswith("/new_slot") for s in entry.steps[:max(entry.done, 1) + 1])
                self._execute(bdf, plan_release(self.host, device, entry.target_driver, entry.original_driver,
                                                rebind=True, remove_slot=added_slot, method=entry.method))
                drop_record(self.state_dir, bdf)
                outcome.update(action="rolled back", reason=f"still bound to {entry.original_driver}: "
                               "the host had not lost it yet")
            else:
                self._seize_from_here(device, entry.target_driver, entry.method)
                self._ensure_record(bdf, load_records(self.state_dir).get(bdf), entry.original_driver,
                                    entry.target_driver, entry.method, entry.persist, False)
                outcome.update(action="completed", reason=f"already unbound from "
                               f"{entry.original_driver or 'no driver'}: finished the seize")
        else:
            if device.driver == entry.target_driver:
                self._seize_from_here(device, entry.target_driver, entry.method)
                outcome.update(action="rolled back", reason=f"still bound to {entry.target_driver}: "
                               "the release had not started")
            else:
                self._execute(bdf, plan_release(self.host, device, entry.target_driver, entry.original_driver,
                                                rebind=entry.rebind, method=entry.method))
                self._forget(bdf)
                outcome.update(action="completed", reason=f"already unbound from {entry.target_driver}: "
                               "finished the release")
        self.journal.finish(entry)
        now = self.host.device(bdf)
        outcome["driver"] = now.driver
        return outcome

    def _seize_from_here(self, device: PciDevice, target: str, method: str) -> None:
        """Bring a device, in whatever state a crash left it, to held-by-target."""
        bdf = device.bdf
        if device.driver == target:
            if method == "override" and device.driver_override != target:
                self.host.set_driver_override(bdf, target)
            if method == "slot" and str(bdf) not in self.host.pciback_slots():
                self.host.pciback_new_slot(bdf)
            return
        _, steps = plan_hide(self.host, device, target)
        self._execute(bdf, steps)
        if self.host.device(bdf).driver != target:
            raise errors.OperationFailed(f"recover {bdf}: {target} would not bind it")

    def _execute(self, bdf: Bdf, steps: list[PlannedWrite]) -> None:
        for step in steps:
            self._write_step(bdf, step)

    def _write_step(self, bdf: Bdf, step: PlannedWrite) -> None:
        """One planned write, tolerating the two outcomes that mean "already so" for dynamic ids."""
        try:
            self.host.write_attribute(step.path, step.value)
        except errors.HostError as exc:
            if step.path.endswith("/remove_id") and exc.errno == errno.ENODEV:
                return  # another device's unhide removed the shared id already
            if step.path.endswith("/new_id") and exc.errno == errno.EEXIST:
                self.host.bind(bdf, step.path.split("/")[-2])  # the id is there: bind explicitly
                return
            raise


# -- test-only crash injection ----------------------------------------------------------------
KILL_ENV = "XEN_PCIBACK_TEST_KILL_AFTER_WRITES"


class InjectedFailure(Exception):
    """Raised by the test-only failure hook (not a XenPcibackError: it stands for a crash)."""


def failure_hook(after: int, *, kill: bool) -> object:
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
        host.write_hooks.append(failure_hook(count, kill=True))  # type: ignore[arg-type]

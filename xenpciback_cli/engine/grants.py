"""The hypervisor's side of passthrough: what a guest domain is allowed to touch.

Writing xenstore makes a device *visible* to a guest; Xen must also *let* the guest use it. For a
PV guest libxl does this per function after its checks and before it publishes the device in
xenstore (``tools/libs/light/libxl_pci.c``, ``pci_add_dm_done``), and undoes it after the
backend has let the device go (``pci_remove_detached``). This module plans those grants from
the device's sysfs facts, runs them through a :class:`DomainGrants` port, and keeps a record in
the state dir so a grant or revoke cut short by a crash is finished by ``recover``.

The grants, in libxl's order:

1. ``iomem``: every memory range of sysfs ``resource`` lines 0-6 (the six BARs and the
   expansion ROM) with a non-zero start, in 4 KiB frames: first frame ``start >> 12``,
   ``(size + 4095) >> 12`` frames (BARs are aligned to their size, so this covers them);
2. ``ioport``: every I/O range of the same lines (first port, number of ports);
3. ``intx``: the INTx line (sysfs ``irq``, 1-254): map the GSI into the guest's PIRQ space
   (``map_pirq(domid, irq)``, a PV guest gets it under the same number) and permit that PIRQ;
4. ``assign``: the device into the domain's IOMMU context (``rdm_policy=relaxed`` sets the
   relaxed flag). Without it Xen refuses to map MSI/MSI-X for the guest (ENODEV), which is
   what ``serve`` does later.

Revoking walks the same list backwards: deassign (Xen moves the device to its quarantine,
DomIO), deny and unmap the PIRQ, deny the I/O and memory ranges; then, after the caller has
reset the device, hand it back from quarantine to dom0 (deassign from DOMID_IO). A revoke of
something already gone (EINVAL from an unmapped PIRQ, ENODEV from a device no longer in that
domain, ESRCH from a dead domain) is not an error: that is how a revoke is finished twice.

One deliberate difference from libxl: a range is I/O when the kernel's ``IORESOURCE_IO`` bit
says so; libxl tests bit 0, which the kernel also sets on an enabled expansion ROM.

The record (``STATE_DIR/grants/DDDD-BB-DD-F.json``) is written before the first hypercall and
after each one: phase ``granting`` (attach in progress; the whole plan, PIRQ filled in when
mapped), ``attached`` (published in xenstore), ``revoking`` (what is still to revoke).
``recover`` revokes what a dead attach or detach left, and what a destroyed guest left behind.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from xenpciback_cli.engine import statestore as st
from xenpciback_cli.errors import OperationFailed, StateFileCorrupt, XenPcibackError
from xenpciback_cli.pci.address import Bdf
from xenpciback_cli.pci.device import PciDevice
from xenpciback_cli.pci.drivers import PCIBACK_DRIVER

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
#: sysfs ``resource`` lines libxl reads: BARs 0-5 and the expansion ROM (PROC_PCI_NUM_RESOURCES).
RESOURCE_LINES = 7
#: libxl's PCI_IRQ_LINE_LIMIT: an INTx line is 1..254 (0 and 255 mean none).
IRQ_LINE_LIMIT = 0xFF
GRANTS_DIR = "grants"
PHASES = ("granting", "attached", "revoking")
KINDS = ("iomem", "ioport", "intx", "assign")
#: errno values that mean "already revoked" for each revoke call.
ALREADY_GONE = {
    "unmap_pirq": (errno.EINVAL, errno.ENOENT, errno.ESRCH),
    "deassign": (errno.ENODEV, errno.ESRCH, errno.EINVAL),
    "release": (errno.ENODEV, errno.EINVAL),
    "permission": (errno.ESRCH,),
}


class DomainGrants(Protocol):
    """The hypervisor calls of passthrough, one per hypercall (libxenctrl's names).

    Each raises ``OSError(errno)`` on failure. ``deassign_device(DOMID_IO, bdf)`` is how the
    engine asks for a device back from the quarantine."""

    kind: str

    def iomem_permission(self, domid: int, first_frame: int, frames: int, allow: bool) -> None: ...

    def ioport_permission(self, domid: int, first_port: int, ports: int, allow: bool) -> None: ...

    def map_pirq(self, domid: int, irq: int) -> int: ...

    def unmap_pirq(self, domid: int, pirq: int) -> None: ...

    def irq_permission(self, domid: int, pirq: int, allow: bool) -> None: ...

    def assign_device(self, domid: int, bdf: Bdf, *, relaxed: bool) -> None: ...

    def deassign_device(self, domid: int, bdf: Bdf) -> None: ...


DOMID_IO = 0x7FF1


@dataclass(frozen=True)
class Grant:
    """One thing a domain is allowed: a range of frames or ports, an INTx line, the device."""

    kind: str
    first: int = 0  # first frame (iomem), first port (ioport), GSI (intx)
    count: int = 0  # frames, ports; 0 for intx and assign
    pirq: int | None = None  # intx: the PIRQ Xen mapped (None until mapped)
    relaxed: bool = False  # assign: XEN_DOMCTL_DEV_RDM_RELAXED

    def describe(self) -> str:
        if self.kind == "iomem":
            return (f"memory {self.first << PAGE_SHIFT:#x}-{((self.first + self.count) << PAGE_SHIFT) - 1:#x}"
                    f" ({self.count} frame{'s' if self.count != 1 else ''})")
        if self.kind == "ioport":
            return f"I/O ports {self.first:#x}-{self.first + self.count - 1:#x}"
        if self.kind == "intx":
            return f"INTx IRQ {self.first}" + (f" as PIRQ {self.pirq}" if self.pirq is not None else "")
        return "IOMMU assignment" + (" (rdm relaxed)" if self.relaxed else "")

    def doing(self, bdf: Bdf, domid: int) -> str:
        """The step as an error names it: "assigning 0000:03:00.0 to domain 5 (IOMMU)"."""
        if self.kind == "assign":
            return f"assigning {bdf} to domain {domid} (IOMMU)"
        if self.kind == "intx":
            return f"mapping INTx IRQ {self.first} of {bdf} into domain {domid}"
        return f"granting domain {domid} {self.describe()} of {bdf}"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind}
        if self.kind in ("iomem", "ioport"):
            out.update(first=self.first, count=self.count)
        elif self.kind == "intx":
            out.update(irq=self.first, pirq=self.pirq)
        else:
            out.update(relaxed=self.relaxed)
        return out

    @classmethod
    def from_json(cls, value: object, what: str) -> Grant:
        if not isinstance(value, dict) or value.get("kind") not in KINDS:
            raise st.Invalid(f"{what} is not a grant")
        kind = value["kind"]
        if kind in ("iomem", "ioport"):
            data = st.obj(value, what, required={"kind", "first", "count"})
            limit = (1 << 52) if kind == "iomem" else 0xFFFF
            return cls(kind, st.integer(data["first"], f"{what}.first", 0, limit),
                       st.integer(data["count"], f"{what}.count", 1, limit + 1))
        if kind == "intx":
            data = st.obj(value, what, required={"kind", "irq", "pirq"})
            pirq = None if data["pirq"] is None else st.integer(data["pirq"], f"{what}.pirq", 0, 1 << 31)
            return cls(kind, st.integer(data["irq"], f"{what}.irq", 1, IRQ_LINE_LIMIT - 1), pirq=pirq)
        data = st.obj(value, what, required={"kind", "relaxed"})
        return cls(kind, relaxed=st.boolean(data["relaxed"], f"{what}.relaxed"))


def plan_grants(device: PciDevice, *, relaxed: bool) -> list[Grant]:
    """What libxl grants a PV guest for ``device``, in its order (see the module docstring)."""
    grants: list[Grant] = []
    for res in device.resources:
        if res.index >= RESOURCE_LINES or res.start == 0 or res.size == 0:
            continue
        if res.is_io:
            grants.append(Grant("ioport", res.start, res.size))
        else:
            grants.append(Grant("iomem", res.start >> PAGE_SHIFT, (res.size + PAGE_SIZE - 1) >> PAGE_SHIFT))
    irq = device.irq
    if irq is not None and 0 < irq < IRQ_LINE_LIMIT:
        grants.append(Grant("intx", irq))
    grants.append(Grant("assign", relaxed=relaxed))
    return grants


def route_intx(host: Any, bdf: Bdf) -> bool:
    """Have the kernel route ``bdf``'s INTx before its IRQ is read for the grant; True if it did.

    Until a dom0 driver has enabled a device once, sysfs ``irq`` is the firmware's INTERRUPT_LINE
    register, not the GSI: the real-Xen tier saw a pci-stub-held e1000e granted and mapped as
    "GSI10" in the guest, whose interrupts never came (its line is an I/O APIC GSI). Enabling the
    device makes the kernel resolve its GSI through ACPI, register it with Xen (dom0's PIRQ of
    that number, which ``irq_permission`` needs) and store it as ``irq``; the kernel's pciback
    gets the same from enabling each device in its probe. Done only for a device with an
    interrupt pin that is not enabled (sysfs ``enable`` reads 0); it is disabled again at once,
    which leaves the routing (and the IRQ number) in place, as with pciback. Its driver (the
    stub) is unbound around the round, as the kernel requires, and bound again.

    A disable that fails is tried once more (a stub bound again meanwhile, by a udev rule's
    probe, is unbound first); if the device stays enabled in dom0, OperationFailed says so and
    the attach stops before any grant. When binding the stub back fails after another failure,
    the error names both, the first as the cause."""
    path = _enable_path(host, bdf)
    if path is None:
        return False
    driver = host.device(bdf).driver
    relative = os.path.relpath(path, host.path(""))
    # The kernel refuses (EBUSY) to enable a device through sysfs while a driver holds it: the
    # stub is unbound for the moment of the round (its driver_override keeps others off) and
    # bound again whatever happened.
    if driver:
        host.unbind(bdf, driver)
    failure: BaseException | None = None
    try:
        host.write_attribute(relative, "1", bdf)
        _disable(host, bdf, path, relative, driver)
    except BaseException as exc:
        failure = exc
        raise
    finally:
        if driver:
            _bind_back(host, bdf, driver, failure)
    return True


def intx_unrouted(host: Any, bdf: Bdf) -> bool:
    """Whether :func:`route_intx` would enable ``bdf`` once (nothing is written): its sysfs
    ``irq`` is then the firmware's INTERRUPT_LINE, not the GSI the attach will map."""
    return _enable_path(host, bdf) is not None


def _enable_path(host: Any, bdf: Bdf) -> str | None:
    """The device's sysfs ``enable`` when the kernel has still to route its INTx, else None."""
    base = getattr(host, "device_dir", None)
    if base is None:
        return None
    path = os.path.join(base(bdf), "enable")
    enabled = _read_enable(path)
    if enabled is None:
        return None  # no such attribute (an old kernel, a simulated host): keep sysfs irq
    pin = host.read_config(bdf, 0x3D, 1)
    if enabled != "0" or not pin or pin[0] == 0:
        return None
    if host.device(bdf).driver == PCIBACK_DRIVER:
        return None  # its probe enabled the device once: routed already
    return path


def _read_enable(path: str) -> str | None:
    try:
        with open(path, encoding="ascii") as handle:
            return handle.read().strip()
    except (OSError, ValueError):
        return None


def _disable(host: Any, bdf: Bdf, path: str, relative: str, driver: str | None) -> None:
    """Write 0 to ``enable``; on a failure, once more (the stub unbound again if it came back).

    Left enabled, the device would keep its decoding on in dom0 and the kernel's enable count
    at one (a later host driver's remove would not turn it off): the attach must not go on."""
    try:
        host.write_attribute(relative, "0", bdf)
        return
    except (OSError, XenPcibackError) as exc:
        first = exc
    try:
        if _read_enable(path) == "0":
            return
        if driver and host.device(bdf).driver == driver:
            host.unbind(bdf, driver)  # bound again meanwhile: the kernel answered EBUSY
        host.write_attribute(relative, "0", bdf)
    except (OSError, XenPcibackError) as exc:
        raise OperationFailed(
            f"{bdf} is left enabled in dom0 after routing its INTx: disabling it failed ({first}), "
            f"and again ({exc}); nothing was granted: unbind its driver, write 0 to its sysfs "
            "enable, bind the driver back, then attach again") from first


def _bind_back(host: Any, bdf: Bdf, driver: str, failure: BaseException | None) -> None:
    """Bind the stub back after the round; if that fails after ``failure``, say both."""
    try:
        if host.device(bdf).driver != driver:
            host.bind(bdf, driver)
    except (OSError, XenPcibackError) as exc:
        if failure is None or not isinstance(failure, Exception):
            raise
        raise OperationFailed(f"{failure}; binding {bdf} back to {driver} failed too: {exc}") \
            from failure


# -- the record --------------------------------------------------------------------------------
@dataclass
class GrantRecord:
    """What a domain holds (or may hold) for one device, kept in the state dir."""

    bdf: Bdf
    domid: int
    adapter: str
    phase: str
    grants: list[Grant] = field(default_factory=list)
    #: The process granting or revoking (pid, boot id, start time, as the journal names its
    #: writer), so ``doctor`` tells an attach in progress from one that died.
    owner: dict[str, Any] | None = field(default_factory=lambda: _this_process())

    @property
    def name(self) -> str:
        return f"{GRANTS_DIR}/{self.bdf.xs_key}.json"

    @property
    def interrupted(self) -> bool:
        """Granting or revoking, and the process doing it is gone: ``recover`` has work."""
        if self.phase == "attached":
            return False
        owner = self.owner or {}
        from xenpciback_cli.engine.journal import boot_id, process_start

        pid = owner.get("pid")
        if not isinstance(pid, int) or pid in (0, os.getpid()) or owner.get("boot_id") is None:
            return True
        return not (owner.get("boot_id") == boot_id() and process_start(pid) == owner.get("process_start"))

    def to_json(self) -> dict[str, Any]:
        return {"bdf": str(self.bdf), "domid": self.domid, "adapter": self.adapter,
                "phase": self.phase, "grants": [g.to_json() for g in self.grants], "owner": self.owner}

    @classmethod
    def from_json(cls, value: object, device: Bdf) -> GrantRecord:
        data = st.obj(value, "the record", required={"bdf", "domid", "adapter", "phase", "grants"},
                      optional={"owner"})
        bdf = st.bdf(data["bdf"], "bdf")
        if bdf != device:
            raise st.Invalid(f"it names {bdf}, not {device}")
        if data["phase"] not in PHASES:
            raise st.Invalid(f"phase must be one of {', '.join(PHASES)}")
        if not isinstance(data["grants"], list) or len(data["grants"]) > 64:
            raise st.Invalid("grants must be a list of at most 64 grants")
        owner = data.get("owner")
        if owner is not None:
            owner = st.obj(owner, "owner", required={"pid", "boot_id", "process_start"})
            st.integer(owner["pid"], "owner.pid", 0, 1 << 31)
            if owner["boot_id"] is not None:
                st.text(owner["boot_id"], "owner.boot_id", limit=64)
            if owner["process_start"] is not None:
                st.integer(owner["process_start"], "owner.process_start", 0, 1 << 63)
        return cls(bdf, st.integer(data["domid"], "domid", 1, 0x7FEF),
                   st.text(data["adapter"], "adapter", limit=32), data["phase"],
                   [Grant.from_json(g, f"grants[{i}]") for i, g in enumerate(data["grants"])], owner)


def _this_process() -> dict[str, Any]:
    from xenpciback_cli.engine.journal import boot_id, process_start

    return {"pid": os.getpid(), "boot_id": boot_id(), "process_start": process_start(os.getpid())}


def _save(store: st.StateStore, record: GrantRecord) -> None:
    record.owner = None if record.phase == "attached" else _this_process()
    store.write(record.name, (json.dumps(record.to_json(), indent=1) + "\n").encode())


def load_record(state_dir: str | os.PathLike[str], bdf: Bdf) -> GrantRecord | None:
    store = st.StateStore(state_dir)
    name = f"{GRANTS_DIR}/{bdf.xs_key}.json"
    data = store.read_for(name, bdf)
    if data is None:
        return None
    try:
        return GrantRecord.from_json(st.parse_json(data), bdf)
    except st.Invalid as exc:
        raise st.corrupt(store.path(name), str(exc), "check the device's grants by hand "
                         "('xl debug-keys', or detach and re-attach it), then delete the file",
                         device=bdf) from None


def load_records(state_dir: str | os.PathLike[str],
                 corrupt: list[StateFileCorrupt] | None = None) -> dict[Bdf, GrantRecord]:
    """Every device's record; a corrupt one raises, or is appended to ``corrupt`` if given."""
    out: dict[Bdf, GrantRecord] = {}
    for name in st.StateStore(state_dir).list(GRANTS_DIR):
        device = st.bdf_from_key(name[:-5]) if name.endswith(".json") else None
        if device is None:
            continue
        try:
            record = load_record(state_dir, device)
        except StateFileCorrupt as exc:
            if corrupt is None:
                raise
            corrupt.append(exc)
            continue
        if record is not None:
            out[device] = record
    return out


def grants_view(state_dir: str | os.PathLike[str]) -> dict[Bdf, dict[str, Any]]:
    """bdf -> the record as JSON, for ``list --json`` and ``status`` (a corrupt record is left
    out here: ``recover`` and ``doctor`` name it). Empty when the state dir was never used."""
    if not os.path.lexists(state_dir):
        return {}
    return {bdf: record.to_json() for bdf, record in load_records(state_dir, corrupt=[]).items()}


# -- granting and revoking -----------------------------------------------------------------------
def _failure(what: str, exc: OSError) -> str:
    code = exc.errno or errno.EIO
    return f"{what}: {errno.errorcode.get(code, str(code))} ({os.strerror(code)})"


def _grant_one(port: DomainGrants, domid: int, bdf: Bdf, grant: Grant) -> Grant:
    if grant.kind == "iomem":
        port.iomem_permission(domid, grant.first, grant.count, True)
    elif grant.kind == "ioport":
        port.ioport_permission(domid, grant.first, grant.count, True)
    elif grant.kind == "intx":
        pirq = port.map_pirq(domid, grant.first)
        grant = Grant("intx", grant.first, pirq=pirq)
        try:
            port.irq_permission(domid, pirq, True)
        except OSError:
            try:  # mapped but not permitted: take the mapping back before saying so
                port.unmap_pirq(domid, pirq)
            except OSError:
                pass
            raise
    else:
        port.assign_device(domid, bdf, relaxed=grant.relaxed)
    return grant


def _revoke_one(port: DomainGrants, domid: int, bdf: Bdf, grant: Grant) -> list[str]:
    """Undo one grant; returns what failed (already-gone answers are not failures)."""
    problems: list[str] = []

    def attempt(what: str, gone: Sequence[int], call: Callable[[], None]) -> None:
        try:
            call()
        except OSError as exc:
            if exc.errno not in gone:
                problems.append(_failure(what, exc))

    if grant.kind == "iomem":
        attempt(f"revoking {grant.describe()}", ALREADY_GONE["permission"],
                lambda: port.iomem_permission(domid, grant.first, grant.count, False))
    elif grant.kind == "ioport":
        attempt(f"revoking {grant.describe()}", ALREADY_GONE["permission"],
                lambda: port.ioport_permission(domid, grant.first, grant.count, False))
    elif grant.kind == "intx":
        # libxl unmaps the PIRQ under the GSI's number; a PV guest got it under that number.
        pirq = grant.pirq if grant.pirq is not None else grant.first
        attempt(f"unmapping PIRQ {pirq}", ALREADY_GONE["unmap_pirq"], lambda: port.unmap_pirq(domid, pirq))
        attempt(f"denying PIRQ {pirq}", ALREADY_GONE["permission"],
                lambda: port.irq_permission(domid, pirq, False))
    else:
        attempt(f"deassigning {bdf} from domain {domid}", ALREADY_GONE["deassign"],
                lambda: port.deassign_device(domid, bdf))
    return problems


@dataclass
class GrantOutcome:
    """What :func:`grant_device` granted, for the attach result."""

    bdf: Bdf
    grants: list[Grant]
    notes: list[str] = field(default_factory=list)


def grant_device(port: DomainGrants, state_dir: str | os.PathLike[str] | None, domid: int,
                 device: PciDevice, *, relaxed: bool) -> GrantOutcome:
    """Grant ``domid`` everything libxl would for ``device``; all or nothing.

    A failure half way revokes what was granted (and the record goes, unless a revoke failed
    too: then it stays for ``recover``) before OperationFailed says which call failed. ENOSYS
    from the assignment (a Xen without IOMMU support) is accepted for a PV guest, as libxl
    does."""
    store = st.StateStore(state_dir) if state_dir is not None else None
    plan = plan_grants(device, relaxed=relaxed)
    record = GrantRecord(device.bdf, domid, port.kind, "granting", list(plan))
    if store is not None:
        _save(store, record)
    done: list[Grant] = []
    notes: list[str] = []
    for index, grant in enumerate(plan):
        try:
            granted = _grant_one(port, domid, device.bdf, grant)
        except OSError as exc:
            if grant.kind == "assign" and exc.errno == errno.ENOSYS:
                notes.append(f"{device.bdf}: Xen has no IOMMU support (assignment: ENOSYS); the "
                             "guest cannot use MSI or DMA safely")
                record.grants = list(done)
                if store is not None:
                    _save(store, record)
                break
            problems = _take_back(port, store, record, domid, device.bdf, done)
            hint = (" (the guest has no IOMMU context: create it with passthrough=\"enabled\" or a "
                    "pci= entry)" if grant.kind == "assign" and exc.errno == errno.EOPNOTSUPP else "")
            undone = ("; revoking the rest failed too: " + "; ".join(problems)) if problems else \
                "; what was granted is revoked"
            raise OperationFailed(_failure(grant.doing(device.bdf, domid), exc) + hint + undone) from None
        except BaseException:  # Ctrl-C, a bug: nothing half granted stays behind either
            _take_back(port, store, record, domid, device.bdf, done)
            raise
        done.append(granted)
        record.grants = done + plan[index + 1:]
        if store is not None:
            _save(store, record)
    return GrantOutcome(device.bdf, done, notes)


def _take_back(port: DomainGrants, store: st.StateStore | None, record: GrantRecord, domid: int,
               bdf: Bdf, done: list[Grant]) -> list[str]:
    """A grant failed half way: revoke ``done`` newest first. The record goes when all of it
    was revoked; else it stays (phase ``revoking``, what is still granted) for ``recover``."""
    record.phase = "revoking"
    record.grants = list(done)
    if store is not None and done:
        _save(store, record)
    _, problems, still = _revoke_held(port, store, record, domid, bdf, done)
    if store is not None:
        if still:
            problems.append(_kept(still))
        else:
            store.remove(record.name)
    return problems


def _revoke_held(port: DomainGrants, store: st.StateStore | None, record: GrantRecord, domid: int,
                 bdf: Bdf, held: Sequence[Grant],
                 keep: Callable[[Grant], bool] = lambda g: False) -> tuple[list[Grant], list[str], list[Grant]]:
    """Revoke ``held`` newest first, the record rewritten after each with what is still held
    (a grant whose revoke failed, and those ``keep`` holds back); returns (what was revoked,
    problems as sentences, what is still held, in ``held``'s order)."""
    revoked = [False] * len(held)
    problems: list[str] = []
    for index in reversed(range(len(held))):
        trouble = _revoke_one(port, domid, bdf, held[index])
        problems += trouble
        revoked[index] = not trouble
        record.grants = [g for g, gone in zip(held, revoked) if not gone or keep(g)]
        if store is not None:
            _save(store, record)
    return ([g for g, gone in zip(reversed(held), reversed(revoked)) if gone], problems,
            [g for g, gone in zip(held, revoked) if not gone])


def _kept(still: Sequence[Grant]) -> str:
    return ("still granted, kept in the record for 'xen-pciback recover': "
            + ", ".join(g.describe() for g in still))


def mark_attached(state_dir: str | os.PathLike[str] | None, bdfs: Sequence[Bdf]) -> None:
    """The devices are published in xenstore: their grants are the guest's now."""
    if state_dir is None:
        return
    store = st.StateStore(state_dir)
    for bdf in bdfs:
        record = load_record(state_dir, bdf)
        if record is not None:
            record.phase = "attached"
            _save(store, record)


def revoke_device(port: DomainGrants | None, state_dir: str | os.PathLike[str] | None, bdf: Bdf,
                  domid: int, *, grants: Sequence[Grant] | None = None,
                  before_release: Callable[[], None] | None = None) -> tuple[list[Grant], list[str]]:
    """Revoke what the record (or ``grants``) says ``domid`` holds for ``bdf``, newest first.

    The record is rewritten after each revoke (phase ``revoking``), so a crash leaves exactly
    what is still to do for ``recover``. After the device left the domain (deassign: Xen's
    quarantine), ``before_release`` runs (detach resets the device there), then the device is
    handed back to dom0. The record goes only when everything was revoked: a revoke Xen
    refused leaves it with what is still granted (the hand-back owes the assignment), and the
    last problem says ``recover`` finishes it. Returns (what was revoked, problems as
    sentences)."""
    store = st.StateStore(state_dir) if state_dir is not None else None
    record = load_record(state_dir, bdf) if state_dir is not None else None
    if record is not None and record.domid != domid:
        record = None  # another guest's record: never ours to revoke here
    held = list(grants) if grants is not None else (record.grants if record is not None else [])
    if port is None or not held:
        if before_release is not None:
            before_release()
        return [], []
    if record is None:
        record = GrantRecord(bdf, domid, port.kind, "revoking", list(held))
    record.phase = "revoking"
    if store is not None:
        _save(store, record)

    # The assignment stays in the record until the device is back in dom0: a revoke cut short
    # after the deassign still owes the hand-back from the quarantine.
    assignment = [g for g in held if g.kind == "assign"]
    revoked, problems, still = _revoke_held(port, store, record, domid, bdf, held,
                                            keep=lambda g: g.kind == "assign")
    if before_release is not None:
        before_release()
    if assignment:
        try:
            port.deassign_device(DOMID_IO, bdf)  # from the quarantine back to dom0
        except OSError as exc:
            if exc.errno not in ALREADY_GONE["release"]:
                problems.append(_failure(f"handing {bdf} back to dom0 from the quarantine", exc))
                still += [g for g in assignment if g not in still]
    if store is not None:
        if still:  # nothing is lost: recover revokes what is left
            record.grants = still
            _save(store, record)
            problems.append(_kept(still))
        else:
            store.remove(record.name)
    return revoked, problems


# -- recover -------------------------------------------------------------------------------------
@dataclass
class RecoverOutcome:
    bdf: Bdf
    domid: int
    action: str  # "revoked", "kept", "skipped", "failed" (still recorded: run recover again)
    reason: str
    corrupt: bool = False  # the record itself is unreadable: a person must look (exit 2)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"op": "grants", "bdf": str(self.bdf), "domid": self.domid,
                               "action": self.action, "reason": self.reason}
        if self.corrupt:
            out["corrupt"] = True
        return out


def recover_grants(state_dir: str | os.PathLike[str], port: DomainGrants | None,
                   holders: Mapping[Bdf, int] | None, *, dry_run: bool = False) -> list[RecoverOutcome]:
    """Finish what a dead attach or detach left in the grant records.

    ``holders`` is xenstore's view (bdf -> domid attached), None without a xenstore (then
    nothing is attached). A ``granting`` record whose device the domain holds in xenstore was
    published: it becomes ``attached``. A ``revoking`` record, a ``granting`` one that was not
    published, and an ``attached`` one whose domain no longer holds the device (a destroyed
    guest) are revoked."""
    out: list[RecoverOutcome] = []
    corrupt: list[StateFileCorrupt] = []
    records = load_records(state_dir, corrupt)
    for exc in corrupt:  # named, and the other records are still recovered
        bdf = exc.bdf if isinstance(exc.bdf, Bdf) else Bdf(0, 0, 0, 0)
        out.append(RecoverOutcome(bdf, 0, "skipped", str(exc), corrupt=True))
    for bdf, record in sorted(records.items()):
        if record.phase != "attached" and not record.interrupted:
            out.append(RecoverOutcome(bdf, record.domid, "skipped", f"its {record.phase} process is "
                                      "still running: left to it"))
            continue
        held = holders is not None and holders.get(bdf) == record.domid
        if record.phase != "revoking" and held:
            if record.phase == "granting" and not dry_run:
                mark_attached(state_dir, [bdf])
            if record.phase == "granting":
                out.append(RecoverOutcome(bdf, record.domid, "kept", "the attach had published the "
                                          "device: its grants stay with the guest"))
            continue
        if record.phase == "attached" and holders is None:
            continue  # without a xenstore nothing says the guest let it go
        why = {"revoking": "a detach was cut short", "granting": "an attach was cut short before "
               "it published the device", "attached": "the guest no longer holds the device"}[record.phase]
        if port is None:
            out.append(RecoverOutcome(bdf, record.domid, "skipped", f"{why}, but there is no "
                                      f"hypervisor interface here ({record.adapter} recorded it)"))
            continue
        if dry_run:
            out.append(RecoverOutcome(bdf, record.domid, "revoked", f"{why}: would revoke "
                                      + ", ".join(g.describe() for g in record.grants)))
            continue
        revoked, problems = revoke_device(port, state_dir, bdf, record.domid)
        text = f"{why}: revoked " + (", ".join(g.describe() for g in revoked) or "nothing left")
        if problems:
            text += "; " + "; ".join(problems)
        # Something Xen refused again stays recorded (revoke_device): not finished, say so.
        left = load_record(state_dir, bdf) is not None and bool(problems)
        out.append(RecoverOutcome(bdf, record.domid, "failed" if left else "revoked", text))
    return out

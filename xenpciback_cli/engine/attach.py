"""Attach seized PCI functions to a guest the way libxl does, and hot-plug into a running one.

Order of work (libxl's, Xen's ``tools/libs/light/libxl_pci.c``, with its checks made explicit). Every
input and state is read and validated before the first write, sysfs or xenstore:

1. checks that need no transaction: the domain exists (``/local/domain/N``), the spec's values,
   every function exists and is bound to a serving driver (``pci.drivers.serving_drivers``:
   pciback, and pci-stub when the kernel's pciback is not loaded; or, with ``seize``, a host
   driver that ``seize`` may take it from; vfio-pci, and pci-stub beside a loaded pciback, hold
   a device for other consumers and are refused either way), a function wildcard has a virtual
   slot, the backend settings file reads back when it is to be updated;
2. the backend's state is read *outside* a transaction, like libxl, to wait out a
   reconfiguration round already in progress; nobody else holds the device
   (``/libxl/pci/<bdf>/domid``), the virtual slot is free, the backend is not being torn down;
   then ``seize``'s pre-flight (host usage...) - and only then the first write, the seize;
3. the hypervisor's grants per function (``engine.grants``: memory and I/O ranges, the INTx
   PIRQ, the IOMMU assignment), all or nothing, taken back if anything below fails;
4. per-device permissive mode is written to the kernel backend's sysfs ``permissive`` file;
5. one transaction, retried on conflict: the same checks again, then the backend/frontend
   directories (first device) and the device's ``*-i`` keys, ``num_devs``, backend
   ``state = 7`` when the backend is Connected, and ``/libxl/pci/<bdf>/domid``;
6. for a hot-plug, wait for the round to finish; on timeout, if the backend has not touched our
   entries yet, a second transaction removes them again (and the grants go), leaving xenstore
   and the hypervisor as they were.

With a state dir, the whole attach holds its lock (``Journal.locked``), like hide and detach.

Nothing here imports click; errors are the project's typed errors.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from xenpciback_cli.errors import InputError, OperationFailed, SafetyRefusal
from xenpciback_cli.pci.address import Bdf
from xenpciback_cli.pci.drivers import (OTHER_CONSUMERS, PCIBACK_DRIVER, default_seize_driver,
                                        serving_drivers)
from xenpciback_cli.pci.quirk import Quirk
from xenpciback_cli.toolstack import libxl_layout as L
from xenpciback_cli.toolstack.handshake import HandshakeTimeout, round_finished, wait_for
from xenpciback_cli.toolstack.xenbus import XenbusState
from xenpciback_cli.toolstack.xsexec import (
    apply_ops,
    list_or_empty,
    read_backend,
    read_or_none,
    transact,
)
from xenpciback_cli.untrusted import decimal

if TYPE_CHECKING:
    from xenpciback_cli.engine.grants import DomainGrants, Grant

DEFAULT_TIMEOUT = 10.0  # libxl__wait_for_backend: 100 polls of 100 ms
TRANSACTION_RETRIES = 16
PCIBACK = PCIBACK_DRIVER


@dataclass
class AttachSpec:
    """What a person asked for, parsed: one function or a whole slot (``function=None``)."""

    domid: int
    bdf: Bdf | None = None
    all_functions: bool = False
    vslot: int | None = None
    options: L.PciOptions = L.PciOptions()
    name: str | None = None
    seize: bool = False
    quirks: tuple[Quirk, ...] = ()


def build_spec(spec: str | None, *, domid: int = 0, name: str | None = None, vslot: str | None = None,
               permissive: bool | None = None, msitranslate: bool | None = None,
               power_mgmt: bool | None = None, rdm_policy: str | None = None,
               seize: bool | None = None, quirks: Sequence[str] = ()) -> AttachSpec:
    """An :class:`AttachSpec` from what a person typed: xl's PCI_SPEC_STRING (or ``--name``),
    with the command's options overriding what the spec says (None: the spec decides).

    ``SPEC@VSLOT`` and ``--vslot`` are one setting given once; a whole slot (``03:00.*``) is
    named by its function 0 with ``all_functions``. InputError for anything malformed."""
    from xenpciback_cli.pci.quirk import parse_quirk
    from xenpciback_cli.pci.spec import parse_pci_spec

    if spec and name:
        raise InputError("give either a device (SPEC) or --name, not both")
    if not spec and not name:
        raise InputError("give a device (SPEC) or --name")
    text = spec if spec else f"name={name}"
    if vslot is not None:  # --vslot VSLOT is SPEC@VSLOT
        if "@" in text or "vslot=" in text:
            raise InputError("give the virtual slot once: SPEC@VSLOT or --vslot")
        text = f"{text},vslot={vslot}"
    parsed = parse_pci_spec(text)

    def pick(flag: bool | None, key: str) -> bool:
        return bool(flag) if flag is not None else bool(getattr(parsed, key))

    options = L.PciOptions(msitranslate=pick(msitranslate, "msitranslate"),
                           power_mgmt=pick(power_mgmt, "power_mgmt"),
                           permissive=pick(permissive, "permissive"),
                           rdm_policy=(rdm_policy or parsed.rdm_policy or "strict").lower())
    target = parsed.target
    all_functions = target is not None and target.function is None
    bdf = parsed.bdf
    if all_functions:  # SPEC names a whole slot: its function 0 stands for it
        from dataclasses import replace

        assert target is not None
        bdf = replace(target, function=0).as_bdf()
    return AttachSpec(domid, bdf, all_functions, parsed.vslot, options, parsed.name,
                      pick(seize, "seize"), tuple(parse_quirk(q) for q in quirks))


@dataclass
class AttachResult:
    domid: int
    devices: list[Bdf]
    indices: list[int]
    hotplug: bool
    first: bool
    backend_state: XenbusState | None
    guest_addresses: dict[Bdf, Bdf | None] = field(default_factory=dict)
    permissive_applied: list[Bdf] = field(default_factory=list)
    quirks_applied: dict[Bdf, tuple[Quirk, ...]] = field(default_factory=dict)
    seized: list[Bdf] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: What the hypervisor granted the domain per function (empty without a hypervisor port).
    grants: dict[Bdf, list[Grant]] = field(default_factory=dict)
    #: False when the device was attached to this domain already (nothing written); with
    #: ``dry_run``, whether an attach would change anything (Ansible's check mode).
    changed: bool = True
    dry_run: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "changed": self.changed,
            "dry_run": self.dry_run,
            "domid": self.domid,
            "devices": [{"bdf": str(b), "index": i,
                         "vdev": str(self.guest_addresses[b]) if self.guest_addresses.get(b) else None}
                        for b, i in zip(self.devices, self.indices)],
            "hotplug": self.hotplug,
            # A state is a number, its name beside it: the same two keys as status's JSON.
            "backend_state": int(self.backend_state) if self.backend_state is not None else None,
            "backend_state_name": self.backend_state.label if self.backend_state is not None else None,
            "permissive": [str(b) for b in self.permissive_applied],
            "quirks": {str(b): [str(q) for q in qs] for b, qs in self.quirks_applied.items()},
            "seized": [str(b) for b in self.seized],
            "grants": {str(b): [g.to_json() for g in gs] for b, gs in self.grants.items()},
            "notes": list(self.notes),
        }


def domain_exists(client: Any, domid: int) -> bool:
    return bool(client.exists(L.domain_home(domid)))


def require_domain(client: Any, domid: int) -> str | None:
    """The domain's name; InputError when ``/local/domain/N`` does not exist."""
    if not 0 < domid < 0x7FF0:
        raise InputError(f"invalid domain id {domid}: guests are 1-32751 (0 is dom0)")
    if not domain_exists(client, domid):
        raise InputError(f"unknown domain {domid}: /local/domain/{domid} does not exist")
    return read_or_none(client, f"{L.domain_home(domid)}/name")


def lookup_name(client: Any, name: str, state_dir: str | None = None) -> Bdf:
    """``name2bdf``: the device given that name at assignable-add (``/libxl/pci/*/name``), or
    at ``hide --name`` (kept in our seize record too, so it works without that node)."""
    for key in sorted(list_or_empty(client, L.LIBXL_PCI_ROOT)):
        if read_or_none(client, f"{L.LIBXL_PCI_ROOT}/{key}/name") == name:
            bdf = L.parse_libxl_key(key)
            if bdf is not None:
                return bdf
    if state_dir is not None:
        from xenpciback_cli.engine.names import bdf_for_name

        found = bdf_for_name(name, state_dir)
        if found is not None:
            return found
    raise InputError(f"no assignable device is named {name!r} (see /libxl/pci/*/name and "
                     "'xen-pciback hide --name')")


def domain_id(client: Any, text: str) -> int:
    """A domain as xl takes it: a domain id, or a domain's name (``/local/domain/*/name``)."""
    number = decimal(text.strip(), max_digits=10)
    if number is not None:
        return number
    found = [int(key) for key in list_or_empty(client, "/local/domain") if key.isdigit()
             and read_or_none(client, f"/local/domain/{key}/name") == text]
    if not found:
        raise InputError(f"unknown domain {text!r}: no domain id, and no domain has that name")
    if len(found) > 1:
        raise InputError(f"domain name {text!r} is ambiguous: domains {', '.join(map(str, sorted(found)))}")
    return found[0]


def domain_type(client: Any, domid: int) -> str | None:
    """libxl's ``/libxl/N/type`` (pv, pvh, hvm), None when absent."""
    return read_or_none(client, f"/libxl/{domid}/type")


def resolve_functions(spec: AttachSpec, host: Any | None) -> list[Bdf]:
    """The functions to attach: one, or every function of the slot present on the host."""
    assert spec.bdf is not None
    if not spec.all_functions:
        return [spec.bdf]
    if spec.vslot is None:
        raise InputError(f"{spec.bdf.domain:04x}:{spec.bdf.bus:02x}:{spec.bdf.slot:02x}.*: "
                         "a multi-function device needs a virtual slot (@VSLOT or --vslot)")
    if host is None:
        raise InputError("a function wildcard needs the host's device list")
    found = [d.bdf for d in host.devices()
             if (d.bdf.domain, d.bdf.bus, d.bdf.slot) == (spec.bdf.domain, spec.bdf.bus, spec.bdf.slot)]
    if not found:
        raise InputError(f"no PCI function at {spec.bdf.domain:04x}:{spec.bdf.bus:02x}:"
                         f"{spec.bdf.slot:02x}.*")
    return sorted(found)


def functions_to_seize(bdfs: Sequence[Bdf], host: Any | None, *, seize: bool) -> list[Bdf]:
    """The functions ``--seize`` must hide before attaching; refusals, without writing anything.

    The rule ``list``, ``attach`` and ``attach --seize`` share (``pci.drivers.serving_drivers``):
    a device bound to a serving driver is ready for a guest (pciback; pci-stub too when the
    kernel's pciback is not loaded and ``serve`` is the backend). One bound to another seize
    driver (vfio-pci; pci-stub while pciback is loaded) is held for another consumer, so attach
    refuses it, with or without ``--seize`` (taking it over could pull it from under a running
    VFIO user); any other driver, or none, is the host's, and ``--seize`` hides it first.
    """
    if host is None:
        return []
    serving = serving_drivers(host.loaded_drivers())
    missing = []
    for bdf in bdfs:
        device = host.device(bdf)  # DeviceNotFound for an absent function
        if device.driver in serving:
            continue
        if device.driver in OTHER_CONSUMERS:
            target = default_seize_driver(host.loaded_drivers())
            raise SafetyRefusal(f"{bdf} is seized by {device.driver}, which holds it for "
                                f"{OTHER_CONSUMERS[device.driver]}: release it ('unhide {bdf}') "
                                f"and attach with --seize to move it to {target}")
        missing.append((bdf, device.driver))
    if missing and not seize:
        bdf, driver = missing[0]
        held = f"bound to {driver}" if driver else "not bound to any driver"
        raise SafetyRefusal(f"{bdf} is not seized ({held}): hide it first, or attach with --seize")
    return [b for b, _ in missing]


def check_seized(bdfs: Sequence[Bdf], host: Any | None, *, seize: bool,
                 seize_fn: Callable[[list[Bdf]], list[Bdf]] | None) -> list[Bdf]:
    """Every function must be on pciback (``pci_multifunction_check``); seize it first on request.

    Returns the functions seized here.
    """
    missing = functions_to_seize(bdfs, host, seize=seize and seize_fn is not None)
    if missing and seize_fn is not None:
        return seize_fn(missing)
    return []


def apply_permissive(host: Any | None, bdfs: Sequence[Bdf], options: L.PciOptions) -> list[Bdf]:
    """libxl writes the BDF to pciback's ``permissive`` file; the kernel cannot clear it again
    until the device is unbound, so this is done only when asked."""
    if not options.permissive or host is None:
        return []
    if PCIBACK not in host.loaded_drivers():
        return []
    for bdf in bdfs:
        host.write_attribute(f"bus/pci/drivers/{PCIBACK}/permissive", str(bdf), bdf)
    return list(bdfs)


def apply_quirks(host: Any | None, bdfs: Sequence[Bdf],
                 quirks: Sequence[Quirk]) -> dict[Bdf, tuple[Quirk, ...]]:
    """Each quirk becomes one line in pciback's ``quirks`` file (the kernel drops them again when
    the guest lets the device go, so they are written at every attach)."""
    if not quirks or host is None or PCIBACK not in host.loaded_drivers():
        return {}
    for bdf in bdfs:
        for quirk in quirks:
            host.write_attribute(f"bus/pci/drivers/{PCIBACK}/quirks", quirk.sysfs_line(bdf), bdf)
    return {bdf: tuple(quirks) for bdf in bdfs}


def _holder(tx: Any, bdf: Bdf) -> int | None:
    text = read_or_none(tx, L.libxl_domid_path(bdf))
    if text is None:
        return None
    text = text.strip()
    value = decimal(text)
    return -1 if value is None else value


def attach(client: Any, spec: AttachSpec, *, host: Any | None = None,
           seize_fn: Callable[[list[Bdf]], list[Bdf]] | None = None,
           timeout: float = DEFAULT_TIMEOUT, wait: bool = True,
           retries: int = TRANSACTION_RETRIES,
           on_attempt: Callable[[int], None] | None = None,
           state_dir: str | None = None, dry_run: bool = False,
           grants: DomainGrants | None = None) -> AttachResult:
    """Attach ``spec`` to its domain; see the module docstring for the order of work.

    Idempotent: functions already attached to this domain are left as they are (``changed``
    False). With ``dry_run`` everything is checked and nothing written (no lock taken either).

    ``on_attempt(n)`` runs inside each transaction attempt before the commit (tests use it to
    make a concurrent writer collide with us). With ``state_dir``, the whole attach holds the
    state dir's lock, so no hide, unhide or detach changes the device between our checks and
    our writes.

    ``grants`` is the hypervisor (``engine.grants.DomainGrants``; ``app.py`` picks it): each
    function's memory and I/O ranges, INTx line and IOMMU assignment are granted to the domain
    after the checks and before xenstore publishes the device. None (no Xen here, not a
    sandbox): xenstore only.
    """
    if state_dir is None or dry_run:
        return _attach(client, spec, host, seize_fn, timeout, wait, retries, on_attempt, state_dir,
                       dry_run, grants)
    from xenpciback_cli.engine.journal import Journal

    with Journal(state_dir).locked():
        return _attach(client, spec, host, seize_fn, timeout, wait, retries, on_attempt,
                       state_dir, False, grants)


def _attach(client: Any, spec: AttachSpec, host: Any | None,
            seize_fn: Callable[[list[Bdf]], list[Bdf]] | None, timeout: float, wait: bool,
            retries: int, on_attempt: Callable[[int], None] | None,
            state_dir: str | None, dry_run: bool = False,
            grants: DomainGrants | None = None) -> AttachResult:
    # Everything is read and checked before the first write (sysfs or xenstore): the spec,
    # the domain, the functions and their drivers, the settings file we will update, who holds
    # the device, the guest's slots and backend state, and --seize's own pre-flight.
    domid = spec.domid
    domain_name = require_domain(client, domid)
    if spec.vslot is not None and not 0 <= spec.vslot <= L.MAX_VSLOT:
        raise InputError(f"virtual slot {spec.vslot:#x} is out of range (0-0x1f)")
    if spec.bdf is None:
        if spec.name is None:
            raise InputError("give a device address or --name")
        spec.bdf = lookup_name(client, spec.name, state_dir)
    if spec.options.rdm_policy not in L.RDM_POLICIES:
        raise InputError(f"rdm_policy must be strict or relaxed, not {spec.options.rdm_policy!r}")
    bdfs = resolve_functions(spec, host)
    if state_dir is not None and (spec.options.permissive or spec.quirks):
        from xenpciback_cli.engine.backend_settings import load_device_settings

        for function in bdfs:  # a corrupt file of ours stops us here, not after the attach
            load_device_settings(state_dir, function)
    to_seize = functions_to_seize(bdfs, host, seize=spec.seize and seize_fn is not None)
    devices = tuple(L.DeviceRequest(b, v) for b, v in zip(bdfs, L.vdevfns_for(bdfs, spec.vslot)))
    request = L.AttachRequest(domid, devices, spec.options, spec.name)
    notes: list[str] = []
    if spec.vslot is not None and domain_type(client, domid) != "hvm":
        # libxl writes vdevfn-i all the same; a PV guest's pciback chooses the slot itself.
        notes.append(f"@{spec.vslot:02x} (virtual slot) is ignored for a PV guest: pciback picks "
                     "the guest slot")

    # libxl reads the backend outside the transaction: wait out a round in progress.
    view = read_backend(client, domid)
    if view.state in (XenbusState.RECONFIGURING, XenbusState.RECONFIGURED):
        notes.append("waited for a reconfiguration round in progress")
        view = wait_for(client, domid, round_finished, timeout=timeout,
                        what="for the previous reconfiguration round to finish before attaching")

    if all(_holder(client, b) == domid and view.index_of(b) is not None for b in bdfs):
        # Asked again for what is so already (a playbook's second run): nothing to do.
        return AttachResult(domid, list(bdfs), [view.index_of(b) or 0 for b in bdfs], False, False,
                            view.state, guest_addresses={b: view.entry(view.index_of(b) or 0).vdev
                                                         for b in bdfs},
                            notes=[f"{', '.join(map(str, bdfs))} already attached to domain {domid}: "
                                   "nothing changed (options are not applied again)"],
                            changed=False, dry_run=dry_run)
    # The refusals, before touching sysfs.
    _refuse_holders(client, bdfs, domid)
    view = read_backend(client, domid)
    if view.state in (XenbusState.CLOSING, XenbusState.CLOSED):
        raise OperationFailed(f"domain {domid}'s PCI backend is {view.state.describe()}: "
                              "the guest's PV PCI device is being torn down; nothing changed")
    try:
        L.check_attach(request, view)
    except L.LayoutConflict as exc:
        raise _conflict_error(exc) from None
    if dry_run:
        return AttachResult(domid, list(bdfs), [], view.state == XenbusState.CONNECTED, not view.exists,
                            view.state, dry_run=True,
                            notes=[f"would attach {', '.join(map(str, bdfs))} to domain {domid}"]
                            + ([f"would seize {', '.join(map(str, to_seize))} first"] if to_seize else [])
                            + _planned_grants(grants, host, bdfs, domid, spec.options))
    seized: list[Bdf] = []
    if to_seize:
        assert seize_fn is not None
        check = getattr(seize_fn, "check", None)
        if check is not None:
            check(to_seize)  # --seize's pre-flight refusals, still before any write
        seized = seize_fn(to_seize)
    # The hypervisor's grants (libxl's order: after the checks, before xenstore), before the
    # permissive and quirk writes too: those cannot be taken back, a grant can.
    granted = _grant_functions(grants, host, bdfs, domid, spec.options, state_dir, notes)
    try:
        permissive = apply_permissive(host, bdfs, spec.options)
        quirks = apply_quirks(host, bdfs, spec.quirks)
    except BaseException:
        _revoke_functions(grants, state_dir, granted, domid)
        raise

    attempts = 0
    state_before: list[XenbusState | None] = [None]
    created: list[Bdf] = []

    def build(tx: Any) -> L.AttachPlan:
        nonlocal attempts
        attempts += 1
        _refuse_holders(tx, bdfs, domid)
        current = read_backend(tx, domid)
        state_before[0] = current.state
        created[:] = [b for b in bdfs if not tx.exists(L.libxl_pci_path(b))]
        if current.state in (XenbusState.RECONFIGURING, XenbusState.RECONFIGURED):
            raise OperationFailed(f"domain {domid}'s backend started another reconfiguration "
                                  "round; try again")
        if current.state in (XenbusState.CLOSING, XenbusState.CLOSED):
            raise OperationFailed(f"domain {domid}'s PCI backend is {current.state.describe()}: "
                                  "the guest's PV PCI device is being torn down; nothing changed")
        try:
            plan = L.plan_attach(request, current, domain_name,
                                 hotplug=current.state == XenbusState.CONNECTED)
        except L.LayoutConflict as exc:
            raise _conflict_error(exc) from None
        apply_ops(tx, plan.ops)
        if on_attempt is not None:
            on_attempt(attempts)
        return plan

    try:
        plan = transact(client, build, retries=retries, what=f"attaching to domain {domid}")
    except BaseException:  # xenstore is as it was: so is the hypervisor
        _revoke_functions(grants, state_dir, granted, domid)
        raise
    if granted:
        from xenpciback_cli.engine.grants import mark_attached

        mark_attached(state_dir, list(granted))
    if attempts > 1:
        notes.append(f"xenstore transaction retried {attempts - 1} time(s) after conflicts")
    result = AttachResult(domid, list(bdfs), list(plan.indices), plan.hotplug, plan.first,
                          None, permissive_applied=permissive, quirks_applied=quirks,
                          seized=seized, notes=notes, grants=granted)
    if plan.hotplug and wait:
        try:
            view = wait_for(client, domid, round_finished, timeout=timeout,
                            what=f"hot-plugging {', '.join(map(str, bdfs))} into domain {domid}")
        except HandshakeTimeout as exc:
            failure, undone = _roll_back(client, domid, plan, bdfs, state_before[0], created, exc)
            if undone:
                _revoke_functions(grants, state_dir, granted, domid)
            raise failure from None
    else:
        view = read_backend(client, domid)
        if not plan.hotplug and view.state != XenbusState.CONNECTED:
            notes.append(f"backend is {view.state.label if view.state is not None else 'absent'}:"
                         " the device is exported when the backend and the guest connect")
    result.backend_state = view.state
    for bdf, index in zip(bdfs, plan.indices):
        entry = view.entry(index)
        result.guest_addresses[bdf] = entry.vdev if entry.dev == bdf else None
    if state_dir is not None and (spec.options.permissive or spec.quirks):
        from xenpciback_cli.engine.backend_settings import record_attach

        for bdf in bdfs:  # what a userspace backend serving this guest will apply
            record_attach(state_dir, bdf, permissive=spec.options.permissive, quirks=spec.quirks)
    return result


def _refuse_holders(node: Any, bdfs: Sequence[Bdf], domid: int) -> None:
    for bdf in bdfs:
        holder = _holder(node, bdf)
        if holder is None:
            continue
        if holder == domid:
            raise SafetyRefusal(f"{bdf} is already attached to domain {domid}")
        if holder < 0:
            raise SafetyRefusal(f"{bdf} has an unreadable owner in {L.libxl_domid_path(bdf)}")
        if not node.exists(L.domain_home(holder)):
            raise SafetyRefusal(f"{bdf} is recorded as attached to domain {holder}, which no longer "
                                f"exists: run 'detach {bdf} --domid {holder} --force' first")
        raise SafetyRefusal(f"{bdf} is attached to domain {holder}: detach it there first")


def _conflict_error(exc: L.LayoutConflict) -> Exception:
    if isinstance(exc, L.VirtualSlotTaken):
        return InputError(str(exc))
    return SafetyRefusal(str(exc))


def _roll_back(client: Any, domid: int, plan: L.AttachPlan, bdfs: Sequence[Bdf],
               previous: XenbusState | None, created: Sequence[Bdf],
               exc: HandshakeTimeout) -> tuple[Exception, bool]:
    """Remove our entries again if the backend never touched them; say what happened, and
    whether xenstore is as it was (then the caller revokes the grants too)."""
    def undo(tx: Any) -> bool:
        view = read_backend(tx, domid)
        if not L.can_roll_back_attach(view, plan, bdfs):
            return False
        apply_ops(tx, L.plan_attach_rollback(view, plan, bdfs, previous, created))
        return True

    try:
        undone = client.transact(undo)
    except OperationFailed as undo_exc:
        return OperationFailed(f"{exc}; rolling back failed too: {undo_exc}"), False
    if undone:
        return OperationFailed(f"{exc}; attach rolled back, xenstore is as it was"), True
    return OperationFailed(f"{exc}; the backend already exported the device, left in place "
                           f"(detach {bdfs[0]} --domid {domid} --force removes it)"), False


# -- the hypervisor's grants ---------------------------------------------------------------------
def _planned_grants(grants: DomainGrants | None, host: Any | None, bdfs: Sequence[Bdf], domid: int,
                    options: L.PciOptions) -> list[str]:
    if grants is None or host is None:
        return []
    from xenpciback_cli.engine.grants import intx_unrouted, plan_grants

    relaxed = options.rdm_policy == "relaxed"
    out = []
    for bdf in bdfs:
        device = host.device(bdf)
        plan = plan_grants(device, relaxed=relaxed)
        steps = [g.describe() for g in plan]
        if intx_unrouted(host, bdf):
            # sysfs irq is the firmware's INTERRUPT_LINE until the attach has the kernel route
            # the GSI (engine.grants.route_intx): say so rather than offer it as what is mapped.
            steps = [g.describe() for g in plan if g.kind != "intx"]
            now = "no sysfs irq now" if device.irq is None else f"sysfs irq {device.irq} now"
            steps.insert(len(steps) - 1, f"INTx: routed by the kernel at attach time ({now})")
        out.append(f"would grant domain {domid} {', '.join(steps)} of {bdf}")
    return out


def _grant_functions(grants: DomainGrants | None, host: Any | None, bdfs: Sequence[Bdf], domid: int,
                     options: L.PciOptions, state_dir: str | None,
                     notes: list[str]) -> dict[Bdf, list[Grant]]:
    """Grant every function; a failure revokes the functions granted before it, then raises."""
    if grants is None or host is None:
        return {}
    from xenpciback_cli.engine.grants import grant_device, route_intx

    granted: dict[Bdf, list[Grant]] = {}
    for bdf in bdfs:
        try:
            if route_intx(host, bdf):
                notes.append(f"{bdf}: enabled once in dom0 so the kernel routes its INTx (as pciback's probe does)")
            outcome = grant_device(grants, state_dir, domid, host.device(bdf),
                                   relaxed=options.rdm_policy == "relaxed")
        except BaseException:
            _revoke_functions(grants, state_dir, granted, domid)
            raise
        granted[bdf] = outcome.grants
        notes.extend(outcome.notes)
    return granted


def _revoke_functions(grants: DomainGrants | None, state_dir: str | None,
                      granted: dict[Bdf, list[Grant]], domid: int) -> None:
    from xenpciback_cli.engine.grants import revoke_device

    for bdf, held in reversed(list(granted.items())):
        revoke_device(grants, state_dir, bdf, domid, grants=held)

"""Detach a device from a guest in the safe order, and reset it.

1. ``state-i = 5`` (Closing) and, when the backend is Connected, backend ``state = 7``: one
   transaction. The guest's pcifront removes the device, pciback releases it, both come back
   to Connected.
2. Wait for that (bounded). A guest that never answers: without ``force`` the request is taken
   back (``state-i`` and ``state`` restored) and the command fails naming the stuck state; with
   ``force`` the keys are removed anyway.
3. One transaction: delete the device's keys and renumber the later ones exactly like libxl
   (``libxl__device_pci_remove_xenstore``), the last device taking the whole PV device with it,
   and clear ``/libxl/pci/<bdf>/domid``.
4. With a hypervisor port (``engine.grants``), revoke what attach granted the domain: the
   device leaves the domain's IOMMU context for Xen's quarantine, its PIRQ, I/O and memory
   ranges are taken back (libxl's ``pci_remove_detached``, after the backend let the device go);
5. reset the function through sysfs ``reset`` when the kernel offers a method, saying which
   (the first of ``reset_method``: flr, af_flr, pm, bus...), or why not - while it sits in the
   quarantine, so a device still doing DMA never returns to dom0 -, then hand it back to dom0.

Unlike libxl (which resets and deassigns before it removes the xenstore entries), the reset
comes last, after the guest has let go: resetting a device a guest is still driving is what
makes guests oops.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from xenpciback_cli.errors import InputError, OperationFailed, XenPcibackError
from xenpciback_cli.pci.address import Bdf
from xenpciback_cli.toolstack import libxl_layout as L
from xenpciback_cli.toolstack.handshake import HandshakeTimeout, round_finished, wait_for
from xenpciback_cli.toolstack.plan import Op
from xenpciback_cli.toolstack.xenbus import XenbusState
from xenpciback_cli.toolstack.xsexec import apply_ops, read_backend, read_or_none, transact

if TYPE_CHECKING:
    from xenpciback_cli.engine.grants import DomainGrants, Grant

DEFAULT_TIMEOUT = 10.0


@dataclass
class ResetOutcome:
    done: bool
    method: str | None
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"done": self.done, "method": self.method, "reason": self.reason}


@dataclass
class DetachResult:
    domid: int
    bdf: Bdf
    index: int
    handshake: bool
    forced: bool
    destroyed: bool
    reset: ResetOutcome | None
    notes: list[str] = field(default_factory=list)
    #: What the hypervisor took back from the domain (empty without a hypervisor port or record).
    revoked: list[Grant] = field(default_factory=list)
    #: False when the device was not attached to the domain (nothing to do); with ``dry_run``,
    #: whether a detach would change anything (Ansible's check mode).
    changed: bool = True
    dry_run: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"changed": self.changed, "dry_run": self.dry_run,
                "domid": self.domid, "bdf": str(self.bdf), "index": self.index,
                "handshake": self.handshake, "forced": self.forced,
                "backend_destroyed": self.destroyed,
                "reset": self.reset.to_json() if self.reset else None,
                "revoked": [g.to_json() for g in self.revoked], "notes": list(self.notes)}


def reset_device(host: Any | None, bdf: Bdf) -> ResetOutcome:
    """Reset through sysfs ``reset``; the kernel tries the methods of ``reset_method`` in order."""
    if host is None:
        return ResetOutcome(False, None, "no host model: reset skipped")
    try:
        device = host.device(bdf)
    except XenPcibackError as exc:
        return ResetOutcome(False, None, f"cannot read the device: {exc}")
    methods = tuple(getattr(device, "reset_methods", ()) or ())
    if not methods:
        if host.has_reset_attribute(device):
            # Kernels before 5.15 have 'reset' but no 'reset_method' to say which one it uses.
            methods = ("the kernel's default (no reset_method file to name it)",)
        else:
            return ResetOutcome(False, None, "the kernel offers no reset method for this device "
                                             "(no FLR, PM or bus reset; sysfs 'reset' is absent)")
    try:
        host.reset(bdf)
    except XenPcibackError as exc:
        return ResetOutcome(False, methods[0], f"reset through sysfs failed: {exc}")
    if len(methods) == 1 and " " in methods[0]:
        return ResetOutcome(True, None, f"reset with {methods[0]}")
    return ResetOutcome(True, methods[0], f"reset with {methods[0]} (kernel's first method of "
                                          f"{', '.join(methods)})")


_IN_ROUND = (XenbusState.RECONFIGURING, XenbusState.RECONFIGURED)
_BUSY = "busy"


def _find(view: L.BackendView, bdf: Bdf, domid: int) -> int:
    index = view.index_of(bdf)
    if index is None:
        raise InputError(f"{bdf} is not attached to domain {domid}")
    return index


def detach(client: Any, bdf: Bdf, domid: int, *, host: Any | None = None, force: bool = False,
           timeout: float = DEFAULT_TIMEOUT, reset: bool = True, retries: int = 16,
           on_attempt: Callable[[int], None] | None = None,
           state_dir: str | None = None, dry_run: bool = False,
           grants: DomainGrants | None = None) -> DetachResult:
    """Detach ``bdf`` from ``domid``; see the module docstring.

    Idempotent: a device the (existing) domain does not hold is nothing to do (``changed``
    False). With ``dry_run`` it is only decided whether there is something to do.

    With ``state_dir``, the whole detach holds the state dir's lock (no hide, unhide or attach
    changes the device meanwhile), and the backend settings file it updates at the end is read
    first: a corrupt file stops the detach before its first write, not halfway.

    ``grants`` is the hypervisor port: what the state dir's grant record says the domain holds
    for the device is revoked once the backend has let it go.
    """
    if state_dir is None or dry_run:
        return _detach(client, bdf, domid, host, force, timeout, reset, retries, on_attempt, None,
                       dry_run, grants)
    from xenpciback_cli.engine.backend_settings import load_device_settings
    from xenpciback_cli.engine.journal import Journal

    from xenpciback_cli.engine.grants import load_record

    with Journal(state_dir).locked():
        load_device_settings(state_dir, bdf)  # only this device's file: others' don't concern us
        load_record(state_dir, bdf)  # so is a corrupt grant record
        return _detach(client, bdf, domid, host, force, timeout, reset, retries, on_attempt,
                       state_dir, False, grants)


def _detach(client: Any, bdf: Bdf, domid: int, host: Any | None, force: bool, timeout: float,
            reset: bool, retries: int, on_attempt: Callable[[int], None] | None,
            state_dir: str | None, dry_run: bool = False,
            grants: DomainGrants | None = None) -> DetachResult:
    if not 0 < domid < 0x7FF0:
        raise InputError(f"invalid domain id {domid}: guests are 1-32751 (0 is dom0)")
    # One read-only transaction: its commit fails (and is retried) if another writer changed
    # what it read, so the decisions below never rest on a half-renumbered backend.
    view, holder, home = transact(
        client, lambda tx: (read_backend(tx, domid), read_or_none(tx, L.libxl_domid_path(bdf)),
                            tx.exists(L.domain_home(domid))),
        retries=retries, what=f"reading domain {domid}'s devices")
    stale = view.index_of(bdf) is None and holder == str(domid)
    if stale and force and dry_run:
        return DetachResult(domid, bdf, -1, False, True, False, None,
                            [f"would remove the stale record {L.libxl_domid_path(bdf)}"], dry_run=True)
    if stale and force:
        # libxl's record says the guest holds it, but no backend entry does (the guest died
        # and nobody cleaned up): clear the record so the device can be attached again.
        def release(tx: Any) -> bool:
            if read_backend(tx, domid).index_of(bdf) is not None:
                return False  # attached again meanwhile: not stale any more
            if read_or_none(tx, L.libxl_domid_path(bdf)) == str(domid):
                apply_ops(tx, L.plan_libxl_release(bdf))
            return True

        if not transact(client, release, retries=retries, what=f"detaching {bdf}"):
            raise OperationFailed(f"{bdf} was attached to domain {domid} again while detaching; "
                                  "nothing changed")
        stale_notes = [f"no backend entry for {bdf} in domain {domid}: removed the stale "
                       f"record {L.libxl_domid_path(bdf)}"]
        outcome, revoked = _revoke_and_reset(grants, state_dir, host, bdf, domid, reset, stale_notes)
        return DetachResult(domid, bdf, -1, False, True, False, outcome, stale_notes, revoked=revoked)
    if not view.exists and not home:
        raise InputError(f"unknown domain {domid}: /local/domain/{domid} does not exist"
                         + (f" ({bdf} has a stale record there: use --force to clear it)"
                            if stale else ""))
    if view.index_of(bdf) is None and not stale:
        # What was asked is so already (a playbook's second run): nothing to do.
        return DetachResult(domid, bdf, -1, False, False, False, None,
                            [f"{bdf} is not attached to domain {domid}: nothing to do"],
                            changed=False, dry_run=dry_run)
    index = _find(view, bdf, domid)
    if dry_run:
        return DetachResult(domid, bdf, index, False, False, False, None,
                            [f"would detach {bdf} from domain {domid}"], dry_run=True)
    notes: list[str] = []
    forced = False

    before: dict[str, XenbusState | None] = {}

    def request(tx: Any) -> bool | str | None:
        current = read_backend(tx, domid)
        i = current.index_of(bdf)
        if i is None:  # decided after the commit proves this read was consistent
            return None
        if current.state in _IN_ROUND and not forced:
            return _BUSY  # another tool's round is running: wait for it, then ask again
        before["entry"] = current.entry(i).state
        before["state"] = current.state
        reconfigure = current.state == XenbusState.CONNECTED
        apply_ops(tx, L.plan_detach_request(domid, i, reconfigure=reconfigure))
        return reconfigure

    handshake: bool | str | None = _BUSY
    for _ in range(retries + 1):
        if view.state in _IN_ROUND and not forced:
            try:
                view = wait_for(client, domid, round_finished, timeout=timeout,
                                what="for the previous reconfiguration round to finish")
            except HandshakeTimeout as exc:
                if not force:
                    raise OperationFailed(f"{exc}; nothing changed (use --force if the guest is "
                                          "dead)") from None
                forced = True
                notes.append(str(exc))
        handshake = transact(client, request, retries=retries, what=f"detaching {bdf}")
        if handshake != _BUSY:
            break
        view = read_backend(client, domid)
    else:
        raise OperationFailed(f"detaching {bdf}: domain {domid}'s backend kept starting new "
                              "reconfiguration rounds; nothing changed")
    if handshake is None:
        raise _gone(bdf, domid)
    if handshake:
        try:
            wait_for(client, domid, round_finished, timeout=timeout,
                     what=f"for domain {domid} to release {bdf}")
        except HandshakeTimeout as exc:
            if not force:
                raise _cancel(client, domid, bdf, before, exc) from None
            forced = True
            notes.append(f"{exc}; removed anyway (--force)")
    elif view.state is not None:
        notes.append(f"backend is {view.state.label}: no guest handshake needed")

    attempts = 0
    destroyed = [False]
    guest_side: list[Op] = []

    def remove(tx: Any) -> bool:
        # Only dom0's nodes are read and written here: the guest's frontend directory is
        # removed after the commit (see split_guest_side), so a guest rewriting its own nodes
        # cannot make this transaction conflict forever.
        nonlocal attempts
        attempts += 1
        current = read_backend(tx, domid)
        i = current.index_of(bdf)
        if i is None:
            return False
        destroyed[0] = current.num_devs <= 1
        ours, guest_side[:] = L.split_guest_side(L.plan_detach_remove(current, i), domid)
        apply_ops(tx, ours)
        if read_or_none(tx, L.libxl_domid_path(bdf)) == str(domid):
            apply_ops(tx, L.plan_libxl_release(bdf))
        if on_attempt is not None:
            on_attempt(attempts)
        return True

    if not transact(client, remove, retries=retries, what=f"detaching {bdf}"):
        raise _gone(bdf, domid)
    if attempts > 1:
        notes.append(f"xenstore transaction retried {attempts - 1} time(s) after conflicts")
    if guest_side:
        try:  # each request is atomic on its own; no transaction, nothing to conflict with
            apply_ops(client, guest_side)
        except OperationFailed as exc:
            notes.append(f"the guest's frontend directory {L.frontend_path(domid)} was left "
                         f"behind: {exc}")
    outcome, revoked = _revoke_and_reset(grants, state_dir, host, bdf, domid, reset, notes)
    if state_dir is not None:  # the guest's quirks went with it (the kernel frees them too)
        from xenpciback_cli.engine.backend_settings import record_detach

        record_detach(state_dir, bdf)
    return DetachResult(domid, bdf, index, bool(handshake), forced, destroyed[0], outcome, notes,
                        revoked=revoked)


def _revoke_and_reset(grants: DomainGrants | None, state_dir: str | None, host: Any | None, bdf: Bdf,
                      domid: int, reset: bool, notes: list[str]) -> tuple[ResetOutcome | None, list[Grant]]:
    """The guest has let go: take back what it was granted, reset the device while it is in
    Xen's quarantine, then hand it back to dom0. Failures to revoke are notes (libxl logs them
    and goes on): the device is out of the guest's xenstore either way."""
    from xenpciback_cli.engine.grants import revoke_device

    outcome: list[ResetOutcome | None] = [None]

    def do_reset() -> None:
        outcome[0] = reset_device(host, bdf) if reset else None

    revoked, problems = revoke_device(grants, state_dir, bdf, domid, before_release=do_reset)
    notes.extend(problems)
    return outcome[0], revoked


def _gone(bdf: Bdf, domid: int) -> Exception:
    """The device left the backend while we worked (another detach, or the domain's destroy)."""
    return OperationFailed(f"{bdf} is no longer attached to domain {domid}: another tool "
                           "detached it meanwhile")


def _cancel(client: Any, domid: int, bdf: Bdf, before: dict[str, XenbusState | None],
            exc: HandshakeTimeout) -> Exception:
    def undo(tx: Any) -> None:
        current = read_backend(tx, domid)
        i = current.index_of(bdf)
        if i is None:
            return
        apply_ops(tx, L.plan_detach_cancel(current, i, before.get("entry"), before.get("state")))

    try:
        client.transact(undo)
    except OperationFailed as undo_exc:
        return OperationFailed(f"{exc}; restoring the entry failed too: {undo_exc}")
    return OperationFailed(f"{exc}; detach cancelled, xenstore is as it was "
                           "(use --force if the guest is dead)")

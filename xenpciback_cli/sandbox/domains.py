"""Simulated guest domains: make ``/local/domain/N`` exist the way xl does, and take it away.

``xl create`` writes, in one transaction, the domain's home with ``n0 rN`` (dom0 owns, the guest
reads), the guest-writable subdirectories (``data``, ``drivers``, ``feature``, ``attr``,
``error`` owned by the guest), ``/vm/<uuid>`` and libxl's ``/libxl/N``; then it introduces the
domain to xenstored (``@introduceDomain`` fires). Destroying does the reverse: every PCI device
still attached is removed as libxl would on ``xl destroy`` (no guest handshake: the guest is
gone), its ``/libxl/pci/<bdf>/domid`` cleared and the function reset, then the domain's nodes are
removed and the domain released (``@releaseDomain``). The node list follows a real C xenstored
trace of ``xl create`` of a PV guest (the test fixture ``xen-traces/kernel-pciback-xenstored-trace.log``).
"""

from __future__ import annotations

import uuid as uuidlib
from dataclasses import dataclass, field
from typing import Any

from xenpciback_cli.errors import InputError, SafetyRefusal
from xenpciback_cli.pci.address import Bdf
from xenpciback_cli.engine.detach import ResetOutcome, reset_device
from xenpciback_cli.toolstack import libxl_layout as L
from xenpciback_cli.toolstack.status import libxl_holders
from xenpciback_cli.toolstack.plan import Mkdir, Op, Rm, SetPerms, Write
from xenpciback_cli.toolstack.xsexec import apply_ops, list_or_empty, read_backend, read_or_none

GUEST_OWNED = ("data", "drivers", "feature", "attr", "error")
GUEST_READABLE = ("cpu", "memory", "device", "control")
#: INTRODUCE needs a ring page and an event channel; simulated guests have neither.
FAKE_MFN = 0x1000
FAKE_PORT = 1


def plan_create_domain(domid: int, name: str, vm_uuid: str) -> list[Op]:
    home, vm, libxl = L.domain_home(domid), f"/vm/{vm_uuid}", f"/libxl/{domid}"
    ops: list[Op] = [Rm(home), Mkdir(home), SetPerms(home, ((0, "n"), (domid, "r"))),
                     Rm(vm), Mkdir(vm), SetPerms(vm, ((0, "n"), (domid, "r"))),
                     Rm(libxl), Mkdir(libxl), SetPerms(libxl, ((0, "n"),)),
                     Mkdir(f"{libxl}/device"), SetPerms(f"{libxl}/device", ((0, "n"),)),
                     Write(f"{home}/vm", vm), Write(f"{home}/name", name),
                     Write(f"{vm}/name", name), Write(f"{vm}/uuid", vm_uuid)]
    for sub in GUEST_READABLE:
        ops += [Mkdir(f"{home}/{sub}"), SetPerms(f"{home}/{sub}", ((0, "n"), (domid, "r")))]
    for sub in GUEST_OWNED:
        ops += [Mkdir(f"{home}/{sub}"), SetPerms(f"{home}/{sub}", ((domid, "n"),))]
    ops += [Write(f"{home}/domid", str(domid)), Write(f"{libxl}/type", "pv")]
    return ops


def plan_destroy_domain(domid: int, vm_path: str | None) -> list[Op]:
    ops: list[Op] = []
    if vm_path and vm_path.startswith("/vm/"):
        ops.append(Rm(vm_path))
    return ops + [Rm(L.domain_home(domid)), Rm(f"/libxl/{domid}")]


@dataclass
class DomainResult:
    domid: int
    name: str | None
    released_devices: list[Bdf] = field(default_factory=list)
    resets: dict[Bdf, ResetOutcome] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"domid": self.domid, "name": self.name,
                "released_devices": [str(b) for b in self.released_devices],
                "resets": {str(b): r.to_json() for b, r in self.resets.items()}}


def create_domain(client: Any, domid: int, name: str | None = None, *,
                  introduce: bool = True) -> DomainResult:
    if not 0 < domid < 0x7FF0:
        raise InputError(f"invalid domain id {domid}: guests are 1-32751 (0 is dom0)")
    if client.exists(L.domain_home(domid)):
        raise SafetyRefusal(f"domain {domid} already exists")
    name = name or f"guest{domid}"
    if not name.isprintable() or "/" in name or len(name) > 64:
        raise InputError(f"invalid domain name {name!r}")
    for other in list_or_empty(client, "/local/domain"):
        if read_or_none(client, f"/local/domain/{other}/name") == name:
            raise SafetyRefusal(f"a domain is already named {name!r} (domain {other})")
    ops = plan_create_domain(domid, name, str(uuidlib.uuid4()))
    client.transact(lambda tx: apply_ops(tx, ops))
    if introduce and not client.is_domain_introduced(domid):
        client.introduce(domid, FAKE_MFN, FAKE_PORT)
    return DomainResult(domid, name)


def destroy_domain(client: Any, domid: int, *, host: Any | None = None, grants: Any | None = None,
                   state_dir: str | None = None) -> DomainResult:
    """``xl destroy``: the devices released as libxl's ``destroy_all`` does (xenstore, then the
    hypervisor's grants the state dir records, each device reset in Xen's quarantine before
    dom0 gets it back), the domain's nodes removed, the domain released."""
    if not 0 < domid < 0x7FF0:
        raise InputError(f"invalid domain id {domid}: guests are 1-32751 (0 is dom0)")
    home = L.domain_home(domid)
    if not client.exists(home):
        raise InputError(f"unknown domain {domid}: {home} does not exist")
    name = read_or_none(client, f"{home}/name")
    result = DomainResult(domid, name)
    holders = [b for b, d in libxl_holders(client).items() if d == domid]
    view = read_backend(client, domid)
    attached = sorted({e.dev for e in view.entries if e.dev is not None} | set(holders))

    def teardown(tx: Any) -> None:
        if read_backend(tx, domid).exists or tx.exists(L.frontend_path(domid)):
            apply_ops(tx, L.destroy_ops(domid))
        for bdf in attached:
            if read_or_none(tx, L.libxl_domid_path(bdf)) == str(domid):
                apply_ops(tx, L.plan_libxl_release(bdf))
        apply_ops(tx, plan_destroy_domain(domid, read_or_none(tx, f"{home}/vm")))

    client.transact(teardown)
    result.released_devices = attached
    import contextlib

    from xenpciback_cli.engine.grants import revoke_device
    from xenpciback_cli.engine.journal import Journal

    with Journal(state_dir).locked() if state_dir is not None else contextlib.nullcontext():
        for bdf in attached:
            def reset(bdf: Bdf = bdf) -> None:
                result.resets[bdf] = reset_device(host, bdf)

            revoke_device(grants, state_dir, bdf, domid, before_release=reset)
    if grants is not None and hasattr(grants, "domain_destroyed"):
        grants.domain_destroyed(domid)  # Xen frees whatever the domain still had
    if client.is_domain_introduced(domid):
        client.release(domid)
    return result

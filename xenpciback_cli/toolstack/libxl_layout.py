"""The xenstore layout libxl writes for PV PCI devices, as pure functions that return plans.

Everything here is what libxl does to xenstore (Xen's ``tools/libs/light/libxl_pci.c``), so
that a device attached by us looks the same to pcifront, to ``xl pci-list`` and to any backend:

* one backend directory per guest, ``/local/domain/0/backend/pci/<domid>/0``, owned by dom0 and
  readable by the guest (``n0 r<domid>``), holding every device as ``key-i/dev-i/opts-i/state-i``
  (+ ``vdevfn-i`` when a virtual slot was asked for, ``name-i`` when the device was named);
* the frontend directory ``/local/domain/<domid>/device/pci/0``, owned by the guest, dom0 may
  read (``n<domid> r0``);
* libxl's own bookkeeping ``/libxl/pci/DDDD-BB-DD-F/domid``.

Detach removes ``state-i key-i dev-i vdev-i opts-i vdevfn-i name-i``, moves every later entry
down by one and decrements ``num_devs``; the last device takes the whole backend with it.

Nothing in this module does I/O: it reads a :class:`BackendView` (a snapshot taken inside the
caller's transaction) and returns lists of :mod:`~xenpciback_cli.toolstack.plan` operations.
The view parses values a guest could have tampered with (it can read, not write, the backend
directory; but the kernel backend writes ``vdev-i``), so parsing never raises.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from xenpciback_cli.pci.address import Bdf
from xenpciback_cli.toolstack.plan import Mkdir, Op, Prune, Rm, SetPerms, Write
from xenpciback_cli.toolstack.xenbus import XenbusState, parse_state
from xenpciback_cli.untrusted import decimal

#: libxl always uses device id 0 and backend domain 0 for PV PCI.
DEVID = 0
BACKEND_DOMID = 0
#: libxl's private store (``PCI_INFO_PATH``; ``/libxl/pciback`` before Xen 4.15).
LIBXL_PCI_ROOT = "/libxl/pci"
#: Keys one device occupies in the backend directory, in the order libxl removes them.
DEVICE_KEYS = ("state", "key", "dev", "vdev", "opts", "vdevfn", "name")
RDM_POLICIES = ("strict", "relaxed")
MAX_VSLOT = 0x1F


def backend_path(domid: int) -> str:
    return f"/local/domain/{BACKEND_DOMID}/backend/pci/{domid}/{DEVID}"


def frontend_path(domid: int) -> str:
    return f"/local/domain/{domid}/device/pci/{DEVID}"


def domain_home(domid: int) -> str:
    return f"/local/domain/{domid}"


def libxl_pci_path(bdf: Bdf) -> str:
    return f"{LIBXL_PCI_ROOT}/{bdf.xs_key}"


_LIBXL_KEY = re.compile(r"^([0-9a-fA-F]{4})-([0-9a-fA-F]{2})-([0-9a-fA-F]{2})-([0-7])$")


def parse_libxl_key(key: str) -> Bdf | None:
    """A child name of ``/libxl/pci`` (``DDDD-BB-DD-F``, as Bdf.xs_key spells it); None if it is
    anything else (int(x, 16) alone would take signs, spaces, ``0x`` and underscores)."""
    match = _LIBXL_KEY.match(key)
    if not match or int(match[3], 16) > 0x1F:
        return None
    return Bdf(int(match[1], 16), int(match[2], 16), int(match[3], 16), int(match[4]))


def libxl_domid_path(bdf: Bdf) -> str:
    return f"{libxl_pci_path(bdf)}/domid"


def libxl_device_path(domid: int) -> str:
    """libxl removes this on device destroy (it does not write it for PCI; the rm is harmless)."""
    return f"/libxl/{domid}/device/pci/{DEVID}"


def backend_perms(domid: int) -> tuple[tuple[int, str], ...]:
    """``n0 r<domid>``: dom0 owns, nobody else by default, the guest may read."""
    return ((BACKEND_DOMID, "n"), (domid, "r"))


def frontend_perms(domid: int) -> tuple[tuple[int, str], ...]:
    """``n<domid> r0``: the guest owns its frontend, dom0 may read."""
    return ((domid, "n"), (BACKEND_DOMID, "r"))


# -- values ----------------------------------------------------------------------------------

def format_dev(bdf: Bdf) -> str:
    """``dev-i``/``key-i``: ``%04x:%02x:%02x.%01x``."""
    return f"{bdf.domain:04x}:{bdf.bus:02x}:{bdf.slot:02x}.{bdf.function:01x}"


def format_vdev(bdf: Bdf) -> str:
    """``vdev-i`` as pciback writes it: function with two hex digits (``0000:00:01.00``)."""
    return f"{bdf.domain:04x}:{bdf.bus:02x}:{bdf.slot:02x}.{bdf.function:02x}"


_HEX4 = re.compile(r"^\s*([0-9a-fA-F]{1,8}):([0-9a-fA-F]{1,8}):([0-9a-fA-F]{1,8})\.([0-9a-fA-F]{1,8})\s*$")


def parse_dev(text: str | None) -> Bdf | None:
    """``dev-i``/``vdev-i`` parsed as pciback does (``%x:%x:%x.%x``, 4 items); None if bad."""
    if text is None:
        return None
    match = _HEX4.match(text)
    if not match:
        return None
    domain, bus, slot, func = (int(g, 16) for g in match.groups())
    if domain > 0xFFFF or bus > 0xFF or slot > 0x1F or func > 7:
        return None
    return Bdf(domain, bus, slot, func)


@dataclass(frozen=True)
class PciOptions:
    """The per-device options libxl records in ``opts-i`` (and applies elsewhere)."""

    msitranslate: bool = False
    power_mgmt: bool = False
    permissive: bool = False
    rdm_policy: str = "strict"

    def opts_string(self) -> str:
        """``msitranslate=0,power_mgmt=0,permissive=0,rdm_policy=strict`` (libxl's order)."""
        return (f"msitranslate={int(self.msitranslate)},power_mgmt={int(self.power_mgmt)},"
                f"permissive={int(self.permissive)},rdm_policy={self.rdm_policy}")

    @classmethod
    def parse(cls, text: str | None) -> PciOptions | None:
        """Read an ``opts-i`` value back (for ``status``); None when it is not libxl's format."""
        if not text:
            return None
        fields: dict[str, str] = {}
        for part in text.split(","):
            key, sep, value = part.partition("=")
            if not sep:
                return None
            fields[key.strip()] = value.strip()
        try:
            return cls(msitranslate=fields.get("msitranslate", "0") == "1",
                       power_mgmt=fields.get("power_mgmt", "0") == "1",
                       permissive=fields.get("permissive", "0") == "1",
                       rdm_policy=fields.get("rdm_policy", "strict"))
        except ValueError:  # pragma: no cover - nothing above raises it today
            return None


# -- the snapshot the plans read -------------------------------------------------------------

@dataclass(frozen=True)
class DeviceEntry:
    """One ``*-i`` group of the backend directory."""

    index: int
    dev: Bdf | None
    raw: Mapping[str, str]

    @property
    def state(self) -> XenbusState | None:
        return parse_state(self.raw.get("state"))

    @property
    def vdev(self) -> Bdf | None:
        return parse_dev(self.raw.get("vdev"))

    @property
    def vdevfn(self) -> int | None:
        text = self.raw.get("vdevfn")
        if text is None:
            return None
        try:
            value = int(text, 16)
        except ValueError:
            return None
        return value if 0 <= value <= 0xFF else None

    @property
    def opts(self) -> PciOptions | None:
        return PciOptions.parse(self.raw.get("opts"))


@dataclass(frozen=True)
class BackendView:
    """The backend directory of one guest, as read (``values``: key -> value, relative names)."""

    domid: int
    values: Mapping[str, str] = field(default_factory=dict)

    @property
    def exists(self) -> bool:
        return bool(self.values)

    @property
    def state(self) -> XenbusState | None:
        return parse_state(self.values.get("state"))

    @property
    def num_devs(self) -> int:
        """``num_devs``; libxl treats a missing or unreadable count as 0 (first device)."""
        text = self.values.get("num_devs", "")
        return decimal(text, max_digits=5) or 0

    def entry(self, index: int) -> DeviceEntry:
        raw = {k: self.values[f"{k}-{index}"] for k in DEVICE_KEYS if f"{k}-{index}" in self.values}
        return DeviceEntry(index, parse_dev(raw.get("dev")), raw)

    @property
    def entries(self) -> list[DeviceEntry]:
        return [self.entry(i) for i in range(self.num_devs)]

    def index_of(self, bdf: Bdf) -> int | None:
        for entry in self.entries:
            if entry.dev == bdf:
                return entry.index
        return None


# -- attach ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class DeviceRequest:
    """One function to add: its host address and the guest devfn asked for (0: none)."""

    bdf: Bdf
    vdevfn: int = 0


@dataclass(frozen=True)
class AttachRequest:
    domid: int
    devices: tuple[DeviceRequest, ...]
    options: PciOptions = PciOptions()
    name: str | None = None  # the assignable name the device was asked for by (name-i)


class LayoutConflict(Exception):
    """The request does not fit the guest's current backend (device already there, vslot taken)."""


class DeviceAlreadyAttached(LayoutConflict):
    """A device of the request is already in this guest's backend (a safety refusal)."""


class VirtualSlotTaken(LayoutConflict):
    """The virtual slot asked for holds another device (bad input: pick another slot)."""


def vdevfns_for(bdfs: Sequence[Bdf], vslot: int | None) -> list[int]:
    """libxl's guest devfn for each function: a lone function goes to function 0 of the vslot,
    the functions of a wildcard keep their numbers; no vslot means 0 (no ``vdevfn-i`` key)."""
    if vslot is None:
        return [0] * len(bdfs)
    if len(bdfs) == 1:
        return [vslot << 3]
    return [(vslot << 3) | bdf.function for bdf in bdfs]


def check_attach(request: AttachRequest, view: BackendView) -> None:
    """Refuse what libxl would refuse on this guest: a device already attached here, or a
    virtual slot another device already occupies."""
    present = {e.dev: e for e in view.entries if e.dev is not None}
    for device in request.devices:
        if device.bdf in present:
            raise DeviceAlreadyAttached(f"{device.bdf} is already attached to domain {request.domid} "
                                 f"(backend entry {present[device.bdf].index})")
    taken = {e.vdevfn >> 3: e for e in view.entries if e.vdevfn}
    for device in request.devices:
        if device.vdevfn and (device.vdevfn >> 3) in taken:
            other = taken[device.vdevfn >> 3]
            raise VirtualSlotTaken(f"virtual slot {device.vdevfn >> 3:#04x} of domain {request.domid} "
                                 f"is taken by {other.dev or other.raw.get('dev')}")


def create_backend_ops(domid: int, domain_name: str | None) -> list[Op]:
    """``libxl__create_pci_backend``: both directories, emptied, permissions, the fixed keys."""
    be, fe = backend_path(domid), frontend_path(domid)
    ops: list[Op] = [Rm(be), Mkdir(be), SetPerms(be, backend_perms(domid)),
                     Write(f"{be}/frontend", fe), Write(f"{be}/frontend-id", str(domid)),
                     Write(f"{be}/online", "1"), Write(f"{be}/state", str(int(XenbusState.INITIALISING)))]
    if domain_name is not None:
        ops.append(Write(f"{be}/domain", domain_name))
    ops += [Rm(fe), Mkdir(fe), SetPerms(fe, frontend_perms(domid)),
            Write(f"{fe}/backend", be), Write(f"{fe}/backend-id", str(BACKEND_DOMID)),
            Write(f"{fe}/state", str(int(XenbusState.INITIALISING)))]
    return ops


def device_ops(domid: int, index: int, device: DeviceRequest, options: PciOptions,
               name: str | None) -> list[Op]:
    """``libxl_create_pci_backend_device``: one ``*-i`` group, ``state-i`` = 1 (attach request)."""
    be = backend_path(domid)
    dev = format_dev(device.bdf)
    ops: list[Op] = [Write(f"{be}/key-{index}", dev), Write(f"{be}/dev-{index}", dev)]
    if device.vdevfn:
        ops.append(Write(f"{be}/vdevfn-{index}", f"{device.vdevfn:x}"))
    if name is not None:
        ops.append(Write(f"{be}/name-{index}", name))
    ops += [Write(f"{be}/opts-{index}", options.opts_string()),
            Write(f"{be}/state-{index}", str(int(XenbusState.INITIALISING)))]
    return ops


@dataclass(frozen=True)
class AttachPlan:
    ops: tuple[Op, ...]
    indices: tuple[int, ...]  # backend entry of each requested device
    first: bool  # the backend was created by this plan
    hotplug: bool  # the plan opens a Reconfiguring round


def plan_attach(request: AttachRequest, view: BackendView, domain_name: str | None, *,
                hotplug: bool) -> AttachPlan:
    """The writes of ``libxl__device_pci_add_xenstore`` for every requested function.

    ``hotplug`` (backend Connected) adds backend ``state = 7``, which asks the frontend and
    backend to run the Reconfiguring round. Raises :class:`LayoutConflict`.
    """
    check_attach(request, view)
    first = view.num_devs == 0
    ops: list[Op] = create_backend_ops(request.domid, domain_name) if first else []
    base = 0 if first else view.num_devs
    indices = []
    for offset, device in enumerate(request.devices):
        index = base + offset
        indices.append(index)
        ops += device_ops(request.domid, index, device, request.options, request.name)
    be = backend_path(request.domid)
    ops.append(Write(f"{be}/num_devs", str(base + len(request.devices))))
    hotplug = hotplug and not first
    if hotplug:
        ops.append(Write(f"{be}/state", str(int(XenbusState.RECONFIGURING))))
    for device in request.devices:
        ops.append(Write(libxl_domid_path(device.bdf), str(request.domid)))
    return AttachPlan(tuple(ops), tuple(indices), first, hotplug)


def plan_attach_rollback(view: BackendView, plan: AttachPlan, bdfs: Sequence[Bdf],
                         previous_state: XenbusState | None,
                         created: Sequence[Bdf] = ()) -> list[Op]:
    """Undo an attach whose handshake never finished, when nothing was exported yet.

    Only valid while our entries are still the last ones and still ``state-i = 1``; the caller
    checks :func:`can_roll_back_attach` inside the same transaction. ``created`` lists the
    functions whose ``/libxl/pci/<bdf>`` node the attach created (removed again when empty).
    """
    if plan.first:
        return destroy_ops(view.domid) + _forget(bdfs, created)
    be = backend_path(view.domid)
    ops: list[Op] = []
    for index in plan.indices:
        ops += [Rm(f"{be}/{key}-{index}") for key in DEVICE_KEYS]
    ops.append(Write(f"{be}/num_devs", str(min(plan.indices))))
    if previous_state is not None and view.state == XenbusState.RECONFIGURING:
        ops.append(Write(f"{be}/state", str(int(previous_state))))
    return ops + _forget(bdfs, created)


def can_roll_back_attach(view: BackendView, plan: AttachPlan, bdfs: Sequence[Bdf]) -> bool:
    """True while the backend has not touched our entries (all still Initialising, still last)."""
    if view.num_devs != max(plan.indices) + 1:
        return False
    for index, bdf in zip(plan.indices, bdfs):
        entry = view.entry(index)
        if entry.dev != bdf or entry.state != XenbusState.INITIALISING:
            return False
    return True


# -- detach ----------------------------------------------------------------------------------

def plan_detach_request(domid: int, index: int, *, reconfigure: bool) -> list[Op]:
    """First detach transaction: ``state-i = 5`` (Closing) and, for a connected backend,
    ``state = 7`` to open the Reconfiguring round."""
    be = backend_path(domid)
    ops: list[Op] = [Write(f"{be}/state-{index}", str(int(XenbusState.CLOSING)))]
    if reconfigure:
        ops.append(Write(f"{be}/state", str(int(XenbusState.RECONFIGURING))))
    return ops


def plan_detach_cancel(view: BackendView, index: int, previous_entry_state: XenbusState | None,
                       previous_state: XenbusState | None) -> list[Op]:
    """Put back what :func:`plan_detach_request` changed (the guest never answered)."""
    be = backend_path(view.domid)
    ops: list[Op] = []
    if previous_entry_state is not None:
        ops.append(Write(f"{be}/state-{index}", str(int(previous_entry_state))))
    if previous_state is not None and view.state == XenbusState.RECONFIGURING:
        ops.append(Write(f"{be}/state", str(int(previous_state))))
    return ops


def plan_detach_remove(view: BackendView, index: int) -> list[Op]:
    """Second detach transaction (``libxl__device_pci_remove_xenstore``): delete entry ``index``,
    move every later entry down by one, decrement ``num_devs``; the last device destroys the
    whole PV PCI device. ``/libxl/pci/<bdf>/domid`` is removed by the caller on success."""
    be = backend_path(view.domid)
    num = view.num_devs
    ops: list[Op] = [Rm(f"{be}/{key}-{index}") for key in DEVICE_KEYS]
    for j in range(index + 1, num):
        for key in DEVICE_KEYS:
            value = view.values.get(f"{key}-{j}")
            if value is None:
                continue
            ops += [Rm(f"{be}/{key}-{j}"), Write(f"{be}/{key}-{j - 1}", value)]
    ops.append(Write(f"{be}/num_devs", str(max(num - 1, 0))))
    if num <= 1:
        ops += destroy_ops(view.domid)
    return ops


def destroy_ops(domid: int) -> list[Op]:
    """``libxl__device_destroy``: frontend, libxl's device record, backend, then empty parents."""
    fe, be = frontend_path(domid), backend_path(domid)
    return [Rm(fe), Prune(fe, domain_home(domid)), Rm(libxl_device_path(domid)),
            Rm(be), Prune(be, domain_home(BACKEND_DOMID))]


def split_guest_side(ops: Sequence[Op], domid: int) -> tuple[list[Op], list[Op]]:
    """``(dom0's, the guest's)``: the operations on nodes dom0 owns, and those under the guest's
    home (its frontend directory, which the guest owns and may rewrite at any moment).

    Removal runs dom0's part in one transaction and the guest's part after it commits, outside
    any transaction: a transaction that reads a node the guest keeps rewriting conflicts every
    time, and a guest must not be able to block its own device's removal (``detach --force``).
    """
    home = domain_home(domid) + "/"
    ours: list[Op] = []
    guests: list[Op] = []
    for op in ops:
        (guests if op.path.startswith(home) else ours).append(op)
    return ours, guests


def plan_libxl_release(bdf: Bdf) -> list[Op]:
    return [Rm(libxl_domid_path(bdf))]


def _forget(bdfs: Sequence[Bdf], created: Sequence[Bdf]) -> list[Op]:
    """Undo our ``/libxl/pci/<bdf>/domid`` writes, and the per-device node where we created it."""
    ops: list[Op] = []
    for bdf in bdfs:
        ops.append(Rm(libxl_domid_path(bdf)))
        if bdf in created:
            ops.append(Prune(libxl_domid_path(bdf), LIBXL_PCI_ROOT))
    return ops


def libxl_layout(domid: int, domain_name: str | None,
                 devices: Sequence[tuple[Bdf, int, PciOptions, str | None]]) -> dict[str, str]:
    """The toolstack-written part of the backend directory for ``devices`` attached in order:
    ``relative key -> value``. Used to compare a tree with what libxl would have written."""
    out = {"frontend": frontend_path(domid), "frontend-id": str(domid), "online": "1",
           "num_devs": str(len(devices))}
    if domain_name is not None:
        out["domain"] = domain_name
    for i, (bdf, vdevfn, options, name) in enumerate(devices):
        out[f"key-{i}"] = out[f"dev-{i}"] = format_dev(bdf)
        out[f"opts-{i}"] = options.opts_string()
        if vdevfn:
            out[f"vdevfn-{i}"] = f"{vdevfn:x}"
        if name is not None:
            out[f"name-{i}"] = name
    return out

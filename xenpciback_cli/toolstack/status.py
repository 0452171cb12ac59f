"""What xenstore says about PCI devices in guests: per-guest status and the attachments map.

``status`` shows, per device, ``state-N`` and ``vdev-N`` with both ends' states by name and the
last error node either end wrote (``xenbus_dev_fatal`` writes ``<errno> <message>`` under the
writer's ``error/`` tree). ``attachments`` is what ``list`` uses to show which guest holds a
device and at which guest address. All values may come from a guest: nothing here raises on junk.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from xenpciback_cli.errors import InputError
from xenpciback_cli.pci.address import Bdf, guest_address
from xenpciback_cli.toolstack import libxl_layout as L
from xenpciback_cli.toolstack.handshake import frontend_state
from xenpciback_cli.toolstack.xenbus import XenbusState, next_move, parse_state
from xenpciback_cli.toolstack.xsexec import list_or_empty, read_backend, read_or_none
from xenpciback_cli.untrusted import decimal


def _name(state: XenbusState | None) -> str | None:
    return state.label if state is not None else None


@dataclass
class DeviceStatus:
    index: int
    bdf: str | None
    state: str | None  # raw state-N
    vdev: str | None
    opts: str | None
    vdevfn: str | None
    name: str | None

    @property
    def state_name(self) -> str | None:
        return _name(parse_state(self.state))

    def to_json(self) -> dict[str, Any]:
        state = parse_state(self.state)
        # A state is a number here as in the domain's backend_state (its name beside it);
        # what a guest wrote that is no state is null, and kept as text in state_text.
        return {"index": self.index, "bdf": self.bdf,
                "state": int(state) if state is not None else None, "state_text": self.state,
                "state_name": self.state_name, "vdev": guest_address(self.vdev), "opts": self.opts,
                "vdevfn": self.vdevfn, "name": self.name}


@dataclass
class DomainStatus:
    domid: int
    name: str | None
    backend_state: XenbusState | None
    frontend_state: XenbusState | None
    num_devs: int
    devices: list[DeviceStatus] = field(default_factory=list)
    backend_error: str | None = None
    frontend_error: str | None = None
    aer_state: str | None = None

    @property
    def next_move(self) -> str | None:
        if self.backend_state == self.frontend_state == XenbusState.CONNECTED:
            return None
        if self.backend_state is None:
            return None
        who, what = next_move(self.backend_state, self.frontend_state)
        return f"{who}: {what}"

    def to_json(self) -> dict[str, Any]:
        return {"domid": self.domid, "name": self.name,
                "backend_state": int(self.backend_state) if self.backend_state is not None else None,
                "backend_state_name": _name(self.backend_state),
                "frontend_state": int(self.frontend_state) if self.frontend_state is not None else None,
                "frontend_state_name": _name(self.frontend_state),
                "num_devs": self.num_devs, "devices": [d.to_json() for d in self.devices],
                "backend_error": self.backend_error, "frontend_error": self.frontend_error,
                "aer_state": self.aer_state, "next_move": self.next_move}


def domain_status(client: Any, domid: int) -> DomainStatus:
    view = read_backend(client, domid)
    home = L.domain_home(domid)
    if not view.exists and not client.exists(home):
        raise InputError(f"unknown domain {domid}: {home} does not exist")
    devices = [DeviceStatus(e.index, e.raw.get("dev"), e.raw.get("state"), e.raw.get("vdev"),
                            e.raw.get("opts"), e.raw.get("vdevfn"), e.raw.get("name"))
               for e in view.entries]
    return DomainStatus(
        domid, read_or_none(client, f"{home}/name"), view.state, frontend_state(client, domid),
        view.num_devs, devices,
        backend_error=read_or_none(client, f"/local/domain/0/error/backend/pci/{domid}/0/error"),
        frontend_error=read_or_none(client, f"{home}/error/device/pci/0/error"),
        aer_state=view.values.get("aerState"))


def libxl_holders(client: Any) -> dict[Bdf, int]:
    """``/libxl/pci/*/domid``: which guest holds which function, per libxl's bookkeeping."""
    out: dict[Bdf, int] = {}
    for key in list_or_empty(client, L.LIBXL_PCI_ROOT):
        bdf = L.parse_libxl_key(key)
        text = read_or_none(client, f"{L.LIBXL_PCI_ROOT}/{key}/domid")
        domid = decimal(text.strip()) if text is not None else None
        if bdf is not None and domid is not None:
            out[bdf] = domid
    return out


def libxl_names(client: Any) -> dict[Bdf, str]:
    """``/libxl/pci/*/name``: the names ``xl pci-assignable-add -n NAME`` gave devices."""
    out: dict[Bdf, str] = {}
    for key in list_or_empty(client, L.LIBXL_PCI_ROOT):
        bdf = L.parse_libxl_key(key)
        text = read_or_none(client, f"{L.LIBXL_PCI_ROOT}/{key}/name")
        if bdf is not None and text:
            out[bdf] = text
    return out


@dataclass(frozen=True)
class Attachment:
    domid: int
    vdev: Bdf | None  # guest address as the backend published it (None before export)
    index: int | None

    def __int__(self) -> int:  # so a mapping of these also works where a domid is expected
        return self.domid


def attachments(client: Any) -> dict[Bdf, Attachment]:
    """Every function a guest holds: from the backend directories and libxl's bookkeeping."""
    out: dict[Bdf, Attachment] = {}
    root = f"/local/domain/{L.BACKEND_DOMID}/backend/pci"
    for child in list_or_empty(client, root):
        domid = decimal(child, max_digits=5)
        if domid is None:
            continue
        view = read_backend(client, domid)
        for entry in view.entries:
            if entry.dev is not None:
                out[entry.dev] = Attachment(domid, entry.vdev, entry.index)
    for bdf, domid in libxl_holders(client).items():
        out.setdefault(bdf, Attachment(domid, None, None))
    return out

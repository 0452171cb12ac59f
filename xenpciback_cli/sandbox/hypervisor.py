"""The sandbox's hypervisor: what each simulated domain may touch, kept in ``sandbox.json``.

:class:`SandboxDomainGrants` is the sandbox's :class:`~xenpciback_cli.engine.grants.DomainGrants`.
It keeps Xen's view under the sandbox lock, in the state file's ``hypervisor`` key, so separate
processes (attach, detach, recover, tests) see one hypervisor::

    {"owners": {"0000:03:00.0": 5},            # absent: dom0; "io": Xen's quarantine (DomIO)
     "domains": {"5": {"iomem": [[first, count], ...], "ioport": [[first, count], ...],
                       "pirqs": {"16": 16}, "irqs": [16]}}}

Xen's rules it applies (the errors are the ones Xen returns):

* a permission is a range set: granting adds, revoking removes (revoking what is not granted
  is not an error);
* ``map_pirq(domid, irq)`` maps the GSI under its own number; ``unmap_pirq`` of a PIRQ that is
  not mapped is EINVAL;
* ``assign_device`` takes a device from dom0 or the quarantine (one another guest owns: EBUSY;
  an address with no device: ENODEV); ``deassign_device(domid)`` moves a device that domain owns
  to the quarantine, ``deassign_device(DOMID_IO)`` moves it from the quarantine to dom0 (a
  device not where it is taken from: ENODEV).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from xenpciback_cli.pci.address import Bdf
from xenpciback_cli.sandbox.kernel import SimulatedKernel

DOMID_IO = 0x7FF1
QUARANTINE = "io"


def _add(ranges: list[list[int]], first: int, count: int) -> list[list[int]]:
    """Union of half-open ``[first, first + count)`` with ``ranges`` (sorted, merged)."""
    spans = sorted([(a, a + n) for a, n in ranges] + [(first, first + count)])
    merged: list[list[int]] = []
    for start, end in spans:
        if merged and start <= merged[-1][0] + merged[-1][1]:
            top = merged[-1]
            top[1] = max(top[0] + top[1], end) - top[0]
        else:
            merged.append([start, end - start])
    return merged


def _remove(ranges: list[list[int]], first: int, count: int) -> list[list[int]]:
    end = first + count
    out: list[list[int]] = []
    for a, n in ranges:
        b = a + n
        if b <= first or a >= end:
            out.append([a, n])
            continue
        if a < first:
            out.append([a, first - a])
        if b > end:
            out.append([end, b - end])
    return out


def _fail(code: int, what: str) -> OSError:
    return OSError(code, f"{what}: {os.strerror(code)}")


class SandboxDomainGrants:
    """The sandbox's hypervisor calls (see the module docstring)."""

    kind = "sandbox"

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self._kernel = SimulatedKernel(self.root)

    @contextmanager
    def _hypervisor(self) -> Iterator[dict[str, Any]]:
        with self._kernel.locked() as state:
            hv = state.setdefault("hypervisor", {})
            hv.setdefault("owners", {})
            hv.setdefault("domains", {})
            yield hv

    @staticmethod
    def _domain(hv: dict[str, Any], domid: int) -> dict[str, Any]:
        dom: dict[str, Any] = hv["domains"].setdefault(str(domid), {})
        for key, empty in (("iomem", []), ("ioport", []), ("pirqs", {}), ("irqs", [])):
            dom.setdefault(key, empty)
        return dom

    def _permission(self, key: str, domid: int, first: int, count: int, allow: bool) -> None:
        with self._hypervisor() as hv:
            dom = self._domain(hv, domid)
            dom[key] = (_add if allow else _remove)(dom[key], first, count)

    def iomem_permission(self, domid: int, first_frame: int, frames: int, allow: bool) -> None:
        self._permission("iomem", domid, first_frame, frames, allow)

    def ioport_permission(self, domid: int, first_port: int, ports: int, allow: bool) -> None:
        self._permission("ioport", domid, first_port, ports, allow)

    def map_pirq(self, domid: int, irq: int) -> int:
        with self._hypervisor() as hv:
            self._domain(hv, domid)["pirqs"][str(irq)] = irq
        return irq

    def unmap_pirq(self, domid: int, pirq: int) -> None:
        with self._hypervisor() as hv:
            if self._domain(hv, domid)["pirqs"].pop(str(pirq), None) is None:
                raise _fail(errno.EINVAL, "xc_physdev_unmap_pirq")

    def irq_permission(self, domid: int, pirq: int, allow: bool) -> None:
        with self._hypervisor() as hv:
            irqs = set(self._domain(hv, domid)["irqs"])
            irqs = irqs | {pirq} if allow else irqs - {pirq}
            self._domain(hv, domid)["irqs"] = sorted(irqs)

    def assign_device(self, domid: int, bdf: Bdf, *, relaxed: bool) -> None:
        if not (self.root / "sys" / "bus" / "pci" / "devices" / str(bdf)).exists():
            raise _fail(errno.ENODEV, "xc_assign_device")
        with self._hypervisor() as hv:
            owner = hv["owners"].get(str(bdf), 0)
            if owner not in (0, QUARANTINE):
                raise _fail(errno.EBUSY, "xc_assign_device")
            hv["owners"][str(bdf)] = domid

    def deassign_device(self, domid: int, bdf: Bdf) -> None:
        with self._hypervisor() as hv:
            owner = hv["owners"].get(str(bdf), 0)
            if domid == DOMID_IO:
                if owner != QUARANTINE:
                    raise _fail(errno.ENODEV, "xc_deassign_device")
                hv["owners"].pop(str(bdf))
                return
            if owner != domid:
                raise _fail(errno.ENODEV, "xc_deassign_device")
            hv["owners"][str(bdf)] = QUARANTINE

    # -- what tests and the status views read ---------------------------------------------------
    def view(self) -> dict[str, Any]:
        """A copy of the hypervisor's state (domains with nothing left are dropped)."""
        state = self._kernel.tree.load().get("hypervisor", {})
        domains = {d: v for d, v in state.get("domains", {}).items()
                   if any(v.get(k) for k in ("iomem", "ioport", "pirqs", "irqs"))}
        return {"owners": dict(state.get("owners", {})), "domains": domains}

    def domain_destroyed(self, domid: int) -> None:
        """Xen tears a domain down: its permissions go, its devices go to the quarantine."""
        with self._hypervisor() as hv:
            hv["domains"].pop(str(domid), None)
            for key, owner in list(hv["owners"].items()):
                if owner == domid:
                    hv["owners"][key] = QUARANTINE

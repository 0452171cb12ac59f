"""Pre-flight checks of a hide: each a named verdict a person (or a script) can read.

The checks only read the host. A ``refuse`` verdict stops the hide unless ``--force``; a
``fatal`` one (no such device, target driver not loaded) stops it even then, because forcing
cannot make it work. ``warn`` is printed and does not stop anything.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

from xenpciback_cli.engine.records import SeizeRecord
from xenpciback_cli.host.model import STUB_DRIVERS, Host, PciDevice
from xenpciback_cli.pci.address import Bdf
from xenpciback_cli import errors

OK, WARN, REFUSE = "ok", "warn", "refuse"

#: Where each target driver comes from, for the "not loaded" message.
DRIVER_MODULES = {"pciback": "xen-pciback", "pci-stub": "pci-stub", "vfio-pci": "vfio-pci"}
#: Drivers that do not keep a device "in use by the host" for group/sibling purposes.
_HARMLESS_DRIVERS = frozenset(STUB_DRIVERS) | {"pcieport", "shpchp"}


@dataclass(frozen=True)
class Check:
    name: str
    verdict: str  # ok / warn / refuse
    detail: str
    fatal: bool = False  # --force cannot override

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "verdict": self.verdict, "detail": self.detail, "fatal": self.fatal}

    def line(self) -> str:
        return f"check {self.name}: {self.verdict}" + (f" ({self.detail})" if self.detail else "")


@dataclass
class Preflight:
    bdf: Bdf
    device: PciDevice | None
    checks: list[Check] = field(default_factory=list)
    already_seized: bool = False

    @property
    def refusals(self) -> list[Check]:
        return [c for c in self.checks if c.verdict == REFUSE]

    @property
    def fatal(self) -> list[Check]:
        return [c for c in self.checks if c.fatal]


def check_hide(host: Host, bdf: Bdf, target: str, *, records: dict[Bdf, SeizeRecord],
               hiding: Collection[Bdf] = (), by_address: dict[Bdf, PciDevice] | None = None) -> Preflight:
    """Every check of item 6 for one device; ``hiding`` is the whole set being hidden now."""
    try:
        device = host.device(bdf)
    except errors.DeviceNotFound:
        return Preflight(bdf, None, [Check("device-exists", REFUSE, f"no PCI device {bdf} on this host",
                                           fatal=True)])
    result = Preflight(bdf, device, [Check("device-exists", OK, _describe(device))])
    checks = result.checks
    loaded = host.loaded_drivers()
    if target in loaded:
        checks.append(Check("target-driver", OK, f"{target} is loaded"))
    else:
        checks.append(Check("target-driver", REFUSE, f"driver {target} is not loaded (modprobe "
                            f"{DRIVER_MODULES.get(target, target)})", fatal=True))

    if device.driver == target:
        result.already_seized = True
        checks.append(Check("not-seized", WARN, f"already held by {target}; nothing to do"))
        return result
    if device.driver in STUB_DRIVERS:
        checks.append(Check("not-seized", REFUSE, f"already seized by {device.driver}; "
                            "'unhide' it first"))
    elif bdf in records:
        checks.append(Check("not-seized", WARN, "a stale seize record exists and will be replaced"))
    else:
        checks.append(Check("not-seized", OK, f"bound to {device.driver or 'no driver'}"))

    usage = host.usage(bdf)
    if usage.in_use:
        checks.append(Check("host-usage", REFUSE, "the host uses it: " + "; ".join(usage.reasons)))
    elif usage.unknown:
        checks.append(Check("host-usage", WARN, "not fully checked: " + "; ".join(usage.unknown)))
    else:
        checks.append(Check("host-usage", OK, "no mounted filesystem, swap, up interface or console"))

    if by_address is None:
        by_address = {d.bdf: d for d in host.devices()}
    hiding = set(hiding) | {bdf}
    checks.append(_siblings(device, by_address, hiding))
    checks.append(_iommu_group(device, by_address, hiding))
    checks.append(_sriov(device))
    return result


def _describe(device: PciDevice) -> str:
    names = " ".join(n for n in (device.vendor_name, device.device_name) if n)
    ids = f"{device.vendor_id:04x}:{device.device_id:04x}"
    return f"{ids} {names}" if names else ids


def _stays_with_host(device: PciDevice, hiding: Collection[Bdf]) -> bool:
    return device.bdf not in hiding and device.driver is not None and device.driver not in _HARMLESS_DRIVERS


def _siblings(device: PciDevice, by_address: dict[Bdf, PciDevice], hiding: Collection[Bdf]) -> Check:
    bdf = device.bdf
    siblings = [d for b, d in sorted(by_address.items())
                if b != bdf and (b.domain, b.bus, b.slot) == (bdf.domain, bdf.bus, bdf.slot)
                and d.physfn is None]
    if not siblings:
        return Check("siblings", OK, "single-function device")
    listing = ", ".join(f"{d.bdf} ({d.driver or 'no driver'})" for d in siblings)
    staying = [d for d in siblings if _stays_with_host(d, hiding)]
    if staying:
        return Check("siblings", WARN, f"functions of the same device: {listing}; "
                     f"{len(staying)} stay with host drivers (seize them too with "
                     f"{bdf.domain:04x}:{bdf.bus:02x}:{bdf.slot:02x}.*)")
    return Check("siblings", OK, f"functions of the same device: {listing}")


def _iommu_group(device: PciDevice, by_address: dict[Bdf, PciDevice], hiding: Collection[Bdf]) -> Check:
    if device.iommu_group is None:
        return Check("iommu-group", OK, "no IOMMU groups on this host")
    members = [d for b, d in sorted(by_address.items())
               if d.iommu_group == device.iommu_group and b != device.bdf]
    if not members:
        return Check("iommu-group", OK, f"group {device.iommu_group} holds only this device")
    listing = ", ".join(f"{d.bdf} ({d.driver or 'no driver'})" for d in members)
    staying = [d for d in members if _stays_with_host(d, hiding)]
    if staying:
        return Check("iommu-group", WARN, f"group {device.iommu_group} also holds {listing}; "
                     f"{len(staying)} stay with host drivers")
    return Check("iommu-group", OK, f"group {device.iommu_group} also holds {listing}")


def _sriov(device: PciDevice) -> Check:
    if device.physfn is not None:
        return Check("sriov", OK, f"virtual function of {device.physfn}")
    if device.virtfns:
        vfs = ", ".join(str(v) for v in device.virtfns)
        return Check("sriov", REFUSE, f"physical function with {len(device.virtfns)} live VFs "
                     f"({vfs}); set sriov_numvfs to 0 first")
    if device.sriov_totalvfs:
        return Check("sriov", OK, f"SR-IOV capable, no live VFs")
    return Check("sriov", OK, "not SR-IOV")

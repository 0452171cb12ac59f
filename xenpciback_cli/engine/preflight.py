"""Pre-flight checks of a hide: each a named verdict a person (or a script) can read.

The checks only read the host. Verdicts:

* ``fail`` (no such device, target driver not loaded): the hide cannot work; an error (exit 1),
  and ``--force`` is never suggested because it cannot help.
* ``refuse``: dangerous (the host uses the device, live VFs...); exit 3, ``--force`` overrides.
  A refusal marked ``forceable=False`` (a host bridge, a PCI bridge: libvirt also refuses every
  non-endpoint) is not overridden even by ``--force``.
* ``warn`` is printed and does not stop anything (a PCIe root port: a bridge, but one that only
  carries its own port services; the devices below it stay with the host).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from enum import StrEnum

from xenpciback_cli.engine.identity import DeviceIdentity, differences, identity_of
from xenpciback_cli.engine.records import SeizeRecord
from xenpciback_cli.host.model import Host
from xenpciback_cli.pci.device import PciDevice
from xenpciback_cli.pci.address import Bdf
from xenpciback_cli.pci.drivers import DRIVER_MODULES, SEIZE_DRIVERS
from xenpciback_cli import errors



class Verdict(StrEnum):
    """One pre-flight check's outcome."""

    OK = "ok"
    WARN = "warn"
    REFUSE = "refuse"  # --force may override it (when the check is forceable)
    FAIL = "fail"  # the operation cannot work


OK, WARN, REFUSE, FAIL = Verdict.OK, Verdict.WARN, Verdict.REFUSE, Verdict.FAIL

#: Drivers that do not keep a device "in use by the host" for group/sibling purposes.
_HARMLESS_DRIVERS = frozenset(SEIZE_DRIVERS) | {"pcieport", "shpchp"}


@dataclass(frozen=True)
class Check:
    name: str
    verdict: Verdict
    detail: str
    forceable: bool = True  # a refusal --force may override

    @property
    def fatal(self) -> bool:
        """The operation cannot work (verdict ``fail``): --force cannot help."""
        return self.verdict == FAIL

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "verdict": self.verdict, "detail": self.detail, "fatal": self.fatal,
                "forceable": self.forceable and self.verdict == REFUSE}

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
               hiding: Collection[Bdf] = (), by_address: dict[Bdf, PciDevice] | None = None,
               expected: DeviceIdentity | None = None) -> Preflight:
    """Every check for one device; ``hiding`` is the whole set being hidden now. ``expected`` is
    the identity the caller was told to find at ``bdf`` (``restore``, ``recover``): any
    difference is refused. Without it, a record left for another device is only a warning."""
    try:
        device = host.device(bdf)
    except errors.DeviceNotFound:
        return Preflight(bdf, None, [Check("device-exists", FAIL, f"no PCI device {bdf} on this host")])
    result = Preflight(bdf, device, [Check("device-exists", OK, _describe(device))])
    checks = result.checks
    checks.append(device_kind(host, device))
    loaded = host.loaded_drivers()
    if target in loaded:
        checks.append(Check("target-driver", OK, f"{target} is loaded"))
    else:
        checks.append(Check("target-driver", FAIL, f"driver {target} is not loaded (modprobe "
                            f"{DRIVER_MODULES.get(target, target)})"))
    record = records.get(bdf)
    identity = _identity_check(host, bdf, expected, record)
    if identity is not None:
        checks.append(identity)

    if device.driver == target:
        result.already_seized = True
        checks.append(Check("not-seized", WARN, f"already held by {target}; nothing to do"))
        return result
    if device.driver in SEIZE_DRIVERS:
        checks.append(Check("not-seized", REFUSE, f"already seized by {device.driver}; "
                            "'unhide' it first"))
    elif record is not None and record.released and device.driver is None:
        checks.append(Check("not-seized", OK, f"released earlier (original driver "
                            f"{record.original_driver or 'none'} kept)"))
    elif record is not None:
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


def _identity_check(host: Host, bdf: Bdf, expected: DeviceIdentity | None,
                    record: SeizeRecord | None) -> Check | None:
    recorded = expected if expected is not None else (record.identity if record is not None else None)
    if recorded is None:
        return None
    found = differences(recorded, identity_of(host, bdf))
    if not found:
        return Check("identity", OK, "the device recorded for this address")
    if expected is not None:
        return Check("identity", REFUSE, "not the device recorded for this address: " + "; ".join(found))
    return Check("identity", WARN, "the seize record left for this address was another device's ("
                 + "; ".join(found) + "); it will be replaced")


#: PCI class codes (base class 0x06, bridges) that name a bridge a guest must never get.
_HOST_BRIDGE = 0x0600
_PCI_EXPRESS_CAPABILITY = 0x10
_ROOT_PORT = 0x4  # PCIe Capabilities register, Device/Port Type


def pcie_port_type(config: bytes) -> int | None:
    """Device/Port Type from the PCI Express capability, or None (absent or not readable)."""
    if len(config) < 0x40 or not config[0x06] & 0x10:  # status: capability list
        return None
    offset, seen = config[0x34] & 0xFC, set()
    while offset >= 0x40 and offset + 4 <= len(config) and offset not in seen:
        seen.add(offset)
        if config[offset] == _PCI_EXPRESS_CAPABILITY:
            return (config[offset + 2] >> 4) & 0xF
        offset = config[offset + 1] & 0xFC
    return None


def device_kind(host: Host, device: PciDevice) -> Check:
    """Endpoints only, as libvirt: a host bridge or a PCI/CardBus bridge is refused even with
    --force (a guest would own the path to every device below it, and the host would lose
    them); a PCIe root port is warned (seizing it only stops its port services: AER, hotplug,
    PME; passing it through is rarely what anyone means)."""
    base_sub = device.class_code >> 8
    if base_sub == _HOST_BRIDGE:
        return Check("device-kind", REFUSE, "a host bridge: not an endpoint (the path between "
                     "the CPU and every PCI device)", forceable=False)
    if device.header_type in (1, 2):
        try:
            port_type = pcie_port_type(host.read_config(device.bdf))
        except errors.HostError:
            port_type = None
        if port_type == _ROOT_PORT:
            return Check("device-kind", WARN, "a PCIe root port: seizing it stops its port "
                         "services (AER, hotplug); the devices below it stay with the host")
        kind = "CardBus bridge" if device.header_type == 2 else "PCI bridge"
        unread = "" if port_type is not None or device.header_type == 2 else \
            " (could not read whether it is a PCIe root port)"
        return Check("device-kind", REFUSE, f"a {kind}: not an endpoint; the devices below it "
                     f"would go with it{unread}", forceable=False)
    return Check("device-kind", OK, "an endpoint")


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
        return Check("sriov", OK, "SR-IOV capable, no live VFs")
    return Check("sriov", OK, "not SR-IOV")

"""What one PCI function is, as data: its identity, driver binding and resources.

Plain frozen values shared by every layer that talks about a device: the host adapters build them
from sysfs, the engine decides on them, the config-space decoder and overlay read their resources.
They sit in ``pci/``, below all of those, and do no I/O.

Named tuples rather than frozen dataclasses: ``list`` builds one per device and imports this
module on every run; a 25-field frozen dataclass costs ~2 ms to define (``dataclasses`` generates
and compiles its methods at import) and ~4x as long to build. A copy with changes is
``device._replace(driver=...)``.
"""

from __future__ import annotations

from typing import NamedTuple

from xenpciback_cli.pci import ioresource
from xenpciback_cli.pci.address import Bdf


class Resource(NamedTuple):
    """One line of sysfs ``resource``: a BAR, the ROM, or a bridge window."""

    index: int  # type: ignore[assignment]  # shadows tuple.index(), never called on a resource
    start: int
    end: int
    flags: int

    @property
    def size(self) -> int:
        """Bytes covered: ``end - start + 1`` (one byte when start == end). An unset slot reads
        ``0x0 0x0 0x0`` and a line whose end lies below its start is no range: both are 0."""
        if self.end == 0 or self.end < self.start:
            return 0
        return self.end - self.start + 1

    @property
    def is_io(self) -> bool:
        return bool(self.flags & ioresource.IO)

    @property
    def is_mem(self) -> bool:
        return bool(self.flags & ioresource.MEM)

    @property
    def is_64bit(self) -> bool:
        return bool(self.flags & ioresource.MEM_64)

    @property
    def is_prefetchable(self) -> bool:
        return bool(self.flags & ioresource.PREFETCH)


class PciDevice(NamedTuple):
    """What the host knows about one PCI function, as sysfs spells it."""

    bdf: Bdf
    vendor_id: int
    device_id: int
    class_code: int  # 24 bits: base class, subclass, prog-if
    revision: int
    subsystem_vendor_id: int | None = None
    subsystem_device_id: int | None = None
    header_type: int = 0  # low 7 bits of config byte 0x0e
    multifunction: bool = False
    driver: str | None = None
    driver_override: str | None = None
    iommu_group: int | None = None
    numa_node: int | None = None
    irq: int | None = None
    boot_vga: bool | None = None
    physfn: Bdf | None = None  # set on an SR-IOV virtual function
    virtfns: tuple[Bdf, ...] = ()  # live VFs of an SR-IOV physical function
    sriov_numvfs: int | None = None
    sriov_totalvfs: int | None = None
    resources: tuple[Resource, ...] = ()
    reset_methods: tuple[str, ...] = ()  # sysfs reset_method, e.g. ("flr", "bus")
    vendor_name: str | None = None
    device_name: str | None = None
    class_name: str | None = None
    sysfs_path: str | None = None  # resolved path of the device directory

    @property
    def is_bridge(self) -> bool:
        return self.header_type == 1 or (self.class_code >> 16) == 0x06

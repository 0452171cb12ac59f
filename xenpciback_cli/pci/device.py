"""What one PCI function is, as data: its identity, driver binding and resources.

Plain frozen values shared by every layer that talks about a device: the host adapters build them
from sysfs, the engine decides on them, the config-space decoder and overlay read their resources.
They sit in ``pci/``, below all of those, and do no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

from xenpciback_cli.pci.address import Bdf


@dataclass(frozen=True)
class Resource:
    """One line of sysfs ``resource``: a BAR, the ROM, or a bridge window."""

    index: int
    start: int
    end: int
    flags: int

    @property
    def size(self) -> int:
        return 0 if self.end <= self.start and self.start == 0 else self.end - self.start + 1

    @property
    def is_io(self) -> bool:
        return bool(self.flags & 0x100)  # IORESOURCE_IO

    @property
    def is_mem(self) -> bool:
        return bool(self.flags & 0x200)  # IORESOURCE_MEM

    @property
    def is_64bit(self) -> bool:
        return bool(self.flags & 0x100000)  # IORESOURCE_MEM_64

    @property
    def is_prefetchable(self) -> bool:
        return bool(self.flags & 0x2000)  # IORESOURCE_PREFETCH


@dataclass(frozen=True)
class PciDevice:
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

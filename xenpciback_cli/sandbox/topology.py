"""The simulated machine, as data: which capture sits at which address, its driver, its group, and
what the host runs on it. ``host.create_sandbox`` turns this into a sandbox tree (the machine is
drawn in ``sandbox/host.py``'s docstring).

Every other helper's tests rely on these addresses; change them only together with those tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from xenpciback_cli.pci.address import Bdf


@dataclass(frozen=True)
class DriverSpec:
    """A simulated PCI driver and its static id table (what ``drivers_probe`` matches)."""

    name: str
    module: str
    #: (vendor or None for any, device or None, class, class_mask)
    ids: tuple[tuple[int | None, int | None, int, int], ...] = ()
    sriov: bool = False  # implements sriov_configure


@dataclass(frozen=True)
class Child:
    """Something a bound driver creates below its device (a disk, a partition, a netdev, a fb)."""

    klass: str  # sysfs class: block, net, graphics
    name: str
    subpath: str  # below the device directory
    files: dict[str, str] = field(default_factory=dict)
    parent: str | None = None  # block partitions: the disk's class name


@dataclass(frozen=True)
class SlotSpec:
    bdf: Bdf
    capture: str
    driver: str | None
    iommu_group: int
    parent: Bdf | None = None  # upstream bridge (None: on the root bus)
    buses: tuple[int, int] | None = None  # bridges: (secondary, subordinate)
    multifunction: bool | None = None
    numa_node: int = 0
    irq: int = 0
    boot_vga: bool | None = None
    reset_method: str = "flr bus"
    children: tuple[Child, ...] = ()
    num_vfs: int = 0
    #: (memory, I/O) offsets added to the capture's BARs: a second function of one capture.
    bar_shift: tuple[int, int] | None = None


B = Bdf.parse

DRIVERS = (
    # pciback first: as if built in, it sees a hide=/new_slot-listed device before the real driver.
    # Its id table is PCI_ANY_ID: it matches everything and its probe decides (slots/override).
    DriverSpec("pciback", "xen_pciback", ((None, None, 0, 0),)),
    DriverSpec("pci-stub", "pci_stub"),
    DriverSpec("vfio-pci", "vfio_pci"),
    DriverSpec("pcieport", "pcieportdrv", ((None, None, 0x060400, 0xFFFFFF),)),
    DriverSpec("xhci_hcd", "xhci_pci", ((None, None, 0x0C0330, 0xFFFFFF),)),
    DriverSpec("nvme", "nvme", ((None, None, 0x010802, 0xFFFFFF),)),
    DriverSpec("amdgpu", "amdgpu", ((0x1002, 0x7300, 0, 0),)),
    DriverSpec("snd_hda_intel", "snd_hda_intel", ((0x8086, 0x27D8, 0, 0),)),
    DriverSpec("igb", "igb", ((0x8086, 0x10C9, 0, 0),), sriov=True),
    DriverSpec("igbvf", "igbvf", ((0x8086, 0x10CA, 0, 0),)),
)


def _netdev(name: str, mac: str, ifindex: int) -> Child:
    return Child("net", name, f"net/{name}", {
        "address": mac, "ifindex": str(ifindex), "mtu": "1500", "type": "1",
        "operstate": "down", "flags": "0x1002", "carrier": "0",
    })


NVME_BLOCK = "nvme/nvme0/nvme0n1"
SLOTS = (
    SlotSpec(B("00:00.0"), "host-bridge-intel-6f00", None, 0, reset_method=""),
    SlotSpec(B("00:14.0"), "xhci-ti-tusb73x0", "xhci_hcd", 1, irq=16, reset_method="flr"),
    SlotSpec(B("00:1c.0"), "root-port-ich7-1", "pcieport", 2, buses=(0x01, 0x01), irq=24,
             multifunction=True, reset_method=""),
    SlotSpec(B("00:1c.1"), "root-port-ich7-2", "pcieport", 3, buses=(0x02, 0x02), irq=25,
             reset_method=""),
    SlotSpec(B("00:1c.2"), "root-port-ich7-3", "pcieport", 4, buses=(0x03, 0x04), irq=26,
             reset_method=""),
    SlotSpec(B("01:00.0"), "nvme-samsung-pm174x", "nvme", 5, parent=B("00:1c.0"), irq=30,
             children=(
                 Child("block", "nvme0n1", NVME_BLOCK, {"dev": "259:0", "size": "2000409264"}),
                 Child("block", "nvme0n1p1", f"{NVME_BLOCK}/nvme0n1p1",
                       {"dev": "259:1", "partition": "1", "size": "1048576"}, parent="nvme0n1"),
                 Child("block", "nvme0n1p2", f"{NVME_BLOCK}/nvme0n1p2",
                       {"dev": "259:2", "partition": "2", "size": "1966080000"}, parent="nvme0n1"),
                 Child("block", "nvme0n1p3", f"{NVME_BLOCK}/nvme0n1p3",
                       {"dev": "259:3", "partition": "3", "size": "33554432"}, parent="nvme0n1"),
             )),
    SlotSpec(B("02:00.0"), "gpu-amd-fiji", "amdgpu", 6, parent=B("00:1c.1"), irq=31,
             boot_vga=True, multifunction=True, reset_method="bus", bar_shift=(-0x40000000, 0),
             children=(Child("graphics", "fb0", "graphics/fb0", {"name": "amdgpudrmfb"}),)),
    SlotSpec(B("02:00.1"), "hda-intel-ich7", "snd_hda_intel", 6, parent=B("00:1c.1"), irq=32,
             reset_method="bus"),
    SlotSpec(B("03:00.0"), "nic-intel-82576-sriov", "igb", 7, parent=B("00:1c.2"), irq=33,
             multifunction=True, children=(_netdev("eth0", "00:1b:21:3a:5c:10", 2),)),
    SlotSpec(B("03:00.1"), "nic-intel-82576-sriov", "igb", 7, parent=B("00:1c.2"), irq=34,
             multifunction=True, children=(_netdev("eth1", "00:1b:21:3a:5c:11", 3),), num_vfs=2,
             bar_shift=(0x01000000, 0x20)),
)

#: What the host runs on those devices at creation time.
MOUNTS = (
    ("/dev/nvme0n1p2", "/", "ext4", "rw,relatime", "259:2"),
    ("/dev/nvme0n1p1", "/boot/efi", "vfat", "rw,relatime,fmask=0077,dmask=0077", "259:1"),
)
SWAPS = (("/dev/nvme0n1p3", "partition", 16777212),)
HOST_NETWORK = {
    # interface: (state up?, addresses, routes as (destination/prefix, gateway))
    "eth1": (True, ["192.168.122.10/24"], [("0.0.0.0/0", "192.168.122.1"), ("192.168.122.0/24", None)]),
}
CMDLINE = "BOOT_IMAGE=/vmlinuz root=/dev/nvme0n1p2 ro quiet"
#: Drivers that create a child directory (e.g. a netdev) when bound, by device.
FIRST_DYNAMIC_GROUP = 8

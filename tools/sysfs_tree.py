"""Build temporary sysfs/procfs trees shaped like the kernel's, for adapter tests and benchmarks.

The layout follows real Linux: device directories under ``sys/devices/pci0000:00/...``, the
``bus/pci/devices`` symlinks, ``driver``/``iommu_group`` symlinks, class entries that resolve below
the device, and ``proc/{mounts,swaps,net/route}`` text.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path


def _link(link: Path, target: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(os.path.relpath(target, link.parent), link)


def config_bytes(vendor: int, device: int, class_code: int, revision: int = 1, header_type: int = 0,
                 subsystem: tuple[int, int] = (0, 0), bars: tuple[int, ...] = (), size: int = 256) -> bytes:
    data = bytearray(size)
    struct.pack_into("<HH", data, 0, vendor, device)
    data[8] = revision
    data[9:12] = class_code.to_bytes(3, "little")
    data[0x0E] = header_type
    for index, bar in enumerate(bars):
        struct.pack_into("<I", data, 0x10 + 4 * index, bar)
    if header_type & 0x7F == 0:
        struct.pack_into("<HH", data, 0x2C, *subsystem)
    return bytes(data)


class FakeSysfs:
    """A temporary ``root/sys`` + ``root/proc``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.sys = root / "sys"
        self.proc = root / "proc"
        self.pci = self.sys / "bus" / "pci"
        for path in (self.pci / "devices", self.pci / "drivers", self.sys / "devices" / "pci0000:00",
                     self.sys / "class" / "block", self.sys / "class" / "net", self.proc / "net"):
            path.mkdir(parents=True, exist_ok=True)
        self.write_proc("mounts", "proc /proc proc rw 0 0\n")
        self.write_proc("swaps", "Filename\tType\tSize\tUsed\tPriority\n")
        self.write_proc("net/route", "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\t"
                        "MTU\tWindow\tIRTT\n")

    def write_proc(self, name: str, text: str) -> None:
        path = self.proc / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    def device_dir(self, bdf: str) -> Path:
        return Path(os.path.realpath(self.pci / "devices" / bdf))

    def add_device(self, bdf: str, vendor: int, device: int, class_code: int, *, driver: str | None = None,
                   parent: str | None = None, iommu_group: int | None = None, numa_node: int = -1,
                   revision: int = 1, header_type: int = 0, override: str | None = None,
                   resource: str | None = None, config: bytes | None = None, boot_vga: bool | None = None,
                   extra: dict[str, str] | None = None, revision_file: bool = True) -> Path:
        base = self.device_dir(parent) if parent else self.sys / "devices" / "pci0000:00"
        directory = base / bdf
        directory.mkdir(parents=True)
        files = {
            "vendor": f"0x{vendor:04x}", "device": f"0x{device:04x}", "class": f"0x{class_code:06x}",
            "subsystem_vendor": "0x0000", "subsystem_device": "0x0000", "irq": "0",
            "numa_node": str(numa_node), "driver_override": override or "(null)",
            "resource": resource or "0x0000000000000000 0x0000000000000000 0x0000000000000000\n" * 13,
        }
        if not extra or not {"vendor", "device", "class"} & set(extra):
            # As pci_uevent() writes it (the kernel's ids, after quirks); DRIVER= is the core's.
            files["uevent"] = (f"PCI_CLASS={class_code:X}\nPCI_ID={vendor:04X}:{device:04X}\n"
                               f"PCI_SLOT_NAME={bdf}\n")
        if revision_file:
            files["revision"] = f"0x{revision:02x}"
        if boot_vga is not None:
            files["boot_vga"] = "1" if boot_vga else "0"
        files.update(extra or {})
        for name, text in files.items():
            (directory / name).write_text(text if text.endswith("\n") else text + "\n")
        (directory / "config").write_bytes(
            config or config_bytes(vendor, device, class_code, revision, header_type))
        _link(self.pci / "devices" / bdf, directory)
        if driver:
            self.bind(bdf, driver)
        if iommu_group is not None:
            group = self.sys / "kernel" / "iommu_groups" / str(iommu_group)
            _link(group / "devices" / bdf, directory)
            _link(directory / "iommu_group", group)
        return directory

    def add_driver(self, name: str) -> Path:
        directory = self.pci / "drivers" / name
        if not directory.exists():
            directory.mkdir(parents=True)
            for file in ("bind", "unbind", "new_id", "remove_id"):
                (directory / file).write_text("")
        return directory

    def bind(self, bdf: str, driver: str) -> None:
        directory = self.add_driver(driver)
        _link(directory / bdf, self.device_dir(bdf))
        _link(self.device_dir(bdf) / "driver", directory)

    def add_block(self, bdf: str, disk: str, dev: str, partitions: dict[str, str] | None = None) -> None:
        base = self.device_dir(bdf) / "host0" / "block" / disk
        base.mkdir(parents=True)
        (base / "dev").write_text(dev + "\n")
        (base / "holders").mkdir()
        _link(self.sys / "class" / "block" / disk, base)
        for name, part_dev in (partitions or {}).items():
            (base / name).mkdir()
            (base / name / "dev").write_text(part_dev + "\n")
            (base / name / "holders").mkdir()
            _link(self.sys / "class" / "block" / name, base / name)

    def add_dm(self, name: str, dm_name: str, dev: str, below: str) -> None:
        """A device-mapper disk stacked on ``below`` (a block class name)."""
        base = self.sys / "devices" / "virtual" / "block" / name
        (base / "dm").mkdir(parents=True)
        (base / "dev").write_text(dev + "\n")
        (base / "dm" / "name").write_text(dm_name + "\n")
        (base / "holders").mkdir()
        _link(self.sys / "class" / "block" / name, base)
        _link(Path(os.path.realpath(self.sys / "class" / "block" / below)) / "holders" / name, base)

    def add_net(self, bdf: str, name: str, *, up: bool = False) -> None:
        base = self.device_dir(bdf) / "net" / name
        base.mkdir(parents=True)
        (base / "operstate").write_text("up\n" if up else "down\n")
        (base / "flags").write_text("0x1003\n" if up else "0x1002\n")
        _link(self.sys / "class" / "net" / name, base)

    def add_framebuffer(self, bdf: str, name: str = "fb0") -> None:
        base = self.device_dir(bdf) / "graphics" / name
        base.mkdir(parents=True)
        (self.sys / "class" / "graphics").mkdir(parents=True, exist_ok=True)
        _link(self.sys / "class" / "graphics" / name, base)


def build_many(root: Path, count: int) -> FakeSysfs:
    """A tree with ``count`` devices behind root ports (used by the benchmark)."""
    tree = FakeSysfs(root)
    kinds = [(0x8086, 0x10C9, 0x020000, "igb"), (0x144D, 0xA808, 0x010802, "nvme"),
             (0x1002, 0x7300, 0x030000, "amdgpu"), (0x104C, 0x8241, 0x0C0330, "xhci_hcd"),
             (0x1AF4, 0x1041, 0x020000, None)]
    made = 0
    bus = 1
    while made < count:
        port = f"0000:00:{(bus - 1) // 8 + 1:02x}.{(bus - 1) % 8}"
        if (bus - 1) // 8 + 1 > 0x1F:
            break
        tree.add_device(port, 0x8086, 0x27D0, 0x060400, driver="pcieport", iommu_group=made,
                        header_type=1)
        made += 1
        for function in range(8):
            if made >= count:
                break
            vendor, device, klass, driver = kinds[(made + function) % len(kinds)]
            tree.add_device(f"0000:{bus:02x}:00.{function}", vendor, device, klass, driver=driver,
                            parent=port, iommu_group=made, numa_node=0,
                            resource=("0x00000000fe000000 0x00000000fe01ffff 0x0000000000040200\n"
                                      + "0x0000000000000000 0x0000000000000000 0x0000000000000000\n" * 12),
                            header_type=0x80 if function == 0 else 0)
            made += 1
        bus += 1
    return tree

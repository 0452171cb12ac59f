"""The sandbox's files: a ``sys/`` and ``proc/`` shaped like the real ones, plus ``sandbox.json``.

This module only knows how to lay files out (device directories, relative symlinks, class entries,
procfs text). What the files mean and when they change is :mod:`.kernel`'s business.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
from pathlib import Path
from typing import Any

from xenpciback_cli.pci.address import Bdf

STATE_FILE = "sandbox.json"
LOCK_FILE = ".lock"
FORMAT = 1
#: Attributes the kernel makes read-only; writing them is EACCES.
READ_ONLY = frozenset({
    "vendor", "device", "class", "revision", "subsystem_vendor", "subsystem_device", "irq",
    "numa_node", "resource", "modalias", "boot_vga", "sriov_totalvfs", "slots", "local_cpus",
    "local_cpulist", "sriov_offset", "sriov_stride", "sriov_vf_device", "irq_handlers",
})
DRIVER_FILES = ("bind", "unbind", "new_id", "remove_id", "uevent")
PCIBACK_FILES = ("new_slot", "remove_slot", "slots", "permissive", "quirks", "irq_handlers",
                 "irq_handler_state", "allow_interrupt_control")


def write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def symlink(link: Path, target: Path) -> None:
    """A relative symlink (so a sandbox still works after being moved)."""
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.exists():
        link.unlink()
    os.symlink(os.path.relpath(target, link.parent), link)


def remove_link(link: Path) -> None:
    try:
        link.unlink()
    except FileNotFoundError:
        pass


class Tree:
    """Paths and file operations inside one sandbox directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.sys = root / "sys"
        self.proc = root / "proc"
        self.state_path = root / STATE_FILE
        self.pci = self.sys / "bus" / "pci"

    # -- state -------------------------------------------------------------------------------
    def load(self) -> dict[str, Any]:
        with open(self.state_path, encoding="utf-8") as handle:
            state: dict[str, Any] = json.load(handle)
        return state

    def save(self, state: dict[str, Any]) -> None:
        temporary = self.state_path.with_suffix(".tmp")
        with open(temporary, "w", encoding="utf-8") as handle:
            json.dump(state, handle, indent=1, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, self.state_path)

    # -- paths -------------------------------------------------------------------------------
    def device_dir(self, state: dict[str, Any], bdf: str) -> Path:
        path: str = state["devices"][bdf]["path"]
        return self.sys / path

    def driver_dir(self, driver: str) -> Path:
        return self.pci / "drivers" / driver

    # -- devices -----------------------------------------------------------------------------
    def create_device(self, path: str, bdf: Bdf, config: bytes, resources: list[tuple[int, int, int]],
                      *, vendor: int, device: int, irq: int, numa_node: int, iommu_group: int,
                      boot_vga: bool | None, reset_method: str, sriov_total: int | None) -> Path:
        directory = self.sys / path
        directory.mkdir(parents=True)
        class_code = int.from_bytes(config[9:12], "little")
        sub_vendor = int.from_bytes(config[0x2C:0x2E], "little") if (config[0x0E] & 0x7F) == 0 else 0
        sub_device = int.from_bytes(config[0x2E:0x30], "little") if (config[0x0E] & 0x7F) == 0 else 0
        files = {
            "vendor": f"0x{vendor:04x}", "device": f"0x{device:04x}",
            "class": f"0x{class_code:06x}", "revision": f"0x{config[8]:02x}",
            "subsystem_vendor": f"0x{sub_vendor:04x}", "subsystem_device": f"0x{sub_device:04x}",
            "irq": str(irq), "numa_node": str(numa_node), "driver_override": "(null)",
            "enable": "1", "reset_method": reset_method, "local_cpus": "3", "local_cpulist": "0-1",
            "modalias": (f"pci:v{vendor:08X}d{device:08X}sv{sub_vendor:08X}sd{sub_device:08X}"
                         f"bc{class_code >> 16:02X}sc{(class_code >> 8) & 0xFF:02X}i{class_code & 0xFF:02X}"),
            "uevent": f"PCI_CLASS={class_code:X}\nPCI_ID={vendor:04X}:{device:04X}\n"
                      f"PCI_SUBSYS_ID={sub_vendor:04X}:{sub_device:04X}\nPCI_SLOT_NAME={bdf}\n",
            "resource": "".join(f"0x{s:016x} 0x{e:016x} 0x{f:016x}\n" for s, e, f in resources),
        }
        if reset_method:
            files["reset"] = ""
        if boot_vga is not None:
            files["boot_vga"] = "1" if boot_vga else "0"
        if sriov_total is not None:
            files.update({"sriov_totalvfs": str(sriov_total), "sriov_numvfs": "0",
                          "sriov_drivers_autoprobe": "1"})
        for name, text in files.items():
            (directory / name).write_text(text if not text or text.endswith("\n") else text + "\n")
        (directory / "config").write_bytes(config)
        symlink(directory / "subsystem", self.pci)
        symlink(self.pci / "devices" / str(bdf), directory)
        group = self.sys / "kernel" / "iommu_groups" / str(iommu_group)
        (group / "devices").mkdir(parents=True, exist_ok=True)
        write_text(group / "type", "DMA\n")
        write_text(group / "reset_method", "")
        symlink(group / "devices" / str(bdf), directory)
        symlink(directory / "iommu_group", group)
        return directory

    def remove_device(self, state: dict[str, Any], bdf: str) -> None:
        directory = self.device_dir(state, bdf)
        group = state["devices"][bdf]["iommu_group"]
        group_dir = self.sys / "kernel" / "iommu_groups" / str(group)
        remove_link(group_dir / "devices" / bdf)
        if group_dir.exists() and not any((group_dir / "devices").iterdir()):
            shutil.rmtree(group_dir)
        remove_link(self.pci / "devices" / bdf)
        shutil.rmtree(directory, ignore_errors=True)

    # -- driver binding ----------------------------------------------------------------------
    def create_driver(self, name: str, module: str, *, pciback: bool = False) -> None:
        directory = self.driver_dir(name)
        directory.mkdir(parents=True, exist_ok=True)
        for file in DRIVER_FILES + (PCIBACK_FILES if pciback else ()):
            (directory / file).write_text("")
        module_dir = self.sys / "module" / module
        (module_dir / "drivers").mkdir(parents=True, exist_ok=True)
        symlink(directory / "module", module_dir)
        symlink(module_dir / "drivers" / f"pci:{name}", directory)

    def remove_driver(self, name: str, module: str) -> None:
        shutil.rmtree(self.driver_dir(name), ignore_errors=True)
        shutil.rmtree(self.sys / "module" / module, ignore_errors=True)

    def link_driver(self, state: dict[str, Any], bdf: str, driver: str) -> None:
        directory = self.device_dir(state, bdf)
        symlink(self.driver_dir(driver) / bdf, directory)
        symlink(directory / "driver", self.driver_dir(driver))

    def unlink_driver(self, state: dict[str, Any], bdf: str, driver: str) -> None:
        remove_link(self.device_dir(state, bdf) / "driver")
        remove_link(self.driver_dir(driver) / bdf)

    def bound_driver(self, state: dict[str, Any], bdf: str) -> str | None:
        try:
            return os.path.basename(os.readlink(self.device_dir(state, bdf) / "driver"))
        except OSError:
            return None

    # -- children (disks, netdevs, framebuffers) ---------------------------------------------
    def create_child(self, state: dict[str, Any], bdf: str, child: dict[str, Any]) -> None:
        directory = self.device_dir(state, bdf) / child["subpath"]
        directory.mkdir(parents=True, exist_ok=True)
        for name, text in child["files"].items():
            (directory / name).write_text(text + "\n")
        if child["klass"] == "block":
            (directory / "holders").mkdir(exist_ok=True)
        symlink(self.sys / "class" / child["klass"] / child["name"], directory)

    def remove_child(self, state: dict[str, Any], bdf: str, child: dict[str, Any]) -> None:
        remove_link(self.sys / "class" / child["klass"] / child["name"])
        device_dir = self.device_dir(state, bdf)
        shutil.rmtree(device_dir / child["subpath"], ignore_errors=True)
        parent = (device_dir / child["subpath"]).parent
        while parent != device_dir and parent.exists() and not any(parent.iterdir()):
            parent.rmdir()
            parent = parent.parent

    # -- generated files ---------------------------------------------------------------------
    def write_pciback_files(self, state: dict[str, Any]) -> None:
        directory = self.driver_dir("pciback")
        if directory.exists():
            (directory / "slots").write_text("".join(f"{s}\n" for s in state["pciback_slots"]))
            (directory / "permissive").write_text("".join(f"{s}\n" for s in state["permissive"]))
            # Linux lists every field of each bound device; the sandbox lists the quirk fields,
            # which are what an administrator added: "BB:SS.F", then "\t\tREG:SIZE:MASK" lines.
            lines = []
            for bdf, quirks in sorted(state.get("quirks", {}).items()):
                lines.append(f"{bdf[5:]}\n")
                lines += [f"\t\t{reg:08x}:{size:01x}:{mask:08x}\n" for reg, size, mask in quirks]
            (directory / "quirks").write_text("".join(lines))

    def write_network_files(self, state: dict[str, Any]) -> None:
        lines = ["Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT"]
        for name, interface in sorted(state["interfaces"].items()):
            if not interface["up"]:
                continue
            for destination, gateway in interface["routes"]:
                network, _, prefix = destination.partition("/")
                mask = (0xFFFFFFFF << (32 - int(prefix))) & 0xFFFFFFFF if int(prefix) else 0
                flags = 0x0003 if gateway else 0x0001
                lines.append("\t".join([
                    name, _le_hex(network), _le_hex(gateway or "0.0.0.0"), f"{flags:04X}", "0", "0",
                    "100", f"{int.from_bytes(mask.to_bytes(4, 'big'), 'little'):08X}", "0", "0", "0"]))
        write_text(self.proc / "net" / "route", "\n".join(lines) + "\n")
        net = self.sys / "class" / "net"
        for name, interface in state["interfaces"].items():
            entry = net / name
            if entry.exists():
                (entry / "operstate").write_text("up\n" if interface["up"] else "down\n")
                (entry / "flags").write_text("0x1003\n" if interface["up"] else "0x1002\n")
                (entry / "carrier").write_text("1\n" if interface["up"] else "0\n")


def _le_hex(address: str) -> str:
    return f"{int.from_bytes(socket.inet_aton(address), 'little'):08X}"

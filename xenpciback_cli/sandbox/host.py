"""The sandbox: a simulated host in a directory, the embedded default for trying everything.

A sandbox directory holds ``sys/`` and ``proc/`` with the same shape as the real ones (so the real
sysfs reader, :class:`~xenpciback_cli.host.sysfs.SysfsHost`, reads it unchanged, and so does
``lspci -A linux-sysfs -O sysfs.path=DIR/sys/bus/pci``), ``sandbox.json`` with the facts sysfs
cannot hold (driver id tables, interface addresses and routes, the pciback seize list, resets),
and ``.lock``. Writes go to :mod:`.kernel`, which applies Linux's semantics under the lock, so
separate ``xen-pciback --sandbox DIR`` processes see one host.

Devices are built from real config-space captures shipped in ``captures/`` (extracted from
pciutils' test dumps of real hardware by ``tools/extract_captures.py``). Topology::

    0000:00:00.0  host bridge           Intel 8086:6f00                  (no driver)   group 0
    0000:00:14.0  USB 3 xHCI            TI TUSB73x0 104c:8241            xhci_hcd      group 1
    0000:00:1c.0  PCIe root port -> 01  Intel ICH7 port 1                pcieport      group 2
    0000:01:00.0    NVMe SSD            Samsung PM174X 144d:a826         nvme          group 5
                    nvme0n1p2 mounted on /, p1 on /boot/efi, p3 active swap
    0000:00:1c.1  PCIe root port -> 02  Intel ICH7 port 2                pcieport      group 3
    0000:02:00.0    VGA (boot VGA, fb0) AMD Fiji 1002:7300 (multi-fn)    amdgpu        group 6
    0000:02:00.1    HDA audio           Intel ICH7 HDA 8086:27d8 capture snd_hda_intel group 6
    0000:00:1c.2  PCIe root port -> 03-04 Intel ICH7 port 3              pcieport      group 4
    0000:03:00.0    NIC port 0 (eth0)   Intel 82576 8086:10c9, SR-IOV, MSI-X  igb      group 7
                    eth0 down, no address: safe to seize
    0000:03:00.1    NIC port 1 (eth1)   same capture                     igb           group 7
                    eth1 up, 192.168.122.10/24, default route via 192.168.122.1; 2 live VFs
    0000:04:10.1    VF 0 of 03:00.1     8086:10ca (from the PF's SR-IOV capability)  igbvf
    0000:04:10.3    VF 1 of 03:00.1                                                   igbvf

The audio function is a real ICH7 HDA capture placed as the GPU's function 1 (no dump of Fiji's
own HDMI audio function exists in the fixtures). Drivers loaded: pciback, pci-stub, vfio-pci and
the native drivers above.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, TypedDict

from xenpciback_cli import errors
from xenpciback_cli.config.le import u16
from xenpciback_cli.host.model import AttributeWrite
from xenpciback_cli.sandbox import configspace, topology
from xenpciback_cli.sandbox.kernel import SimulatedKernel
from xenpciback_cli.sandbox.tree import FORMAT, STATE_FILE, Tree, write_text
from xenpciback_cli.host.sysfs import SysfsHost

__all__ = ["SandboxHost", "create_sandbox", "is_sandbox", "open_sandbox"]


def is_sandbox(directory: str | os.PathLike[str]) -> bool:
    return (Path(directory) / STATE_FILE).is_file() and (Path(directory) / "sys").is_dir()


class SandboxHost(SysfsHost):
    """The simulated host: read like real sysfs, written through the simulated kernel."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory).resolve()
        super().__init__(str(self.directory / "sys"), str(self.directory / "proc"))
        self.kernel = SimulatedKernel(self.directory)

    def _write(self, write: AttributeWrite) -> None:
        try:
            self.kernel.write(write.path, write.value)
        except OSError as exc:
            action = f"write {write.value.strip() or 'newline'!r} to {write.path}"
            raise errors.from_oserror(exc, action, bdf=write.bdf,
                                      path=str(self.directory / "sys" / write.path)) from None

    def load_module(self, module: str) -> None:
        """The simulated ``modprobe``: registers a known module's drivers (see ``SimulatedKernel``)."""
        try:
            self.kernel.load_module(module)
        except OSError:
            raise errors.OperationFailed(f"modprobe {module} failed: module {module} not found "
                                         "in the sandbox's kernel") from None

    def state(self) -> dict[str, Any]:
        return self.kernel.tree.load()

    def interface_addresses(self, name: str) -> list[str]:
        interface = self.state()["interfaces"].get(name)
        return list(interface["addresses"]) if interface and interface["up"] else []

    def configure_interface(self, name: str, *, up: bool, addresses: list[str] | None = None,
                            routes: list[tuple[str, str | None]] | None = None) -> None:
        """What ``ip link set up`` / ``ip addr add`` / ``ip route add`` would do (tests, demos)."""
        with self.kernel.locked() as state:
            if name not in state["interfaces"]:
                raise errors.DeviceNotFound(f"no network interface {name} in the sandbox")
            state["interfaces"][name].update(
                up=up, addresses=list(addresses or []), routes=[list(r) for r in routes or []])
            self.kernel.tree.write_network_files(state)


def open_sandbox(directory: str | os.PathLike[str]) -> SandboxHost:
    if not is_sandbox(directory):
        raise errors.InputError(f"not a sandbox: {directory} (create one with "
                                f"'xen-pciback sandbox init {directory}')")
    state = json.loads((Path(directory) / STATE_FILE).read_text())
    if state.get("format") != FORMAT:
        raise errors.InputError(f"sandbox {directory} has format {state.get('format')!r}, expected "
                                f"{FORMAT}: recreate it with 'xen-pciback sandbox init --force {directory}'")
    return SandboxHost(directory)


def create_sandbox(directory: str | os.PathLike[str], *, force: bool = False) -> SandboxHost:
    """Build a fresh simulated host in ``directory`` (empty or absent; an old sandbox with force)."""
    root = Path(directory)
    if root.exists() and not root.is_dir():
        raise errors.InputError(f"cannot create a sandbox at {directory}: it is not a directory")
    if root.is_dir() and any(root.iterdir()):
        if not is_sandbox(root):
            raise errors.SafetyRefusal(f"refusing to create a sandbox in {directory}: it is not "
                                       "empty and is not a sandbox")
        if not force:
            raise errors.InputError(f"{directory} is already a sandbox (use --force to recreate it)")
        stop_background(root, forget=True)  # else they outlive it and write into the new one
        for entry in root.iterdir():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    root.mkdir(parents=True, exist_ok=True)
    _build(root)
    return SandboxHost(root)


class StoppedBackground(TypedDict):
    guests: list[int]  # the simulated guests' pids
    xenstored: int | None  # its pid, None if it was not running


def stop_background(root: Path, *, forget: bool) -> StoppedBackground:
    """Stop what runs for the sandbox in the background: the simulated guests first (they talk
    to it), then its xenstored (which saves its tree). ``forget``: the guests are not to come
    back (the sandbox is being replaced); else the next command restarts them."""
    from xenpciback_cli.sandbox import guest as simguest
    from xenpciback_cli.sandbox import xenstored as xs_sandbox

    guests = simguest.stop_all(root, forget=forget)
    try:
        daemon = xs_sandbox.stop(root)
    except xs_sandbox.SandboxDaemonError as exc:
        raise errors.OperationFailed(str(exc)) from None
    return StoppedBackground(guests=guests, xenstored=daemon)


def _captures() -> tuple[dict[str, Any], Any]:
    from importlib import resources  # only when building: it costs ~10 ms to import

    folder = resources.files(__package__).joinpath("captures")
    return json.loads(folder.joinpath("index.json").read_text()), folder


def _private_dir(path: Path) -> None:
    """The state dir as engine/statestore.py makes the real one: 0700 whatever the umask (it
    holds the journal and seize records, and a group- or world-writable one is refused)."""
    from xenpciback_cli.engine.statestore import DIR_MODE

    path.mkdir(mode=DIR_MODE, exist_ok=True)
    os.chmod(path, DIR_MODE)


def _build(root: Path) -> None:
    tree = Tree(root)
    for directory in ("sys/bus/pci/devices", "sys/bus/pci/drivers", "sys/bus/pci/slots",
                      "sys/class/block", "sys/class/net", "sys/class/graphics",
                      "sys/kernel/iommu_groups", "sys/devices/pci0000:00", "sys/module",
                      "proc/net", "proc/self"):
        (root / directory).mkdir(parents=True, exist_ok=True)
    _private_dir(root / "state")
    for name, text in (("drivers_probe", ""), ("drivers_autoprobe", "1\n"), ("rescan", ""),
                       ("resource_alignment", "\n")):
        write_text(tree.pci / name, text)
    state: dict[str, Any] = {
        "format": FORMAT, "drivers": {}, "driver_order": [], "devices": {}, "interfaces": {},
        "pciback_slots": [], "permissive": [], "resets": [], "next_group": topology.FIRST_DYNAMIC_GROUP,
    }
    for driver in topology.DRIVERS:
        state["drivers"][driver.name] = {
            "module": driver.module, "sriov": driver.sriov, "dynamic_ids": [],
            "ids": [[v, d, None, None, c, m] for v, d, c, m in driver.ids]}
        state["driver_order"].append(driver.name)
        tree.create_driver(driver.name, driver.module, pciback=driver.name == "pciback")
    index, folder = _captures()
    secondary: dict[str, int] = {}
    for slot in topology.SLOTS:
        meta = index[slot.capture]
        config = folder.joinpath(f"{slot.capture}.bin").read_bytes()
        parent = str(slot.parent) if slot.parent else None
        if slot.buses:
            primary = secondary[parent] if parent else 0
            config = configspace.set_bridge_buses(config, primary, *slot.buses)
            secondary[str(slot.bdf)] = slot.buses[0]
        if slot.bar_shift:
            config = configspace.shift_bars(config, *slot.bar_shift)
        if slot.multifunction is not None:
            config = configspace.set_multifunction(config, slot.multifunction)
        sizes = {int(k): v for k, v in meta["bar_sizes"].items()}
        lines = configspace.resource_lines(config, sizes, meta["rom_size"])
        path = (state["devices"][parent]["path"] if parent else "devices/pci0000:00") + f"/{slot.bdf}"
        info = configspace.sriov_info(config)
        vendor = u16(config, 0)
        device = u16(config, 2)
        tree.create_device(path, slot.bdf, config, lines, vendor=vendor, device=device, irq=slot.irq,
                           numa_node=slot.numa_node, iommu_group=slot.iommu_group,
                           boot_vga=slot.boot_vga if (config[0x0B] == 0x03) else None,
                           reset_method=slot.reset_method,
                           sriov_total=info.total_vfs if info else None)
        state["devices"][str(slot.bdf)] = {
            "path": path, "vendor": vendor, "device": device,
            "sub_vendor": u16(config, 0x2C) if (config[0x0E] & 0x7F) == 0 else 0,
            "sub_device": u16(config, 0x2E) if (config[0x0E] & 0x7F) == 0 else 0,
            "class": int.from_bytes(config[9:12], "little"), "numa_node": slot.numa_node,
            "iommu_group": slot.iommu_group, "parent": parent, "physfn": None,
            "native_driver": slot.driver, "vfs": [],
            "children": [{"klass": c.klass, "name": c.name, "subpath": c.subpath, "files": dict(c.files)}
                         for c in slot.children]}
    tree.save(state)
    kernel = SimulatedKernel(root)
    with kernel.locked() as live:
        for slot in topology.SLOTS:  # boot: every device is probed in address order
            kernel._probe(str(slot.bdf))
        for slot in topology.SLOTS:
            if slot.num_vfs:
                kernel.create_vfs(str(slot.bdf), slot.num_vfs)
        for name, (up, addresses, routes) in topology.HOST_NETWORK.items():
            live["interfaces"][name].update(up=up, addresses=addresses, routes=[list(r) for r in routes])
        kernel.tree.write_network_files(live)
        kernel.tree.write_pciback_files(live)
    _write_proc(tree)


def _write_proc(tree: Tree) -> None:
    mounts = ["sysfs /sys sysfs rw,nosuid,nodev,noexec,relatime 0 0",
              "proc /proc proc rw,nosuid,nodev,noexec,relatime 0 0"]
    mountinfo = ["21 1 0:20 / /sys rw,nosuid,nodev,noexec,relatime - sysfs sysfs rw",
                 "22 1 0:21 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw"]
    for number, (source, target, fstype, options, dev) in enumerate(topology.MOUNTS, start=30):
        mounts.append(f"{source} {target} {fstype} {options} 0 0")
        mountinfo.append(f"{number} 1 {dev} / {target} {options} - {fstype} {source} rw")
    write_text(tree.proc / "mounts", "\n".join(mounts) + "\n")
    write_text(tree.proc / "self" / "mountinfo", "\n".join(mountinfo) + "\n")
    swaps = ["Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority"]
    swaps += [f"{source}\t\t\t{kind}\t{size}\t\t0\t\t-2" for source, kind, size in topology.SWAPS]
    write_text(tree.proc / "swaps", "\n".join(swaps) + "\n")
    write_text(tree.proc / "cmdline", topology.CMDLINE + "\n")
    write_text(tree.proc / "net" / "ipv6_route", "")
    write_text(tree.proc / "net" / "if_inet6", "")

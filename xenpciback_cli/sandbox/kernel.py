"""The sandbox's simulated kernel: applies a sysfs write with the semantics Linux gives it.

Rules (each mirrors the kernel's PCI core / driver core / xen-pciback):

* ``drivers/D/unbind BDF``: ENODEV unless BDF is bound to D. The driver's children go away (a NIC's
  interface disappears with its addresses and routes; a disk's block devices vanish).
* ``drivers/D/bind BDF``: ENODEV for an unknown device, EBUSY if it already has a driver, ENODEV if
  D does not match it (match = driver_override equal to D, else dynamic ids, then static ids; an
  override naming another driver matches nothing) or D's probe refuses it.
* ``devices/BDF/driver_override``: set; a write that is empty after dropping one trailing newline
  clears it (reads ``(null)``).
* ``drivers_probe BDF``: a bound device stays as it is; otherwise the first matching driver in
  registration order whose probe accepts it binds it (an override of ``none`` or of a driver that
  is not loaded leaves it unbound).
* pciback's probe accepts a device listed in ``slots`` (itself or an upstream bridge) or whose
  override is ``pciback``; header types 0 and 1 only. pci-stub and vfio-pci have no ids of their
  own (new_id or override); vfio-pci refuses bridges.
* ``new_slot``/``remove_slot`` take ``[DDDD:]BB:DD.F`` with ``*`` wildcards (expanded); remove_slot
  of nothing is ENOENT; ``slots`` lists ``%04x:%02x:%02x.%d``.
* ``new_id``/``remove_id``: ``VVVV DDDD [SV SD CLASS MASK]``; new_id binds matching unbound devices.
* ``reset``: ``1`` only (EINVAL otherwise); ENOTTY when ``reset_method`` is empty; recorded.
* ``sriov_numvfs N``: ENOENT without an SR-IOV-capable driver, ERANGE above TotalVFs, EBUSY when
  changing a non-zero count; VFs are created from the PF's SR-IOV capability and probed.
  Unbinding a PF removes its VFs unless a VF is held by a stub driver (``pci_vfs_assigned``).

Every write runs under an exclusive ``flock`` of the sandbox lock file, loads ``sandbox.json``,
changes files and state, and saves, so separate processes see one host.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from xenpciback_cli.errors import InputError
from xenpciback_cli.sandbox import configspace
from xenpciback_cli.sandbox.tree import LOCK_FILE, READ_ONLY, Tree, symlink
from xenpciback_cli.pci.address import Bdf
from xenpciback_cli.pci.drivers import SEIZE_DRIVERS
from xenpciback_cli.pci.spec import BdfPattern

_BDF_RE = re.compile(r"^[0-9a-f]{4,8}:[0-9a-f]{2}:[0-1][0-9a-f]\.[0-7]$")


def _fail(code: int, path: str) -> OSError:
    return OSError(code, os.strerror(code), path)


def _kernel_value(value: str) -> str:
    """sysfs_streq: the kernel ignores one trailing newline."""
    return value[:-1] if value.endswith("\n") else value


class SimulatedKernel:
    def __init__(self, root: Path) -> None:
        self.tree = Tree(root)
        self.state: dict[str, Any] = {}
        self._path = ""

    @contextmanager
    def locked(self) -> Iterator[dict[str, Any]]:
        """Hold the sandbox lock with the current state loaded; save it on success."""
        with open(self.tree.root / LOCK_FILE, "a+") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                self.state = self.tree.load()
                yield self.state
                self.tree.save(self.state)
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    # -- entry point --------------------------------------------------------------------------
    def write(self, relative: str, value: str) -> None:
        """Apply one write of ``value`` to ``sys/<relative>``; raise OSError like the kernel."""
        self._path = relative
        target = self.tree.sys / relative
        resolved = Path(os.path.realpath(target))
        try:
            inner = resolved.relative_to(os.path.realpath(self.tree.sys))
        except ValueError:
            raise _fail(errno.ENOENT, relative) from None
        if not resolved.is_file():
            raise _fail(errno.ENOENT, relative)
        parts = inner.parts
        with self.locked():
            if parts == ("bus", "pci", "drivers_probe"):
                return self.drivers_probe(value)
            if len(parts) == 5 and parts[:3] == ("bus", "pci", "drivers"):
                return self.driver_attribute(parts[3], parts[4], value)
            if parts[0] == "devices" and _BDF_RE.match(parts[-2]):
                return self.device_attribute(parts[-2], parts[-1], value)
            if parts[-1] in READ_ONLY:
                raise _fail(errno.EACCES, relative)
            raise _fail(errno.EINVAL, relative)

    # -- helpers ------------------------------------------------------------------------------
    def _device(self, name: str) -> dict[str, Any]:
        device: dict[str, Any] | None = self.state["devices"].get(_kernel_value(name))
        if device is None:
            raise _fail(errno.ENODEV, self._path)
        return device

    def _override(self, bdf: str) -> str | None:
        text = (self.tree.device_dir(self.state, bdf) / "driver_override").read_text().strip()
        return None if text in ("", "(null)") else text

    def _config(self, bdf: str) -> bytes:
        return (self.tree.device_dir(self.state, bdf) / "config").read_bytes()

    def _ids(self, bdf: str) -> tuple[int, int, int, int, int]:
        device = self.state["devices"][bdf]
        return device["vendor"], device["device"], device["sub_vendor"], device["sub_device"], device["class"]

    def _matches(self, driver: str, bdf: str) -> bool:
        override = self._override(bdf)
        if override is not None:
            return override == driver
        vendor, device, sub_vendor, sub_device, klass = self._ids(bdf)
        spec = self.state["drivers"][driver]
        for v, d, sv, sd, c, m in spec["dynamic_ids"] + spec["ids"]:
            if ((v is None or v == vendor) and (d is None or d == device)
                    and (sv is None or sv == sub_vendor) and (sd is None or sd == sub_device)
                    and (klass & m) == (c & m)):
                return True
        return False

    def _probe_accepts(self, driver: str, bdf: str) -> bool:
        header_type = self._config(bdf)[0x0E] & 0x7F
        if driver == "pciback":
            if header_type not in (0, 1):
                return False
            return self._override(bdf) == "pciback" or self._in_slots(bdf)
        if driver == "vfio-pci":
            return header_type == 0
        return True

    def _in_slots(self, bdf: str) -> bool:
        slots = set(self.state["pciback_slots"])
        current: str | None = bdf
        while current is not None:
            if current in slots:
                return True
            current = self.state["devices"].get(current, {}).get("parent")
        return False

    def _attach(self, bdf: str, driver: str) -> None:
        self.tree.link_driver(self.state, bdf, driver)
        device = self.state["devices"][bdf]
        if driver == device.get("native_driver"):
            for child in device.get("children", []):
                self.tree.create_child(self.state, bdf, child)
                if child["klass"] == "net":
                    # A freshly probed NIC is down and unconfigured, as before ifup.
                    self.state["interfaces"][child["name"]] = {
                        "bdf": bdf, "up": False, "addresses": [], "routes": []}
            self.tree.write_network_files(self.state)

    def _detach(self, bdf: str, driver: str) -> None:
        device = self.state["devices"][bdf]
        if driver == device.get("native_driver"):
            for child in reversed(device.get("children", [])):
                self.tree.remove_child(self.state, bdf, child)
                if child["klass"] == "net":
                    self.state["interfaces"].pop(child["name"], None)
            self.tree.write_network_files(self.state)
            if self.state["drivers"][driver].get("sriov") and device.get("vfs"):
                if not any(self.tree.bound_driver(self.state, vf) in SEIZE_DRIVERS for vf in device["vfs"]):
                    self._destroy_vfs(bdf)
        if driver == "pciback" and (bdf in self.state["permissive"]
                                    or bdf in self.state.get("quirks", {})):
            if bdf in self.state["permissive"]:
                self.state["permissive"].remove(bdf)
            self.state.get("quirks", {}).pop(bdf, None)  # pciback frees a device's quirk fields
            self.tree.write_pciback_files(self.state)
        self.tree.unlink_driver(self.state, bdf, driver)

    def _try_bind(self, bdf: str, driver: str) -> bool:
        if self._matches(driver, bdf) and self._probe_accepts(driver, bdf):
            self._attach(bdf, driver)
            return True
        return False

    def _probe(self, bdf: str) -> None:
        if self.tree.bound_driver(self.state, bdf) is not None:
            return
        override = self._override(bdf)
        if override is not None:
            if self._loaded(override):
                self._try_bind(bdf, override)
            return
        for driver in self.state["driver_order"]:
            if self._loaded(driver) and self._try_bind(bdf, driver):
                return

    # -- modules ------------------------------------------------------------------------------
    def load_module(self, module: str) -> list[str]:
        """``modprobe MODULE``: register the drivers of a known, unloaded module (dashes and
        underscores are one, as for modprobe; a driver's name is accepted too); registering
        binds every unbound device the driver matches, as the driver core does. Returns the
        drivers registered (none when it was loaded already); ENOENT for an unknown module."""
        wanted = module.replace("-", "_")
        with self.locked() as state:
            drivers = [name for name, spec in state["drivers"].items()
                       if wanted in (spec["module"].replace("-", "_"), name.replace("-", "_"))]
            if not drivers:
                raise _fail(errno.ENOENT, f"module {module}")
            unloaded = state.setdefault("unloaded", [])
            registered = [name for name in drivers if name in unloaded]
            for name in registered:
                unloaded.remove(name)
                self.tree.create_driver(name, state["drivers"][name]["module"], pciback=name == "pciback")
                for bdf in state["devices"]:
                    if self.tree.bound_driver(state, bdf) is None and self._override(bdf) in (None, name):
                        self._try_bind(bdf, name)
            return registered

    def unload_module(self, driver: str) -> None:
        """``rmmod``: the driver lets its devices go and disappears from ``bus/pci/drivers``."""
        with self.locked() as state:
            if driver not in state["drivers"]:
                raise _fail(errno.ENOENT, f"module {driver}")
            if driver in state.setdefault("unloaded", []):
                return
            for bdf in state["devices"]:
                if self.tree.bound_driver(state, bdf) == driver:
                    self._detach(bdf, driver)
            state["unloaded"].append(driver)
            self.tree.remove_driver(driver, state["drivers"][driver]["module"])

    def _loaded(self, driver: str) -> bool:
        return driver in self.state["drivers"] and driver not in self.state.get("unloaded", ())

    # -- bus and driver attributes ------------------------------------------------------------
    def drivers_probe(self, value: str) -> None:
        self._device(value)
        self._probe(_kernel_value(value))

    def driver_attribute(self, driver: str, attribute: str, value: str) -> None:
        if not self._loaded(driver):
            raise _fail(errno.ENOENT, self._path)
        if attribute == "unbind":
            bdf = _kernel_value(value)
            self._device(bdf)
            if self.tree.bound_driver(self.state, bdf) != driver:
                raise _fail(errno.ENODEV, self._path)
            self._detach(bdf, driver)
        elif attribute == "bind":
            bdf = _kernel_value(value)
            self._device(bdf)
            if self.tree.bound_driver(self.state, bdf) is not None:
                raise _fail(errno.EBUSY, self._path)
            if not self._try_bind(bdf, driver):
                raise _fail(errno.ENODEV, self._path)
        elif attribute in ("new_id", "remove_id"):
            self._dynamic_id(driver, attribute, value)
        elif driver == "pciback" and attribute in ("new_slot", "remove_slot"):
            self._slot(attribute, value)
        elif driver == "pciback" and attribute == "permissive":
            bdf = _kernel_value(value).strip()
            if not bdf:
                raise _fail(errno.ENXIO, self._path)
            if bdf not in self.state["devices"] or self.tree.bound_driver(self.state, bdf) != "pciback":
                raise _fail(errno.ENODEV, self._path)
            if bdf not in self.state["permissive"]:
                self.state["permissive"].append(bdf)
            self.tree.write_pciback_files(self.state)
        elif driver == "pciback" and attribute == "quirks":
            self._quirk(value)
        elif attribute in READ_ONLY:
            raise _fail(errno.EACCES, self._path)
        else:
            raise _fail(errno.EINVAL, self._path)

    def _quirk(self, value: str) -> None:
        """pciback's ``quirks``: add a pass-through register to a device it holds. As in Linux, a
        malformed line is EINVAL, a device not bound to pciback ENODEV, and a quirk at a start
        offset the device already has is silently ignored."""
        from xenpciback_cli.errors import InputError
        from xenpciback_cli.pci.quirk import parse_pciback_quirk

        try:
            device, quirk = parse_pciback_quirk(_kernel_value(value))
        except InputError:
            raise _fail(errno.EINVAL, self._path) from None
        bdf = str(device)
        if bdf not in self.state["devices"] or self.tree.bound_driver(self.state, bdf) != "pciback":
            raise _fail(errno.ENODEV, self._path)
        entries = self.state.setdefault("quirks", {}).setdefault(bdf, [])
        if all(entry[0] != quirk.offset for entry in entries):
            entries.append([quirk.offset, quirk.size, quirk.mask])
        self.tree.write_pciback_files(self.state)

    def _dynamic_id(self, driver: str, attribute: str, value: str) -> None:
        fields = value.split()
        try:
            numbers = [int(f, 16) for f in fields]
        except ValueError:
            raise _fail(errno.EINVAL, self._path) from None
        if len(numbers) < 2 or len(numbers) > 7:
            raise _fail(errno.EINVAL, self._path)
        vendor, device = numbers[0], numbers[1]
        sub_vendor = numbers[2] if len(numbers) > 2 and numbers[2] != 0xFFFFFFFF else None
        sub_device = numbers[3] if len(numbers) > 3 and numbers[3] != 0xFFFFFFFF else None
        klass = numbers[4] if len(numbers) > 4 else 0
        mask = numbers[5] if len(numbers) > 5 else 0
        entry = [vendor, device, sub_vendor, sub_device, klass, mask]
        ids = self.state["drivers"][driver]["dynamic_ids"]
        if attribute == "remove_id":
            if entry not in ids:
                raise _fail(errno.ENODEV, self._path)
            ids.remove(entry)
            return
        if entry in ids:
            raise _fail(errno.EEXIST, self._path)
        ids.append(entry)
        for bdf in sorted(self.state["devices"]):  # driver_attach
            if self.tree.bound_driver(self.state, bdf) is None:
                self._try_bind(bdf, driver)

    def _slot(self, attribute: str, value: str) -> None:
        try:
            pattern = BdfPattern.parse(value)
        except InputError:
            raise _fail(errno.EINVAL, self._path) from None
        slots = range(32) if pattern.slot is None else (pattern.slot,)
        functions = range(8) if pattern.function is None else (pattern.function,)
        names = [f"{pattern.domain:04x}:{pattern.bus:02x}:{s:02x}.{f:d}" for s in slots for f in functions]
        listed = self.state["pciback_slots"]
        if attribute == "new_slot":
            listed.extend(name for name in names if name not in listed)
        else:
            present = [name for name in names if name in listed]
            if not present:
                raise _fail(errno.ENOENT, self._path)
            for name in present:
                listed.remove(name)
        self.tree.write_pciback_files(self.state)

    # -- device attributes --------------------------------------------------------------------
    def device_attribute(self, bdf: str, attribute: str, value: str) -> None:
        self._device(bdf)
        directory = self.tree.device_dir(self.state, bdf)
        if attribute == "driver_override":
            text = _kernel_value(value)
            if len(text) >= 4096:
                raise _fail(errno.EINVAL, self._path)
            (directory / "driver_override").write_text((text or "(null)") + "\n")
        elif attribute == "reset":
            if value.strip() != "1":
                raise _fail(errno.EINVAL, self._path)
            methods = (directory / "reset_method").read_text().split()
            if not methods:
                raise _fail(errno.ENOTTY, self._path)
            self.state["resets"].append({"bdf": bdf, "method": methods[0]})
        elif attribute == "sriov_numvfs":
            self._set_num_vfs(bdf, value)
        elif attribute in READ_ONLY:
            raise _fail(errno.EACCES, self._path)
        else:
            raise _fail(errno.EINVAL, self._path)

    def _set_num_vfs(self, bdf: str, value: str) -> None:
        device = self.state["devices"][bdf]
        try:
            count = int(value.strip(), 0)
        except ValueError:
            raise _fail(errno.EINVAL, self._path) from None
        info = configspace.sriov_info(self._config(bdf))
        driver = self.tree.bound_driver(self.state, bdf)
        if info is None or driver is None or not self.state["drivers"][driver].get("sriov"):
            raise _fail(errno.ENOENT, self._path)
        if count < 0 or count > info.total_vfs:
            raise _fail(errno.ERANGE, self._path)
        current = len(device.get("vfs", []))
        if count == current:
            return
        if current and count:
            raise _fail(errno.EBUSY, self._path)
        if count == 0:
            if any(self.tree.bound_driver(self.state, vf) in SEIZE_DRIVERS for vf in device["vfs"]):
                raise _fail(errno.EBUSY, self._path)
            self._destroy_vfs(bdf)
        else:
            self.create_vfs(bdf, count)

    def create_vfs(self, pf: str, count: int) -> None:
        device = self.state["devices"][pf]
        directory = self.tree.device_dir(self.state, pf)
        config = self._config(pf)
        info = configspace.sriov_info(config)
        assert info is not None
        config = configspace.set_num_vfs(config, info, count)
        (directory / "config").write_bytes(config)
        pf_bdf = Bdf.parse(pf)
        routing = (pf_bdf.bus << 8) | pf_bdf.devfn
        vfs = []
        for index in range(count):
            rid = info.vf_routing_id(routing, index)
            vf = Bdf.from_devfn(pf_bdf.domain, rid >> 8, rid & 0xFF)
            vf_config, resources = configspace.vf_config(config, info, index)
            parent_path = os.path.dirname(device["path"])
            group = self.state["next_group"]
            self.state["next_group"] += 1
            vf_dir = self.tree.create_device(
                f"{parent_path}/{vf}", vf, vf_config, resources, vendor=device["vendor"],
                device=info.vf_device_id, irq=0, numa_node=device["numa_node"], iommu_group=group,
                boot_vga=None, reset_method="flr", sriov_total=None)
            symlink(vf_dir / "physfn", directory)
            symlink(directory / f"virtfn{index}", vf_dir)
            self.state["devices"][str(vf)] = {
                "path": f"{parent_path}/{vf}", "vendor": device["vendor"], "device": info.vf_device_id,
                "sub_vendor": device["sub_vendor"], "sub_device": device["sub_device"],
                "class": device["class"], "numa_node": device["numa_node"], "iommu_group": group,
                "parent": device.get("parent"), "physfn": pf, "native_driver": None, "children": []}
            vfs.append(str(vf))
        device["vfs"] = vfs
        (directory / "sriov_numvfs").write_text(f"{count}\n")
        for vf_name in vfs:
            self._probe(vf_name)

    def _destroy_vfs(self, pf: str) -> None:
        device = self.state["devices"][pf]
        directory = self.tree.device_dir(self.state, pf)
        for index, vf in enumerate(device.get("vfs", [])):
            driver = self.tree.bound_driver(self.state, vf)
            if driver is not None:
                self._detach(vf, driver)
            self.tree.remove_device(self.state, vf)
            del self.state["devices"][vf]
            try:
                (directory / f"virtfn{index}").unlink()
            except FileNotFoundError:
                pass
        device["vfs"] = []
        config = self._config(pf)
        info = configspace.sriov_info(config)
        if info is not None:
            (directory / "config").write_bytes(configspace.set_num_vfs(config, info, 0))
        (directory / "sriov_numvfs").write_text("0\n")

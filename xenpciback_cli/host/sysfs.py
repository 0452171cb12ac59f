"""The real-host adapter: PCI devices and driver binding through sysfs under a configurable root.

Why a root and plain file reads: like psutil's ``PROCFS_PATH``, every read goes through
``<sysfs_root>/...`` so tests, the sandbox and the benchmark point the same code at temporary
trees. pyudev (which hard-codes ``/sys``) is used only when the root *is* the real ``/sys``, for
enumeration; names come from the udev database when it has them, else from pci.ids (what lspci uses).

Writes go through :meth:`SysfsHost._write`, one ``open(path, "w").write(value)``; the kernel's errno
becomes a typed error in one place (:func:`errors.from_oserror`), keeping the device and the path.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

from xenpciback_cli import errors
from xenpciback_cli.host.model import AttributeWrite, Host, HostUsage
from xenpciback_cli.pci import names as pci_names
from xenpciback_cli.pci.device import PciDevice, Resource
from xenpciback_cli.pci.address import Bdf
from xenpciback_cli.untrusted import decimal

REAL_SYSFS = "/sys"
_BDF_NAME = re.compile(r"^[0-9a-f]{4,8}:[0-9a-f]{2}:[0-1][0-9a-f]\.[0-7]$")
IFF_UP = 0x1
_EMPTY_RESOURCE = "0x0000000000000000 0x0000000000000000 0x0000000000000000"


def _read(path: str) -> str | None:
    """The stripped text of a sysfs attribute, or None if it is absent or unreadable.

    Plain ``os.open``/``os.read``: ``list`` reads ~15 attributes per device and the buffered
    ``open()`` machinery costs about three times as much per file.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        # A page at a time: attributes are short, and a 64 KiB buffer per read (allocated and
        # shrunk ~1500 times by list) costs page faults when memory is tight.
        data = os.read(fd, 4096)
        if len(data) == 4096:  # a long attribute (64 KiB pages): read on to the end
            chunks = [data]
            while chunk := os.read(fd, 65536):
                chunks.append(chunk)
            data = b"".join(chunks)
        return data.decode("ascii", "replace").strip()
    except OSError:
        return None
    finally:
        os.close(fd)


def _read_int(path: str, base: int = 0) -> int | None:
    text = _read(path)
    if not text:
        return None
    try:
        return int(text, base)
    except ValueError:
        return None


def _uevent_ids(text: str | None) -> tuple[int | None, int | None, int | None]:
    """Vendor, device and class from a PCI device's ``uevent`` (``PCI_ID=VVVV:DDDD``,
    ``PCI_CLASS=CCCCCC``: the kernel's values, the ones its ``vendor``/``device``/``class``
    attributes show): one read instead of three. Nones when a line is missing or malformed."""
    vendor = device = class_code = None
    for line in (text or "").splitlines():
        key, _, value = line.partition("=")
        try:
            if key == "PCI_ID":
                ids = value.split(":")
                if len(ids) == 2 and all(len(i) == 4 for i in ids):
                    vendor, device = int(ids[0], 16), int(ids[1], 16)
            elif key == "PCI_CLASS" and 0 < len(value) <= 6:
                class_code = int(value, 16)
        except ValueError:
            return None, None, None
    return vendor, device, class_code


def _kernel_bdf(name: str) -> Bdf:
    """The address of a sysfs device name already matched by ``_BDF_NAME`` (the kernel's fixed
    ``DDDD:BB:SS.F``, slot at most 0x1f): sliced, without :meth:`Bdf.parse`'s general regex."""
    return Bdf(int(name[:-8], 16), int(name[-7:-5], 16), int(name[-4:-2], 16), int(name[-1]))


def _function_above(entry: str) -> Bdf | None:
    """The PCI function a /sys/class entry belongs to: the nearest one upwards from where it
    lies in /sys/devices (a partition below its disk, a disk below its controller, below the
    function); None when no PCI function is above it."""
    for part in reversed(os.path.realpath(entry).split(os.sep)):
        if _BDF_NAME.fullmatch(part):
            return _kernel_bdf(part)
    return None


def _link_name(path: str) -> str | None:
    try:
        return os.path.basename(os.readlink(path))
    except OSError:
        return None


def parse_resource_file(text: str) -> tuple[Resource, ...]:
    """Lines of ``start end flags`` (hex); empty lines (all zero) are kept for their index."""
    resources = []
    for index, line in enumerate(text.splitlines()):
        if line.startswith(_EMPTY_RESOURCE):
            continue
        fields = line.split()
        if len(fields) != 3:
            continue
        try:
            start, end, flags = (int(f, 16) for f in fields)
        except ValueError:
            continue
        if start == 0 and end == 0 and flags == 0:
            continue
        resources.append(Resource(index, start, end, flags))
    return tuple(resources)


class SysfsHost(Host):
    """A host read and driven through sysfs (and procfs for usage checks) under given roots."""

    def __init__(self, sysfs_root: str = REAL_SYSFS, proc_root: str | None = None) -> None:
        super().__init__()
        self.sysfs_root = os.path.abspath(sysfs_root)
        self.is_real = os.path.realpath(self.sysfs_root) == REAL_SYSFS
        if proc_root is None:
            if self.is_real:
                proc_root = "/proc"
            else:
                candidate = os.path.join(os.path.dirname(self.sysfs_root), "proc")
                proc_root = candidate if os.path.isdir(candidate) else None
        self.proc_root = proc_root
        #: Names from udev's hwdb by device name (filled during enumeration on the real /sys).
        self._hwdb_names: dict[str, tuple[str | None, str | None]] = {}
        self.devices_dir = os.path.join(self.sysfs_root, "bus", "pci", "devices")
        self.drivers_dir = os.path.join(self.sysfs_root, "bus", "pci", "drivers")

    # -- paths --------------------------------------------------------------------------------
    def path(self, relative: str) -> str:
        return os.path.join(self.sysfs_root, relative)

    def device_dir(self, bdf: Bdf) -> str:
        return os.path.join(self.devices_dir, str(bdf))

    def _device_realpath(self, bdf: Bdf) -> str:
        return os.path.realpath(self.device_dir(bdf))

    # -- enumeration --------------------------------------------------------------------------
    def addresses(self) -> list[Bdf]:
        """Every PCI function address, sorted."""
        names: list[str]
        if self.is_real:
            names = self._udev_names()
        else:
            try:
                names = os.listdir(self.devices_dir)
            except FileNotFoundError:
                return []
            except OSError as exc:
                raise errors.from_oserror(exc, "list PCI devices", path=self.devices_dir) from None
        return sorted(_kernel_bdf(name) for name in names if _BDF_NAME.match(name))

    def _udev_names(self) -> list[str]:
        try:
            import pyudev

            names = []
            for udev_device in pyudev.Context().list_devices(subsystem="pci"):
                names.append(udev_device.sys_name)
                properties = udev_device.properties
                vendor = properties.get("ID_VENDOR_FROM_DATABASE")
                model = properties.get("ID_MODEL_FROM_DATABASE")
                if vendor or model:  # hwdb names, when udev has imported them
                    self._hwdb_names[udev_device.sys_name] = (vendor, model)
            return names
        except Exception:  # no libudev: the directory is the same truth
            try:
                return os.listdir(self.devices_dir)
            except OSError:
                return []

    def devices(self) -> Sequence[PciDevice]:
        loaded = [self._load(bdf) for bdf in self.addresses()]
        # A device removed while we read (VF destroyed, hot unplug) left nothing readable.
        return [d for d in loaded if d.vendor_id != 0xFFFF or os.path.isdir(self.device_dir(d.bdf))]

    def brief_devices(self, *, override: bool = True) -> Sequence[PciDevice]:
        """Every device with only what ``list``'s table shows: ids, class, names, driver and
        IOMMU group, ``driver_override`` when ``override`` (the wide table's OVERRIDE column), and
        ``boot_vga`` of display devices (so ``list`` asks :meth:`usage` of the boot VGA device
        only, not of every GPU); every other attribute keeps its default.

        Why: the table needs three small files and two symlinks per device, where a full load
        reads about fifteen; on a host with hundreds of functions (SR-IOV) that is most of the
        run. JSON output and every command that acts on a device use :meth:`devices`.
        """
        loaded = [self._load_brief(bdf, override) for bdf in self.addresses()]
        return [d for d in loaded if d.vendor_id != 0xFFFF or os.path.isdir(self.device_dir(d.bdf))]

    def _load_brief(self, bdf: Bdf, with_override: bool = True) -> PciDevice:
        base = self.device_dir(bdf) + "/"
        vendor, device, class_code = _uevent_ids(_read(base + "uevent"))
        if vendor is None or device is None or class_code is None:  # no uevent: three files
            vendor = _read_int(base + "vendor", 16)
            device = _read_int(base + "device", 16)
            class_code = _read_int(base + "class", 16)
        if vendor is None or device is None or class_code is None:
            # Unusual directory (attributes missing): the full load has the config fallbacks.
            return self._load(bdf)
        vendor_name, device_name, class_name = self._names(bdf, vendor, device, class_code)
        # list's OVERRIDE column, as driverctl shows; one read per device saved when not shown
        override = _read(base + "driver_override") if with_override else None
        # The kernel has boot_vga only on VGA-class devices; other classes are never the boot VGA.
        boot_vga = _read(base + "boot_vga") if class_code >> 16 == 0x03 else None
        return PciDevice(
            bdf=bdf, vendor_id=vendor, device_id=device, class_code=class_code, revision=0,
            driver=_link_name(base + "driver"), iommu_group=decimal(_link_name(base + "iommu_group")),
            vendor_name=vendor_name, device_name=device_name, class_name=class_name,
            driver_override=None if override in (None, "", "(null)") else override,
            boot_vga=None if boot_vga is None else boot_vga == "1")

    def device(self, bdf: Bdf) -> PciDevice:
        if not os.path.isdir(self.device_dir(bdf)):
            raise errors.DeviceNotFound(f"no PCI device {bdf} on this host", bdf=bdf)
        return self._load(bdf)

    def _load(self, bdf: Bdf) -> PciDevice:
        base = self.device_dir(bdf) + "/"
        vendor = _read_int(base + "vendor", 16)
        device = _read_int(base + "device", 16)
        class_code = _read_int(base + "class", 16)
        # One read of the config header gives revision, header type and subsystem ids (the same
        # registers the kernel's attributes report) instead of four more files per device.
        header = self._config_prefix(base, 64)
        if len(header) > 8:
            revision = header[8]
        else:
            revision = _read_int(base + "revision", 16) or 0
        if vendor is None:
            vendor = int.from_bytes(header[0:2], "little") if len(header) >= 2 else 0xFFFF
        if device is None:
            device = int.from_bytes(header[2:4], "little") if len(header) >= 4 else 0xFFFF
        if class_code is None:
            class_code = int.from_bytes(header[9:12], "little") if len(header) >= 12 else 0
        header_byte = header[0x0E] if len(header) > 0x0E else 0
        if len(header) >= 0x30 and header_byte & 0x7F == 0:
            sub_vendor: int | None = int.from_bytes(header[0x2C:0x2E], "little")
            sub_device: int | None = int.from_bytes(header[0x2E:0x30], "little")
        else:
            sub_vendor = _read_int(base + "subsystem_vendor", 16)
            sub_device = _read_int(base + "subsystem_device", 16)
        numa = _read_int(base + "numa_node", 10)
        group = _link_name(base + "iommu_group")
        physfn = _link_name(base + "physfn")
        virtfns: list[Bdf] = []
        numvfs = _read_int(base + "sriov_numvfs", 10)
        if numvfs:
            for index in range(numvfs):
                name = _link_name(f"{base}virtfn{index}")
                if name and _BDF_NAME.match(name):
                    virtfns.append(Bdf.parse(name))
        override = _read(base + "driver_override")
        boot_vga = _read(base + "boot_vga")
        resources = _read(base + "resource")
        methods = _read(base + "reset_method")
        vendor_name, device_name, class_name = self._names(bdf, vendor, device, class_code)
        return PciDevice(
            bdf=bdf, vendor_id=vendor, device_id=device, class_code=class_code, revision=revision,
            subsystem_vendor_id=sub_vendor, subsystem_device_id=sub_device,
            header_type=header_byte & 0x7F, multifunction=bool(header_byte & 0x80),
            driver=_link_name(base + "driver"),
            driver_override=None if override in (None, "", "(null)") else override,
            iommu_group=decimal(group),
            numa_node=None if numa is None or numa < 0 else numa,
            irq=decimal(_read(base + "irq"), max_digits=10),  # not int(): '1_1' is no IRQ
            boot_vga=None if boot_vga is None else boot_vga == "1",
            physfn=Bdf.parse(physfn) if physfn and _BDF_NAME.match(physfn) else None,
            virtfns=tuple(virtfns), sriov_numvfs=numvfs,
            sriov_totalvfs=_read_int(base + "sriov_totalvfs", 10),
            resources=parse_resource_file(resources) if resources else (),
            reset_methods=tuple(methods.split()) if methods else (),
            vendor_name=vendor_name, device_name=device_name, class_name=class_name,
            sysfs_path=self._resolved_dir(bdf),
        )

    @staticmethod
    def _config_prefix(base: str, length: int) -> bytes:
        try:
            fd = os.open(base + "config", os.O_RDONLY)
        except OSError:
            return b""
        try:
            return os.read(fd, length)
        except OSError:
            return b""
        finally:
            os.close(fd)

    def _resolved_dir(self, bdf: Bdf) -> str:
        """The device's real directory: one readlink of the bus symlink (cheaper than realpath)."""
        link = self.device_dir(bdf)
        try:
            target = os.readlink(link)
        except OSError:
            return os.path.realpath(link)
        return os.path.normpath(os.path.join(self.devices_dir, target))

    def _names(self, bdf: Bdf, vendor: int, device: int,
               class_code: int) -> tuple[str | None, str | None, str | None]:
        found = pci_names.lookup(vendor, device, class_code)
        if not self._hwdb_names:  # udev's names are read on the real /sys only
            return found
        hwdb_vendor, hwdb_model = self._hwdb_names.get(str(bdf), (None, None))
        return hwdb_vendor or found[0], hwdb_model or found[1], found[2]

    # -- other reads --------------------------------------------------------------------------
    def read_config(self, bdf: Bdf, offset: int = 0, length: int | None = None) -> bytes:
        path = os.path.join(self.device_dir(bdf), "config")
        try:
            with open(path, "rb") as handle:
                handle.seek(offset)
                return handle.read() if length is None else handle.read(length)
        except OSError as exc:
            raise errors.from_oserror(exc, "read config space", bdf=bdf, path=path) from None

    def loaded_drivers(self) -> frozenset[str]:
        try:
            return frozenset(os.listdir(self.drivers_dir))
        except OSError:
            return frozenset()

    def supports_driver_override(self, bdf: Bdf) -> bool:
        return os.path.exists(os.path.join(self.device_dir(bdf), "driver_override"))

    def pciback_slots(self) -> Sequence[str]:
        path = os.path.join(self.drivers_dir, "pciback", "slots")
        try:
            with open(path, encoding="ascii", errors="replace") as handle:
                return [line.strip() for line in handle if line.strip()]
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise errors.from_oserror(exc, "read pciback slots", path=path) from None

    def pci_device_of(self, klass: str, name: str) -> Bdf | None:
        if not name or "/" in name or name in (".", "..") or "\0" in name:
            return None
        entry = os.path.join(self.sysfs_root, "class", klass, name)
        if not os.path.lexists(entry):
            return None
        return _function_above(entry)

    def load_module(self, module: str) -> None:
        """``modprobe MODULE`` (the real host only: a sysfs root elsewhere has no kernel)."""
        import subprocess

        if os.path.realpath(self.sysfs_root) != REAL_SYSFS:
            raise errors.NotSupported(f"cannot load module {module}: {self.sysfs_root} is not "
                                      "this host's sysfs")
        try:
            done = subprocess.run(["modprobe", "--", module], capture_output=True, text=True,
                                  timeout=60, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise errors.OperationFailed(f"modprobe {module} failed: {exc}") from None
        if done.returncode != 0:
            why = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
            raise errors.OperationFailed(f"modprobe {module} failed: {why}")

    # -- what the host uses -------------------------------------------------------------------
    def usage(self, bdf: Bdf) -> HostUsage:
        if not os.path.isdir(self.device_dir(bdf)):
            raise errors.DeviceNotFound(f"no PCI device {bdf} on this host", bdf=bdf)
        below = self._device_realpath(bdf) + "/"
        unknown: list[str] = []
        if self.proc_root is None:
            unknown.append("no procfs for this sysfs root: mounts, swap and routes not checked")
        labels: list[str] = []
        block = self._block_usage(below, labels)
        network = self._network_usage(below, labels)
        console = self._console_usage(bdf, below, labels)
        return HostUsage(block=tuple(block), network=tuple(network), console=tuple(console),
                         unknown=tuple(unknown), labels=tuple(labels))

    def usage_candidates(self) -> frozenset[Bdf]:
        found: set[Bdf] = set()
        for klass in ("net", "block", "graphics"):
            directory = os.path.join(self.sysfs_root, "class", klass)
            try:
                names = os.listdir(directory)
            except OSError:
                continue
            for name in names:
                bdf = _function_above(os.path.join(directory, name))
                if bdf is not None:
                    found.add(bdf)
        return frozenset(found)

    def _class_entries_below(self, klass: str, below: str) -> list[str]:
        """Names in ``class/<klass>`` whose device directory lies below ``below``."""
        directory = os.path.join(self.sysfs_root, "class", klass)
        try:
            names = sorted(os.listdir(directory))
        except OSError:
            return []
        return [name for name in names
                if os.path.realpath(os.path.join(directory, name)).startswith(below)]

    def _block_usage(self, below: str, labels: list[str]) -> list[str]:
        disks = self._class_entries_below("block", below)
        if not disks:
            return []
        # Holders (device-mapper, md) stacked on top of our disks are used through them.
        involved: dict[str, str] = {}  # name -> "major:minor"
        pending = list(disks)
        while pending:
            name = pending.pop()
            if name in involved:
                continue
            entry = os.path.join(self.sysfs_root, "class", "block", name)
            involved[name] = _read(os.path.join(entry, "dev")) or ""
            try:
                pending.extend(os.listdir(os.path.join(entry, "holders")))
            except OSError:
                pass
        aliases = dict.fromkeys(involved)
        for name in involved:  # /dev/mapper/<dm name> spellings
            dm_name = _read(os.path.join(self.sysfs_root, "class", "block", name, "dm", "name"))
            if dm_name:
                aliases[name] = dm_name
        reasons: list[str] = []
        if self.proc_root is None:
            return reasons
        by_dev = {dev: name for name, dev in involved.items() if dev}
        seen: set[tuple[str, str]] = set()
        mountinfo = _read(os.path.join(self.proc_root, "self", "mountinfo")) or ""
        for line in mountinfo.splitlines():
            fields = line.split()
            if len(fields) > 4 and fields[2] in by_dev:
                seen.add((by_dev[fields[2]], fields[4]))
        mounts = _read(os.path.join(self.proc_root, "mounts")) or ""
        for line in mounts.splitlines():
            fields = line.split()
            if len(fields) >= 2:
                block = self._block_name(fields[0], aliases)
                if block:
                    seen.add((block, fields[1].replace("\\040", " ")))
        for name, mountpoint in sorted(seen):
            reasons.append(f"block device {name} is mounted on {mountpoint}")
            labels.append(f"{name} {mountpoint}")
        swaps = _read(os.path.join(self.proc_root, "swaps")) or ""
        for line in swaps.splitlines()[1:]:
            fields = line.split()
            block = self._block_name(fields[0], aliases) if fields else None
            if block:
                reasons.append(f"block device {block} is active swap")
                labels.append(f"{block} swap")
        if not labels:
            labels.extend(sorted(d for d in disks if not os.path.exists(
                os.path.join(self.sysfs_root, "class", "block", d, "partition"))))
        return reasons

    @staticmethod
    def _block_name(source: str, aliases: dict[str, str | None]) -> str | None:
        if not source.startswith("/dev/"):
            return None
        tail = source[5:]
        if tail in aliases:
            return tail
        if tail.startswith("mapper/"):
            for name, dm_name in aliases.items():
                if dm_name == tail[7:]:
                    return name
        return None

    def _network_usage(self, below: str, labels: list[str]) -> list[str]:
        reasons = []
        interfaces = self._class_entries_below("net", below)
        routes = self._routes() if interfaces and self.proc_root else {}
        for name in interfaces:
            entry = os.path.join(self.sysfs_root, "class", "net", name)
            facts = []
            flags = _read_int(os.path.join(entry, "flags"), 16)
            operstate = _read(os.path.join(entry, "operstate"))
            if operstate == "up" or (flags is not None and flags & IFF_UP):
                facts.append("is up")
            addresses = self.interface_addresses(name)
            if addresses:
                facts.append("has address " + ", ".join(addresses))
            if name in routes:
                kinds = routes[name]
                facts.append("carries the default route" + (" and other routes" if "routes" in kinds else "")
                             if "the default route" in kinds else "carries routes")
            if facts:
                reasons.append(f"network interface {name} " + ", ".join(facts))
            marks = [mark for mark, fact in (("up", "is up"), ("addr", "has address"),
                                              ("routed", "carries"))
                     if any(f.startswith(fact) for f in facts)]
            labels.append(f"{name} {','.join(marks)}" if marks else name)
        return reasons

    def _routes(self) -> dict[str, set[str]]:
        """Interface -> kinds of routes through it ('the default route', 'routes')."""
        result: dict[str, set[str]] = {}
        assert self.proc_root is not None
        text = _read(os.path.join(self.proc_root, "net", "route")) or ""
        for line in text.splitlines()[1:]:
            fields = line.split()
            if len(fields) >= 8:
                kind = "the default route" if fields[1] == "00000000" and fields[7] == "00000000" else "routes"
                result.setdefault(fields[0], set()).add(kind)
        text6 = _read(os.path.join(self.proc_root, "net", "ipv6_route")) or ""
        for line in text6.splitlines():
            fields = line.split()
            if len(fields) >= 10 and fields[9] != "lo":
                if fields[0] == "0" * 32 and fields[1] == "00":
                    result.setdefault(fields[9], set()).add("the default route")
                elif not fields[0].startswith("fe80") and not fields[0].startswith("ff"):
                    result.setdefault(fields[9], set()).add("routes")
        return result

    def interface_addresses(self, name: str) -> list[str]:
        """Addresses configured on an interface (link-local IPv6 excluded).

        The single place that asks about addresses, so the sandbox can answer from its state.
        IPv6 comes from procfs (any root); IPv4 has no procfs file, so it is asked of the
        running kernel only when the root is the real one.
        """
        found: list[str] = []
        if self.proc_root:
            text = _read(os.path.join(self.proc_root, "net", "if_inet6")) or ""
            for line in text.splitlines():
                fields = line.split()
                if len(fields) >= 6 and fields[5] == name and fields[3] != "20":  # 0x20 = link
                    import ipaddress

                    found.append(f"{ipaddress.IPv6Address(int(fields[0], 16))}/{int(fields[2], 16)}")
        if self.is_real:
            ipv4 = _ipv4_address(name)
            if ipv4:
                found.insert(0, ipv4)
        return found

    def _console_usage(self, bdf: Bdf, below: str, labels: list[str]) -> list[str]:
        reasons = []
        if _read(os.path.join(self.device_dir(bdf), "boot_vga")) == "1":
            reasons.append("it is the boot VGA device (the firmware/boot console)")
            labels.append("boot-vga")
        for name in self._class_entries_below("graphics", below):
            if name.startswith("fb"):
                reasons.append(f"framebuffer {name} is on it (console)")
                labels.append(f"{name} console")
        return reasons

    # -- writing ------------------------------------------------------------------------------
    def _write(self, write: AttributeWrite) -> None:
        path = self.path(write.path)
        try:
            with open(path, "w", encoding="ascii") as handle:
                handle.write(write.value)
        except OSError as exc:
            action = f"write {write.value.strip() or 'newline'!r} to {write.path}"
            raise errors.from_oserror(exc, action, bdf=write.bdf, path=path) from None


def _ipv4_address(name: str) -> str | None:
    """IPv4 address/prefix of a live interface via SIOCGIFADDR/SIOCGIFNETMASK, or None."""
    import fcntl
    import socket
    import struct

    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            request = struct.pack("256s", name.encode()[:15])
            address = fcntl.ioctl(sock.fileno(), 0x8915, request)[20:24]  # SIOCGIFADDR
            mask = fcntl.ioctl(sock.fileno(), 0x891B, request)[20:24]  # SIOCGIFNETMASK
    except OSError:
        return None
    prefix = bin(int.from_bytes(mask, "big")).count("1")
    return f"{socket.inet_ntoa(address)}/{prefix}"

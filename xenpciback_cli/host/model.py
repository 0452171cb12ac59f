"""The host model: one interface over "a machine with PCI devices and a kernel that binds drivers".

Two adapters implement it:

* ``host.sysfs.SysfsHost`` - real sysfs under a configurable root (default ``/sys``) and procfs
  under a configurable root (default ``/proc``). Plain file reads work on any tree, so tests point
  it at temporary directories; pyudev is used for enumeration and names only on the real ``/sys``.
* ``sandbox.host.SandboxHost`` - a simulated host kept in a directory. Its tree has the same shape as real
  sysfs/procfs (so the same reader serves it, and even ``lspci -A linux-sysfs`` can read it); its
  writes go to a simulated kernel that applies the real kernel's semantics (unbind, bind,
  driver_override, drivers_probe, pciback slots, reset).

Every mutation of the host is a write of text to a sysfs attribute, and every one goes through
:meth:`Host.write_attribute`. That is what makes crash tests (fail after the Nth write) and the
journal possible without special cases; ``--dry-run`` never reaches the host (the engine shows
its plan instead of running it).
"""

from __future__ import annotations

import abc
import os
import re
from collections.abc import Callable, Sequence
from functools import cache
from typing import NamedTuple

from xenpciback_cli import errors
from xenpciback_cli.pci.address import Bdf
from xenpciback_cli.pci.device import PciDevice
from xenpciback_cli.pci.drivers import PCIBACK_DRIVER

#: What a Linux driver name looks like (``igb``, ``snd_hda_intel``, ``vfio-pci``): never a path.
@cache
def _driver_name_re() -> re.Pattern[str]:
    """Compiled on first use: only commands that bind or probe a driver check a name."""
    return re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]{0,63}")


def driver_name(name: str) -> str:
    """``name`` if it is a plain driver name; otherwise an error, so a name read from a state file
    (``../../..``) can never become a path under sysfs."""
    if not isinstance(name, str) or not _driver_name_re().fullmatch(name):
        raise errors.InputError(f"{name!r} is not a driver name")
    return name


def attribute_path(path: str) -> str:
    """``path`` if it is relative and free of ``.``/``..``/empty components."""
    parts = path.split("/")
    if not path or path.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\0" in path:
        raise errors.InputError(f"refusing to write {path!r}: not a plain sysfs attribute path")
    return path


# The values here are named tuples, not dataclasses, for the reason pci/device.py gives (every
# command imports this module; ``list`` builds a value per device).
class HostUsage(NamedTuple):
    """Evidence that the host itself uses a device (what ``hide`` refuses to take away).

    Each entry is a short human sentence naming the resource, e.g.
    ``"block device nvme0n1p2 is mounted on /"`` or ``"network interface eth0 is up with
    address 10.0.2.15/24"``.
    """

    block: tuple[str, ...] = ()
    network: tuple[str, ...] = ()
    console: tuple[str, ...] = ()
    #: What could not be checked (e.g. no procfs under a temporary root); not a reason to refuse.
    unknown: tuple[str, ...] = ()
    #: What the host has on the device, in a few words each, as ``list`` shows it (dpdk-devbind's
    #: ``if=eth0 *Active*``): ``eth0 up,routed``, ``eth1``, ``nvme0n1p2 /``, ``nvme1n1``, ``fb0``.
    labels: tuple[str, ...] = ()

    @property
    def reasons(self) -> tuple[str, ...]:
        return self.block + self.network + self.console

    @property
    def in_use(self) -> bool:
        return bool(self.reasons)


class AttributeWrite(NamedTuple):
    """One sysfs write, as the write hooks and the adapters see it."""

    path: str  # relative to the sysfs root, e.g. "bus/pci/devices/0000:03:00.0/driver/unbind"
    value: str
    bdf: Bdf | None = None  # the device the write is about, named in its errors


WriteHook = Callable[[AttributeWrite], None]


class Host(abc.ABC):
    """A machine's PCI devices and its kernel's driver binding, read and changed through sysfs."""

    #: Called before every write (crash injection in tests). A hook that raises stops the write.
    write_hooks: list[WriteHook]

    def __init__(self) -> None:
        self.write_hooks = []

    # -- reading -----------------------------------------------------------------------------
    @abc.abstractmethod
    def devices(self) -> Sequence[PciDevice]:
        """Every PCI function, sorted by address."""

    def brief_devices(self, *, override: bool = True) -> Sequence[PciDevice]:
        """Every PCI function with at least what ``list``'s table shows (ids, class, names, driver,
        IOMMU group, ``boot_vga`` of display devices, and ``driver_override`` unless ``override``
        is false: the narrow table has no OVERRIDE column); a host that can load just those
        cheaply may leave the rest at defaults."""
        return self.devices()

    def addresses(self) -> list[Bdf]:
        """Every PCI function address, sorted; a host that can list them without loading each
        device overrides this."""
        return [device.bdf for device in self.devices()]

    @abc.abstractmethod
    def device(self, bdf: Bdf) -> PciDevice:
        """One function; raises ``errors.DeviceNotFound`` if absent."""

    @abc.abstractmethod
    def read_config(self, bdf: Bdf, offset: int = 0, length: int | None = None) -> bytes:
        """Config space bytes as this host lets us read them (real sysfs without root: 64)."""

    @abc.abstractmethod
    def loaded_drivers(self) -> frozenset[str]:
        """Names under ``bus/pci/drivers``."""

    @abc.abstractmethod
    def supports_driver_override(self, bdf: Bdf) -> bool:
        """Whether the kernel offers ``driver_override`` for this device."""

    @abc.abstractmethod
    def pciback_slots(self) -> Sequence[str]:
        """Lines of ``bus/pci/drivers/pciback/slots`` (empty if pciback is not loaded)."""

    def has_reset_attribute(self, device: PciDevice) -> bool:
        """Whether the kernel offers sysfs ``reset`` for this device (kernels before 5.15 have it
        without ``reset_method`` to say which method it uses)."""
        path = device.sysfs_path
        return path is not None and path != "" and os.path.exists(os.path.join(path, "reset"))

    def pci_device_of(self, klass: str, name: str) -> Bdf | None:
        """The PCI function below which the kernel shows ``class/<klass>/<name>`` (an interface
        ``eth1``, a block device ``nvme0n1``); None when there is no such entry or it is not on
        a PCI device (``lo``, a loop device). A host without a class tree has none."""
        return None

    def load_module(self, module: str) -> None:
        """Load a kernel module (``modprobe``); OperationFailed when it cannot be loaded."""
        raise errors.NotSupported(f"cannot load module {module} on this host")

    @abc.abstractmethod
    def usage(self, bdf: Bdf) -> HostUsage:
        """What the host is using below this device (mounted filesystems, swap, up NICs, console)."""

    def usage_candidates(self) -> frozenset[Bdf] | None:
        """The devices that have a network interface, block device or framebuffer of their own
        (found with one pass over the classes, not one per device), so ``list`` asks
        :meth:`usage` only of those; None when this host cannot tell cheaply (ask every one)."""
        return None

    # -- writing: everything funnels through write_attribute ---------------------------------
    def write_attribute(self, path: str, value: str, bdf: Bdf | None = None) -> None:
        """Write ``value`` to the sysfs attribute at ``path`` (relative to the sysfs root).

        ``bdf`` is the device the write is about (its errors name it). Hooks run first, in order.
        """
        write = AttributeWrite(attribute_path(path), value, bdf)
        for hook in self.write_hooks:
            hook(write)
        self._write(write)

    @abc.abstractmethod
    def _write(self, write: AttributeWrite) -> None:
        """Actually perform one write; turn errno into typed errors with ``errors.from_oserror``."""

    # Convenience writers, so the engine speaks in kernel operations, not paths.
    # Every driver name is checked to be a name, whatever it came from.
    def unbind(self, bdf: Bdf, driver: str) -> None:
        self.write_attribute(f"bus/pci/drivers/{driver_name(driver)}/unbind", str(bdf), bdf)

    def bind(self, bdf: Bdf, driver: str) -> None:
        self.write_attribute(f"bus/pci/drivers/{driver_name(driver)}/bind", str(bdf), bdf)

    def set_driver_override(self, bdf: Bdf, driver: str | None) -> None:
        # The kernel clears the override on an empty write (a lone newline).
        self.write_attribute(f"bus/pci/devices/{bdf}/driver_override",
                             driver_name(driver) if driver else "\n", bdf)

    def probe(self, bdf: Bdf) -> None:
        self.write_attribute("bus/pci/drivers_probe", str(bdf), bdf)

    def pciback_new_slot(self, bdf: Bdf) -> None:
        self.write_attribute(f"bus/pci/drivers/{PCIBACK_DRIVER}/new_slot", str(bdf), bdf)

    def pciback_remove_slot(self, bdf: Bdf) -> None:
        self.write_attribute(f"bus/pci/drivers/{PCIBACK_DRIVER}/remove_slot", str(bdf), bdf)

    def reset(self, bdf: Bdf) -> None:
        self.write_attribute(f"bus/pci/devices/{bdf}/reset", "1", bdf)


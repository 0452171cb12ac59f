"""What the host platform says about Xen, the IOMMU and pciback: facts ``doctor`` judges.

Every file is read under a sysfs root and a procfs root (tests point them at temporary trees),
and the one outside program, Xen's ``xl``, runs only when it is on the PATH, with a timeout,
and only when the roots are the real ones. Nothing here judges: each method returns what it
found, or None when the host does not say.

The files, and why these:

* ``/sys/hypervisor/type`` reads ``xen`` in any Xen domain (dom0 or guest).
* dom0: ``/sys/hypervisor/start_flags/initdomain`` (Linux 6.x; Xen's SIF_INITDOMAIN flag) when
  present, else ``/proc/xen/capabilities`` containing ``control_d`` (needs xenfs on /proc/xen).
* Under Xen the IOMMU belongs to the hypervisor and dom0's Linux sees none, so Xen is asked:
  ``xl info``'s ``virt_caps`` lists ``hvm_directio``/``pv_directio`` when I/O virtualisation is on,
  and ``xl dmesg`` keeps Xen's boot line ``Interrupt remapping enabled``/``disabled``. Without Xen,
  Linux's own view: ``/sys/class/iommu`` units and ``IR-`` interrupt chips in ``/proc/interrupts``.
* pciback: the driver is registered when ``/sys/bus/pci/drivers/pciback`` exists; a loadable
  module has ``/sys/module/xen_pciback/initstate``, a built-in one has the module directory (for
  its parameters) without it; ``parameters/passthrough`` is 1 in passthrough mode, 0 in vpci.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass

REAL_SYSFS = "/sys"
REAL_PROCFS = "/proc"
XL_TIMEOUT = 5.0


def _read(path: str, limit: int = 65536) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read(limit)
    except OSError:
        return None


@dataclass(frozen=True)
class PcibackModule:
    """The kernel pciback as sysfs shows it."""

    driver_registered: bool
    #: "module" (loadable, loaded), "built-in", or None (no /sys/module/xen_pciback).
    kind: str | None
    #: True in passthrough mode, False in vpci mode, None when the parameter is not readable.
    passthrough: bool | None


@dataclass(frozen=True)
class CommandOutput:
    """What ``xl ARGS`` printed, or why it could not say."""

    text: str | None
    problem: str | None = None


class Platform:
    """Reads the platform's files under ``sysfs_root`` and ``procfs_root``."""

    def __init__(self, sysfs_root: str = REAL_SYSFS, procfs_root: str = REAL_PROCFS, *,
                 allow_commands: bool | None = None) -> None:
        self.sysfs_root = sysfs_root
        self.procfs_root = procfs_root
        if allow_commands is None:  # xl speaks for the real host only, never for a test tree
            allow_commands = (os.path.realpath(sysfs_root) == REAL_SYSFS
                              and os.path.realpath(procfs_root) == REAL_PROCFS)
        self.allow_commands = allow_commands

    def sys(self, relative: str) -> str:
        return os.path.join(self.sysfs_root, relative)

    def proc(self, relative: str) -> str:
        return os.path.join(self.procfs_root, relative)

    # -- Xen -------------------------------------------------------------------------------------
    def hypervisor_type(self) -> str | None:
        text = _read(self.sys("hypervisor/type"), 64)
        return text.strip() or None if text is not None else None

    def initial_domain(self) -> tuple[bool | None, str]:
        """Whether this is dom0, and the file that said so (or what was missing)."""
        flag = _read(self.sys("hypervisor/start_flags/initdomain"), 16)
        if flag is not None and flag.strip() in ("0", "1"):
            return flag.strip() == "1", "/sys/hypervisor/start_flags/initdomain"
        capabilities = _read(self.proc("xen/capabilities"), 4096)
        if capabilities is not None:
            return "control_d" in capabilities.split(), "/proc/xen/capabilities"
        return None, "neither /sys/hypervisor/start_flags/initdomain nor /proc/xen/capabilities"

    def xl(self, *args: str, timeout: float = XL_TIMEOUT) -> CommandOutput:
        """``xl ARGS``'s output; None with the reason when xl is absent, fails or hangs."""
        if not self.allow_commands:
            return CommandOutput(None, "not asked (not the real host)")
        program = shutil.which("xl")
        if program is None:
            return CommandOutput(None, "xl is not installed")
        try:
            done = subprocess.run([program, *args], capture_output=True, text=True, errors="replace",
                                  timeout=timeout, check=False, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            return CommandOutput(None, f"'xl {' '.join(args)}' did not answer within {timeout:g} s")
        except OSError as exc:
            return CommandOutput(None, f"cannot run xl: {exc.strerror}")
        if done.returncode != 0:
            first = (done.stderr.strip().splitlines() or ["no message"])[0][:120]
            return CommandOutput(None, f"'xl {' '.join(args)}' failed: {first}")
        return CommandOutput(done.stdout)

    def kernel_cmdline(self) -> str:
        """``/proc/cmdline`` ("" when unreadable): where ``xen-pciback.hide=`` persists seizes."""
        return (_read(self.proc("cmdline"), 1 << 16) or "").strip()

    # -- IOMMU as Linux sees it ------------------------------------------------------------------
    def iommu_units(self) -> list[str]:
        try:
            return sorted(os.listdir(self.sys("class/iommu")))
        except OSError:
            return []

    def iommu_group_count(self) -> int:
        try:
            return len(os.listdir(self.sys("kernel/iommu_groups")))
        except OSError:
            return 0

    def remapped_interrupt_chips(self) -> bool | None:
        """Whether ``/proc/interrupts`` names an interrupt-remapping chip (``IR-PCI-MSI``...);
        None when it is unreadable."""
        text = _read(self.proc("interrupts"), 1 << 20)
        if text is None:
            return None
        return any(word.startswith("IR-") for line in text.splitlines()[1:] for word in line.split())

    # -- pciback ---------------------------------------------------------------------------------
    def pciback(self) -> PcibackModule:
        module = self.sys("module/xen_pciback")
        kind: str | None = None
        if os.path.isdir(module):
            kind = "module" if os.path.exists(os.path.join(module, "initstate")) else "built-in"
        raw = _read(os.path.join(module, "parameters", "passthrough"), 16)
        value = raw.strip() if raw is not None else ""
        passthrough = {"1": True, "Y": True, "0": False, "N": False}.get(value)
        return PcibackModule(os.path.isdir(self.sys("bus/pci/drivers/pciback")), kind, passthrough)

    def pciback_module_available(self) -> bool | None:
        """Whether ``xen-pciback.ko`` is installed for the running kernel (so ``modprobe`` would
        find it); None when that cannot be told (not the real host, no modules directory)."""
        if not self.allow_commands:
            return None
        release = os.uname().release
        base = f"/lib/modules/{release}"
        index = _read(os.path.join(base, "modules.dep"), 1 << 24)
        if index is None:
            return None
        return any("/xen-pciback.ko" in line.split(":", 1)[0] for line in index.splitlines())

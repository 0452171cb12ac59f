"""``doctor``: is this host ready for PCI passthrough? One named check per line, each a verdict.

Rules:

* Every check only reads: platform files through :class:`~xenpciback_cli.host.platform.Platform`
  (roots chosen by ``app.py``), the host through :class:`~xenpciback_cli.host.model.Host`, xenstore
  through a client the caller opens (with a short timeout), and the state dir and persisted config
  through the same validating loaders the other commands use. Nothing is written, nothing started.
* Verdicts: ``ok``; ``warn`` (works, but worth a look); ``fail`` (passthrough will not work, or
  something waits for a person); ``skip`` (cannot apply here, e.g. no Xen). Anything not ``ok``
  carries a ``fix`` a person can type or follow. The host is ready when nothing fails.
* Without Xen the first check says so plainly and the checks that need Xen are skipped; in a
  sandbox the first check says it is one, and the rest look at its simulated host, daemon and state.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

from xenpciback_cli.errors import OperationFailed, StateDirUnsafe, StateFileCorrupt, XenPcibackError
from xenpciback_cli.pci.drivers import SEIZE_DRIVERS

if TYPE_CHECKING:
    from xenpciback_cli.host.model import Host
    from xenpciback_cli.host.platform import Platform
    from xenpciback_cli.pci.address import Bdf
    from xenpciback_cli.pci.device import PciDevice
    from xenpciback_cli.xenstore.client import XenstoreClient


class Verdict(StrEnum):
    OK = "ok"
    WARN = "warn"
    FAIL = "fail"
    SKIP = "skip"


OK, WARN, FAIL, SKIP = Verdict.OK, Verdict.WARN, Verdict.FAIL, Verdict.SKIP

#: The checks in the order they run and print (the JSON's ``name`` values).
CHECK_NAMES = ("xen", "dom0", "iommu", "interrupt-remapping", "backend", "xenstored", "state-dir",
               "persisted", "journal", "iommu-groups")


@dataclass(frozen=True)
class CheckResult:
    name: str
    verdict: Verdict
    detail: str
    fix: str | None = None

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "verdict": str(self.verdict), "detail": self.detail, "fix": self.fix}


@dataclass
class DoctorEnv:
    """What the checks read, chosen by the application (real host or sandbox)."""

    platform: Platform
    state_dir: Path
    persist_file: Path
    #: The host model; may raise (a sysfs root without PCI devices).
    host: Callable[[], Host]
    #: A xenstore client, or None when no daemon is there to ask; raises OperationFailed when
    #: one is there but does not answer.
    xenstore: Callable[[], XenstoreClient | None]
    sandbox: Path | None = None
    #: The control socket of a running ``serve`` (the userspace backend), if one is expected.
    serve_control: Path | None = None
    _xen: bool = field(default=False, init=False)
    _attachments: dict[Bdf, int] | None = field(default=None, init=False)


def is_ready(results: list[CheckResult]) -> bool:
    return all(r.verdict is not FAIL for r in results)


def run_checks(env: DoctorEnv) -> list[CheckResult]:
    return list(iter_checks(env))


def iter_checks(env: DoctorEnv) -> Iterator[CheckResult]:
    """The checks, one at a time (a person sees each line as it is decided)."""
    for check in (_xen, _dom0, _iommu, _interrupt_remapping, _backend, _xenstored, _state_dir,
                  _persisted, _journal, _iommu_groups):
        try:
            yield check(env)
        except XenPcibackError as exc:  # one check's trouble never hides the others
            name = check.__name__.lstrip("_").replace("_", "-")
            yield CheckResult(name, WARN, f"could not check: {exc}", "run 'xen-pciback doctor' as root")


NEEDS_XEN = "needs Xen (see the first check)"


# -- Xen and dom0 --------------------------------------------------------------------------------
def _xen(env: DoctorEnv) -> CheckResult:
    if env.sandbox is not None:
        env._xen = True
        return CheckResult("xen", OK, f"sandbox {env.sandbox}: a simulated Xen dom0 (this machine's "
                                      "own hypervisor is not checked)")
    kind = env.platform.hypervisor_type()
    if kind == "xen":
        env._xen = True
        return CheckResult("xen", OK, "running under Xen (/sys/hypervisor/type is xen)")
    seen = "/sys/hypervisor/type is absent" if kind is None else f"/sys/hypervisor/type is {kind!r}"
    return CheckResult("xen", FAIL, f"not running under Xen ({seen}): no passthrough here",
                       "boot the Xen hypervisor with this Linux as dom0 (Debian: apt install "
                       "xen-system-amd64, then pick the Xen entry in GRUB); to try the tool meanwhile: "
                       "xen-pciback sandbox init DIR")


def _dom0(env: DoctorEnv) -> CheckResult:
    if env.sandbox is not None:
        return CheckResult("dom0", OK, "simulated dom0")
    if not env._xen:
        return CheckResult("dom0", SKIP, NEEDS_XEN)
    initial, source = env.platform.initial_domain()
    if initial is None:
        return CheckResult("dom0", WARN, f"cannot tell whether this is dom0 ({source})",
                           "mount xenfs: mount -t xenfs xenfs /proc/xen")
    if not initial:
        return CheckResult("dom0", FAIL, f"this is a Xen guest, not dom0 ({source})",
                           "run xen-pciback in dom0, the domain that owns the PCI devices")
    return CheckResult("dom0", OK, f"this is dom0 ({source})")


# -- IOMMU ---------------------------------------------------------------------------------------
def _xen_iommu(env: DoctorEnv) -> tuple[bool | None, str]:
    info = env.platform.xl("info")
    if info.text is None:
        return None, info.problem or "xl info said nothing"
    for line in info.text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "virt_caps":
            caps = value.split()
            on = any(cap.endswith("directio") for cap in caps)
            return on, f"xl info virt_caps: {' '.join(caps) or '(empty)'}"
    return None, "xl info shows no virt_caps line"


def _linux_iommu(env: DoctorEnv) -> str:
    units = env.platform.iommu_units()
    groups = env.platform.iommu_group_count()
    if units:
        return f"Linux sees {len(units)} IOMMU unit(s) ({', '.join(units[:4])}) and {groups} IOMMU group(s)"
    return f"Linux sees no IOMMU unit (/sys/class/iommu is empty) and {groups} IOMMU group(s)"


def _iommu(env: DoctorEnv) -> CheckResult:
    if env.sandbox is not None:
        groups = env.platform.iommu_group_count()
        return CheckResult("iommu", SKIP, f"the sandbox simulates {groups} IOMMU group(s) but no IOMMU")
    if not env._xen:
        return CheckResult("iommu", SKIP, f"{NEEDS_XEN}; {_linux_iommu(env)} (Xen takes the IOMMU "
                                          "over when it boots)")
    on, how = _xen_iommu(env)
    if on is None:
        return CheckResult("iommu", WARN, f"cannot ask Xen ({how}); dom0's Linux never sees the IOMMU "
                                          "under Xen", "install Xen's tools (xl) and run doctor as root")
    if not on:
        return CheckResult("iommu", FAIL, f"Xen's I/O virtualisation is off ({how})",
                           "enable VT-d / AMD-Vi in the firmware and boot Xen with iommu=1 (not iommu=0)")
    return CheckResult("iommu", OK, f"Xen's IOMMU is on ({how})")


def _interrupt_remapping(env: DoctorEnv) -> CheckResult:
    name = "interrupt-remapping"
    if env.sandbox is not None:
        return CheckResult(name, SKIP, "not simulated by the sandbox")
    if not env._xen:
        chips = env.platform.remapped_interrupt_chips()
        seen = ("unknown (/proc/interrupts unreadable)" if chips is None
                else "on" if chips else "not seen (no IR- chip in /proc/interrupts)")
        return CheckResult(name, SKIP, f"{NEEDS_XEN}; Linux's interrupt remapping: {seen}")
    log = env.platform.xl("dmesg")
    if log.text is None:
        return CheckResult(name, WARN, f"cannot ask Xen ({log.problem})",
                           "install Xen's tools (xl) and run doctor as root")
    verdicts = [line for line in log.text.splitlines() if "nterrupt remapping" in line]
    if any("disabled" in line for line in verdicts):
        return CheckResult(name, WARN, "Xen says interrupt remapping is disabled (xl dmesg): a guest "
                                       "given a device can inject interrupts (MSI) into other domains",
                           "enable interrupt remapping in the firmware (VT-d/AMD-Vi), don't boot Xen "
                           "with iommu=no-intremap")
    if any("enabled" in line for line in verdicts):
        return CheckResult(name, OK, "Xen says interrupt remapping is enabled (xl dmesg)")
    return CheckResult(name, WARN, "xl dmesg no longer holds Xen's boot line about interrupt remapping "
                                   "(its ring buffer wrapped)",
                       "look for 'Interrupt remapping' in Xen's boot log (serial console, "
                       "/var/log/xen/)")


# -- the backend ----------------------------------------------------------------------------------
SERVE_START = "xen-pciback serve foreground (systemd: systemctl enable --now xen-pciback-serve)"


def _serve(env: DoctorEnv) -> tuple[bool, str]:
    """(is this tool's ``serve`` answering, one phrase saying so) - asked through its control
    socket with a short timeout; a socket nobody answers on is "not running"."""
    path = env.serve_control
    if path is None or not path.exists():
        return False, "userspace backend (serve): not running"
    from xenpciback_cli.engine.serve import read_status

    try:
        status = read_status(str(path), timeout=1.0)
    except (OSError, ValueError):
        return False, f"userspace backend (serve): not answering on {path} (not running?)"
    guests = status.get("guests")
    count = len(guests) if isinstance(guests, list) else 0
    return True, (f"userspace backend (serve): running, pid {status.get('pid')}, "
                  f"{status.get('mode', '?')} mode, {count} guest(s)")


def _backend(env: DoctorEnv) -> CheckResult:
    module = env.platform.pciback()
    serving, serve_note = _serve(env)
    if env.sandbox is not None:
        if module.driver_registered:
            return CheckResult("backend", OK, f"the sandbox's simulated kernel pciback; {serve_note}")
        if serving:
            return CheckResult("backend", OK, f"no simulated kernel pciback; {serve_note}")
        return CheckResult("backend", FAIL, "the sandbox has no pciback driver and serve is not running",
                           f"start the userspace backend: xen-pciback --sandbox {env.sandbox} "
                           "serve foreground")
    if not env._xen:
        available = env.platform.pciback_module_available()
        note = {True: "xen-pciback.ko is installed for this kernel",
                False: "this kernel has no xen-pciback.ko", None: ""}[available]
        return CheckResult("backend", SKIP, f"{NEEDS_XEN}: pciback loads only in dom0"
                                            + (f"; {note}" if note else "") + f"; {serve_note}")
    if not module.driver_registered:
        if serving:
            return CheckResult("backend", OK, f"the kernel's pciback is not loaded; {serve_note}")
        available = env.platform.pciback_module_available()
        fix = (f"start the userspace backend: {SERVE_START}"
               + ("; or load the kernel's: modprobe xen-pciback" if available is not False else ""))
        return CheckResult("backend", FAIL, f"no PCI backend: the kernel's pciback is not loaded; "
                                            f"{serve_note}", fix)
    kind = {"module": "loaded as a module", "built-in": "built into the kernel",
            None: "module state unknown"}[module.kind]
    mode = {True: "passthrough mode (guests see the real addresses)",
            False: "vpci mode (guests see one virtual bus 0000:00)",
            None: "mode unknown (no parameters/passthrough)"}[module.passthrough]
    return CheckResult("backend", OK, f"kernel pciback, {kind}, {mode}; {serve_note}")


# -- xenstored -----------------------------------------------------------------------------------
def _xenstored(env: DoctorEnv) -> CheckResult:
    if env.sandbox is None and not env._xen:
        return CheckResult("xenstored", SKIP, NEEDS_XEN)
    try:
        client = env.xenstore()
    except OperationFailed as exc:
        return CheckResult("xenstored", FAIL, f"xenstored does not answer: {exc}",
                           "start it (systemctl start xenstored, or xencommons), as root")
    if client is None:
        if env.sandbox is not None:
            env._attachments = {}
            return CheckResult("xenstored", OK, "the sandbox's xenstored is not running; the commands "
                                                "that need it start it")
        return CheckResult("xenstored", FAIL, "no xenstored: no socket and no /dev/xen/xenbus",
                           "start it (systemctl start xenstored, or xencommons), as root")
    with client:
        try:
            client.get_domain_path(0)
            from xenpciback_cli.toolstack.status import attachments

            env._attachments = {bdf: a.domid for bdf, a in attachments(client).items()}
        except OperationFailed as exc:
            return CheckResult("xenstored", FAIL, f"xenstored at {client.path} does not answer: {exc}",
                               "restart it (systemctl restart xenstored), as root")
        where = client.path
    return CheckResult("xenstored", OK, f"xenstored answers at {where}")


# -- state dir, persistence, journal -------------------------------------------------------------
def _state_dir(env: DoctorEnv) -> CheckResult:
    from xenpciback_cli.engine.backend_settings import load_settings
    from xenpciback_cli.engine.records import load_records
    from xenpciback_cli.engine.statestore import StateStore

    path = env.state_dir
    try:
        StateStore(path).check()
    except StateDirUnsafe as exc:
        return CheckResult("state-dir", FAIL, str(exc).split("; fix: ")[0], _fix_of(str(exc)))
    if not os.path.lexists(path):
        parent = path.parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if os.access(parent, os.W_OK | os.X_OK):
            return CheckResult("state-dir", OK, f"{path} does not exist yet; the first hide creates it 0700")
        return CheckResult("state-dir", WARN, f"{path} does not exist and this user cannot create it",
                           "run the seizing commands as root")
    corrupt: list[StateFileCorrupt] = []
    records = load_records(path, corrupt=corrupt)
    load_settings(path, corrupt=corrupt)
    if corrupt:
        return CheckResult("state-dir", FAIL, "; ".join(str(c).split("; fix: ")[0] for c in corrupt),
                           _fix_of(str(corrupt[0])))
    return CheckResult("state-dir", OK, f"{path}: safe, {len(records)} seize record(s), none corrupt")


def _fix_of(message: str) -> str | None:
    return message.split("; fix: ", 1)[1] if "; fix: " in message else None


def _persisted(env: DoctorEnv) -> CheckResult:
    from xenpciback_cli.engine import persist
    from xenpciback_cli.pci.spec import HIDE_PARAMETER, parse_hide_list

    try:
        patterns = [d.pattern for d in persist.load(env.persist_file)]
    except XenPcibackError as exc:
        return CheckResult("persisted", FAIL, str(exc), f"fix or move aside {env.persist_file}")
    cmdline = [word for word in env.platform.kernel_cmdline().split()
               if word.startswith(f"{HIDE_PARAMETER}=")]
    for word in cmdline:
        try:
            patterns += parse_hide_list(word)
        except XenPcibackError:
            pass
    try:
        devices = env.host().devices()
    except XenPcibackError as exc:
        return CheckResult("persisted", SKIP, f"cannot read the host's devices: {exc}")
    attached = env._attachments or {}
    loose = [d for d in devices if (d.driver in SEIZE_DRIVERS or d.bdf in attached)
             and not any(p.matches(d.bdf) for p in patterns)]
    if not loose:
        held = sum(1 for d in devices if d.driver in SEIZE_DRIVERS or d.bdf in attached)
        if not held:
            return CheckResult("persisted", OK, "no device is seized")
        return CheckResult("persisted", OK, f"{held} seized device(s), all persisted "
                                            f"({env.persist_file} or {HIDE_PARAMETER}=)")
    names = ", ".join(str(d.bdf) for d in loose)
    return CheckResult("persisted", WARN, f"seized now but back with their host drivers after a reboot: "
                                          f"{names}",
                       f"xen-pciback hide --persist {' '.join(str(d.bdf) for d in loose)} (or leave "
                       "them, if only for now)")


def _journal(env: DoctorEnv) -> CheckResult:
    from xenpciback_cli.engine.journal import pending_operations

    corrupt: list[StateFileCorrupt] = []
    entries = pending_operations(env.state_dir, corrupt=corrupt)
    waiting = [e for e in entries if not e.running]
    running = [e for e in entries if e.running]
    if corrupt:
        return CheckResult("journal", FAIL, "; ".join(str(c).split("; fix: ")[0] for c in corrupt),
                           _fix_of(str(corrupt[0])))
    if waiting:
        listing = ", ".join(f"{e.op} {e.bdf}" for e in waiting)
        return CheckResult("journal", FAIL, f"{len(waiting)} interrupted operation(s) wait for "
                                            f"recover: {listing}", "xen-pciback recover")
    if running:
        listing = ", ".join(f"{e.op} {e.bdf} (pid {e.pid})" for e in running)
        return CheckResult("journal", OK, f"nothing to recover; in progress: {listing}")
    return CheckResult("journal", OK, "nothing to recover")


# -- IOMMU groups --------------------------------------------------------------------------------
def _iommu_groups(env: DoctorEnv) -> CheckResult:
    name = "iommu-groups"
    try:
        devices = env.host().devices()
    except XenPcibackError as exc:
        return CheckResult(name, SKIP, f"cannot read the host's devices: {exc}")
    groups: dict[int, list[str]] = {}
    for device in devices:
        if device.iommu_group is not None:
            groups.setdefault(device.iommu_group, [])
    if not groups:
        why = " (under Xen dom0's Linux never sees the IOMMU)" if env._xen and env.sandbox is None else ""
        return CheckResult(name, SKIP, f"no IOMMU groups in sysfs{why}")
    split = _split_groups(devices, env._attachments or {})
    if not split:
        return CheckResult(name, OK, f"{len(groups)} group(s); none split between the host and guests")
    detail = "; ".join(f"group {g}: {', '.join(passed)} seized, {', '.join(kept)} with the host"
                       for g, passed, kept in split)
    host_side = " ".join(b.split()[0] for _, _, kept in split for b in kept)
    seized = " ".join(b for _, passed, _ in split for b in passed)
    return CheckResult(name, WARN, f"split group(s), whose devices can reach each other's memory: {detail}",
                       f"seize the rest of the group (xen-pciback hide {host_side}) or give the seized "
                       f"back (xen-pciback unhide --rebind {seized})")


def _split_groups(devices: Sequence[PciDevice],
                  attached: Mapping[Bdf, int]) -> list[tuple[int, list[str], list[str]]]:
    """(group, seized or attached devices, the host's devices) of each group holding both."""
    by_group: dict[int, tuple[list[str], list[str]]] = {}
    for device in devices:
        if device.iommu_group is None:
            continue
        passed, kept = by_group.setdefault(device.iommu_group, ([], []))
        if device.driver in SEIZE_DRIVERS or device.bdf in attached:
            passed.append(str(device.bdf))
        elif (device.class_code >> 16) != 0x06:  # bridges carry traffic; they do no DMA of their own
            kept.append(str(device.bdf) + (f" ({device.driver})" if device.driver else ""))
    return [(g, p, k) for g, (p, k) in sorted(by_group.items()) if p and k]

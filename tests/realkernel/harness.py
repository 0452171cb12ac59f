"""Boot the real-kernel guest under QEMU once, let it run every scenario, and collect the results.

Why one boot: under software emulation a boot costs seconds and every Python start more than one,
so the guest runs all checks in one go (``scenarios/run_scenarios.py``) and writes one JSON line
per check to the 9p share; pytest then asserts per check, so a failure names the exact scenario.

Every stage is timed and bounded. A stage that does not finish in time stops QEMU and raises
:class:`StageFailed`, which names the stage, what it was waiting for and the tail of the serial
log. Run by hand: ``python -m tests.realkernel.harness`` (prints the timings and every check).
"""

from __future__ import annotations

import compileall
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SCENARIOS = HERE / "scenarios"

if __package__ in (None, ""):
    sys.path.insert(0, str(HERE))
    from build_initramfs import BuildError, GuestImage, ensure_guest  # type: ignore[no-redef]
else:
    from .build_initramfs import BuildError, GuestImage, ensure_guest

QEMU = "qemu-system-x86_64"
NVME_IMAGE_MB = 64

#: Guest-side stages, in order: (name, serial-console marker that ends it, timeout in seconds).
#: Timeouts are generous for a busy 2-core CI machine; typical figures are in the README.
GUEST_STAGES = (
    ("boot-to-init", "XPB-STAGE init", 90),
    ("share", "XPB-STAGE share-mounted", 60),
    ("drivers", "XPB-STAGE modules-loaded", 60),
    ("scenarios", "XPB-STAGE scenario-exit", 240),
    ("poweroff", "XPB-STAGE poweroff", 30),
)
SCENARIO_BUDGET = GUEST_STAGES[3][2] - 20  # the guest's own timeout fires first
QEMU_EXIT_TIMEOUT = 30


class StageFailed(RuntimeError):
    """A stage did not finish: which one, what it waited for, and the serial log's tail."""

    def __init__(self, stage: str, waiting_for: str, tail: str) -> None:
        super().__init__(f"stage '{stage}' failed: {waiting_for}\n--- serial log (tail) ---\n{tail}")
        self.stage = stage
        self.waiting_for = waiting_for
        self.tail = tail


@dataclass
class RunResult:
    """What one boot produced: per-stage timings, per-check results, logs."""

    timings: list[tuple[str, float]] = field(default_factory=list)
    checks: dict[str, dict] = field(default_factory=dict)
    serial_log: str = ""
    scenario_output: str = ""
    image: GuestImage | None = None

    def timing_lines(self) -> list[str]:
        total = sum(seconds for _, seconds in self.timings)
        lines = [f"  {name:<16} {seconds:7.2f} s" for name, seconds in self.timings]
        lines.append(f"  {'total':<16} {total:7.2f} s")
        return lines


def qemu_command(image: GuestImage, share: Path, nvme: Path, serial: Path) -> list[str]:
    """QEMU q35, qemu64 CPU, TCG; the emulated devices the scenarios act on, at fixed addresses.

    00:02.0 e1000e (the NIC under test, no network backend: it never sends traffic anywhere)
    00:03.0 NVMe drive (a raw image the guest formats and mounts)
    00:04.0 pci-testdev (no Linux driver)
    00:05.0 e1000e + 00:05.1 pci-testdev: one multi-function device
    00:06.0 virtio-9p: the share
    """
    return [
        QEMU, "-accel", "tcg,thread=multi", "-machine", "q35", "-cpu", "qemu64", "-smp", "1",
        "-m", "1024", "-display", "none", "-vga", "none", "-no-reboot", "-nic", "none",
        "-monitor", "none", "-serial", f"file:{serial}",
        "-kernel", str(image.kernel), "-initrd", str(image.initramfs),
        "-append", f"console=ttyS0,115200 panic=-1 loglevel=5 rdinit=/init "
                   f"xpb.timeout={SCENARIO_BUDGET}",
        "-device", "e1000e,addr=02.0,id=nic0",
        "-drive", f"file={nvme},if=none,id=nvme0,format=raw",
        "-device", "nvme,drive=nvme0,serial=xpbnvme0,addr=03.0",
        "-device", "pci-testdev,addr=04.0",
        "-device", "e1000e,addr=05.0,multifunction=on,id=mf0",
        "-device", "pci-testdev,addr=05.1",
        "-fsdev", f"local,id=share,path={share},security_model=none",
        "-device", "virtio-9p-pci,fsdev=share,mount_tag=share,addr=06.0",
    ]


def source_tree() -> Path:
    """The checkout whose ``xenpciback_cli`` the guest runs: this one, or
    ``$XEN_PCIBACK_REALKERNEL_SOURCE`` (to try another branch's code with this harness)."""
    return Path(os.environ.get("XEN_PCIBACK_REALKERNEL_SOURCE") or REPO)


def selected_checks() -> set[str]:
    """``$XEN_PCIBACK_REALKERNEL_CHECKS`` (comma-separated names) runs only those checks."""
    return set(filter(None, os.environ.get("XEN_PCIBACK_REALKERNEL_CHECKS", "").split(",")))


def prepare_share(share: Path) -> None:
    """The project's code and the scenarios go in; results come out in ``results/``."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(source_tree() / "xenpciback_cli", share / "code/xenpciback_cli", ignore=ignore)
    shutil.copytree(SCENARIOS, share / "scenario", ignore=ignore)
    (share / "results").mkdir()
    only = selected_checks()
    if only:
        (share / "scenario/only-checks.txt").write_text("\n".join(sorted(only)) + "\n")
    if sys.version_info[:2] == (3, 11):  # same bytecode as the guest's Python: skip compiling there
        compileall.compile_dir(share / "code", quiet=1, workers=1)
        compileall.compile_dir(share / "scenario", quiet=1, workers=1)


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no serial log)"
    return "\n".join(text.splitlines()[-lines:])


def _wait_for_marker(proc: subprocess.Popen, serial: Path, stage: str, marker: str,
                     timeout: float, offset: int,
                     progress: Callable[[str], None] | None = None) -> int:
    """Poll the serial log until ``marker`` appears after ``offset``; return the new offset.
    ``progress`` (the real-Xen tier's) gets each complete new line of the log as it arrives."""
    deadline = time.monotonic() + timeout
    seen = offset
    while True:
        try:
            text = serial.read_bytes().decode(errors="replace")
        except OSError:
            text = ""
        if progress is not None:
            end = text.rfind("\n", seen)
            if end >= seen:
                for line in text[seen:end].splitlines():
                    progress(line)
                seen = end + 1
        index = text.find(marker, offset)
        if index >= 0:
            return index + len(marker)
        if "Kernel panic" in text[offset:]:
            raise StageFailed(stage, f"kernel panic while waiting for '{marker}'", _tail(serial))
        failed = text.find("XPB-STAGE failed", offset)
        if failed >= 0:
            line = text[failed:].splitlines()[0]
            raise StageFailed(stage, f"guest reported '{line}' while waiting for '{marker}'",
                              _tail(serial))
        if proc.poll() is not None:
            raise StageFailed(stage, f"QEMU exited with {proc.returncode} before '{marker}'",
                              _tail(serial) + "\n--- qemu stderr ---\n" + _read_stderr(proc))
        if time.monotonic() > deadline:
            raise StageFailed(stage, f"no '{marker}' on the serial console within {timeout:.0f} s",
                              _tail(serial))
        time.sleep(0.2)


def _read_stderr(proc: subprocess.Popen) -> str:
    try:
        return proc.stderr.read().decode(errors="replace")[-2000:] if proc.stderr else ""
    except (OSError, ValueError):
        return ""


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def boot_stages(proc: subprocess.Popen, serial: Path, stages: Iterable[tuple[str, str, float]],
                timed: Callable[[str, float], None], *, powered_off: str,
                exit_timeout: float = QEMU_EXIT_TIMEOUT,
                progress: Callable[[str], None] | None = None,
                failure: Callable[[str, StageFailed], StageFailed] | None = None) -> None:
    """Wait for each stage's marker on the serial log in turn (``timed`` after each), then for
    QEMU to exit once ``powered_off`` powered off. ``failure`` may dress a failed stage up
    (the real-Xen tier adds the xenstore tree and the scenario's tail)."""
    offset = 0
    for stage, marker, timeout in stages:
        started = time.monotonic()
        try:
            offset = _wait_for_marker(proc, serial, stage, marker, timeout, offset, progress)
        except StageFailed as exc:
            if failure is None:
                raise
            raise failure(stage, exc) from None
        timed(stage, started)
    started = time.monotonic()
    try:
        proc.wait(timeout=exit_timeout)
    except subprocess.TimeoutExpired as exc:
        raise StageFailed("qemu-exit", f"QEMU still running {exit_timeout} s after "
                          f"{powered_off} powered off", _tail(serial)) from exc
    timed("qemu-exit", started)


def run(workdir: Path | None = None, log=print) -> RunResult:  # noqa: ANN001 - a print-like callable
    """Build (or reuse) the guest, boot it, run the scenarios, power off; return the results."""
    if shutil.which(QEMU) is None:
        raise StageFailed("setup", f"{QEMU} is not installed (apt qemu-system-x86)", "")
    result = RunResult()

    def timed(name: str, started: float) -> None:
        seconds = time.monotonic() - started
        result.timings.append((name, seconds))
        log(f"realkernel: stage {name:<12} {seconds:7.2f} s")

    started = time.monotonic()
    try:
        image = ensure_guest(lambda message: log(f"realkernel: {message}"))
    except BuildError as exc:
        raise StageFailed("build-guest", str(exc), "") from exc
    result.image = image
    timed("build-guest" if image.built else "guest-cached", started)

    own_dir = workdir is None
    work = Path(tempfile.mkdtemp(prefix="xpb-realkernel-")) if own_dir else workdir
    assert work is not None
    try:
        started = time.monotonic()
        share = work / "share"
        share.mkdir()
        prepare_share(share)
        nvme = work / "nvme.img"
        with open(nvme, "wb") as disk:
            disk.truncate(NVME_IMAGE_MB * 1024 * 1024)
        serial = work / "serial.log"
        timed("prepare-share", started)

        command = qemu_command(image, share, nvme, serial)
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        try:
            boot_stages(proc, serial, GUEST_STAGES, timed, powered_off="the guest")
        finally:
            _stop(proc)
            if proc.stderr:
                proc.stderr.close()
            result.serial_log = serial.read_text(errors="replace") if serial.exists() else ""
            out = share / "results/scenario.out"
            result.scenario_output = out.read_text(errors="replace") if out.exists() else ""
            result.checks = load_checks(share / "results/results.jsonl")
    finally:
        if own_dir and not os.environ.get("XEN_PCIBACK_REALKERNEL_KEEP"):
            shutil.rmtree(work, ignore_errors=True)
        elif own_dir:
            log(f"realkernel: kept {work}")
    return result


def load_checks(path: Path) -> dict[str, dict]:
    checks: dict[str, dict] = {}
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return checks
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line cut short by a guest that died mid-write
        if isinstance(record, dict) and isinstance(record.get("name"), str):
            checks[record["name"]] = record
    return checks


def main() -> int:
    try:
        result = run()
    except StageFailed as exc:
        print(f"realkernel: FAILED {exc}", file=sys.stderr)
        return 1
    failed = 0
    for name, record in result.checks.items():
        verdict = "ok" if record.get("ok") else "FAIL"
        failed += verdict != "ok"
        print(f"realkernel: check {name:<34} {verdict:<4} {record.get('seconds', 0):6.2f} s  "
              f"{str(record.get('detail', ''))[:300 if record.get('ok') else 3000]}")
    print("\n".join(result.timing_lines()))
    print(f"realkernel: {len(result.checks) - failed}/{len(result.checks)} checks passed")
    return 1 if failed or not result.checks else 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Boot Xen + a Linux PV dom0 under QEMU once, let dom0 run the whole scenario, collect results.

One boot (``../shared/spec/xen-in-qemu.md``): Xen by multiboot (``-kernel``), dom0's kernel and
initramfs as its modules, q35 with ``intel-iommu`` FIRST (else Xen has no I/O virtualisation and
refuses passthrough), the devices to pass through at fixed addresses, a 9p share for code in and
results out. dom0 runs ``scenarios/run_xen.py``: the kernel's xen-pciback first, then ours, the
same guest program against each. The host builds the side-by-side report (``report.py``) from the
raw data dom0 brings back.

Every stage is timed and bounded; a failed stage raises :class:`StageFailed` with the stage, what
it waited for, the serial log's tail and, when dom0 got that far, the xenstore tree. Run by hand:
``python -m tests.realxen.harness`` (prints timings, checks and where the report is).
"""

from __future__ import annotations

import compileall
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

if str(Path(__file__).resolve().parents[1]) not in sys.path:  # run as a script or with -m
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from realkernel import build_initramfs as rk
from realkernel.harness import (
    StageFailed,
    _read_stderr,
    _stop,
    boot_stages,
    load_checks,
)
from realxen.build_stack import BuildError, Stack, ensure_stack
from realxen import report

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SCENARIOS = HERE / "scenarios"
GUEST_SOURCE = HERE / "guest/xpb_guest.c"
DOMU_INIT = HERE / "domu_init.sh"
QEMU = "qemu-system-x86_64"

SCENARIO_TIMEOUT = int(os.environ.get("XEN_PCIBACK_REALXEN_SCENARIO_TIMEOUT", "1500"))
#: (name, console marker that ends it, timeout in seconds). Generous: 2 busy cores, TCG.
STAGES = (
    ("boot-to-init", "XPB-STAGE init", 240),
    ("share", "XPB-STAGE share-mounted", 90),
    ("xen-tools", "XPB-STAGE xen-tools", 90),
    ("scenario", "XPB-STAGE scenario-exit", SCENARIO_TIMEOUT),
    ("poweroff", "XPB-STAGE poweroff", 60),
)
QEMU_EXIT_TIMEOUT = 60

#: Two dom0 vCPUs. With one (tried), the kernel backend's MSI test passed and its hot-plug was
#: faster, but the second guest's 'xl create' (passthrough="enabled", no pci=) stalled in
#: xc_dom_boot_mem_init with the whole machine idle for minutes; with two it completes.
XEN_ARGS = "console=com1 com1=115200,8n1 dom0_mem=1024M,max:1024M dom0_max_vcpus=2 noreboot iommu=1"


@dataclass
class RunResult:
    timings: list[tuple[str, float]] = field(default_factory=list)
    checks: dict[str, dict] = field(default_factory=dict)
    data: dict = field(default_factory=dict)
    serial_log: str = ""
    scenario_output: str = ""
    report_dir: Path | None = None
    report: dict = field(default_factory=dict)
    stack: Stack | None = None

    def timing_lines(self) -> list[str]:
        total = sum(seconds for _, seconds in self.timings)
        lines = [f"  {name:<16} {seconds:7.2f} s" for name, seconds in self.timings]
        lines.append(f"  {'total':<16} {total:7.2f} s")
        return lines


def qemu_command(stack: Stack, share: Path, serial: Path, monitor: Path) -> list[str]:
    """00:03.0 pci-testdev (1b36:0005); 00:04.0 a ``pcie-root-port`` (rp0) with the e1000e
    (8086:10d3, MSI and MSI-X) behind it at 01:00.0 -- behind a root port an injected AER error
    is signalled up to dom0's AER core (on the root bus it stops at the device); one
    multi-function device (00:05.0 edu 1234:11e8, ``multifunction=on``, + 00:05.1 pvpanic-pci
    1b36:0011), 00:06.0 the 9p share; ``intel-iommu`` before them all."""
    for path in (stack.kernel, stack.dom0_initramfs):
        if "," in str(path):
            raise StageFailed("setup", f"{path}: a multiboot module path cannot contain a comma", "")
    return [
        QEMU, "-accel", "tcg,thread=multi", "-machine", "q35", "-cpu", "qemu64", "-smp", "2",
        "-m", "2048", "-display", "none", "-vga", "none", "-no-reboot", "-nic", "none",
        "-serial", f"file:{serial}", "-monitor", f"unix:{monitor},server=on,wait=off",
        "-kernel", str(stack.xen), "-append", XEN_ARGS,
        "-initrd", f"{stack.kernel} console=hvc0 xpb.timeout={SCENARIO_TIMEOUT - 30},"
                   f"{stack.dom0_initramfs}",
        "-device", "intel-iommu",
        "-device", "pci-testdev,addr=03.0",
        "-device", "pcie-root-port,id=rp0,chassis=1,addr=04.0",
        "-device", "e1000e,bus=rp0,addr=00.0,id=nic0",
        "-device", "edu,addr=05.0,multifunction=on,id=mf0",
        "-device", "pvpanic-pci,addr=05.1",
        "-fsdev", f"local,id=share,path={share},security_model=none",
        "-device", "virtio-9p-pci,fsdev=share,mount_tag=share,addr=06.0",
    ]


def source_tree() -> Path:
    return Path(os.environ.get("XEN_PCIBACK_REALXEN_SOURCE") or REPO)


def scenario_settings() -> dict[str, object]:
    """``XEN_PCIBACK_REALXEN_PHASES=kernel,ours`` (which backends to run; both by default) and
    ``XEN_PCIBACK_REALXEN_LATENCY_READS`` (timed config reads per backend, 300 by default),
    ``XEN_PCIBACK_REALXEN_SERVE_RECORD=1`` (``serve --record``: a trace of every op, slower),
    ``XEN_PCIBACK_REALXEN_BUSY_POLL=USEC`` (``serve --busy-poll``; serve's own default if unset)."""
    phases = [p for p in os.environ.get("XEN_PCIBACK_REALXEN_PHASES", "kernel,ours").split(",") if p]
    return {"phases": phases,
            "latency_reads": int(os.environ.get("XEN_PCIBACK_REALXEN_LATENCY_READS", "300")),
            "serve_record": os.environ.get("XEN_PCIBACK_REALXEN_SERVE_RECORD") == "1",
            "busy_poll": os.environ.get("XEN_PCIBACK_REALXEN_BUSY_POLL")}


def build_guest_program(out: Path) -> None:
    cc = shutil.which("gcc")
    if cc is None:
        raise StageFailed("guest-program", "gcc is not installed (apt gcc)", "")
    proc = subprocess.run([cc, "-static", "-O2", "-Wall", "-o", str(out), str(GUEST_SOURCE)],
                          capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise StageFailed("guest-program", f"gcc failed: {proc.stderr.strip()[-1500:]}", "")


def prepare_share(share: Path, stack: Stack) -> None:
    """Code and scenario in; the guest's kernel and initramfs (the cached base plus this run's
    /init and test program, one more cpio archive the kernel unpacks over the first); results.
    The guest's initramfs stays uncompressed: libxenguest inflates a gzipped ramdisk in dom0
    (slow under emulation) and fails on concatenated gzip streams."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(source_tree() / "xenpciback_cli", share / "code/xenpciback_cli", ignore=ignore)
    shutil.copytree(SCENARIOS, share / "scenario", ignore=ignore)
    (share / "scenario/settings.json").write_text(json.dumps(scenario_settings()))
    (share / "results").mkdir()
    guest = share / "guest"
    guest.mkdir()
    shutil.copy2(stack.domu_kernel, guest / "vmlinux.gz")
    extra = share / "domu-extra"
    (extra / "bin").mkdir(parents=True)
    build_guest_program(extra / "bin/xpb-guest")
    shutil.copy2(DOMU_INIT, extra / "init")
    (extra / "init").chmod(0o755)
    rk.pack_initramfs(extra, share / "domu-extra.cpio", compress=False)
    with open(guest / "domu.cpio", "wb") as out:
        for part in (stack.domu_base, share / "domu-extra.cpio"):
            out.write(part.read_bytes())
    (share / "domu-extra.cpio").unlink()
    shutil.rmtree(extra)
    if sys.version_info[:2] == (3, 11):  # the same bytecode as dom0's Python: skip compiling there
        compileall.compile_dir(share / "code", quiet=1, workers=1)
        compileall.compile_dir(share / "scenario", quiet=1, workers=1)


def monitor_command(monitor: Path, command: str, timeout: float = 20) -> str:
    """One human-monitor command over QEMU's unix socket; its answer (the prompt stripped)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(monitor))
        data = b""
        while b"(qemu)" not in data:  # the banner and first prompt
            data += sock.recv(4096) or b"(qemu)"
        sock.sendall(command.encode() + b"\n")
        data = b""
        while data.count(b"(qemu)") < 1:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    text = data.decode(errors="replace").replace("\r", "")
    return "\n".join(line for line in text.splitlines()
                     if line.strip() and not line.startswith("(qemu)") and command not in line)


def inject_aer(monitor: Path, share: Path, request: list[str]) -> None:
    """dom0 asked (``AER-INJECT ROUND DEVICE ERROR``): inject, answer in ``aer-ack-ROUND``."""
    if len(request) != 3 or not request[0].isdigit():
        return
    round_, device, error = request
    try:
        answer = monitor_command(monitor, f"pcie_aer_inject_error {device} {error}") or "ok"
    except OSError as exc:
        answer = f"monitor: {exc}"
    (share / f"aer-ack-{round_}").write_text(answer + "\n")


def _failure(stage: str, exc: StageFailed, share: Path) -> StageFailed:
    """The stage failure with the xenstore tree dom0 saved (or printed) on its way down."""
    tree = share / "results/xenstore-on-failure.txt"
    extra = ""
    if tree.exists():
        extra = "\n--- xenstore tree (dom0, on failure) ---\n" + tree.read_text(errors="replace")[-6000:]
    out = share / "results/scenario.out"
    if out.exists():
        extra += "\n--- scenario output (tail) ---\n" + "\n".join(
            out.read_text(errors="replace").splitlines()[-40:])
    return StageFailed(stage, exc.waiting_for, exc.tail + extra)


def run(workdir: Path | None = None, log: Callable[[str], None] = print) -> RunResult:
    if shutil.which(QEMU) is None:
        raise StageFailed("setup", f"{QEMU} is not installed (apt qemu-system-x86)", "")
    result = RunResult()

    def timed(name: str, started: float) -> None:
        seconds = time.monotonic() - started
        result.timings.append((name, seconds))
        log(f"realxen: stage {name:<14} {seconds:7.2f} s")

    started = time.monotonic()
    try:
        stack = ensure_stack(lambda message: log(f"realxen: {message}"))
    except BuildError as exc:
        raise StageFailed("build-stack", str(exc), "") from exc
    result.stack = stack
    timed("build-stack" if stack.built else "stack-cached", started)

    work = workdir or Path(tempfile.mkdtemp(prefix="xpb-realxen-"))
    started = time.monotonic()
    share = work / "share"
    share.mkdir()
    prepare_share(share, stack)
    serial = work / "serial.log"
    monitor = work / "monitor.sock"
    timed("prepare-share", started)

    def progress(line: str) -> None:
        if "XPB-SCENARIO XPB-CHECK" in line:
            log("realxen: " + line.split("XPB-SCENARIO ", 1)[1].strip())
        elif "XPB-SCENARIO AER-INJECT " in line:
            inject_aer(monitor, share, line.split("AER-INJECT ", 1)[1].split())

    proc = subprocess.Popen(qemu_command(stack, share, serial, monitor), stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        boot_stages(proc, serial, STAGES, timed, powered_off="dom0", exit_timeout=QEMU_EXIT_TIMEOUT,
                    progress=progress, failure=lambda stage, exc: _failure(stage, exc, share))
    finally:
        _stop(proc)
        if proc.returncode not in (0, None):
            log(f"realxen: qemu stderr: {_read_stderr(proc)[-500:]}")
        if proc.stderr:
            proc.stderr.close()
        result.serial_log = serial.read_text(errors="replace") if serial.exists() else ""
        out = share / "results/scenario.out"
        result.scenario_output = out.read_text(errors="replace") if out.exists() else ""
        result.checks = load_checks(share / "results/results.jsonl")
        data = share / "results/data.json"
        try:
            result.data = json.loads(data.read_text()) if data.exists() else {}
        except ValueError:
            result.data = {}
        artefacts = work / "artefacts"
        artefacts.mkdir(exist_ok=True)
        for name in ("results", ):
            shutil.copytree(share / name, artefacts / name, dirs_exist_ok=True)
        shutil.copy2(serial, artefacts / "serial.log") if serial.exists() else None
        if result.data:
            result.report = report.write(result.data, artefacts)
        result.report_dir = artefacts
        log(f"realxen: artefacts (report, serial log, dom0 results) in {artefacts}")
    return result


def main() -> int:
    try:
        result = run()
    except StageFailed as exc:
        print(f"realxen: FAILED {exc}", file=sys.stderr)
        return 1
    failed = 0
    for name, record in result.checks.items():
        verdict = "ok" if record.get("ok") else "FAIL"
        failed += verdict != "ok"
        print(f"realxen: check {name:<22} {verdict:<4} {record.get('seconds', 0):7.2f} s  "
              f"{str(record.get('detail', ''))[:300 if record.get('ok') else 3000]}")
    print("\n".join(result.timing_lines()))
    print(f"realxen: {len(result.checks) - failed}/{len(result.checks)} checks passed; "
          f"report in {result.report_dir}")
    return 1 if failed or not result.checks else 0


if __name__ == "__main__":
    raise SystemExit(main())

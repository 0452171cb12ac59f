"""Fast tests of the real-Xen harness's own pieces (no QEMU, no download): a failed stage carries
the xenstore tree and the scenario's tail, the guest program compiles, the kernel's ELF image is
found inside a bzImage, and the guest's answers decode."""

from __future__ import annotations

import base64
import gzip
import lzma
import subprocess
from pathlib import Path

import pytest

from realxen import build_stack, harness  # tests/ is on sys.path (rootdir-style imports)
from realkernel.harness import StageFailed


def test_failed_stage_carries_the_xenstore_tree_and_scenario_tail(tmp_path: Path) -> None:
    results = tmp_path / "results"
    results.mkdir()
    (results / "xenstore-on-failure.txt").write_text("/local/domain/0/backend/pci/1/0/state = \"2\"\n")
    (results / "scenario.out").write_text("".join(f"step {i}\n" for i in range(100)))
    failed = harness._failure("scenario", StageFailed("scenario", "no marker", "serial tail"), tmp_path)
    text = str(failed)
    assert failed.stage == "scenario"
    assert "serial tail" in text and "backend/pci/1/0/state" in text
    assert "step 99" in text and "step 10\n" not in text


def test_guest_program_builds_static(tmp_path: Path) -> None:
    if subprocess.run(["which", "gcc"], capture_output=True).returncode != 0:
        pytest.skip("gcc not installed")
    out = tmp_path / "xpb-guest"
    harness.build_guest_program(out)
    usage = subprocess.run([str(out)], capture_output=True, text=True, timeout=10)
    assert usage.returncode == 2 and "usage: xpb-guest" in usage.stderr
    listing = subprocess.run([str(out), "latency", "0000:99:99.9", "3"], capture_output=True,
                             text=True, timeout=10)
    assert "XPBR error 0000:99:99.9 open config" in listing.stdout


def test_extract_elf_finds_the_xz_payload(tmp_path: Path) -> None:
    elf = b"\x7fELF" + bytes(range(256)) * 16
    bzimage = tmp_path / "vmlinuz"
    bzimage.write_bytes(b"MZ setup code" + bytes(300) + lzma.compress(elf, format=lzma.FORMAT_XZ))
    assert build_stack.extract_elf(bzimage) == elf
    bzimage.write_bytes(b"MZ no payload")
    with pytest.raises(build_stack.BuildError, match="no XZ payload"):
        build_stack.extract_elf(bzimage)


def test_guest_answer_framing_decodes() -> None:
    """The dom0 side of domu_init.sh's framing: base64 of gzip, the exit code as the last line,
    kernel lines (not base64) interleaved on the console ignored."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("xpb_run_xen", harness.SCENARIOS / "run_xen.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    payload = base64.encodebytes(gzip.compress(b"hello\nXPBG-RC 3\n")).decode()
    lines = payload.splitlines()
    console = "XPBG-BEGIN 7\n" + lines[0] + "\n[  12.3] pcifront: noise\n" + "\n".join(lines[1:]) \
        + "\nXPBG-END 7\n"
    assert module.decode_answer(console, 7) == (3, "hello")


def test_monitor_command_talks_to_qemu(tmp_path: Path) -> None:
    """The AER injection path: one command over QEMU's human monitor socket, its answer back."""
    import shutil
    import time

    if shutil.which(harness.QEMU) is None:
        pytest.skip("QEMU not installed")
    monitor = tmp_path / "monitor.sock"
    proc = subprocess.Popen([harness.QEMU, "-machine", "none", "-nodefaults", "-display", "none",
                             "-monitor", f"unix:{monitor},server=on,wait=off"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while not monitor.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        answer = harness.monitor_command(monitor, "pcie_aer_inject_error nosuchdev COMP_TIME")
        assert "nosuchdev" in answer or "not" in answer.lower(), answer
        (tmp_path / "share").mkdir()
        harness.inject_aer(monitor, tmp_path / "share", ["3", "nosuchdev", "COMP_TIME"])
        assert (tmp_path / "share/aer-ack-3").read_text().strip()
    finally:
        proc.kill()
        proc.wait()

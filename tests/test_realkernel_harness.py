"""Fast tests of the real-kernel harness's own machinery (no QEMU, no kernel download).

What must hold even when the slow tier is not run: a stage that never finishes fails with its
name, what it waited for and the serial log's tail, within its timeout; results cut short by a
dying guest still load; module dependencies are followed.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from realkernel import build_initramfs, harness  # tests/ is on sys.path (rootdir-style imports)


def _serial(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "serial.log"
    path.write_text(text)
    return path


def test_stage_timeout_names_stage_marker_and_tail(tmp_path: Path) -> None:
    serial = _serial(tmp_path, "booting\n" + "".join(f"line {i}\n" for i in range(100)))
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        started = time.monotonic()
        with pytest.raises(harness.StageFailed) as info:
            harness._wait_for_marker(proc, serial, "share", "XPB-STAGE share-mounted", 0.6, 0)
        assert time.monotonic() - started < 5
    finally:
        proc.kill()
        proc.wait()
    message = str(info.value)
    assert info.value.stage == "share"
    assert "XPB-STAGE share-mounted" in info.value.waiting_for
    assert "line 99" in message and "line 10\n" not in message  # the tail, not the whole log


def test_qemu_exit_before_marker_is_reported(tmp_path: Path) -> None:
    serial = _serial(tmp_path, "Kernel fine\n")
    proc = subprocess.Popen([sys.executable, "-c", "raise SystemExit(7)"], stderr=subprocess.PIPE)
    proc.wait()
    with pytest.raises(harness.StageFailed) as info:
        harness._wait_for_marker(proc, serial, "boot-to-init", "XPB-STAGE init", 10, 0)
    assert "exited with 7" in info.value.waiting_for


def test_guest_reported_failure_and_panic_stop_the_wait(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        serial = _serial(tmp_path, "XPB-STAGE init\nXPB-STAGE failed modprobe 9p\n")
        with pytest.raises(harness.StageFailed, match="modprobe 9p"):
            harness._wait_for_marker(proc, serial, "share", "XPB-STAGE share-mounted", 10, 0)
        serial = _serial(tmp_path, "Kernel panic - not syncing: VFS\n")
        with pytest.raises(harness.StageFailed, match="kernel panic"):
            harness._wait_for_marker(proc, serial, "boot-to-init", "XPB-STAGE init", 10, 0)
    finally:
        proc.kill()
        proc.wait()


def test_marker_found_returns_offset_past_it(tmp_path: Path) -> None:
    serial = _serial(tmp_path, "x\nXPB-STAGE init\nXPB-STAGE init again\n")
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    first = harness._wait_for_marker(proc, serial, "a", "XPB-STAGE init", 1, 0)
    assert serial.read_text()[first:].startswith("\nXPB-STAGE init again")


def test_truncated_results_still_load(tmp_path: Path) -> None:
    results = tmp_path / "results.jsonl"
    results.write_text('{"name": "a", "ok": true}\n{"name": "b", "ok": false}\n{"name": "c", "o')
    checks = harness.load_checks(results)
    assert sorted(checks) == ["a", "b"] and checks["b"]["ok"] is False
    assert harness.load_checks(tmp_path / "absent.jsonl") == {}


def test_module_closure_follows_dependencies(tmp_path: Path) -> None:
    (tmp_path / "modules.dep").write_text(
        "kernel/fs/ext4/ext4.ko: kernel/fs/jbd2/jbd2.ko kernel/lib/crc16.ko\n"
        "kernel/fs/jbd2/jbd2.ko:\nkernel/lib/crc16.ko:\n"
        "kernel/drivers/pci/pci-stub.ko:\nkernel/unrelated.ko:\n")
    (tmp_path / "modules.builtin").write_text("kernel/drivers/block/loop.ko\n")
    closure = build_initramfs._module_closure(tmp_path, ("ext4", "pci_stub", "loop"))
    assert sorted(closure) == ["kernel/drivers/pci/pci-stub.ko", "kernel/fs/ext4/ext4.ko",
                               "kernel/fs/jbd2/jbd2.ko", "kernel/lib/crc16.ko"]
    with pytest.raises(build_initramfs.BuildError, match="nosuch"):
        build_initramfs._module_closure(tmp_path, ("nosuch",))


def test_qemu_command_has_the_devices_the_scenarios_use(tmp_path: Path) -> None:
    image = build_initramfs.GuestImage(tmp_path / "k", tmp_path / "i", "6.1", "key", False)
    argv = harness.qemu_command(image, tmp_path / "s", tmp_path / "n", tmp_path / "l")
    joined = " ".join(argv)
    for needle in ("-machine q35", "-cpu qemu64", "tcg", "e1000e,addr=02.0", "nvme,drive=",
                   "pci-testdev,addr=04.0", "addr=05.0,multifunction=on", "pci-testdev,addr=05.1",
                   "mount_tag=share", "-no-reboot"):
        assert needle in joined

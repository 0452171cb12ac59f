"""engine.doctor on temporary sysfs/procfs trees: Xen present or absent, dom0 or guest, pciback
built in or a module, vpci or passthrough, IOMMU on or off, and the state it reads."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from xenpciback_cli.engine.doctor import CHECK_NAMES, DoctorEnv, is_ready, run_checks
from xenpciback_cli.engine.journal import Journal, JournalEntry
from xenpciback_cli.errors import OperationFailed
from xenpciback_cli.host.platform import CommandOutput, Platform
from xenpciback_cli.host.sysfs import SysfsHost
from xenpciback_cli.pci.address import Bdf
from sysfs_tree import FakeSysfs

XL_INFO_ON = "host : box\nvirt_caps              : pv hvm hvm_directio pv_directio hap shadow\n"
XL_INFO_OFF = "host : box\nvirt_caps              : pv hvm hap shadow\n"
XL_DMESG_IR = "(XEN) I/O virtualisation enabled\n(XEN)  - Dom0 mode: Relaxed\n(XEN) Interrupt remapping enabled\n"
XL_DMESG_NO_IR = "(XEN) I/O virtualisation enabled\n(XEN) Interrupt remapping disabled\n"


class FakeXlPlatform(Platform):
    """The platform adapter over a temporary tree, with canned ``xl`` answers."""

    def __init__(self, fake: FakeSysfs, xl: dict[str, str] | None = None) -> None:
        super().__init__(str(fake.sys), str(fake.proc), allow_commands=False)
        self.answers = xl

    def xl(self, *args: str, timeout: float = 5.0) -> CommandOutput:
        if self.answers is None:
            return CommandOutput(None, "xl is not installed")
        return CommandOutput(self.answers[args[0]])


class FakeClient:
    path = "/run/xenstored/socket"

    def __enter__(self) -> FakeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def get_domain_path(self, domid: int) -> str:
        return f"/local/domain/{domid}"

    def directory(self, path: str) -> list[str]:
        return []


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def dom0(fake: FakeSysfs, *, pciback: str | None = "module", passthrough: str = "N") -> None:
    """Make the tree a Xen dom0's, with pciback loaded as ``pciback`` says ("module",
    "built-in" or None: not loaded)."""
    write(fake.sys / "hypervisor" / "type", "xen\n")
    write(fake.sys / "hypervisor" / "start_flags" / "initdomain", "1\n")
    if pciback is not None:
        fake.add_driver("pciback")
        module = fake.sys / "module" / "xen_pciback"
        write(module / "parameters" / "passthrough", passthrough + "\n")
        if pciback == "module":
            write(module / "initstate", "live\n")


@pytest.fixture()
def fake(tmp_path):
    tree = FakeSysfs(tmp_path / "root")
    tree.add_device("0000:00:00.0", 0x8086, 0x1234, 0x060000, iommu_group=0)
    tree.add_device("0000:03:00.0", 0x8086, 0x10c9, 0x020000, driver="igb", iommu_group=3)
    tree.add_device("0000:03:00.1", 0x8086, 0x10c9, 0x020000, driver="igb", iommu_group=3)
    return tree


def env_for(fake, tmp_path, *, xl=None, xenstore=lambda: FakeClient(), sandbox=None):
    state = tmp_path / "state"
    return DoctorEnv(platform=FakeXlPlatform(fake, xl), state_dir=state,
                     persist_file=tmp_path / "seized.toml", host=lambda: SysfsHost(str(fake.sys)),
                     xenstore=xenstore, sandbox=sandbox)


def by_name(results):
    assert [r.name for r in results] == list(CHECK_NAMES)
    return {r.name: r for r in results}


def test_without_xen_the_first_check_says_so_and_the_xen_checks_are_skipped(fake, tmp_path):
    results = run_checks(env_for(fake, tmp_path))
    checks = by_name(results)
    first = results[0]
    assert (first.name, first.verdict) == ("xen", "fail")
    assert "not running under Xen" in first.detail and first.fix
    for name in ("dom0", "iommu", "interrupt-remapping", "backend", "xenstored"):
        assert checks[name].verdict == "skip", checks[name]
    assert "serve" in checks["backend"].detail and "not running" in checks["backend"].detail
    assert checks["journal"].verdict == "ok" and checks["state-dir"].verdict == "ok"
    assert not is_ready(results)


def test_a_ready_dom0_with_pciback_in_vpci_mode(fake, tmp_path):
    dom0(fake, pciback="module", passthrough="N")
    results = run_checks(env_for(fake, tmp_path, xl={"info": XL_INFO_ON, "dmesg": XL_DMESG_IR}))
    checks = by_name(results)
    assert all(r.verdict in ("ok", "skip") for r in results), results
    assert "initdomain" in checks["dom0"].detail
    assert "hvm_directio" in checks["iommu"].detail
    assert checks["interrupt-remapping"].verdict == "ok"
    assert "loaded as a module" in checks["backend"].detail and "vpci mode" in checks["backend"].detail
    assert checks["xenstored"].detail == "xenstored answers at /run/xenstored/socket"
    assert is_ready(results)


def test_builtin_pciback_in_passthrough_mode_and_dom0_from_proc_xen(fake, tmp_path):
    dom0(fake, pciback="built-in", passthrough="Y")
    os.unlink(fake.sys / "hypervisor" / "start_flags" / "initdomain")
    write(fake.proc / "xen" / "capabilities", "control_d\n")
    checks = by_name(run_checks(env_for(fake, tmp_path, xl={"info": XL_INFO_ON, "dmesg": XL_DMESG_IR})))
    assert checks["dom0"].verdict == "ok" and "/proc/xen/capabilities" in checks["dom0"].detail
    assert "built into the kernel" in checks["backend"].detail
    assert "passthrough mode" in checks["backend"].detail


def test_a_xen_guest_is_not_dom0(fake, tmp_path):
    dom0(fake)
    os.unlink(fake.sys / "hypervisor" / "start_flags" / "initdomain")
    write(fake.proc / "xen" / "capabilities", "\n")
    checks = by_name(run_checks(env_for(fake, tmp_path, xl={"info": XL_INFO_ON, "dmesg": XL_DMESG_IR})))
    assert checks["dom0"].verdict == "fail" and "guest" in checks["dom0"].detail


def test_iommu_off_fails_and_no_interrupt_remapping_warns(fake, tmp_path):
    dom0(fake)
    results = run_checks(env_for(fake, tmp_path, xl={"info": XL_INFO_OFF, "dmesg": XL_DMESG_NO_IR}))
    checks = by_name(results)
    assert checks["iommu"].verdict == "fail" and "iommu=1" in (checks["iommu"].fix or "")
    assert checks["interrupt-remapping"].verdict == "warn"
    assert not is_ready(results)


def test_without_xl_the_iommu_is_unknown_not_guessed(fake, tmp_path):
    dom0(fake)
    checks = by_name(run_checks(env_for(fake, tmp_path, xl=None)))
    assert checks["iommu"].verdict == "warn" and "xl is not installed" in checks["iommu"].detail
    assert checks["interrupt-remapping"].verdict == "warn"


def test_no_pciback_under_xen_fails_with_modprobe(fake, tmp_path):
    dom0(fake, pciback=None)
    checks = by_name(run_checks(env_for(fake, tmp_path, xl={"info": XL_INFO_ON, "dmesg": XL_DMESG_IR})))
    assert checks["backend"].verdict == "fail"
    assert "xen-pciback serve foreground" in (checks["backend"].fix or "")
    assert "modprobe xen-pciback" in (checks["backend"].fix or "")


class FakeServe:
    """A control socket answering ``status`` as a running ``serve`` does (one JSON per connection)."""

    def __init__(self, path: Path) -> None:
        import socket
        import threading

        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(4)
        self.sock.settimeout(5)
        self.thread = threading.Thread(target=self._answer, daemon=True)
        self.thread.start()

    def _answer(self) -> None:
        import json

        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        with conn:
            conn.recv(4096)
            conn.sendall(json.dumps({"pid": 4242, "mode": "passthrough",
                                     "guests": [{"domid": 3}, {"domid": 4}]}).encode())

    def close(self) -> None:
        self.sock.close()
        self.thread.join(5)


def test_no_kernel_pciback_but_serve_running_is_a_backend(fake, tmp_path):
    dom0(fake, pciback=None)
    env = env_for(fake, tmp_path, xl={"info": XL_INFO_ON, "dmesg": XL_DMESG_IR})
    env.serve_control = tmp_path / "serve.sock"
    serve = FakeServe(env.serve_control)
    try:
        checks = by_name(run_checks(env))
    finally:
        serve.close()
    backend = checks["backend"]
    assert backend.verdict == "ok", backend
    assert "running, pid 4242, passthrough mode, 2 guest(s)" in backend.detail


def test_a_dead_serve_socket_is_not_a_backend(fake, tmp_path):
    import socket

    dom0(fake, pciback=None)
    env = env_for(fake, tmp_path, xl={"info": XL_INFO_ON, "dmesg": XL_DMESG_IR})
    env.serve_control = tmp_path / "serve.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(env.serve_control))   # bound, never listening: connect is refused
    stale.close()
    backend = by_name(run_checks(env))["backend"]
    assert backend.verdict == "fail" and "not answering" in backend.detail


def test_xenstored_absent_or_silent_fails(fake, tmp_path):
    dom0(fake)

    def silent():
        raise OperationFailed("xenstore did not answer within 2 s")

    for probe in (lambda: None, silent):
        checks = by_name(run_checks(env_for(fake, tmp_path, xl={"info": XL_INFO_ON, "dmesg": XL_DMESG_IR},
                                            xenstore=probe)))
        assert checks["xenstored"].verdict == "fail" and checks["xenstored"].fix


def test_seized_but_not_persisted_and_a_split_group_warn(fake, tmp_path):
    os.unlink(fake.device_dir("0000:03:00.0") / "driver")
    os.unlink(fake.pci / "drivers" / "igb" / "0000:03:00.0")
    fake.bind("0000:03:00.0", "pciback")
    checks = by_name(run_checks(env_for(fake, tmp_path)))
    assert checks["persisted"].verdict == "warn" and "0000:03:00.0" in checks["persisted"].detail
    assert checks["persisted"].fix.startswith("xen-pciback hide --persist 0000:03:00.0")
    groups = checks["iommu-groups"]
    assert groups.verdict == "warn"
    assert "group 3: 0000:03:00.0 seized, 0000:03:00.1 (igb) with the host" in groups.detail
    assert "0000:00:00.0" not in groups.detail  # the host bridge is alone in its group anyway
    # Persisted by the kernel's hide= parameter counts as persisted.
    fake.write_proc("cmdline", "root=/dev/sda1 xen-pciback.hide=(0000:03:00.0) quiet\n")
    assert by_name(run_checks(env_for(fake, tmp_path)))["persisted"].verdict == "ok"
    # ... and so does the persisted config.
    fake.write_proc("cmdline", "root=/dev/sda1\n")
    (tmp_path / "seized.toml").write_text('[[device]]\nbdf = "0000:03:00.*"\n')
    assert by_name(run_checks(env_for(fake, tmp_path)))["persisted"].verdict == "ok"


def test_a_corrupt_persisted_config_fails(fake, tmp_path):
    (tmp_path / "seized.toml").write_text("[[device]\n")
    check = by_name(run_checks(env_for(fake, tmp_path)))["persisted"]
    assert check.verdict == "fail" and "invalid TOML" in check.detail


def test_state_dir_unsafe_or_corrupt_fails_with_the_fix(fake, tmp_path):
    state = tmp_path / "state"
    (state / "seized").mkdir(parents=True)
    os.chmod(state, 0o777)
    check = by_name(run_checks(env_for(fake, tmp_path)))["state-dir"]
    assert check.verdict == "fail" and check.fix == f"chmod 0700 {state}"
    os.chmod(state, 0o700)
    (state / "seized" / "0000-03-00-0.json").write_text("{not json")
    check = by_name(run_checks(env_for(fake, tmp_path)))["state-dir"]
    assert check.verdict == "fail" and "0000-03-00-0.json is corrupt" in check.detail and check.fix


def test_an_interrupted_operation_waits_for_recover_but_a_running_one_does_not(fake, tmp_path):
    entry = JournalEntry(op="hide", bdf=Bdf(0, 3, 0, 1), original_driver="igb", target_driver="pciback",
                         method="override", steps=[], pid=0)
    Journal(tmp_path / "state").begin(entry)
    check = by_name(run_checks(env_for(fake, tmp_path)))["journal"]
    assert check.verdict == "fail" and check.fix == "xen-pciback recover"
    assert "hide 0000:03:00.1" in check.detail
    # The same entry written by a process that still runs (this test's parent: pid, boot, start).
    from xenpciback_cli.engine import journal

    parent = os.getppid()
    running = JournalEntry(op="hide", bdf=Bdf(0, 3, 0, 1), original_driver="igb", target_driver="pciback",
                           method="override", steps=[], pid=parent,
                           process_start=journal.process_start(parent))
    Journal(tmp_path / "state").save(running)
    check = by_name(run_checks(env_for(fake, tmp_path)))["journal"]
    assert check.verdict == "ok" and f"pid {parent}" in check.detail


def test_the_real_platform_adapter_reads_under_its_roots(fake):
    dom0(fake, pciback="module", passthrough="Y")
    write(fake.proc / "interrupts", "  CPU0\n 24: 5 IR-PCI-MSI 524288-edge eth0\n")
    platform = Platform(str(fake.sys), str(fake.proc))
    assert platform.allow_commands is False  # xl never speaks for a test tree
    assert platform.xl("info").text is None
    assert platform.hypervisor_type() == "xen"
    assert platform.initial_domain() == (True, "/sys/hypervisor/start_flags/initdomain")
    module = platform.pciback()
    assert (module.driver_registered, module.kind, module.passthrough) == (True, "module", True)
    assert platform.remapped_interrupt_chips() is True
    assert platform.iommu_group_count() == 2

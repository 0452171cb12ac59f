"""Crash safety (issue item 9): a hide or unhide stopped after ANY of its sysfs writes is noticed by
the next command and fixed by ``recover``, leaving every device fully with its original driver or
fully seized - driver, driver_override, pciback slots, records and journal all agreeing.

Two ways of stopping: an in-process failure injected by a write hook (fast, covers both seize
methods and the window after the last write), and a real process SIGKILLed by the test-only
``XEN_PCIBACK_TEST_KILL_AFTER_WRITES`` hook.
"""

from __future__ import annotations

import functools
import shutil
import signal
from pathlib import Path

import pytest

from xenpciback_cli.engine.journal import pending_operations
from xenpciback_cli.engine.records import load_records
from xenpciback_cli.engine.seize import InjectedFailure, Seizer, failure_hook
from xenpciback_cli.sandbox.host import SandboxHost, open_sandbox
from xenpciback_cli.pci.address import Bdf

from helpers.cli import invoke, script

NIC0 = Bdf(0, 3, 0, 0)


class NoOverrideSandbox(SandboxHost):
    """A kernel without driver_override: pciback seizes through new_slot + bind."""

    def supports_driver_override(self, bdf: Bdf) -> bool:
        return False




def open_host(sandbox, method):
    return NoOverrideSandbox(sandbox) if method in ("slot", "new_id") else open_sandbox(sandbox)


TARGETS = {"override": "pciback", "slot": "pciback", "new_id": "vfio-pci"}


def assert_consistent(sandbox, bdf=NIC0, original="igb", xenstore=None, target="pciback"):
    """Fully seized or fully with the original driver; nothing half-way; journal empty."""
    host = open_sandbox(sandbox)
    state = sandbox / "state"
    device = host.device(bdf)
    records = load_records(state)
    assert pending_operations(state) == []
    slots = host.pciback_slots()
    if device.driver == target:
        assert records[bdf].original_driver == original
        assert records[bdf].target_driver == target
        if records[bdf].method == "override":
            assert device.driver_override == target
        elif records[bdf].method == "slot":
            assert str(bdf) in slots
        else:
            assert device.driver_override is None
        if xenstore is not None:
            assert xenstore[f"/libxl/pci/{bdf.xs_key}/driver_path"] == f"/sys/bus/pci/drivers/{original}"
        return "seized"
    assert device.driver == original, f"{bdf} ended with driver {device.driver}"
    assert device.driver_override is None
    assert str(bdf) not in slots
    assert bdf not in records
    if xenstore is not None:
        assert f"/libxl/pci/{bdf.xs_key}/driver_path" not in xenstore
    return "host"


class DictXenstore(dict):
    def write(self, path, value):
        self[path] = value

    def read(self, path):
        return self[path].encode()

    def rm(self, path):
        self.pop(path, None)


def hide(host, xenstore=None, target="pciback"):
    seizer = Seizer(host, host.directory / "state", xenstore=xenstore)
    [pre] = seizer.preflight([NIC0], target)
    seizer.enforce([pre], force=False)
    return seizer.hide(pre, target)


def plan_length(sandbox, method, op):
    host = open_host(sandbox, method)
    seizer = Seizer(host, sandbox / "state")
    if op == "hide":
        [pre] = seizer.preflight([NIC0], TARGETS[method])
        return len(seizer.hide(pre, TARGETS[method], dry_run=True).writes)
    hide(open_host(sandbox, method), target=TARGETS[method])
    count = len(seizer.unhide(NIC0, rebind=True, dry_run=True).writes)
    return count


@pytest.mark.parametrize("method", ["override", "slot", "new_id"])
@pytest.mark.parametrize("op", ["hide", "unhide"])
def test_injected_failure_after_every_write(pristine_sandbox, tmp_path, method, op):
    """Also: recover --dry-run at every crash point predicts recover exactly, writing nothing."""
    template = tmp_path / "template"
    shutil.copytree(pristine_sandbox, template, symlinks=True)
    steps = plan_length(template, method, op)
    assert steps >= 2
    target = TARGETS[method]
    outcomes = set()
    for after in range(steps):
        sandbox = tmp_path / f"case{after}"
        shutil.copytree(pristine_sandbox, sandbox, symlinks=True)
        xenstore = DictXenstore()
        if op == "unhide":
            hide(open_host(sandbox, method), xenstore, target)
        host = open_host(sandbox, method)
        host.write_hooks.append(failure_hook(after, kill=False))
        seizer = Seizer(host, sandbox / "state", xenstore=xenstore)
        with pytest.raises(InjectedFailure):
            if op == "hide":
                [pre] = seizer.preflight([NIC0], target)
                seizer.hide(pre, target)
            else:
                seizer.unhide(NIC0, rebind=True)
        [entry] = pending_operations(sandbox / "state")
        assert entry.op == op and entry.bdf == NIC0 and entry.done == after
        line = entry.describe()
        assert line.startswith(f"interrupted operation: {op} 0000:03:00.0 stopped ")
        assert "run 'xen-pciback recover'" in line
        # The dry run writes nothing (sysfs, state dir, xenstore) and predicts the real recover:
        # the same action and final driver, exactly the sysfs writes it then makes, in order.
        before, stored = _tree(sandbox), dict(xenstore)
        [planned] = Seizer(open_host(sandbox, method), sandbox / "state", xenstore=xenstore).recover(dry_run=True)
        assert _tree(sandbox) == before and xenstore == stored
        made: list[dict[str, str]] = []
        real = open_host(sandbox, method)
        real.write_hooks.append(functools.partial(_record_write, made))
        outcome = Seizer(real, sandbox / "state", xenstore=xenstore).recover()
        assert len(outcome) == 1 and outcome[0]["action"] in ("completed", "rolled back")
        assert (planned["action"], planned["driver"]) == (outcome[0]["action"], outcome[0]["driver"])
        assert [{"path": w["path"], "value": w["value"]} for w in planned["writes"]] == made
        outcomes.add(assert_consistent(sandbox, xenstore=xenstore, target=target))
        # Idempotent: a second recover has nothing to do and changes nothing.
        assert Seizer(open_host(sandbox, method), sandbox / "state").recover() == []
        assert assert_consistent(sandbox, xenstore=xenstore, target=target) in ("seized", "host")
        if method == "new_id" and assert_consistent(sandbox, target=target) == "host":
            # The dynamic id is gone: a probe does not hand the device to the stub driver again.
            device = open_host(sandbox, method)
            device.write_attribute("bus/pci/drivers/igb/unbind", str(NIC0))
            device.probe(NIC0)
            assert device.device(NIC0).driver == "igb"
    # Some crash points roll back and some complete: both paths were exercised.
    assert outcomes == {"seized", "host"}


@pytest.mark.parametrize("op", ["hide", "unhide"])
def test_failure_after_the_last_write_before_bookkeeping(sandbox, monkeypatch, op):
    """The window after the final sysfs write but before the record update and journal removal."""
    xenstore = DictXenstore()
    if op == "unhide":
        hide(open_sandbox(sandbox), xenstore)
    target = "_keep_record" if op == "hide" else "_forget"

    def crash(*args, **kwargs):
        raise InjectedFailure("crash during bookkeeping")

    monkeypatch.setattr(Seizer, target, crash)
    with pytest.raises(InjectedFailure):
        if op == "hide":
            hide(open_sandbox(sandbox), xenstore)
        else:
            Seizer(open_sandbox(sandbox), sandbox / "state", xenstore=xenstore).unhide(NIC0, rebind=True)
    monkeypatch.undo()
    [entry] = pending_operations(sandbox / "state")
    assert entry.done == len(entry.steps)
    [outcome] = Seizer(open_sandbox(sandbox), sandbox / "state", xenstore=xenstore).recover()
    assert outcome["action"] == "completed"
    assert assert_consistent(sandbox, xenstore=xenstore) == ("seized" if op == "hide" else "host")


@pytest.mark.parametrize("op", ["hide", "unhide"])
def test_sigkill_after_every_write(pristine_sandbox, tmp_path, op):
    """A real process killed by SIGKILL at each write; the next command reports it; recover fixes it."""
    outcomes = set()
    for after in range(3):
        sandbox = tmp_path / f"case{after}"
        shutil.copytree(pristine_sandbox, sandbox, symlinks=True)
        if op == "unhide":
            assert invoke("--sandbox", sandbox, "hide", NIC0).code == 0
            command = ["unhide", "--rebind", NIC0]
        else:
            command = ["hide", NIC0]
        killed = script("--sandbox", sandbox, *command,
                        env={"XEN_PCIBACK_TEST_KILL_AFTER_WRITES": str(after)})
        assert killed.code == -signal.SIGKILL, killed.err
        listed = script("--sandbox", sandbox, "list")
        assert listed.code == 0, listed.err
        assert (f"interrupted operation: {op} 0000:03:00.0 stopped "
                f"{'after step ' + str(after) if after else 'before step 1'}/3") in listed.err
        recovered = script("--sandbox", sandbox, "--json", "recover")
        assert recovered.code == 0, recovered.err
        assert '"bdf": "0000:03:00.0"' in recovered.out
        outcomes.add(assert_consistent(sandbox))
        again = script("--sandbox", sandbox, "list")
        assert "interrupted operation" not in again.err
    assert outcomes == {"seized", "host"}


def test_new_operation_refused_while_interrupted(sandbox):
    host = open_sandbox(sandbox)
    host.write_hooks.append(failure_hook(1, kill=False))
    with pytest.raises(InjectedFailure):
        hide(host)
    run = invoke("--sandbox", sandbox, "hide", NIC0)
    assert run.code == 1 and "run 'xen-pciback recover' first" in run.error
    assert invoke("--sandbox", sandbox, "recover").code == 0
    assert_consistent(sandbox)


def test_kernel_error_mid_hide_names_the_step_and_recover_rolls_back(sandbox):
    from xenpciback_cli.errors import DeviceBusy

    def busy(write):
        if write.path.endswith("/unbind"):
            raise DeviceBusy("write to unbind failed: device busy", bdf=NIC0)

    host = open_sandbox(sandbox)
    host.write_hooks.append(busy)
    seizer = Seizer(host, sandbox / "state")
    [pre] = seizer.preflight([NIC0], "pciback")
    with pytest.raises(Exception) as info:
        seizer.hide(pre, "pciback")
    assert "hide 0000:03:00.0 failed at step 2/3 (unbind from igb)" in str(info.value)
    assert "run 'xen-pciback recover'" in str(info.value)
    run = invoke("--sandbox", sandbox, "--json", "recover")
    assert run.code == 0 and '"action": "rolled back"' in run.output
    assert assert_consistent(sandbox) == "host"


def test_new_id_fallback_with_a_shared_id(sandbox):
    """Two VFs with one id seized through new_id: EEXIST on the second, ENODEV on the last remove."""
    host = NoOverrideSandbox(sandbox)
    seizer = Seizer(host, sandbox / "state")
    vfs = [Bdf(0, 4, 0x10, 1), Bdf(0, 4, 0x10, 3)]
    for vf in vfs:
        [pre] = seizer.preflight([vf], "vfio-pci")
        assert seizer.hide(pre, "vfio-pci").method == "new_id"
        assert host.device(vf).driver == "vfio-pci"
    for vf in vfs:
        seizer.unhide(vf, rebind=True)
        assert host.device(vf).driver == "igbvf"
    assert pending_operations(sandbox / "state") == [] and load_records(sandbox / "state") == {}


def _tree(root):
    """Every file under ``root`` with its bytes and mode: what a dry run must leave untouched."""
    import os

    found = {}
    for base, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(base, name)
            st = os.lstat(path)
            found[path] = (st.st_mode, st.st_mtime_ns, os.path.islink(path) or os.path.isdir(path)
                           or Path(path).read_bytes())
    return found


def _record_write(made, write):
    made.append({"path": write.path, "value": write.value})


def test_recover_dry_run_cli(sandbox):
    """The command: valid shell lines under the sandbox's sysfs, JSON with ``changed`` per
    operation and ``dry_run``, nothing written; then the real recover does it."""
    killed = script("--sandbox", sandbox, "hide", NIC0, env={"XEN_PCIBACK_TEST_KILL_AFTER_WRITES": "1"})
    assert killed.code == -signal.SIGKILL
    before = _tree(sandbox)
    text = invoke("--sandbox", sandbox, "recover", "--dry-run")
    assert text.code == 0, text.err
    lines = text.out.splitlines()
    assert lines[0].startswith("# dry run: would end hide 0000:03:00.0 rolled back: ")
    assert lines[1] == "# dry run: would roll back hide of 0000:03:00.0 with these sysfs writes:"
    assert lines[2] == f"echo > {sandbox}/sys/bus/pci/devices/0000:03:00.0/driver_override"
    as_json = invoke("--sandbox", sandbox, "--json", "recover", "--dry-run").json()
    assert as_json["changed"] is True and as_json["dry_run"] is True
    [operation] = as_json["operations"]
    assert operation["changed"] is True and operation["action"] == "rolled back"
    assert operation["writes"][0]["path"] == "bus/pci/devices/0000:03:00.0/driver_override"
    assert _tree(sandbox) == before
    assert invoke("--sandbox", sandbox, "--json", "recover").json()["operations"][0]["action"] == "rolled back"
    assert invoke("--sandbox", sandbox, "--json", "recover", "--dry-run").json() == {
        "changed": False, "dry_run": True, "operations": []}


def test_recover_dry_run_creates_no_state_dir(sandbox):
    shutil.rmtree(sandbox / "state", ignore_errors=True)
    run = invoke("--sandbox", sandbox, "recover", "--dry-run")
    assert run.code == 0 and "nothing to recover" in run.out
    assert not (sandbox / "state").exists()

"""hide / unhide on the sandbox, in this process and through the console script."""

from __future__ import annotations

import json

import pytest

from xenpciback_cli.engine.preflight import _iommu_group, check_hide
from xenpciback_cli.engine.records import load_records
from xenpciback_cli.engine.seize import Seizer
from xenpciback_cli.errors import SafetyRefusal
from xenpciback_cli.pci.device import PciDevice
from xenpciback_cli.sandbox.host import open_sandbox
from xenpciback_cli.pci.address import Bdf

from helpers.cli import invoke, script

NIC0, NIC1, NVME, GPU = Bdf(0, 3, 0, 0), Bdf(0, 3, 0, 1), Bdf(0, 1, 0, 0), Bdf(0, 2, 0, 0)
VF0, VF1 = Bdf(0, 4, 0x10, 1), Bdf(0, 4, 0x10, 3)




def listed(sandbox, bdf):
    [row] = json.loads(invoke("--sandbox", sandbox, "--json", "list", bdf).output)
    return row


def snapshot(sandbox):
    host = open_sandbox(sandbox)
    return [(d.bdf, d.driver, d.driver_override) for d in host.devices()], host.pciback_slots()


def test_hide_then_unhide_rebind(sandbox):
    run = invoke("--sandbox", sandbox, "--json", "hide", "0000:03:00.0")
    assert run.code == 0, run.output
    data = json.loads(run.output)
    [device] = data["devices"]
    assert device["status"] == "seized" and device["original_driver"] == "igb"
    assert [c["name"] for c in device["checks"]] == [
        "device-exists", "device-kind", "target-driver", "not-seized", "host-usage", "siblings", "iommu-group",
        "sriov"]
    row = listed(sandbox, "03:00.0")
    assert (row["state"], row["driver"], row["original_driver"]) == ("seized", "pciback", "igb")
    assert load_records(sandbox / "state")[NIC0].original_driver == "igb"

    run = invoke("--sandbox", sandbox, "unhide", "--rebind", "03:00.0")
    assert run.code == 0 and "released 0000:03:00.0: now igb" in run.output
    row = listed(sandbox, "03:00.0")
    assert (row["state"], row["driver"], row["original_driver"]) == ("host", "igb", None)
    assert open_sandbox(sandbox).device(NIC0).driver_override is None


def test_human_output_names_every_check(sandbox):
    run = invoke("--sandbox", sandbox, "hide", "03:00.0")
    assert "check device-exists: ok" in run.output
    assert "check siblings: warn (functions of the same device: 0000:03:00.1 (igb)" in run.output
    assert "check iommu-group: warn (group 7" in run.output
    assert "seized 0000:03:00.0: igb -> pciback" in run.output


def test_unhide_without_rebind_leaves_it_driverless(sandbox):
    assert invoke("--sandbox", sandbox, "hide", "03:00.0").code == 0
    run = invoke("--sandbox", sandbox, "unhide", "03:00.0")
    assert run.code == 0 and "use --rebind" in run.output
    device = open_sandbox(sandbox).device(NIC0)
    assert device.driver is None and device.driver_override is None
    record = load_records(sandbox / "state")[NIC0]  # kept for the --rebind the hint suggests
    assert (record.released, record.original_driver) == (True, "igb")
    assert listed(sandbox, "03:00.0")["state"] != "seized"
    run = invoke("--sandbox", sandbox, "unhide", "--rebind", "03:00.0")
    assert run.code == 0 and "released 0000:03:00.0: now igb" in run.output, run.output
    assert open_sandbox(sandbox).device(NIC0).driver == "igb"
    assert NIC0 not in load_records(sandbox / "state")


def test_mounted_nvme_refused(sandbox):
    before = snapshot(sandbox)
    run = invoke("--sandbox", sandbox, "hide", "01:00.0")
    assert run.code == 3
    assert "refusing to hide 0000:01:00.0" in run.error and "mounted on /" in run.error
    assert snapshot(sandbox) == before


def test_nic_with_default_route_refused(sandbox):
    run = invoke("--sandbox", sandbox, "hide", "03:00.1")
    assert run.code == 3 and "default route" in run.error


def test_boot_vga_refused_by_wildcard(sandbox):
    run = invoke("--sandbox", sandbox, "hide", "02:00.*")
    assert run.code == 3 and "boot VGA" in run.error
    assert open_sandbox(sandbox).device(Bdf(0, 2, 0, 1)).driver == "snd_hda_intel"  # nothing was done


def test_force_overrides_loudly(sandbox):
    run = invoke("--sandbox", sandbox, "hide", "--force", "03:00.1")
    assert run.code == 0, run.output
    assert "FORCED past a safety refusal: 0000:03:00.1: host-usage" in run.output
    assert open_sandbox(sandbox).device(NIC1).driver == "pciback"


def test_pf_with_live_vfs_refused(sandbox):
    open_sandbox(sandbox).configure_interface("eth1", up=False)  # so only the VFs stand in the way
    run = invoke("--sandbox", sandbox, "hide", "03:00.1")
    assert run.code == 3 and "sriov" in run.error and "2 live VFs" in run.error


def test_vf_hide_and_wildcard(sandbox):
    run = invoke("--sandbox", sandbox, "--json", "hide", "04:10.*")
    assert run.code == 0, run.output
    devices = json.loads(run.output)["devices"]
    assert [(d["bdf"], d["original_driver"], d["driver"]) for d in devices] == [
        ("0000:04:10.1", "igbvf", "pciback"), ("0000:04:10.3", "igbvf", "pciback")]
    assert "virtual function of 0000:03:00.1" in json.dumps(devices[0]["checks"])
    run = invoke("--sandbox", sandbox, "unhide", "--rebind", "04:10.*")
    assert run.code == 0
    assert {open_sandbox(sandbox).device(b).driver for b in (VF0, VF1)} == {"igbvf"}


def test_dry_run_prints_writes_in_order_and_does_nothing(sandbox):
    before = snapshot(sandbox)
    run = invoke("--sandbox", sandbox, "hide", "--dry-run", "03:00.0")
    assert run.code == 0
    lines = [line.strip() for line in run.output.splitlines() if line.strip().startswith("echo ")]
    root = f"{sandbox.resolve()}/sys"  # the sysfs the plan is for: the sandbox's, not /sys
    assert lines == [f"echo pciback > {root}/bus/pci/devices/0000:03:00.0/driver_override",
                     f"echo 0000:03:00.0 > {root}/bus/pci/drivers/igb/unbind",
                     f"echo 0000:03:00.0 > {root}/bus/pci/drivers_probe"]
    assert snapshot(sandbox) == before
    assert load_records(sandbox / "state") == {}
    assert invoke("--sandbox", sandbox, "hide", "03:00.0").code == 0
    run = invoke("--sandbox", sandbox, "--json", "unhide", "--dry-run", "--rebind", "03:00.0")
    writes = [(w["path"], w["value"]) for w in json.loads(run.output)["devices"][0]["writes"]]
    assert writes == [("bus/pci/devices/0000:03:00.0/driver_override", "\n"),
                      ("bus/pci/drivers/pciback/unbind", "0000:03:00.0"),
                      ("bus/pci/drivers/igb/bind", "0000:03:00.0")]
    assert open_sandbox(sandbox).device(NIC0).driver == "pciback"


@pytest.mark.parametrize("driver", ["pci-stub", "vfio-pci"])
def test_other_seize_drivers(sandbox, driver):
    assert invoke("--sandbox", sandbox, "hide", "--driver", driver, "03:00.0").code == 0
    assert open_sandbox(sandbox).device(NIC0).driver == driver
    assert load_records(sandbox / "state")[NIC0].target_driver == driver
    assert invoke("--sandbox", sandbox, "unhide", "--rebind", "03:00.0").code == 0
    assert open_sandbox(sandbox).device(NIC0).driver == "igb"


def test_hide_twice_is_harmless(sandbox):
    assert invoke("--sandbox", sandbox, "hide", "03:00.0").code == 0
    run = invoke("--sandbox", sandbox, "hide", "03:00.0")
    assert run.code == 0 and "already held by pciback" in run.output
    assert load_records(sandbox / "state")[NIC0].original_driver == "igb"


def test_missing_device_and_unseized_unhide(sandbox):
    run = invoke("--sandbox", sandbox, "hide", "0000:09:00.0")
    assert run.code == 1 and "no PCI device 0000:09:00.0" in run.error
    run = invoke("--sandbox", sandbox, "unhide", "00:14.0")
    assert run.code == 0 and "not seized" in run.output


def test_attached_device_refused_and_xenstore_driver_path(sandbox):
    class Store(dict):
        def write(self, path, value): self[path] = value
        def read(self, path): return self[path].encode()
        def rm(self, path): self.pop(path, None)

    store = Store()
    host = open_sandbox(sandbox)
    seizer = Seizer(host, sandbox / "state", xenstore=store, attachments={NIC0: 7})
    [pre] = seizer.preflight([NIC0], "pciback")
    seizer.hide(pre, "pciback")
    assert store == {"/libxl/pci/0000-03-00-0/driver_path": "/sys/bus/pci/drivers/igb"}
    with pytest.raises(SafetyRefusal) as info:
        seizer.unhide(NIC0, rebind=True)
    assert info.value.exit_code == 3 and "attached to domain 7" in str(info.value)
    assert host.device(NIC0).driver == "pciback"
    Seizer(host, sandbox / "state", xenstore=store).unhide(NIC0, rebind=True)
    assert store == {} and host.device(NIC0).driver == "igb"


def test_target_driver_not_loaded(sandbox):
    host = open_sandbox(sandbox)
    host.loaded_drivers = lambda: frozenset({"igb"})  # type: ignore[method-assign]
    result = check_hide(host, NIC0, "pciback", records={})
    [check] = [c for c in result.checks if c.name == "target-driver"]
    assert check.fatal and "modprobe xen-pciback" in check.detail


def test_no_iommu_groups_is_said_not_crashed():
    device = PciDevice(NIC0, 0x8086, 0x10C9, 0x020000, 1)
    check = _iommu_group(device, {NIC0: device}, {NIC0})
    assert (check.verdict, check.detail) == ("ok", "no IOMMU groups on this host")


def test_console_script(sandbox):
    run = script("--sandbox", sandbox, "hide", "03:00.0")
    assert run.code == 0 and "seized 0000:03:00.0: igb -> pciback" in run.out
    run = script("--sandbox", sandbox, "hide", "01:00.0")
    assert run.code == 3
    assert run.err.startswith("xen-pciback: error: refusing to hide 0000:01:00.0")
    assert "Traceback" not in run.err
    run = script("--sandbox", sandbox, "unhide", "--rebind", "03:00.0")
    assert run.code == 0 and open_sandbox(sandbox).device(NIC0).driver == "igb"
    for bad in ("03:00.9", "zz:00.0", "3:0g", "0000:03:20.0"):
        run = script("--sandbox", sandbox, "hide", bad)
        assert run.code == 2, (bad, run.err)
        assert run.err.count("\n") == 1 and "Traceback" not in run.err


def test_demo_runs_the_whole_main_job_on_a_fresh_sandbox(tmp_path):
    """The README's first command: seize, guest, attach, serve, the guest's own view, give back."""
    VF = "0000:04:10.1"
    run = script("demo", "--sandbox-dir", tmp_path / "demo", timeout=120)
    assert run.code == 0, run.err
    assert f"seized {VF}: igbvf -> pciback" in run.out
    assert "refusing to hide 0000:01:00.0" in run.out and "(exit 3" in run.out
    assert f"{VF} attached to domain 5" in run.out
    assert "serve foreground &" in run.out
    assert "Intel Corporation 82576 Virtual Function [8086:10ca]" in run.out  # the guest's lspci view
    assert "MSI-X enable: ok - enabled with 3" in run.out and "BAR0: ok - memory 64-bit" in run.out
    assert f"{VF} detached from domain 5" in run.out
    assert f"released {VF}: now igbvf" in run.out
    assert open_sandbox(tmp_path / "demo").device(Bdf.parse(VF)).driver == "igbvf"
    assert not (tmp_path / "demo" / "xenstore" / "pid").exists()  # its daemons are stopped


def test_json_refusal_lists_the_checks(sandbox):
    run = invoke("--sandbox", sandbox, "--json", "hide", "01:00.0", "03:00.0")
    assert run.code == 3
    data = run.json()  # stdout; the error is JSON on stderr
    assert data["refused"] is True
    verdicts = {d["bdf"]: {c["name"]: c["verdict"] for c in d["checks"]} for d in data["devices"]}
    assert verdicts["0000:01:00.0"]["host-usage"] == "refuse"
    assert verdicts["0000:03:00.0"]["host-usage"] == "ok"
    assert open_sandbox(sandbox).device(NIC0).driver == "igb"  # one refusal stops the whole hide


def test_demo_json_walks_the_same_steps(tmp_path):
    run = script("--json", "demo", "--sandbox-dir", tmp_path / "demo", timeout=120)
    assert run.code == 0, run.err
    data = run.json()
    assert data["sandbox"] == str(tmp_path / "demo") and data["serve"] is True
    commands = [s.get("command") for s in data["steps"]]
    assert commands[1] == ["hide", "0000:04:10.1"]
    refused = data["steps"][2]
    assert refused["exit"] == 3 and "error" in refused
    assert isinstance(data["steps"][0]["output"], (list, dict))  # each step's own --json
    assert [s.get("action") for s in data["steps"] if s.get("action")] == ["start-serve", "stop-serve"]


def test_demo_with_serve_plays_the_whole_main_job():
    from xenpciback_cli.sandbox.demo import VF, steps

    flow = steps(serve=True)
    typed = [" ".join(s.args) or s.action for s in flow]
    assert typed.index("start-serve") < typed.index("sandbox guest 5 --timeout 15") \
        < typed.index("stop-serve") < typed.index(f"detach {VF} --domid 5")
    assert f"hide {VF}" in typed and "sandbox domain create 5 --no-guest" in typed
    assert typed[-2:] == [f"unhide --rebind {VF}", "list"]
    assert "start-serve" not in [s.action for s in steps(serve=False)]


def test_a_corrupt_bind_entry_stops_unhide_before_its_first_write(sandbox):
    """Every op's entry of every selected device is read before the first write (not only
    hide's and unhide's), so a corrupt bind entry of the second device does not leave the
    first released and the second seized."""
    for bdf in ("03:00.0", "03:00.1"):
        assert invoke("--sandbox", sandbox, "hide", "--force", bdf).code == 0
    journal = sandbox / "state" / "journal"
    journal.mkdir(exist_ok=True)
    (journal / "bind-0000-03-00-1.json").write_text("{")
    run = invoke("--sandbox", sandbox, "unhide", "03:00.0", "03:00.1")
    assert run.code == 2 and "bind-0000-03-00-1.json is corrupt" in run.error
    host = open_sandbox(sandbox)
    assert host.device(NIC0).driver == "pciback" and host.device(NIC1).driver == "pciback"


def test_a_corrupt_journal_entry_stops_hide_before_its_first_write(sandbox):
    """hide, like unhide and bind, reads the selected devices' journal entries before it
    writes: a corrupt entry of the second device leaves the first untouched."""
    journal = sandbox / "state" / "journal"
    journal.mkdir(parents=True, exist_ok=True)
    (journal / "unhide-0000-03-00-1.json").write_text("{")
    run = invoke("--sandbox", sandbox, "hide", "--force", "03:00.0", "03:00.1")
    assert run.code == 2 and "unhide-0000-03-00-1.json is corrupt" in run.error
    host = open_sandbox(sandbox)
    assert host.device(NIC0).driver == "igb" and host.device(NIC1).driver == "igb"


@pytest.mark.parametrize("failure", ["ENOENT", "EACCES", "lost"])
def test_forgetting_the_libxl_nodes_tolerates_only_their_absence(sandbox, failure):
    """unhide removes libxl's driver_path and name nodes: one already gone (ENOENT) is fine;
    any other xenstore failure is an error that names the node, never silently skipped."""
    from xenpciback_cli.errors import OperationFailed
    from xenpciback_cli.xenstore.client import XenstoreConnectionLost, XenstoreError

    class Store(dict):
        def write(self, path, value): self[path] = value
        def read(self, path): return self[path].encode()

        def rm(self, path):
            if path not in self:
                raise XenstoreError("ENOENT", path, "RM")
            if failure == "lost":
                raise XenstoreConnectionLost("the daemon went away", path, "RM")
            if failure != "ENOENT":
                raise XenstoreError(failure, path, "RM")
            del self[path]

    host = open_sandbox(sandbox)
    store = Store()
    seizer = Seizer(host, sandbox / "state", xenstore=store)
    [pre] = seizer.preflight([NIC0], "pciback")
    seizer.hide(pre, "pciback")
    if failure == "ENOENT":
        assert seizer.unhide(NIC0, rebind=True).driver == "igb"
        return
    with pytest.raises(OperationFailed) as info:
        seizer.unhide(NIC0, rebind=True)
    message = str(info.value)
    assert "/libxl/pci/0000-03-00-0/driver_path" in message and "recover" in message, message
    assert host.device(NIC0).driver == "igb"  # the release itself was done
    failure = "ENOENT"  # xenstore answers again: recover finishes the job
    [outcome] = seizer.recover()
    assert outcome["action"] == "completed" and store == {}, outcome
    assert seizer.recover() == []

"""driverctl's and dpdk-devbind's habits (issue 14 item 3): bind/rebind to any host driver,
journalled and refused for host usage; modules loaded when missing; interface and block
device names resolve to their PCI function."""

from __future__ import annotations

import os

import pytest

from helpers.cli import invoke, ok
from xenpciback_cli.engine.journal import pending_operations
from xenpciback_cli.pci.address import Bdf

VF = "0000:04:10.1"


def driver(sandbox, bdf):
    link = sandbox / "sys" / "bus" / "pci" / "devices" / bdf / "driver"
    return os.path.basename(os.readlink(link)) if link.is_symlink() else None


def test_bind_any_driver_then_rebind_to_the_kernels_choice(sandbox):
    plan = ok("bind", VF, "igb", "--dry-run", sandbox=sandbox).out
    assert f"echo igb > {sandbox}/sys/bus/pci/devices/{VF}/driver_override" in plan  # the real root
    assert driver(sandbox, VF) == "igbvf"
    ok("bind", VF, "pci-stub", sandbox=sandbox)  # a seize driver: the same as hide --driver
    assert driver(sandbox, VF) == "pci-stub"
    assert (sandbox / "state" / "seized" / "0000-04-10-1.json").exists()
    (sandbox / "state" / "seized" / "0000-04-10-1.json").unlink()  # the record is gone
    out = ok("rebind", VF, sandbox=sandbox).out
    assert out == f"bound {VF}: pci-stub -> igbvf\n"
    assert driver(sandbox, VF) == "igbvf"
    assert (sandbox / "sys" / "bus" / "pci" / "devices" / VF / "driver_override").read_text().strip() in ("", "(null)")
    assert ok("rebind", VF, sandbox=sandbox).out == f"{VF}: already with igbvf; nothing to do\n"
    assert not pending_operations(sandbox / "state")


def test_bind_refuses_host_usage_unless_forced_and_accepts_interface_names(sandbox):
    refused = invoke("bind", "eth1", "pci-stub", sandbox=sandbox)
    assert refused.code == 3 and "0000:03:00.1" in refused.error
    nvme = invoke("bind", "nvme0n1", "xhci_hcd", sandbox=sandbox)
    assert nvme.code == 3 and "mounted on /" in nvme.error and "--force overrides" in nvme.error
    assert driver(sandbox, "0000:01:00.0") == "nvme"
    forced = ok("bind", "-f", "nvme0n1", "xhci_hcd", "--dry-run", sandbox=sandbox)
    assert "FORCED past a safety refusal: 0000:01:00.0: host-usage" in forced.err
    assert f"echo 0000:01:00.0 > {sandbox}/sys/bus/pci/drivers/nvme/unbind" in forced.out
    assert ok("rebind", "nvme0n1", sandbox=sandbox).out.endswith("already with nvme; nothing to do\n")
    unknown = invoke("bind", "nosuch0", "igb", sandbox=sandbox)
    assert unknown.code == 2
    bad = invoke("bind", VF, "../x", sandbox=sandbox)
    assert bad.code == 2


def test_a_missing_module_is_loaded_unless_told_not_to(sandbox):
    from xenpciback_cli.sandbox.host import open_sandbox

    host = open_sandbox(sandbox)
    host.kernel.unload_module("igbvf")
    assert "igbvf" not in host.loaded_drivers() and driver(sandbox, VF) is None
    failed = invoke("bind", VF, "igbvf", "--no-load", sandbox=sandbox)
    assert failed.code == 1 and "not loaded" in failed.error
    dry = ok("bind", VF, "igbvf", "--dry-run", sandbox=sandbox)
    assert "would load module igbvf" in dry.err and "igbvf" not in host.loaded_drivers()
    loaded = ok("bind", VF, "igbvf", sandbox=sandbox)
    assert "loaded module igbvf (driver igbvf)" in loaded.err
    assert driver(sandbox, VF) == "igbvf"
    host.kernel.unload_module("pciback")
    # Without the kernel's pciback a plain hide picks pci-stub (serve is the backend); naming
    # pciback loads its module.
    seized = ok("hide", VF, "--driver", "pciback", sandbox=sandbox)
    assert "loaded module xen-pciback (driver pciback)" in seized.err and driver(sandbox, VF) == "pciback"
    unknown = invoke("bind", VF, "nosuchdrv", sandbox=sandbox)
    assert unknown.code == 1 and "modprobe nosuchdrv failed" in unknown.error


@pytest.mark.parametrize("after", [0, 1, 2])
def test_an_interrupted_bind_is_finished_by_recover(sandbox, after):
    from helpers.cli import script

    killed = script("bind", VF, "igb", sandbox=sandbox,
                    env={"XEN_PCIBACK_TEST_KILL_AFTER_WRITES": str(after)})
    assert killed.code != 0
    [entry] = pending_operations(sandbox / "state")
    assert entry.op == "bind" and entry.bdf == Bdf.parse(VF)
    ok("recover", sandbox=sandbox)
    assert not pending_operations(sandbox / "state")
    # igb's id table does not match the VF: the override makes igb's probe the only one tried,
    # and it refuses; the device ends unbound, as 'driverctl set-override' leaves it.
    assert driver(sandbox, VF) in (None, "igb")


def test_a_bind_entry_is_validated_like_the_others():
    from xenpciback_cli.engine import statestore as st
    from xenpciback_cli.engine.journal import JournalEntry, PlannedWrite

    steps = [PlannedWrite(f"bus/pci/devices/{VF}/driver_override", "igb", "set driver_override to igb")]
    good = JournalEntry("bind", Bdf.parse(VF), "igbvf", "igb", "override", steps).to_json()
    assert JournalEntry.from_json(good).target_driver == "igb"
    for key, value in (("target_driver", "../x"), ("op", "bindx")):
        with pytest.raises(st.Invalid):
            JournalEntry.from_json({**good, key: value})
    other = dict(good, steps=[{"path": f"bus/pci/devices/{VF}/driver_override", "value": "nvme",
                               "description": "x"}])
    with pytest.raises(st.Invalid):  # an override value other than the entry's own target
        JournalEntry.from_json(other)


def test_bind_and_rebind_say_whether_they_changed_anything(sandbox):
    """Idempotent for a fleet tool: the second of two identical commands changes nothing."""
    assert ok("--json", "bind", VF, "pci-stub", sandbox=sandbox).json()["devices"][0]["changed"] is True
    assert ok("--json", "rebind", VF, sandbox=sandbox).json()["devices"][0]["changed"] is True
    assert driver(sandbox, VF) == "igbvf"
    assert ok("--json", "rebind", VF, sandbox=sandbox).json()["devices"][0]["changed"] is False

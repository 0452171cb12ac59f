"""Issue 9, items 2, 4 and 5 for hide / unhide / recover / restore, on the sandbox:

* never the wrong device: a stale or planted journal entry, or a record, at an address that now
  holds another device (or one the host uses) is refused before any write; bridges are not
  endpoints;
* the original driver is never lost: a seize driver is never recorded as the original, a
  re-seize keeps the first record, a plain unhide keeps what ``--rebind`` needs, recover always
  ends in a stated state;
* validate before the first write: bad config files, corrupt or hostile state never leave a
  device half done, and a driver name never becomes a path.
"""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest

from xenpciback_cli.engine.identity import identity_of
from xenpciback_cli.engine.journal import Journal, JournalEntry, PlannedWrite, pending_operations
from xenpciback_cli.engine.preflight import check_hide, device_kind, pcie_port_type
from xenpciback_cli.engine.records import drop_record, load_records, put_record, records_path
from xenpciback_cli.errors import InputError
from xenpciback_cli.pci.device import PciDevice
from xenpciback_cli.sandbox.host import open_sandbox
from xenpciback_cli.pci.address import Bdf

from helpers.cli import invoke

NIC0, NVME, XHCI, HOST_BRIDGE, ROOT_PORT = (Bdf.parse(a) for a in
                                            ("03:00.0", "01:00.0", "00:14.0", "00:00.0", "00:1c.0"))


def state(sandbox):
    return sandbox / "state"


def devices(sandbox):
    host = open_sandbox(sandbox)
    return [(d.bdf, d.driver, d.driver_override) for d in host.devices()], list(host.pciback_slots())


def plant(sandbox, bdf, *, op="hide", original="igb", identity=None, done=1, rebind=False):
    """A journal entry as a crashed hide (or unhide) of a NIC would leave it, at ``bdf``."""
    if op == "hide":
        steps = [PlannedWrite(f"bus/pci/devices/{bdf}/driver_override", "pciback", "set driver_override to pciback"),
                 PlannedWrite(f"bus/pci/drivers/{original}/unbind", str(bdf), f"unbind from {original}"),
                 PlannedWrite("bus/pci/drivers_probe", str(bdf), "probe, binding pciback")]
    else:
        steps = [PlannedWrite(f"bus/pci/devices/{bdf}/driver_override", "\n", "clear driver_override"),
                 PlannedWrite("bus/pci/drivers/pciback/unbind", str(bdf), "unbind from pciback"),
                 PlannedWrite(f"bus/pci/drivers/{original}/bind", str(bdf), f"bind {original}")]
    entry = JournalEntry(op, bdf, original, "pciback", "override", steps, done=done, rebind=rebind,
                         identity=identity, pid=0)
    Journal(state(sandbox)).save(entry)
    return entry


# -- item 2: never the wrong device -------------------------------------------------------------
def test_planted_entry_at_the_root_nvme_is_refused(sandbox):
    plant(sandbox, NVME)  # no identity, a NIC's driver: exactly what a stale or planted file looks like
    before = devices(sandbox)
    run = invoke("--sandbox", sandbox, "recover")
    assert run.code == 3, (run.output, run.error)
    assert "refusing to recover hide 0000:01:00.0" in run.error
    assert "host uses" in run.error and "mounted on /" in run.error
    assert devices(sandbox) == before  # nothing written: still nvme, no override
    assert [e.bdf for e in pending_operations(state(sandbox))] == [NVME]  # left for a person to judge
    assert invoke("--sandbox", sandbox, "hide", "03:00.0").code == 0  # other devices are not blocked


def test_planted_entry_with_another_identity_is_refused(sandbox):
    nic = identity_of(open_sandbox(sandbox), NIC0)
    for bdf, _found in ((XHCI, "104c:8241"), (NVME, "144d:a826")):
        plant(sandbox, bdf, identity=nic, original="xhci_hcd" if bdf == XHCI else "nvme")
    before = devices(sandbox)
    run = invoke("--sandbox", sandbox, "recover")
    assert run.code == 3
    assert "vendor:device 8086:10c9 recorded, 104c:8241 found" in run.error
    assert "vendor:device 8086:10c9 recorded, 144d:a826 found" in run.error
    assert devices(sandbox) == before


def crash_after_unbind(sandbox):
    """What a hide of NIC0 leaves when killed right after its unbind: driverless, override set."""
    host = open_sandbox(sandbox)
    host.set_driver_override(NIC0, "pciback")
    host.unbind(NIC0, "igb")
    assert host.device(NIC0).driver is None


def test_entry_without_identity_is_rolled_back_never_completed(sandbox):
    crash_after_unbind(sandbox)
    plant(sandbox, NIC0, done=2)  # an entry from before identities, or a forged one
    run = invoke("--sandbox", sandbox, "--json", "recover")
    assert run.code == 0, run.error
    [outcome] = json.loads(run.output)["operations"]
    assert outcome["action"] == "rolled back" and "no device identity" in outcome["reason"]
    device = open_sandbox(sandbox).device(NIC0)
    assert (device.driver, device.driver_override) == ("igb", None)
    assert load_records(state(sandbox)) == {} and pending_operations(state(sandbox)) == []
    assert json.loads(invoke("--sandbox", sandbox, "--json", "recover").output)["operations"] == []


def test_entry_with_matching_identity_is_completed(sandbox):
    identity = identity_of(open_sandbox(sandbox), NIC0)
    crash_after_unbind(sandbox)
    plant(sandbox, NIC0, done=2, identity=identity)
    run = invoke("--sandbox", sandbox, "--json", "recover")
    assert run.code == 0, run.error
    assert json.loads(run.output)["operations"][0]["action"] == "completed"
    record = load_records(state(sandbox))[NIC0]
    assert (record.original_driver, record.identity) == ("igb", identity)
    assert open_sandbox(sandbox).device(NIC0).driver == "pciback"


def test_hide_records_the_identity(sandbox):
    assert invoke("--sandbox", sandbox, "hide", "03:00.0").code == 0
    assert load_records(state(sandbox))[NIC0].identity == identity_of(open_sandbox(sandbox), NIC0)


def test_restore_refuses_an_address_that_holds_another_device(sandbox, tmp_path):
    config = tmp_path / "seized.toml"
    assert invoke("--sandbox", sandbox, "hide", "--persist", "--config", config, "03:00.0").code == 0
    host = open_sandbox(sandbox)  # a reboot: the host driver has it again, the record stayed
    host.set_driver_override(NIC0, None)
    host.unbind(NIC0, "pciback")
    host.bind(NIC0, "igb")
    record = load_records(state(sandbox))[NIC0]
    put_record(state(sandbox), dataclasses.replace(record, identity=identity_of(host, NVME)))
    run = invoke("--sandbox", sandbox, "restore", "--config", config)
    assert run.code == 3
    assert "not the device recorded for this address" in run.output
    assert "vendor:device 144d:a826 recorded, 8086:10c9 found" in run.output
    assert open_sandbox(sandbox).device(NIC0).driver == "igb"


def test_bridges_are_refused_even_forced_root_ports_warned(sandbox):
    for args in (("hide", "00:00.0"), ("hide", "--force", "00:00.0")):
        run = invoke("--sandbox", sandbox, *args)
        assert run.code == 3 and "device-kind: a host bridge" in run.error
        assert "--force" not in run.error
    host = open_sandbox(sandbox)
    assert host.device(HOST_BRIDGE).driver is None and host.device(HOST_BRIDGE).driver_override is None
    [kind] = [c for c in check_hide(host, ROOT_PORT, "pciback", records={}).checks if c.name == "device-kind"]
    assert kind.verdict == "warn" and "PCIe root port" in kind.detail
    [kind] = [c for c in check_hide(host, NIC0, "pciback", records={}).checks if c.name == "device-kind"]
    assert kind.verdict == "ok"


class _Config:
    def __init__(self, config: bytes) -> None:
        self.config = config

    def read_config(self, bdf, offset=0, length=None):
        return self.config


def _bridge_config(port_type: int) -> bytes:
    config = bytearray(256)
    config[0x06] = 0x10  # capability list
    config[0x34] = 0x40
    config[0x40:0x44] = bytes([0x01, 0x50, 0x03, 0x00])  # power management, next 0x50
    config[0x50:0x54] = bytes([0x10, 0x00, (port_type << 4) | 2, 0x00])  # PCI Express
    return bytes(config)


def test_device_kind_tells_root_ports_from_other_bridges():
    bridge = PciDevice(Bdf(0, 5, 0, 0), 0x8086, 0x1234, 0x060400, 1, header_type=1)
    assert pcie_port_type(_bridge_config(4)) == 4
    assert device_kind(_Config(_bridge_config(4)), bridge).verdict == "warn"  # type: ignore[arg-type]
    downstream = device_kind(_Config(_bridge_config(6)), bridge)  # type: ignore[arg-type]
    assert (downstream.verdict, downstream.forceable) == ("refuse", False)
    unreadable = device_kind(_Config(_bridge_config(4)[:64]), bridge)  # type: ignore[arg-type]
    assert unreadable.verdict == "refuse" and "could not read" in unreadable.detail
    cardbus = PciDevice(Bdf(0, 5, 0, 0), 0x1180, 0x0476, 0x060700, 1, header_type=2)
    assert device_kind(_Config(b""), cardbus).verdict == "refuse"  # type: ignore[arg-type]


# -- item 4: the original driver is never lost --------------------------------------------------
def test_force_over_pci_stub_keeps_the_host_original(sandbox):
    assert invoke("--sandbox", sandbox, "hide", "--driver", "pci-stub", "03:00.0").code == 0
    run = invoke("--sandbox", sandbox, "hide", "--force", "03:00.0")
    assert run.code == 0, run.error
    record = load_records(state(sandbox))[NIC0]
    assert (record.original_driver, record.target_driver) == ("igb", "pciback")
    assert open_sandbox(sandbox).device(NIC0).driver == "pciback"
    assert invoke("--sandbox", sandbox, "unhide", "--rebind", "03:00.0").code == 0
    assert open_sandbox(sandbox).device(NIC0).driver == "igb"


def test_a_seize_driver_is_never_recorded_as_original(sandbox):
    assert invoke("--sandbox", sandbox, "hide", "--driver", "pci-stub", "03:00.0").code == 0
    drop_record(state(sandbox), NIC0)  # bound to pci-stub by someone else: no record of ours
    assert invoke("--sandbox", sandbox, "hide", "--force", "03:00.0").code == 0
    assert load_records(state(sandbox))[NIC0].original_driver is None
    run = invoke("--sandbox", sandbox, "unhide", "--rebind", "03:00.0")
    assert run.code == 0, run.error
    assert open_sandbox(sandbox).device(NIC0).driver == "igb"  # the kernel's probe found it
    assert pending_operations(state(sandbox)) == []


def test_a_legacy_record_naming_a_seize_driver_does_not_block(sandbox):
    assert invoke("--sandbox", sandbox, "hide", "03:00.0").code == 0
    record = load_records(state(sandbox))[NIC0]
    put_record(state(sandbox), dataclasses.replace(record, original_driver="pci-stub"))
    run = invoke("--sandbox", sandbox, "unhide", "--rebind", "03:00.0")
    assert run.code == 0, run.error
    assert open_sandbox(sandbox).device(NIC0).driver == "igb"
    assert pending_operations(state(sandbox)) == [] and load_records(state(sandbox)) == {}


def test_reseize_after_plain_unhide_keeps_the_first_record(sandbox):
    assert invoke("--sandbox", sandbox, "hide", "03:00.0").code == 0
    assert invoke("--sandbox", sandbox, "unhide", "03:00.0").code == 0
    assert open_sandbox(sandbox).device(NIC0).driver is None
    assert invoke("--sandbox", sandbox, "hide", "03:00.0").code == 0
    record = load_records(state(sandbox))[NIC0]
    assert (record.original_driver, record.released) == ("igb", False)
    assert invoke("--sandbox", sandbox, "unhide", "--rebind", "03:00.0").code == 0
    assert open_sandbox(sandbox).device(NIC0).driver == "igb"


def test_recover_ends_a_bind_it_cannot_do_in_a_stated_state(sandbox):
    assert invoke("--sandbox", sandbox, "hide", "03:00.0").code == 0
    host = open_sandbox(sandbox)
    host.set_driver_override(NIC0, None)
    host.unbind(NIC0, "pciback")  # an unhide --rebind killed here, its record naming nvme
    record = load_records(state(sandbox))[NIC0]
    put_record(state(sandbox), dataclasses.replace(record, original_driver="nvme"))
    plant(sandbox, NIC0, op="unhide", original="nvme", identity=record.identity, done=2, rebind=True)
    run = invoke("--sandbox", sandbox, "--json", "recover")
    assert run.code == 0, run.error
    [outcome] = json.loads(run.output)["operations"]
    assert outcome["action"] == "completed" and "probe gave it to igb" in outcome["reason"]
    assert open_sandbox(sandbox).device(NIC0).driver == "igb"
    assert pending_operations(state(sandbox)) == []
    assert json.loads(invoke("--sandbox", sandbox, "--json", "recover").output)["operations"] == []


def test_recover_with_no_driver_to_bind_leaves_it_unbound_and_says_so(sandbox):
    assert invoke("--sandbox", sandbox, "hide", "03:00.0").code == 0
    host = open_sandbox(sandbox)
    host.set_driver_override(NIC0, None)
    host.unbind(NIC0, "pciback")
    identity = load_records(state(sandbox))[NIC0].identity
    plant(sandbox, NIC0, op="unhide", original="nvme", identity=identity, done=2, rebind=True)
    with host.kernel.locked() as kernel:  # no driver the probe could find
        kernel["driver_order"].remove("igb")
    run = invoke("--sandbox", sandbox, "--json", "recover")
    assert run.code == 0, run.error
    [outcome] = json.loads(run.output)["operations"]
    assert outcome["action"] == "left unbound" and "unhide --rebind 0000:03:00.0" in outcome["reason"]
    assert pending_operations(state(sandbox)) == []
    assert load_records(state(sandbox))[NIC0].released is True


def test_missing_target_driver_is_an_error_not_a_refusal(sandbox):
    shutil.rmtree(sandbox / "sys/bus/pci/drivers/vfio-pci")
    for bdf in ("01:00.0", "03:00.0"):  # in use or not: --force would not help either way
        run = invoke("--sandbox", sandbox, "hide", "--driver", "vfio-pci", bdf)
        assert run.code == 1, run.error
        assert "vfio-pci is not loaded (modprobe vfio-pci)" in run.error and "--force" not in run.error
    assert open_sandbox(sandbox).device(NVME).driver == "nvme"


# -- item 5: validate before the first write ----------------------------------------------------
def test_unhide_with_a_binary_config_writes_nothing(sandbox, tmp_path):
    assert invoke("--sandbox", sandbox, "hide", "03:00.0").code == 0
    config = tmp_path / "binary.toml"
    config.write_bytes(bytes(range(256)) * 4)
    run = invoke("--sandbox", sandbox, "unhide", "--config", config, "03:00.0")
    assert run.code == 2 and str(config) in run.error
    assert open_sandbox(sandbox).device(NIC0).driver == "pciback"
    assert NIC0 in load_records(state(sandbox)) and pending_operations(state(sandbox)) == []


def test_persist_to_a_missing_directory_writes_nothing(sandbox, tmp_path):
    run = invoke("--sandbox", sandbox, "hide", "--persist", "--config", tmp_path / "no" / "such" / "x.toml", "03:00.0")
    assert run.code == 2 and "does not exist" in run.error
    assert open_sandbox(sandbox).device(NIC0).driver == "igb"
    assert not (tmp_path / "no").exists()


def test_restore_with_a_missing_config_is_an_error(sandbox, tmp_path):
    run = invoke("--sandbox", sandbox, "restore", "--config", tmp_path / "nonexistent.toml")
    assert run.code == 2


def test_a_driver_name_from_state_never_becomes_a_path(sandbox):
    assert invoke("--sandbox", sandbox, "hide", "03:00.0").code == 0
    path = records_path(state(sandbox), NIC0)
    data = json.loads(path.read_text())
    data["original_driver"] = "../../../../tmp"
    path.write_text(json.dumps(data))
    run = invoke("--sandbox", sandbox, "unhide", "--rebind", "03:00.0")
    assert run.code == 2
    assert open_sandbox(sandbox).device(NIC0).driver == "pciback"
    assert pending_operations(state(sandbox)) == []


def test_host_writers_refuse_what_is_not_a_name(sandbox):
    host = open_sandbox(sandbox)
    attempted = []
    host.write_hooks.append(attempted.append)
    for call in (lambda: host.bind(NIC0, "../../../tmp"), lambda: host.unbind(NIC0, "a/b"),
                 lambda: host.set_driver_override(NIC0, ".."),
                 lambda: host.write_attribute("bus/pci/../../../tmp/x", "1"),
                 lambda: host.write_attribute("/etc/passwd", "x")):
        with pytest.raises(InputError):
            call()
    assert attempted == []


def test_a_command_that_can_do_nothing_leaves_no_state_dir(sandbox):
    shutil.rmtree(state(sandbox), ignore_errors=True)
    for args in (("hide", "00:1e.7"), ("unhide", "00:1e.7"), ("hide", "--dry-run", "03:00.0")):
        run = invoke("--sandbox", sandbox, *args)
        assert run.code == (0 if "--dry-run" in args else 1), run.error
    assert not state(sandbox).exists()

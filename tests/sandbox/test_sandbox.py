"""The sandbox: its tree (read by SysfsHost and by lspci), and the simulated kernel's semantics."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys

import pytest

from helpers.cli import ok
from xenpciback_cli import errors
from xenpciback_cli.sandbox.host import SandboxHost, create_sandbox, open_sandbox
from xenpciback_cli.pci.address import Bdf

NIC0, NIC1 = Bdf.parse("03:00.0"), Bdf.parse("03:00.1")
NVME, GPU, AUDIO, XHCI = Bdf.parse("01:00.0"), Bdf.parse("02:00.0"), Bdf.parse("02:00.1"), Bdf.parse("00:14.0")


@pytest.fixture()
def sandbox(sandbox) -> SandboxHost:
    """Here the tests want the host object of conftest's sandbox copy, not its directory."""
    return open_sandbox(sandbox)


def test_required_devices_and_drivers(sandbox):
    devices = {d.bdf: d for d in sandbox.devices()}
    assert devices[NIC0].driver == "igb" and devices[NIC0].class_code == 0x020000
    assert devices[NIC1].driver == "igb" and devices[NIC0].iommu_group == devices[NIC1].iommu_group
    assert devices[NVME].driver == "nvme" and devices[NVME].class_code == 0x010802
    assert devices[GPU].class_code >> 8 == 0x0300 and devices[GPU].multifunction
    assert devices[GPU].boot_vga is True
    assert devices[AUDIO].class_code >> 8 == 0x0403
    assert devices[XHCI].class_code == 0x0C0330 and devices[XHCI].driver == "xhci_hcd"
    bridges = [d for d in devices.values() if d.is_bridge and d.header_type == 1]
    assert bridges and all(d.driver == "pcieport" for d in bridges)
    vfs = [d for d in devices.values() if d.physfn is not None]
    assert len(vfs) == 2 and all(v.physfn == NIC1 and v.driver == "igbvf" for v in vfs)
    assert devices[NIC1].virtfns == tuple(v.bdf for v in vfs) and devices[NIC1].sriov_numvfs == 2
    assert {"pciback", "pci-stub", "vfio-pci"} <= sandbox.loaded_drivers()


def test_config_space_and_resources_agree(sandbox):
    from xenpciback_cli.sandbox.configspace import decode_bars

    for device in sandbox.devices():
        config = sandbox.read_config(device.bdf)
        assert len(config) in (256, 4096)
        if device.physfn is None:
            assert int.from_bytes(config[0:2], "little") == device.vendor_id
            by_index = {r.index: r for r in device.resources}
            for bar in decode_bars(config):
                assert by_index[bar.index].start == bar.address
                assert by_index[bar.index].size & (by_index[bar.index].size - 1) == 0
                assert bar.address % by_index[bar.index].size == 0
        else:
            # A VF's own vendor/device registers read all ones; sysfs has the real ids.
            assert config[0:4] == b"\xff\xff\xff\xff" and device.device_id == 0x10CA


def test_vfs_come_from_the_pf_sriov_capability(sandbox):
    from xenpciback_cli.sandbox.configspace import sriov_info

    info = sriov_info(sandbox.read_config(NIC1))
    assert info.total_vfs == 8 and info.vf_device_id == 0x10CA
    rid = (NIC1.bus << 8) | NIC1.devfn
    expected = [Bdf.from_devfn(0, (rid + info.first_vf_offset + i * info.vf_stride) >> 8,
                               (rid + info.first_vf_offset + i * info.vf_stride) & 0xFF) for i in range(2)]
    assert list(sandbox.device(NIC1).virtfns) == expected
    # NumVFs in the PF's capability follows what sysfs says.
    assert int.from_bytes(sandbox.read_config(NIC1)[info.offset + 0x10:info.offset + 0x12], "little") == 2


def test_host_usage(sandbox):
    assert sandbox.usage(NIC0).reasons == ()
    nic1 = sandbox.usage(NIC1).network
    assert len(nic1) == 1 and "eth1" in nic1[0] and "192.168.122.10/24" in nic1[0]
    assert "default route" in nic1[0]
    block = sandbox.usage(NVME).block
    assert "block device nvme0n1p2 is mounted on /" in block
    assert any("swap" in reason for reason in block)
    assert sandbox.usage(GPU).console


def test_unbind_and_bind_semantics(sandbox):
    with pytest.raises(errors.DeviceNotFound):
        sandbox.unbind(NIC0, "nvme")  # not bound to that driver: ENODEV
    with pytest.raises(errors.DeviceBusy):
        sandbox.bind(NIC0, "igb")  # already bound: EBUSY
    sandbox.unbind(NIC0, "igb")
    assert sandbox.device(NIC0).driver is None
    assert not os.path.exists(sandbox.directory / "sys/class/net/eth0")
    with pytest.raises(errors.DeviceNotFound):
        sandbox.bind(NIC0, "nvme")  # ids do not match
    with pytest.raises(errors.DeviceNotFound):
        sandbox.bind(NIC0, "pciback")  # pciback: not in slots, no override
    with pytest.raises(errors.DeviceNotFound):
        sandbox.bind(NIC0, "pci-stub")  # no ids of its own
    with pytest.raises(errors.DeviceNotFound):
        sandbox.bind(Bdf.parse("09:00.0"), "igb")
    sandbox.bind(NIC0, "igb")
    assert sandbox.device(NIC0).driver == "igb"
    assert os.path.islink(sandbox.directory / "sys/class/net/eth0")


def test_driver_override_and_probe(sandbox):
    sandbox.unbind(NIC0, "igb")
    sandbox.set_driver_override(NIC0, "vfio-pci")
    assert sandbox.device(NIC0).driver_override == "vfio-pci"
    with pytest.raises(errors.DeviceNotFound):
        sandbox.bind(NIC0, "igb")  # an override naming another driver matches nothing
    sandbox.probe(NIC0)
    assert sandbox.device(NIC0).driver == "vfio-pci"
    sandbox.probe(NIC0)  # bound: stays
    sandbox.unbind(NIC0, "vfio-pci")
    sandbox.set_driver_override(NIC0, "none")
    sandbox.probe(NIC0)
    assert sandbox.device(NIC0).driver is None
    sandbox.set_driver_override(NIC0, None)
    assert (sandbox.directory / "sys/bus/pci/devices/0000:03:00.0/driver_override").read_text() == "(null)\n"
    sandbox.probe(NIC0)
    assert sandbox.device(NIC0).driver == "igb"


def test_vfio_refuses_bridges(sandbox):
    bridge = Bdf.parse("00:1c.0")
    sandbox.unbind(bridge, "pcieport")
    sandbox.set_driver_override(bridge, "vfio-pci")
    with pytest.raises(errors.DeviceNotFound):
        sandbox.bind(bridge, "vfio-pci")


def test_pciback_slots(sandbox):
    sandbox.pciback_new_slot(AUDIO)
    sandbox.pciback_new_slot(AUDIO)  # duplicates ignored
    assert sandbox.pciback_slots() == ["0000:02:00.1"]
    sandbox.unbind(AUDIO, "snd_hda_intel")
    sandbox.bind(AUDIO, "pciback")
    assert sandbox.device(AUDIO).driver == "pciback"
    sandbox.write_attribute("bus/pci/drivers/pciback/new_slot", "0000:03:00.*")
    assert len(sandbox.pciback_slots()) == 9
    sandbox.write_attribute("bus/pci/drivers/pciback/remove_slot", "03:00.*")
    assert sandbox.pciback_slots() == ["0000:02:00.1"]
    with pytest.raises(errors.DeviceNotFound):  # ENOENT: nothing to remove
        sandbox.pciback_remove_slot(Bdf.parse("05:00.0"))
    with pytest.raises(errors.HostError) as info:
        sandbox.write_attribute("bus/pci/drivers/pciback/new_slot", "zz:00.0")
    assert info.value.errno == 22
    # A listed device that is unbound is claimed by pciback at probe, before its own driver.
    sandbox.pciback_new_slot(NIC0)
    sandbox.unbind(NIC0, "igb")
    sandbox.probe(NIC0)
    assert sandbox.device(NIC0).driver == "pciback"
    # Through the device's driver link, as libxl writes it.
    sandbox.write_attribute("bus/pci/devices/0000:03:00.0/driver/unbind", "0000:03:00.0\n")
    assert sandbox.device(NIC0).driver is None


def test_new_id_binds_matching_devices(sandbox):
    sandbox.unbind(NIC0, "igb")
    sandbox.write_attribute("bus/pci/drivers/pci-stub/new_id", "8086 10c9")
    assert sandbox.device(NIC0).driver == "pci-stub"
    assert sandbox.device(NIC1).driver == "igb"  # bound devices are left alone
    sandbox.write_attribute("bus/pci/drivers/pci-stub/remove_id", "8086 10c9")
    with pytest.raises(errors.DeviceNotFound):
        sandbox.write_attribute("bus/pci/drivers/pci-stub/remove_id", "8086 10c9")


def test_reset(sandbox):
    sandbox.reset(NIC0)
    assert sandbox.state()["resets"] == [{"bdf": "0000:03:00.0", "method": "flr"}]
    with pytest.raises(errors.HostError):
        sandbox.write_attribute("bus/pci/devices/0000:03:00.0/reset", "2")
    (sandbox.directory / "sys/bus/pci/devices/0000:03:00.0/reset_method").write_text("\n")
    with pytest.raises(errors.HostError) as info:
        sandbox.reset(NIC0)
    assert info.value.errno == 25  # ENOTTY


def test_read_only_attributes_refuse_writes(sandbox):
    with pytest.raises(errors.PermissionDenied):
        sandbox.write_attribute("bus/pci/devices/0000:03:00.0/vendor", "0x1234")


def test_sriov_numvfs(sandbox):
    path = "bus/pci/devices/0000:03:00.0/sriov_numvfs"
    with pytest.raises(errors.HostError):
        sandbox.write_attribute(path, "9")  # above TotalVFs
    sandbox.write_attribute(path, "3")
    vfs = sandbox.device(NIC0).virtfns
    assert len(vfs) == 3 and all(sandbox.device(v).driver == "igbvf" for v in vfs)
    with pytest.raises(errors.DeviceBusy):
        sandbox.write_attribute(path, "2")
    sandbox.write_attribute(path, "0")
    assert sandbox.device(NIC0).virtfns == ()
    assert not set(vfs) & set(sandbox.addresses())
    sandbox.unbind(NIC0, "igb")
    with pytest.raises(errors.DeviceNotFound):  # ENOENT without a driver
        sandbox.write_attribute(path, "1")


def test_pf_unbind_keeps_vfs_held_by_a_stub(sandbox):
    vf0, _vf1 = sandbox.device(NIC1).virtfns
    sandbox.unbind(vf0, "igbvf")
    sandbox.set_driver_override(vf0, "pciback")
    sandbox.probe(vf0)
    sandbox.unbind(NIC1, "igb")
    assert sandbox.device(vf0).driver == "pciback" and sandbox.device(NIC1).sriov_numvfs == 2
    sandbox.unbind(vf0, "pciback")
    sandbox.bind(NIC1, "igb")
    sandbox.unbind(NIC1, "igb")
    assert sandbox.device(NIC1).virtfns == ()
    assert vf0 not in sandbox.addresses()


def test_nic_rebind_comes_back_down_without_address(sandbox):
    sandbox.unbind(NIC1, "igb")
    assert not os.path.exists(sandbox.directory / "sys/class/net/eth1")
    assert "eth1" not in (sandbox.directory / "proc/net/route").read_text()
    sandbox.bind(NIC1, "igb")
    assert sandbox.usage(NIC1).reasons == ()
    sandbox.configure_interface("eth1", up=True, addresses=["10.0.0.2/8"], routes=[("0.0.0.0/0", "10.0.0.1")])
    assert "default route" in sandbox.usage(NIC1).network[0]


def test_multi_process_writes_see_one_host(sandbox):
    """Two processes flip different devices at once; both changes land (the lock serialises)."""
    script = ("import sys; from xenpciback_cli.sandbox.host import open_sandbox; "
              "from xenpciback_cli.pci.address import Bdf\n"
              "h = open_sandbox(sys.argv[1]); b = Bdf.parse(sys.argv[2])\n"
              "for _ in range(15):\n"
              "    h.unbind(b, sys.argv[3]); h.bind(b, sys.argv[3])\n"
              "h.unbind(b, sys.argv[3])\n")
    env = dict(os.environ, PYTHONPATH=os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", ""))
    procs = [subprocess.Popen([sys.executable, "-c", script, str(sandbox.directory), bdf, drv], env=env)
             for bdf, drv in (("0000:03:00.0", "igb"), ("0000:02:00.1", "snd_hda_intel"))]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    reopened = open_sandbox(sandbox.directory)
    assert reopened.device(NIC0).driver is None and reopened.device(AUDIO).driver is None
    assert json.loads((sandbox.directory / "sandbox.json").read_text())["format"] == 1


def test_create_refuses_foreign_and_existing(tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    with pytest.raises(errors.SafetyRefusal):
        create_sandbox(foreign, force=True)
    assert (foreign / "keep.txt").read_text() == "mine"
    with pytest.raises(errors.InputError):
        open_sandbox(foreign)


def test_create_force_recreates(pristine_sandbox, tmp_path):
    target = tmp_path / "s"
    shutil.copytree(pristine_sandbox, target, symlinks=True)
    host = open_sandbox(target)
    host.unbind(NIC0, "igb")
    with pytest.raises(errors.InputError):
        create_sandbox(target)
    fresh = create_sandbox(target, force=True)
    assert fresh.device(NIC0).driver == "igb"


@pytest.mark.skipif(shutil.which("lspci") is None, reason="lspci (pciutils) not installed")
def test_lspci_reads_the_sandbox(sandbox):
    out = subprocess.run(["lspci", "-A", "linux-sysfs", "-O", f"sysfs.path={sandbox.directory}/sys/bus/pci",
                          "-D", "-n", "-k"], capture_output=True, text=True, timeout=60, check=True).stdout
    seen = {}
    current = None
    for line in out.splitlines():
        if line and not line[0].isspace():
            current = line.split()[0]
            seen[current] = {"ids": line.split()[2], "driver": None}
        elif "Kernel driver in use:" in line:
            seen[current]["driver"] = line.split(":", 1)[1].strip()
    ours = {str(d.bdf): {"ids": f"{d.vendor_id:04x}:{d.device_id:04x}", "driver": d.driver}
            for d in sandbox.devices()}
    assert seen == ours
    verbose = subprocess.run(["lspci", "-A", "linux-sysfs", "-O", f"sysfs.path={sandbox.directory}/sys/bus/pci",
                              "-vv", "-s", "03:00.0"], capture_output=True, text=True, timeout=60).stdout
    assert "Region 0: Memory at e0800000 (32-bit, non-prefetchable) [size=128K]" in verbose
    assert "MSI-X" in verbose


def test_no_two_devices_claim_the_same_addresses(sandbox):
    sandbox.write_attribute("bus/pci/devices/0000:03:00.0/sriov_numvfs", "2")
    claimed = []
    for device in sandbox.devices():
        for resource in device.resources:
            if resource.index < 6 or resource.index == 6:
                claimed.append((resource.is_io, resource.start, resource.end, str(device.bdf)))
    claimed.sort()
    for (io_a, _start_a, end_a, a), (io_b, start_b, _end_b, b) in itertools.pairwise(claimed):
        assert io_a != io_b or end_a < start_b, f"{a} and {b} overlap"


def test_random_writes_fail_typed_and_keep_the_tree_consistent(sandbox):
    """Any sequence of writes a tool (or a person) might try: typed errors only, and the driver
    links stay two-sided (device/driver <-> drivers/D/BDF) with the state file agreeing."""
    import random

    rng = random.Random(20261123)
    drivers = sorted(sandbox.loaded_drivers())
    attributes = ["bind", "unbind", "new_id", "remove_id"]
    values = ["0000:03:00.0", "0000:03:00.1\n", "0000:02:00.1", "0000:04:10.1", "03:00.0", "junk", "",
              "8086 10c9", "8086 10ca", "0000:00:1c.0", "0000:01:00.0"]
    for _ in range(250):
        bdfs = [str(b) for b in sandbox.addresses()]
        choice = rng.random()
        if choice < 0.5:
            path = f"bus/pci/drivers/{rng.choice(drivers)}/{rng.choice(attributes)}"
        elif choice < 0.6:
            path = f"bus/pci/drivers/pciback/{rng.choice(['new_slot', 'remove_slot', 'permissive'])}"
        elif choice < 0.75:
            path = "bus/pci/drivers_probe"
        else:
            attribute = rng.choice(["driver_override", "reset", "sriov_numvfs", "vendor", "enable"])
            path = f"bus/pci/devices/{rng.choice(bdfs)}/{attribute}"
            values_here = ["pciback", "\n", "vfio-pci", "1", "2", "0", "none", "igb"]
            value = rng.choice(values_here)
            try:
                sandbox.write_attribute(path, value)
            except errors.HostError:
                pass
            continue
        value = rng.choice(values + bdfs)
        try:
            sandbox.write_attribute(path, value)
        except errors.HostError:
            pass
    for device in sandbox.devices():
        if device.driver:
            assert os.path.islink(sandbox.directory / "sys/bus/pci/drivers" / device.driver / str(device.bdf))
    for driver in sandbox.loaded_drivers():
        for entry in (sandbox.directory / "sys/bus/pci/drivers" / driver).iterdir():
            if entry.is_symlink() and entry.name[0].isdigit():
                assert sandbox.device(Bdf.parse(entry.name)).driver == driver
    state = sandbox.state()
    assert sorted(state["devices"]) == [str(b) for b in sandbox.addresses()]
    for name, interface in state["interfaces"].items():
        assert sandbox.device(Bdf.parse(interface["bdf"])).driver == "igb"
        assert os.path.islink(sandbox.directory / "sys/class/net" / name)


# -- the sandbox's own lifecycle: what runs in the background for it ---------------------------

def _background(sandbox) -> list[int]:
    """Processes whose command line names this sandbox's xenstore socket (daemon and guests)."""
    from pathlib import Path

    sock = str(sandbox / "xenstore" / "socket").encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if sock in (entry / "cmdline").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


def test_init_force_stops_what_it_replaces(pristine_sandbox, tmp_path):
    import time

    target = tmp_path / "s"
    shutil.copytree(pristine_sandbox, target, symlinks=True)
    try:
        ok("--sandbox", target, "sandbox", "domain", "create", 5)
        for _ in range(100):  # a just-started process can take a moment to show its words
            if len(_background(target)) == 2:  # xenstored and domain 5's simulated guest
                break
            time.sleep(0.05)
        assert len(_background(target)) == 2
        ok("--sandbox", target, "sandbox", "init", "--force", target)
        assert _background(target) == []
        time.sleep(0.2)  # an old daemon saving its tree at exit would do it now
        assert not (target / "xenstore").exists() and not (target / "domains").exists()
        ok("--sandbox", target, "xenstore", "write", "/fresh", "1")  # a new, empty store
        assert "guest5" not in ok("--sandbox", target, "xenstore", "ls", "/").output
    finally:
        for pid in _background(target):
            os.kill(pid, 15)


def test_simulated_guests_come_back_after_sandbox_stop(pristine_sandbox, tmp_path):
    import time

    target = tmp_path / "s"
    shutil.copytree(pristine_sandbox, target, symlinks=True)
    try:
        ok("--sandbox", target, "sandbox", "domain", "create", 5)
        ok("--sandbox", target, "attach", "04:10.1", "--domid", 5, "--seize")
        for _ in range(100):  # the simulated guest connects in the background
            if ok("--sandbox", target, "--json", "status", "--domid", 5).json()["backend_state_name"] \
                    == "Connected":
                break
            time.sleep(0.05)
        out = ok("--sandbox", target, "sandbox", "stop").output
        assert "stopped 1 simulated guest(s)" in out
        assert _background(target) == []
        # The domain is still in the saved tree; its guest answers the next hot-plug again.
        out = ok("--sandbox", target, "attach", "04:10.3", "--domid", 5, "--seize", "--timeout", 8).output
        assert "hot-plugged into domain 5" in out
        assert len(_background(target)) == 2
        ok("--sandbox", target, "sandbox", "domain", "destroy", 5)
        assert len(_background(target)) == 1  # only xenstored
    finally:
        ok("--sandbox", target, "sandbox", "stop")


@pytest.mark.parametrize("umask", [0o022, 0o000])
def test_the_state_dir_is_private_like_the_real_one(tmp_path, umask):
    """S/state holds the journal and seize records (recover acts on them): 0700, as
    engine/statestore.py creates the real state dir, whatever the umask."""
    import stat

    from xenpciback_cli.engine.statestore import DIR_MODE
    from xenpciback_cli.sandbox.host import create_sandbox

    old = os.umask(umask)
    try:
        create_sandbox(tmp_path / "s")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "s" / "state").stat().st_mode) == DIR_MODE == 0o700

"""SysfsHost on temporary trees: reading devices, host-usage checks, and typed write errors."""

from __future__ import annotations

import pytest

from sysfs_tree import FakeSysfs, config_bytes
from xenpciback_cli import errors
from xenpciback_cli.host.sysfs import SysfsHost, parse_resource_file
from xenpciback_cli.pci.address import Bdf

NIC = "0000:03:00.0"
DISK = "0000:01:00.0"
GPU = "0000:02:00.0"


@pytest.fixture()
def tree(tmp_path):
    t = FakeSysfs(tmp_path)
    t.add_device("0000:00:1c.0", 0x8086, 0x27D0, 0x060400, driver="pcieport", iommu_group=1,
                 header_type=1)
    t.add_device(DISK, 0x144D, 0xA808, 0x010802, driver="nvme", parent="0000:00:1c.0",
                 iommu_group=2, numa_node=1,
                 resource="0x00000000fe000000 0x00000000fe003fff 0x0000000000140204\n"
                          + "0x0000000000000000 0x0000000000000000 0x0000000000000000\n" * 12)
    t.add_device(GPU, 0x1002, 0x7300, 0x030000, driver="amdgpu", iommu_group=3, boot_vga=True,
                 header_type=0x80)
    t.add_device("0000:02:00.1", 0x1002, 0xAAE8, 0x040300, driver="snd_hda_intel", iommu_group=3)
    t.add_device(NIC, 0x8086, 0x10C9, 0x020000, driver="pciback", iommu_group=4,
                 override="pciback", extra={"sriov_numvfs": "0", "sriov_totalvfs": "8",
                                            "reset_method": "flr bus"})
    t.add_device("0000:03:00.1", 0x8086, 0x10C9, 0x020000, driver="igb", iommu_group=4)
    return t


def host(tree):
    return SysfsHost(str(tree.sys))


def test_reads_ids_driver_group_and_resources(tree):
    h = host(tree)
    assert [str(d.bdf) for d in h.devices()] == [
        "0000:00:1c.0", DISK, GPU, "0000:02:00.1", NIC, "0000:03:00.1"]
    disk = h.device(Bdf.parse(DISK))
    assert (disk.vendor_id, disk.device_id, disk.class_code) == (0x144D, 0xA808, 0x010802)
    assert disk.driver == "nvme" and disk.iommu_group == 2 and disk.numa_node == 1
    assert disk.driver_override is None
    assert [(r.index, r.start, r.size, r.is_mem, r.is_64bit) for r in disk.resources] == [
        (0, 0xFE000000, 0x4000, True, True)]
    nic = h.device(Bdf.parse(NIC))
    assert nic.driver == "pciback" and nic.driver_override == "pciback"
    assert nic.sriov_totalvfs == 8 and nic.sriov_numvfs == 0 and nic.reset_methods == ("flr", "bus")
    gpu = h.device(Bdf.parse(GPU))
    assert gpu.multifunction and gpu.header_type == 0 and gpu.boot_vga is True
    bridge = h.device(Bdf.parse("0000:00:1c.0"))
    assert bridge.is_bridge and bridge.header_type == 1
    assert gpu.sysfs_path.endswith("/devices/pci0000:00/" + GPU)
    assert disk.sysfs_path.endswith("/0000:00:1c.0/" + DISK)


def test_missing_numa_and_revision_fall_back_to_config(tmp_path):
    t = FakeSysfs(tmp_path)
    t.add_device("0000:05:00.0", 0x1234, 0x5678, 0xFF0000, revision=0x42, revision_file=False)
    device = SysfsHost(str(t.sys)).device(Bdf.parse("05:00.0"))
    assert device.revision == 0x42 and device.numa_node is None and device.driver is None
    assert device.iommu_group is None


def test_unknown_device_is_typed_not_found(tree):
    with pytest.raises(errors.DeviceNotFound) as info:
        host(tree).device(Bdf.parse("0000:09:00.0"))
    assert "0000:09:00.0" in str(info.value)


def test_read_config_reports_what_the_file_holds(tree):
    h = host(tree)
    data = h.read_config(Bdf.parse(NIC))
    assert len(data) == 256 and data[:4] == bytes.fromhex("8680c910")
    assert h.read_config(Bdf.parse(NIC), 8, 4) == bytes([1, 0, 0, 2])
    (tree.device_dir(NIC) / "config").write_bytes(config_bytes(0x8086, 0x10C9, 0x020000)[:64])
    assert len(h.read_config(Bdf.parse(NIC))) == 64


def test_drivers_override_support_and_slots(tree):
    h = host(tree)
    assert {"nvme", "amdgpu", "pciback", "igb"} <= h.loaded_drivers()
    assert h.supports_driver_override(Bdf.parse(NIC))
    assert h.pciback_slots() == []
    (tree.pci / "drivers" / "pciback" / "slots").write_text("0000:03:00.0\n0000:03:00.1\n")
    assert h.pciback_slots() == ["0000:03:00.0", "0000:03:00.1"]


def test_usage_mounted_partition_and_swap(tree):
    tree.add_block(DISK, "nvme0n1", "259:0", {"nvme0n1p1": "259:1", "nvme0n1p2": "259:2"})
    tree.write_proc("mounts", "/dev/nvme0n1p2 / ext4 rw 0 0\n/dev/sda1 /data ext4 rw 0 0\n")
    tree.write_proc("swaps", "Filename\tType\tSize\tUsed\tPriority\n/dev/nvme0n1p1 partition 100 0 -2\n")
    usage = host(tree).usage(Bdf.parse(DISK))
    assert usage.block == ("block device nvme0n1p2 is mounted on /", "block device nvme0n1p1 is active swap")
    assert usage.in_use
    assert not host(tree).usage(Bdf.parse(NIC)).in_use


def test_usage_by_mountinfo_major_minor_and_device_mapper(tree):
    tree.add_block(DISK, "nvme0n1", "259:0", {"nvme0n1p3": "259:3"})
    tree.add_dm("dm-0", "vg-root", "253:0", below="nvme0n1p3")
    tree.write_proc("mounts", "/dev/mapper/vg-root /srv xfs rw 0 0\n")
    usage = host(tree).usage(Bdf.parse(DISK))
    assert usage.block == ("block device dm-0 is mounted on /srv",)
    tree.write_proc("mounts", "")
    (tree.proc / "self").mkdir()
    tree.write_proc("self/mountinfo", "30 1 259:3 / /boot rw - ext4 /dev/root rw\n")
    assert host(tree).usage(Bdf.parse(DISK)).block == ("block device nvme0n1p3 is mounted on /boot",)


def test_usage_network_up_and_routes(tree):
    tree.add_net("0000:03:00.1", "eth1", up=False)
    h = host(tree)
    assert h.usage(Bdf.parse("0000:03:00.1")).network == ()
    tree.write_proc("net/route", "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
                    "eth1\t00000000\t0102A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n")
    assert h.usage(Bdf.parse("0000:03:00.1")).network == (
        "network interface eth1 carries the default route",)
    (tree.sys / "class" / "net" / "eth1" / "operstate").write_text("up\n")
    tree.write_proc("net/if_inet6", "fd000000000000000000000000000002 02 40 00 80 eth1\n"
                    "fe800000000000000000000000000001 02 40 20 80 eth1\n")
    reasons = h.usage(Bdf.parse("0000:03:00.1")).network
    assert reasons == ("network interface eth1 is up, has address fd00::2/64, carries the default route",)


def test_usage_console(tree):
    usage = host(tree).usage(Bdf.parse(GPU))
    assert usage.console == ("it is the boot VGA device (the firmware/boot console)",)
    tree.add_framebuffer("0000:02:00.1")
    assert host(tree).usage(Bdf.parse("0000:02:00.1")).console == ("framebuffer fb0 is on it (console)",)


def test_usage_without_procfs_is_unknown_not_in_use(tmp_path):
    t = FakeSysfs(tmp_path / "root")
    t.add_device(DISK, 0x144D, 0xA808, 0x010802, driver="nvme")
    t.add_block(DISK, "nvme0n1", "259:0")
    import shutil

    shutil.rmtree(t.proc)
    h = SysfsHost(str(t.sys))
    assert h.proc_root is None
    usage = h.usage(Bdf.parse(DISK))
    assert not usage.in_use and usage.unknown


def test_writes_go_to_the_file_and_errors_are_typed(tree):
    h = host(tree)
    h.unbind(Bdf.parse("0000:03:00.1"), "igb")
    assert (tree.pci / "drivers" / "igb" / "unbind").read_text() == "0000:03:00.1"
    with pytest.raises(errors.DeviceNotFound) as info:
        h.bind(Bdf.parse("0000:03:00.1"), "vfio-pci")  # driver not loaded: no such file
    assert info.value.bdf == Bdf.parse("0000:03:00.1") and "vfio-pci/bind" in info.value.path
    (tree.pci / "drivers" / "igb" / "bind").unlink()
    (tree.pci / "drivers" / "igb" / "bind").mkdir()
    with pytest.raises(errors.HostError):
        h.bind(Bdf.parse("0000:03:00.1"), "igb")


def test_parse_resource_file_skips_empty_lines_keeps_index():
    text = ("0x0000000000000000 0x0000000000000000 0x0000000000000000\n"
            "0x000000000000e000 0x000000000000e0ff 0x0000000000040101\n")
    (res,) = parse_resource_file(text)
    assert res.index == 1 and res.is_io and res.size == 256


def test_udev_hwdb_names_win_over_pci_ids(tree):
    h = host(tree)
    h._hwdb_names[NIC] = ("Vendor From Hwdb", "Model From Hwdb")
    device = h.device(Bdf.parse(NIC))
    assert (device.vendor_name, device.device_name) == ("Vendor From Hwdb", "Model From Hwdb")
    other = h.device(Bdf.parse("0000:03:00.1"))
    assert other.device_name != "Model From Hwdb"


def test_real_root_is_enumerated_through_pyudev_when_present():
    import os

    if not os.path.isdir("/sys/bus/pci/devices"):
        pytest.skip("no PCI bus here")
    h = SysfsHost("/sys")
    assert h.is_real and h.proc_root == "/proc"
    assert [str(b) for b in h.addresses()] == sorted(os.listdir("/sys/bus/pci/devices"))


def test_wide_vmd_domains_are_listed(tmp_path):
    t = FakeSysfs(tmp_path)
    t.add_device("10000:e1:00.0", 0x8086, 0x0A54, 0x010802, driver="nvme")
    t.add_device("0000:00:0e.0", 0x8086, 0x467F, 0x010400, driver="vmd")
    assert [str(b) for b in SysfsHost(str(t.sys)).addresses()] == ["0000:00:0e.0", "10000:e1:00.0"]


def test_a_write_carries_the_device_it_is_about(tree):
    h = host(tree)
    seen = []
    h.write_hooks.append(seen.append)
    h.set_driver_override(Bdf.parse("0000:03:00.1"), "pciback")
    h.probe(Bdf.parse("0000:03:00.1"))
    h.write_attribute("bus/pci/drivers_probe", "0000:03:00.1")  # a raw write names no device
    assert [(w.path, w.bdf) for w in seen] == [
        ("bus/pci/devices/0000:03:00.1/driver_override", Bdf.parse("0000:03:00.1")),
        ("bus/pci/drivers_probe", Bdf.parse("0000:03:00.1")),
        ("bus/pci/drivers_probe", None)]

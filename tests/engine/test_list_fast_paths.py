"""The shortcuts ``list`` takes for speed must give the same answers as the long way round."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from sysfs_tree import FakeSysfs, build_many

from xenpciback_cli.engine.inventory import inventory
from xenpciback_cli.host.sysfs import SysfsHost

SHOWN = ("bdf", "vendor_id", "device_id", "class_code", "driver", "iommu_group", "vendor_name",
         "device_name", "class_name")


def shown(device):
    return tuple(getattr(device, name) for name in SHOWN)


def test_brief_devices_agree_with_the_full_load_on_every_shown_attribute(tmp_path):
    tree = build_many(tmp_path, 40)
    tree.add_device("0000:7f:00.0", 0x10EC, 0x8168, 0x020000)  # no driver, no IOMMU group
    host = SysfsHost(str(tree.sys))
    full = host.devices()
    brief = host.brief_devices()
    assert len(full) == len(brief) > 40
    assert [shown(d) for d in brief] == [shown(d) for d in full]
    assert any(d.driver is None and d.iommu_group is None for d in brief)
    assert any(d.driver and d.iommu_group is not None for d in brief)


def test_brief_load_falls_back_to_the_full_load_when_attributes_are_missing(tmp_path):
    tree = FakeSysfs(tmp_path)
    tree.add_device("0000:01:00.0", 0x8086, 0x10D3, 0x020000, driver="e1000e", iommu_group=3)
    os.unlink(tree.device_dir("0000:01:00.0") / "class")  # the config header still has it
    os.unlink(tree.device_dir("0000:01:00.0") / "uevent")
    host = SysfsHost(str(tree.sys))
    (brief,), (full,) = host.brief_devices(), host.devices()
    assert brief == full and brief.class_code == 0x020000


def test_brief_load_takes_the_ids_from_uevent_in_one_read(tmp_path):
    """uevent's PCI_ID/PCI_CLASS (the kernel's values) replace three reads; a malformed or
    partial uevent falls back to the attribute files."""
    tree = FakeSysfs(tmp_path)
    tree.add_device("0000:01:00.0", 0x8086, 0x10D3, 0x020000, driver="e1000e", iommu_group=3)
    tree.add_device("0000:02:00.0", 0x8086, 0x10D3, 0x020000)
    tree.add_device("0000:03:00.0", 0x8086, 0x10D3, 0x020000)
    one = tree.device_dir("0000:01:00.0")
    for name in ("vendor", "device", "class"):  # only uevent can answer now
        os.unlink(one / name)
    (tree.device_dir("0000:02:00.0") / "uevent").write_text("PCI_CLASS=20000\nPCI_ID=zz:10D3\n")
    (tree.device_dir("0000:03:00.0") / "uevent").write_text("DRIVER=e1000e\n")
    host = SysfsHost(str(tree.sys))
    devices = host.brief_devices()
    assert [(d.vendor_id, d.device_id, d.class_code) for d in devices] == [(0x8086, 0x10D3, 0x020000)] * 3
    assert devices[0].driver == "e1000e" and devices[0].device_name


def test_inventory_brief_rows_match_full_rows_for_filters(tmp_path):
    from xenpciback_cli.engine.inventory import ClassFilter

    tree = build_many(tmp_path, 24)
    host = SysfsHost(str(tree.sys))
    for options in ({}, {"class_filter": ClassFilter.parse("bridge")}, {"seized_only": True}):
        full = inventory(host, **options)
        brief = inventory(host, brief=True, **options)
        assert [(shown(r.device), r.state, r.domid) for r in brief] == \
            [(shown(r.device), r.state, r.domid) for r in full]


def test_json_list_keeps_every_attribute(tmp_path):
    tree = FakeSysfs(tmp_path)
    tree.add_device("0000:01:00.0", 0x8086, 0x10D3, 0x020000, driver="e1000e", iommu_group=3,
                    numa_node=1)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    out = subprocess.run([sys.executable, "-m", "xenpciback_cli", "--sysfs-root", str(tree.sys),
                          "--json", "list"], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    (row,) = json.loads(out.stdout)
    assert row["numa_node"] == 1 and row["revision"] == "0x01" and row["iommu_group"] == 3
    assert out.stdout.endswith("]\n")


def test_no_xenstore_path_means_no_client(tmp_path, monkeypatch):
    from xenpciback_cli.xenstore.transport import any_candidate_exists

    assert not any_candidate_exists({"XENSTORED_PATH": str(tmp_path / "none")})
    (tmp_path / "sock").touch()
    assert any_candidate_exists({"XENSTORED_PATH": str(tmp_path / "sock")})


def test_attribute_reads_are_whole_beyond_one_page(tmp_path):
    from xenpciback_cli.host.sysfs import _read

    for length in (0, 7, 4095, 4096, 4097, 70000):  # 64 KiB-page kernels have longer attributes
        path = tmp_path / f"attr{length}"
        path.write_text("a" * length + "\n")
        assert _read(str(path)) == "a" * length
    assert _read(str(tmp_path / "absent")) is None

"""``xen-pciback list`` in this process (tests/helpers/cli.py) and through the installed console script."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from helpers.cli import invoke, script
from xenpciback_cli.app import Application, Settings
from xenpciback_cli.sandbox.host import open_sandbox
from xenpciback_cli.pci.address import Bdf

REPO = Path(__file__).resolve().parents[2]
JSON_KEYS = {"bdf", "vendor_id", "device_id", "class", "driver", "state", "domid", "original_driver",
             "iommu_group", "vendor_name", "device_name", "numa_node", "driver_override", "physfn"}




def test_json_lists_every_device(sandbox):
    result = invoke("--sandbox", str(sandbox), "--json", "list")
    assert result.code == 0
    rows = json.loads(result.output)
    host = open_sandbox(sandbox)
    assert [r["bdf"] for r in rows] == [str(b) for b in host.addresses()]
    by_bdf = {r["bdf"]: r for r in rows}
    nic = by_bdf["0000:03:00.0"]
    assert set(nic) >= JSON_KEYS
    assert (nic["vendor_id"], nic["device_id"], nic["class"]) == ("0x8086", "0x10c9", "0x020000")
    assert nic["driver"] == "igb" and nic["state"] == "host" and nic["domid"] is None
    assert nic["original_driver"] is None and nic["iommu_group"] == 7
    assert by_bdf["0000:00:00.0"]["driver"] is None
    vf = next(r for r in rows if r["physfn"])
    assert vf["physfn"] == "0000:03:00.1" and vf["device_id"] == "0x10ca"


def test_seized_state_and_filter(sandbox):
    host = open_sandbox(sandbox)
    host.unbind(Bdf.parse("03:00.0"), "igb")
    host.set_driver_override(Bdf.parse("03:00.0"), "pciback")
    host.probe(Bdf.parse("03:00.0"))
    rows = json.loads(invoke("--sandbox", str(sandbox), "--json", "list", "--seized").output)
    assert [(r["bdf"], r["state"], r["driver"], r["driver_override"]) for r in rows] == [
        ("0000:03:00.0", "seized", "pciback", "pciback")]


def test_original_driver_comes_from_records(sandbox, monkeypatch):
    from xenpciback_cli.engine import inventory

    monkeypatch.setattr(inventory, "load_original_drivers",
                        lambda state_dir: {Bdf.parse("03:00.0"): "igb"})
    rows = json.loads(invoke("--sandbox", str(sandbox), "--json", "list", "03:00.0").output)
    assert rows[0]["original_driver"] == "igb"


@pytest.mark.parametrize("klass, expected", [
    ("network", {"0000:03:00.0", "0000:03:00.1", "0000:04:10.1", "0000:04:10.3"}),
    ("02", {"0000:03:00.0", "0000:03:00.1", "0000:04:10.1", "0000:04:10.3"}),
    ("0x0108", {"0000:01:00.0"}),
    ("0x0c0330", {"0000:00:14.0"}),
    ("usb", {"0000:00:14.0"}),
    ("display", {"0000:02:00.0"}),
    ("multimedia", {"0000:02:00.1"}),
    ("storage", {"0000:01:00.0"}),
    ("bridge", {"0000:00:00.0", "0000:00:1c.0", "0000:00:1c.1", "0000:00:1c.2"}),
    ("serial", {"0000:00:14.0"}),
])
def test_class_filter(sandbox, klass, expected):
    rows = json.loads(invoke("--sandbox", str(sandbox), "--json", "list", "--class", klass).output)
    assert {r["bdf"] for r in rows} == expected


def test_patterns(sandbox):
    rows = json.loads(invoke("--sandbox", str(sandbox), "--json", "list", "03:00.*", "01:00.0").output)
    assert [r["bdf"] for r in rows] == ["0000:01:00.0", "0000:03:00.0", "0000:03:00.1"]
    rows = json.loads(invoke("--sandbox", str(sandbox), "--json", "list", "04:*.*").output)
    assert [r["bdf"] for r in rows] == ["0000:04:10.1", "0000:04:10.3"]
    assert json.loads(invoke("--sandbox", str(sandbox), "--json", "list", "7f:00.0").output) == []


def test_csv_and_plain_formats(sandbox):
    out = invoke("--sandbox", str(sandbox), "list", "--format", "csv", "02:00.*").output
    rows = list(csv.reader(io.StringIO(out)))
    assert rows[0][:7] == ["BDF", "ID", "DEVICE", "CLASS", "DRIVER", "OVERRIDE", "STATE"]
    assert [(r[0], r[1], r[4], r[6]) for r in rows[1:]] == [
        ("0000:02:00.0", "1002:7300", "amdgpu", "host"), ("0000:02:00.1", "8086:27d8", "snd_hda_intel", "host")]
    plain = invoke("--sandbox", str(sandbox), "list", "--format", "plain", "01:00.0").output.splitlines()
    assert plain[0].split()[:2] == ["BDF", "ID"] and plain[1].split()[:2] == ["0000:01:00.0", "144d:a826"]
    github = invoke("--sandbox", str(sandbox), "list", "--format", "github", "01:00.0").output
    assert github.startswith("| BDF") and "| 0000:01:00.0 |" in github
    rich = invoke("--sandbox", str(sandbox), "--no-color", "list", "--format", "rich", "01:00.0",
                  env={"COLUMNS": "200"}).output
    assert "0000:01:00.0" in rich and "nvme" in rich


def test_inventory_engine_directly(sandbox):
    from xenpciback_cli.engine.inventory import ClassFilter, inventory

    app = Application(Settings(sandbox=str(sandbox)))
    rows = inventory(app.host, class_filter=ClassFilter.parse("0x0200"),
                     attachments={Bdf.parse("03:00.0"): 5})
    states = {str(r.bdf): (r.state, r.domid) for r in rows}
    assert states["0000:03:00.0"] == ("attached", 5) and states["0000:03:00.1"] == ("host", None)


def test_console_script_init_and_list(tmp_path):
    target = tmp_path / "box"
    made = script("sandbox", "init", str(target))
    assert made.code == 0, made.err
    listed = script("--sandbox", str(target), "--json", "list", "--class", "network")
    assert listed.code == 0, listed.err
    assert [r["bdf"] for r in json.loads(listed.out)][:2] == ["0000:03:00.0", "0000:03:00.1"]
    plain = script("--sandbox", str(target), "list", "--format", "simple")
    assert plain.code == 0 and "0000:02:00.0" in plain.out and "amdgpu" in plain.out
    again = script("sandbox", "init", str(target))
    assert again.code == 2 and again.err.count("\n") == 1 and "--force" in again.err
    assert script("sandbox", "init", "--force", str(target)).code == 0


def test_console_script_errors_are_one_line(tmp_path):
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "x").write_text("x")
    refused = script("sandbox", "init", str(tmp_path / "foreign"))
    assert refused.code == 3 and refused.err.startswith("xen-pciback: error: refusing")
    missing = script("--sandbox", str(tmp_path / "nothing"), "list")
    assert missing.code == 2 and "not a sandbox" in missing.err and "Traceback" not in missing.err
    bad_class = script("--sysfs-root", str(tmp_path), "list", "--class", "teapot")
    assert bad_class.code == 2 and bad_class.err.count("\n") == 1
    bad_format = script("--sysfs-root", str(tmp_path), "list", "--format", "xml")
    assert bad_format.code == 2 and bad_format.err.count("\n") == 1


def test_list_on_empty_root_is_empty(tmp_path):
    (tmp_path / "bus" / "pci" / "devices").mkdir(parents=True)  # a sysfs with no PCI devices
    result = script("--sysfs-root", str(tmp_path), "--json", "list")
    assert result.code == 0 and json.loads(result.out) == []


@pytest.mark.parametrize("rows", [
    [], [["a", "bbb", "", "x"], ["cc", "", "d", ""]], [["0000:03:00.0", "8086:10c9", "Intel Corporation 82576", "x"]],
    [["", "", "", ""]], [["a very long cell indeed", "1", "22", "333"]],
])
def test_plain_table_is_exactly_tabulate_plain(rows):
    from tabulate import tabulate

    from xenpciback_cli.cli.terminal import plain_table

    headers = ["BDF", "ID", "DEVICE", "LAST"]
    assert plain_table(headers, rows) == tabulate(rows, headers=headers, tablefmt="plain",
                                                  disable_numparse=True)


def test_rich_table_rules_the_header_in_color_only() -> None:
    """The rich table draws a rule under its header in color and none without (it once had
    ``box=None`` on both sides of the conditional, so color drew no rule either)."""
    import io

    from xenpciback_cli.cli.terminal import Terminal

    def render(color: bool) -> list[str]:
        out = io.StringIO()
        Terminal(color=color, stdout=out).table(["BDF", "Driver"], [["0000:01:00.0", "nvme"]], fmt="rich")
        return out.getvalue().splitlines()

    colored, plain = render(True), render(False)
    assert colored[0].split() == plain[0].split() == ["BDF", "Driver"]
    assert set(colored[1]) == {"─"} and colored[2].split() == ["0000:01:00.0", "nvme"]
    assert len(plain) == 2 and plain[1].split() == ["0000:01:00.0", "nvme"]


def test_used_asks_only_the_boot_vga_among_displays(tmp_path, monkeypatch):
    """Of the display devices without a framebuffer, only the boot VGA device can have something
    in USED ('boot-vga'): the others are not asked (a host of many GPUs pays one read each)."""
    from sysfs_tree import FakeSysfs

    from xenpciback_cli.host.sysfs import SysfsHost

    tree = FakeSysfs(tmp_path)
    tree.add_device("0000:01:00.0", 0x1002, 0x7300, 0x030000, driver="amdgpu", boot_vga=True)
    tree.add_device("0000:02:00.0", 0x1002, 0x7300, 0x030000, driver="amdgpu", boot_vga=False)
    tree.add_device("0000:03:00.0", 0x10DE, 0x1EB8, 0x030200, driver="nvidia")  # 3D: no boot_vga
    tree.add_device("0000:04:00.0", 0x8086, 0x10C9, 0x020000, driver="igb")
    asked = []
    original = SysfsHost.usage

    def counting(self, bdf):
        asked.append(str(bdf))
        return original(self, bdf)

    monkeypatch.setattr(SysfsHost, "usage", counting)
    table = invoke("--sysfs-root", str(tree.sys), "list", "--format", "csv")
    assert table.code == 0 and asked == ["0000:01:00.0"]
    used = {row["BDF"]: row["USED"] for row in csv.DictReader(io.StringIO(table.out))}
    assert used == {"0000:01:00.0": "boot-vga", "0000:02:00.0": "", "0000:03:00.0": "", "0000:04:00.0": ""}
    as_json = json.loads(invoke("--sysfs-root", str(tree.sys), "--json", "list").out)
    assert {row["bdf"]: row["used"] for row in as_json} == {
        "0000:01:00.0": ["boot-vga"], "0000:02:00.0": [], "0000:03:00.0": [], "0000:04:00.0": []}

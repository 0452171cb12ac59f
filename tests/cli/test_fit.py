"""Issue 14, items 1 and 4: output that fits a console, lspci's selectors, JSON on every command,
inspect's polish, dry runs that are shell, one spelling of a guest address."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from helpers.cli import invoke, ok
from xenpciback_cli.pci.address import Bdf, guest_address
from xenpciback_cli.pci.spec import BdfPattern, IdSelector, parse_device_selector
from xenpciback_cli.sandbox.host import open_sandbox

KEY_COLUMNS = ("bdf", "ids", "driver", "state", "iommu_group")


def _devices(sandbox):
    rows = ok("--sandbox", sandbox, "--json", "list").json()
    return {r["bdf"]: r for r in rows}


@pytest.mark.parametrize("fmt", ["plain", "rich"])
@pytest.mark.parametrize("columns", [80, 60, 200])
def test_list_fits_the_width_and_never_cuts_an_address(sandbox, fmt, columns):
    devices = _devices(sandbox)
    run = ok("--sandbox", sandbox, "--no-color", "list", "--format", fmt, env={"COLUMNS": str(columns)})
    lines = [line for line in run.out.splitlines() if line.strip()]
    assert len(lines) == 1 + len(devices)  # a header, then one line per device
    for line in lines[1:]:
        words = line.split()
        row = devices[words[0]]  # the BDF whole, first
        expected = [row["bdf"], f"{row['vendor_id'][2:]}:{row['device_id'][2:]}", row["driver"] or "-",
                    row["state"], str(row["iommu_group"])]
        assert all(word in words for word in expected), (line, expected)
    if columns < 200:
        assert max(len(line) for line in lines) <= columns
    else:
        assert "Samsung Electronics Co Ltd NVMe SSD Controller PM174X" in run.out  # nothing cut
        assert "nvme0n1p2 /" in run.out  # what the host uses it for


def test_list_in_a_real_80_column_terminal(sandbox, tmp_path):
    """In a real 80x40 terminal (tmux), no COLUMNS: one screen row per device, nothing wrapped."""
    if shutil.which("tmux") is None:
        pytest.skip("tmux not installed")
    import time

    from helpers.cli import PACKAGE_ROOT

    tmux = ["tmux", "-S", str(tmp_path / "tmux")]
    command = (f"env -u COLUMNS PYTHONPATH={PACKAGE_ROOT} NO_COLOR=1 python -m xenpciback_cli "
               f"--sandbox {sandbox} list; echo __DONE__; sleep 60")
    subprocess.run([*tmux, "new-session", "-d", "-x", "80", "-y", "40", command], check=True, timeout=20)
    try:
        deadline, screen = time.monotonic() + 30, ""
        while "__DONE__" not in screen and time.monotonic() < deadline:
            time.sleep(0.1)
            screen = subprocess.run([*tmux, "capture-pane", "-p"], capture_output=True, text=True,
                                    timeout=10).stdout
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True, timeout=10)
    rows = [line for line in screen.split("__DONE__")[0].splitlines() if line.strip()]
    assert rows[0].split()[:2] == ["BDF", "ID"]
    devices = [row for row in rows if row.startswith("0000:")]
    assert len(rows) == 1 + len(devices) == 1 + len(open_sandbox(sandbox).addresses())
    assert any(row.startswith("0000:02:00.1") and "snd_hda_intel" in row for row in devices)


def test_csv_has_every_column_whatever_the_width(sandbox):
    run = ok("--sandbox", sandbox, "list", "--format", "csv", "01:00.0", env={"COLUMNS": "40"})
    header, row = run.out.splitlines()
    assert header.split(",")[-1] == "USED" and "Samsung Electronics Co Ltd NVMe SSD Controller PM174X" in row


def test_wide_json_name_override_and_used(sandbox):
    host = open_sandbox(sandbox)
    nic = Bdf.parse("03:00.0")
    host.unbind(nic, "igb")
    host.set_driver_override(nic, "pciback")
    host.probe(nic)
    rows = _devices(sandbox)
    assert rows["0000:03:00.0"]["driver_override"] == "pciback" and rows["0000:03:00.0"]["name"] is None
    assert rows["0000:01:00.0"]["used"][:2] == ["nvme0n1p1 /boot/efi", "nvme0n1p2 /"]
    assert rows["0000:03:00.1"]["used"] == ["eth1 up,addr,routed"]
    wide = ok("--sandbox", sandbox, "list", "-w", "--format", "plain", "03:00.0", env={"COLUMNS": "300"}).out
    assert wide.splitlines()[0].split() == ["BDF", "ID", "DEVICE", "CLASS", "DRIVER", "OVERRIDE", "STATE",
                                            "DOMID", "VDEV", "NAME", "ORIGINAL", "GROUP", "USED"]
    assert "pciback  pciback" in wide.replace("   ", "  ")


def test_used_is_asked_only_of_devices_with_something_on_them(sandbox, monkeypatch):
    from xenpciback_cli.sandbox.host import SandboxHost

    asked = []
    original = SandboxHost.usage

    def counting(self, bdf):
        asked.append(str(bdf))
        return original(self, bdf)

    monkeypatch.setattr(SandboxHost, "usage", counting)
    ok("--sandbox", sandbox, "list")
    # the NVMe drive, the boot GPU, and the two NIC ports with an interface each; no bridge, no VF
    assert sorted(asked) == ["0000:01:00.0", "0000:02:00.0", "0000:03:00.0", "0000:03:00.1"]


def test_assignable_like_xl(sandbox):
    ok("--sandbox", sandbox, "hide", "03:00.0")
    assert ok("--sandbox", sandbox, "list", "--assignable", "--format", "xl").out == "0000:03:00.0\n"
    rows = ok("--sandbox", sandbox, "--json", "list", "--assignable").json()
    assert [r["bdf"] for r in rows] == ["0000:03:00.0"]
    refused = invoke("--sandbox", sandbox, "list", "--format", "xl")
    assert refused.code == 2 and refused.err.count("\n") == 1


# -- lspci's selectors -------------------------------------------------------------------------

SELECTORS = ["03:00", "03:", "0000:03:00", ":00.0", "00.0", ".1", "04:10", "02:00.*", "*:*.1", "1c"]
IDS = ["8086:", ":10c9", "::0200", "8086::0403", "1002:7300:0300", ":", "::0c03:30"]


@pytest.mark.skipif(shutil.which("lspci") is None, reason="lspci (pciutils) not installed")
@pytest.mark.parametrize("option, value", [("-s", s) for s in SELECTORS] + [("-d", d) for d in IDS])
def test_selectors_choose_what_lspci_chooses(sandbox, option, value):
    lspci = subprocess.run(["lspci", "-A", "linux-sysfs", "-O", f"sysfs.path={sandbox}/sys/bus/pci",
                            "-D", option, value], capture_output=True, text=True, timeout=30, check=True)
    theirs = [line.split()[0] for line in lspci.stdout.splitlines()]
    args = [value] if option == "-s" else ["-d", value]
    ours = [r["bdf"] for r in ok("--sandbox", sandbox, "--json", "list", *args).json()]
    assert ours == theirs and (theirs or value == "*:*.1")
    inspected = invoke("--sandbox", sandbox, "--json", "inspect", *args)
    if theirs:
        assert [r["bdf"] for r in inspected.json()] == theirs


def test_selector_parsing():
    assert parse_device_selector("03:00") == BdfPattern(0, 3, 0, None)
    assert parse_device_selector("03:") == BdfPattern(0, 3, None, None)
    assert parse_device_selector(":00.0") == BdfPattern(None, None, 0, 0)
    assert not parse_device_selector(":00.0").hide_list_form and parse_device_selector("03:00").hide_list_form
    assert IdSelector.parse("8086::0200") == IdSelector(0x8086, None, 0x0200, None)
    assert IdSelector.parse(":").matches(1, 2, 0x020000)


@pytest.mark.parametrize("args", [["1:2:03:00.0"], ["0000:03:0g"], ["-d", "8086"], ["-d", "zz:"],
                                  ["-d", "1:2:3:4:5"], ["03:00.8"]])
@pytest.mark.parametrize("command", ["list", "hide", "inspect"])
def test_malformed_selectors_are_one_line_exit_2(sandbox, command, args):
    run = invoke("--sandbox", sandbox, command, *args)
    assert run.code == 2 and run.out == "" and run.err.count("\n") == 1 and "invalid" in run.err


def test_hide_by_ids_and_by_partial_address(sandbox):
    run = ok("--sandbox", sandbox, "--json", "hide", "--dry-run", "-d", "8086:10ca")
    assert [d["bdf"] for d in run.json()["devices"]] == ["0000:04:10.1", "0000:04:10.3"]
    ok("--sandbox", sandbox, "hide", "--force", "03:00")
    host = open_sandbox(sandbox)
    assert [host.device(Bdf.parse(b)).driver for b in ("03:00.0", "03:00.1")] == ["pciback", "pciback"]
    missing = invoke("--sandbox", sandbox, "hide", "-d", "dead:")
    assert missing.code == 1 and "no PCI device matches -d dead:" in missing.err


# -- inspect ------------------------------------------------------------------------------------

def test_inspect_hex_only_when_asked_names_errors_and_widths(sandbox):
    plain = ok("--sandbox", sandbox, "inspect", "03:00.0").out
    assert "Config space" not in plain and "None" not in plain
    assert "Config space (hardware" in ok("--sandbox", sandbox, "inspect", "-x", "03:00.0").out
    wrote = ok("--sandbox", sandbox, "inspect", "03:00.0", "--write", "0x04:2:0",
               "--write", "0x1000:4:0").out
    assert "guest write 2 bytes 0x0000 at 0x4: err 0 success" in wrote
    assert "guest reads back 0x0000" in wrote
    assert "err -2 invalid offset" in wrote and "None" not in wrote


def test_inspect_from_binary_takes_the_bdf_from_a_sysfs_path(sandbox, tmp_path):
    where = tmp_path / "0000:02:00.1"
    where.mkdir()
    (where / "config").write_bytes((sandbox / "sys/bus/pci/devices/0000:03:00.0/config").read_bytes())
    out = ok("inspect", "--from-binary", where / "config").out
    assert out.startswith("0000:02:00.1 [8086:10c9]")


# -- dry runs, guest addresses, JSON -------------------------------------------------------------

def test_dry_run_lines_are_shell_under_the_real_root(sandbox, tmp_path):
    run = ok("--sandbox", sandbox, "hide", "--dry-run", "03:00.0")
    commands = [line for line in run.out.splitlines() if line.startswith("echo ")]
    root = f"{sandbox.resolve()}/sys"
    assert commands[0] == f"echo pciback > {root}/bus/pci/devices/0000:03:00.0/driver_override"
    script = tmp_path / "plan.sh"
    script.write_text("\n".join(line for line in run.out.splitlines()
                                if line.startswith(("echo ", "#"))) + "\n")
    syntax = subprocess.run(["sh", "-n", str(script)], capture_output=True, text=True, timeout=10)
    assert syntax.returncode == 0, syntax.stderr


def test_one_spelling_of_a_guest_address():
    assert guest_address("0000:00:01.00") == guest_address(Bdf(0, 0, 1, 0)) == "0000:00:01.0"
    assert guest_address("junk") == "junk" and guest_address(None) is None


def test_json_on_every_command(sandbox, tmp_path):
    """Each command, with --json, prints one valid JSON document on success."""
    box = ["--sandbox", sandbox]
    commands = [
        [*box, "list"], [*box, "list", "--assignable"], [*box, "hide", "03:00.0"],
        [*box, "hide", "--dry-run", "04:10.1"], [*box, "cmdline", "--config", tmp_path / "none.toml"],
        [*box, "sandbox", "domain", "create", "5"], [*box, "attach", "03:00.0", "--domid", "5"],
        [*box, "status", "--domid", "5", "--wait", "10"], [*box, "inspect", "03:00.0"],
        [*box, "xenstore", "ls", "/local/domain/5"], [*box, "xenstore", "read", "/local/domain/5/name"],
        [*box, "detach", "03:00.0", "--domid", "5"], [*box, "unhide", "--rebind", "03:00.0"],
        [*box, "recover"], [*box, "restore"], [*box, "doctor"], [*box, "sandbox", "stop"],
        ["sandbox", "init", tmp_path / "other"], ["demo"],
    ]
    for args in commands:
        run = invoke("--json", *args)
        if args[-1] == tmp_path / "none.toml":
            assert run.code == 2 and json.loads(run.err)["exit_code"] == 2 and run.out == ""
            continue
        assert run.code == 0, (args, run.err)
        json.loads(run.out)  # one document, nothing else on stdout


def test_status_json_states_are_numbers(sandbox):
    ok("--sandbox", sandbox, "hide", "03:00.0")
    ok("--sandbox", sandbox, "sandbox", "domain", "create", "5")
    ok("--sandbox", sandbox, "attach", "03:00.0", "--domid", "5")
    status = ok("--sandbox", sandbox, "--json", "status", "--domid", "5", "--wait", "10").json()
    assert isinstance(status["backend_state"], int) and isinstance(status["devices"][0]["state"], int)
    assert status["devices"][0]["vdev"] == "0000:00:00.0"
    listed = ok("--sandbox", sandbox, "--json", "list", "03:00.0").json()[0]
    assert listed["guest_address"] == status["devices"][0]["vdev"]

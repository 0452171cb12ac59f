"""Global options that name places (--sandbox, --state-dir, --sysfs-root) never fall back to the
real host: an empty value or a sysfs root without PCI devices is a one-line usage error."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.cli import invoke

REPO = Path(__file__).resolve().parents[2]


def one_line_usage_error(code, out, err):
    assert code == 2, (code, out, err)
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("xen-pciback: error:"), err


@pytest.mark.parametrize("option", ["--sandbox", "--state-dir", "--sysfs-root"])
def test_an_empty_place_option_is_a_usage_error(capsys, option):
    code, out, err = invoke(option, "", "list")
    one_line_usage_error(code, out, err)
    assert option in err and "empty" in err


@pytest.mark.parametrize("option", ["--sandbox", "--state-dir", "--sysfs-root"])
def test_an_empty_place_option_is_refused_before_any_command_runs(capsys, option):
    """Even a command that needs no host (cmdline) never sees the empty value."""
    code, out, err = invoke(option, "", "cmdline")
    one_line_usage_error(code, out, err)


@pytest.mark.parametrize("variable", ["XEN_PCIBACK_SANDBOX", "XEN_PCIBACK_SYSFS_ROOT"])
def test_an_empty_environment_variable_is_a_usage_error(capsys, monkeypatch, variable):
    """Click treats an empty variable as unset, which would mean the real host."""
    monkeypatch.setenv(variable, "")
    code, out, err = invoke("list")
    one_line_usage_error(code, out, err)
    assert variable in err


def test_an_empty_sandbox_variable_in_a_fresh_process_does_not_list_the_host():
    env = dict(os.environ, XEN_PCIBACK_SANDBOX="", XEN_PCIBACK_SYSFS_ROOT="/sys",
               PYTHONPATH=str(REPO))
    run_ = subprocess.run([sys.executable, "-m", "xenpciback_cli", "list"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert run_.returncode == 2 and run_.stdout == ""
    assert "XEN_PCIBACK_SANDBOX" in run_.stderr


def test_the_option_wins_over_an_empty_variable(capsys, monkeypatch, tmp_path):
    """--sysfs-root given on the command line: the empty variable is not consulted."""
    monkeypatch.setenv("XEN_PCIBACK_SYSFS_ROOT", "")
    (tmp_path / "bus" / "pci" / "devices").mkdir(parents=True)
    code, out, err = invoke("--sysfs-root", str(tmp_path), "--json", "list")
    assert (code, err) == (0, "")
    assert out.strip() == "[]"


@pytest.mark.parametrize("root", ["/nonexistent", "EMPTY_DIR"])
def test_a_sysfs_root_without_pci_devices_is_a_usage_error(capsys, tmp_path, root):
    root = str(tmp_path) if root == "EMPTY_DIR" else root
    code, out, err = invoke("--sysfs-root", root, "list")
    one_line_usage_error(code, out, err)
    assert root in err and "bus/pci/devices" in err


def test_a_bad_sysfs_root_from_the_environment_names_the_variable(capsys, monkeypatch):
    monkeypatch.setenv("XEN_PCIBACK_SYSFS_ROOT", "/nonexistent/sysfs")
    code, out, err = invoke("hide", "03:00.0")
    one_line_usage_error(code, out, err)
    assert "/nonexistent/sysfs" in err and "XEN_PCIBACK_SYSFS_ROOT" in err


def test_commands_that_need_no_host_work_under_a_missing_sysfs_root(capsys, tmp_path):
    """The test session's guard root does not exist (conftest): help, sandbox init, cmdline and
    inspect --from-dump must not build the host adapter."""
    assert not Path(os.environ["XEN_PCIBACK_SYSFS_ROOT"]).exists()
    assert invoke("--help").code == 0
    assert invoke("hide", "--help").code == 0
    code, _, err = invoke("sandbox", "init", str(tmp_path / "sb"))
    assert (code, err) == (0, ""), err
    dump = tmp_path / "dump.txt"
    rows = ["00: 86 80 57 0d 06 00 90 20 00 00 00 06 00 00 00 00"]
    rows += [f"{off:02x}: " + " ".join(["00"] * 16) for off in (0x10, 0x20, 0x30)]
    dump.write_text("00:00.0 Host bridge: Intel Corporation Device 0d57\n" + "\n".join(rows) + "\n")
    code, out, err = invoke("inspect", "--from-dump", str(dump))
    assert (code, err) == (0, ""), err
    config = tmp_path / "seized.toml"
    config.write_text('[[device]]\nbdf = "0000:03:00.0"\ndriver = "pciback"\n')
    code, out, err = invoke("cmdline", "--config", str(config))
    assert (code, err) == (0, ""), err
    assert "xen-pciback.hide=(0000:03:00.0)" in out

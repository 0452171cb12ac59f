"""The startup path stays cheap: `list` on a host whose state dir was never made reads no journal
or records, and so never imports them (bench/bench_cli.py measures the fixed cost this keeps)."""

import os
import subprocess
import sys

from helpers.cli import PACKAGE_ROOT
from sysfs_tree import build_many


def imported_by(args, env_extra=None):
    env = dict(os.environ, PYTHONPATH=PACKAGE_ROOT, **(env_extra or {}))
    run = subprocess.run([sys.executable, "-X", "importtime", "-m", "xenpciback_cli", *args], env=env,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr[-500:]
    return run.stdout, {line.split("|")[-1].strip() for line in run.stderr.splitlines() if "|" in line}


def test_list_without_a_state_dir_imports_no_journal_or_records(tmp_path):
    tree = build_many(tmp_path / "t", 4)
    state = tmp_path / "never-made"
    out, modules = imported_by(["--sysfs-root", str(tree.sys), "--state-dir", str(state), "list",
                                "--format", "plain"])
    assert len(out.splitlines()) == 5 and "xenpciback_cli.engine.inventory" in modules
    assert not {"xenpciback_cli.engine.journal", "xenpciback_cli.engine.records"} & modules
    assert not state.exists()
    # Once the state dir exists it is read as before (records give list its ORIGINAL column).
    state.mkdir(mode=0o700)
    _out, modules = imported_by(["--sysfs-root", str(tree.sys), "--state-dir", str(state), "list",
                                 "--format", "plain"])
    assert {"xenpciback_cli.engine.journal", "xenpciback_cli.engine.records"} <= modules


def test_plain_list_imports_no_dataclasses_rich_tabulate_or_pyudev(tmp_path):
    """The plain table's path builds its values as named tuples (dataclasses costs ~2 ms to import
    and its classes as much again to define) and lays the table out itself; rich, tabulate and
    pyudev (tens of ms) are for a terminal, other formats and the real /sys."""
    tree = build_many(tmp_path / "t", 4)
    out, modules = imported_by(["--sysfs-root", str(tree.sys), "list", "--format", "plain"])
    assert len(out.splitlines()) == 5 and "xenpciback_cli.pci.names" in modules
    assert not {"dataclasses", "rich", "tabulate", "pyudev"} & modules

"""Output conventions at the one boundary: a closed pipe exits quietly (141), CSV leaves empty
cells empty, and with --json an error is JSON on stderr too."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys

import pytest

from xenpciback_cli.sandbox.host import create_sandbox
from helpers.cli import PACKAGE_ROOT as REPO, invoke


@pytest.fixture(scope="module")
def box(tmp_path_factory):
    return create_sandbox(tmp_path_factory.mktemp("conventions") / "s").directory


def run_into_closed_pipe(*args: object) -> subprocess.CompletedProcess[str]:
    """The command with its stdout a pipe whose reader has already gone (what '| head' leaves)."""
    reader, writer = os.pipe()
    os.close(reader)
    environment = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    try:
        return subprocess.run([sys.executable, "-m", "xenpciback_cli", *map(str, args)], stdout=writer,
                              stderr=subprocess.PIPE, text=True, env=environment, timeout=60)
    finally:
        os.close(writer)


@pytest.mark.parametrize("args", [("list",), ("--json", "list"), ("list", "--format", "csv")])
def test_a_closed_pipe_exits_141_without_a_word(box, args):
    done = run_into_closed_pipe("--sandbox", box, *args)
    assert (done.returncode, done.stderr) == (141, "")


def test_an_error_still_shows_when_stdout_is_closed(box):
    done = run_into_closed_pipe("--sandbox", box, "hide", "99:00.0")
    assert done.returncode == 1
    assert done.stderr == "xen-pciback: error: no PCI device 0000:99:00.0 on this host\n"


def test_csv_leaves_empty_cells_empty_and_the_table_shows_a_dash(box):
    rows = list(csv.reader(io.StringIO(invoke("--sandbox", box, "list", "--format", "csv", "00:00.0").output)))
    assert rows[0] == ["BDF", "ID", "DEVICE", "CLASS", "DRIVER", "OVERRIDE", "STATE", "DOMID", "VDEV",
                       "NAME", "ORIGINAL", "GROUP", "USED"]
    [bridge] = rows[1:]  # the host bridge has no driver, no domain and no original driver
    assert (bridge[4], bridge[7], bridge[10]) == ("", "", "")
    plain = invoke("--sandbox", box, "list", "--format", "plain", "00:00.0",
                   env={"COLUMNS": "300"}).output.splitlines()[1].split()  # wide enough for all
    assert plain.count("-") == 3  # DRIVER, DOMID, USED


@pytest.mark.parametrize("json_where", ["before", "after"])
def test_with_json_an_error_is_json_on_stderr(box, json_where):
    args = ["--sandbox", box, "--json", "hide", "99:00.0"] if json_where == "before" else \
        ["--sandbox", box, "hide", "--json", "99:00.0"]
    environment = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run([sys.executable, "-m", "xenpciback_cli", *map(str, args)], capture_output=True,
                          text=True, env=environment, timeout=60)
    assert done.returncode == 1 and done.stdout == ""
    assert json.loads(done.stderr) == {"error": "no PCI device 0000:99:00.0 on this host", "exit_code": 1}


def test_with_json_a_usage_error_is_json_too():
    environment = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run([sys.executable, "-m", "xenpciback_cli", "--json", "bogus"], capture_output=True,
                          text=True, env=environment, timeout=60)
    assert done.returncode == 2
    error = json.loads(done.stderr)
    assert error["exit_code"] == 2 and "No such command 'bogus'" in error["error"]

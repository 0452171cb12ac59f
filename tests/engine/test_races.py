"""One operation at a time (issue 9, item 3): seizing commands racing each other on one device, in
real processes, end in a consistent state every round.

Each round forks two processes (fork keeps the round cheap: the imports are done once) that wait
on one pipe and then run their command through the CLI at the same moment, each with its own
lock file descriptor, as two administrators (or the boot unit and an administrator) would. After
both have exited the device must be either

* seized: held by pciback, exactly one record naming igb as the original, driver_override set, or
* with the host: bound to igb, no record, no stray driver_override,

with no journal entry left and a ``recover`` that finds nothing to do.
"""

from __future__ import annotations

import json
import os
import shutil
import time

import pytest

from xenpciback_cli.engine.journal import pending_operations
from xenpciback_cli.engine.records import load_records
from xenpciback_cli.sandbox.host import open_sandbox
from xenpciback_cli.pci.address import Bdf

from helpers.cli import invoke

NIC0 = Bdf(0, 3, 0, 0)
ROUNDS = 20




def _race(*commands: tuple[str, ...]) -> list[int]:
    """Run each command in its own forked process, released together; return their exit codes."""
    read_end, write_end = os.pipe()
    children = []
    for command in commands:
        pid = os.fork()
        if pid == 0:  # child: wait for the start signal, run, report the exit code
            code = 70
            try:
                os.close(write_end)
                os.read(read_end, 1)
                code = invoke(*command).code
            finally:
                os._exit(code)
        children.append(pid)
    os.close(read_end)
    os.write(write_end, b"x" * len(commands))
    os.close(write_end)
    codes = []
    for pid in children:
        _, status = os.waitpid(pid, 0)
        codes.append(os.waitstatus_to_exitcode(status))
    return codes


def _consistent(box) -> str:
    host = open_sandbox(box)
    state = box / "state"
    device = host.device(NIC0)
    records = load_records(state)
    assert pending_operations(state) == [], "a journal entry was left behind"
    if device.driver == "pciback":
        assert list(records) == [NIC0]
        assert records[NIC0].original_driver == "igb"
        assert device.driver_override == "pciback"
        result = "seized"
    else:
        assert device.driver == "igb", f"ended with driver {device.driver}"
        assert device.driver_override is None, "a stray driver_override"
        assert NIC0 not in records, "a record of a device the host has"
        result = "host"
    run = invoke("--sandbox", box, "--json", "recover")
    assert run.code == 0, run.error
    assert json.loads(run.output)["operations"] == [], "recover found something to do"
    assert host.device(NIC0).driver == device.driver
    return result


@pytest.mark.parametrize("start_seized", [False, True], ids=["from-host", "from-seized"])
def test_hide_races_unhide_rebind(pristine_sandbox, tmp_path, start_seized):
    box = tmp_path / "s"
    shutil.copytree(pristine_sandbox, box, symlinks=True)
    hide = ("--sandbox", box, "hide", "03:00.0")
    unhide = ("--sandbox", box, "unhide", "--rebind", "03:00.0")
    ends = set()
    deadline = time.monotonic() + 30
    for _ in range(ROUNDS // 2):
        if start_seized and open_sandbox(box).device(NIC0).driver != "pciback":
            assert invoke(*hide).code == 0
        if not start_seized and open_sandbox(box).device(NIC0).driver == "pciback":
            assert invoke(*unhide).code == 0
        codes = _race(hide, unhide)
        assert codes == [0, 0], codes
        ends.add(_consistent(box))
        assert time.monotonic() < deadline
    assert ends <= {"seized", "host"}


def test_two_hides_of_one_device(pristine_sandbox, tmp_path):
    box = tmp_path / "s"
    shutil.copytree(pristine_sandbox, box, symlinks=True)
    hide = ("--sandbox", box, "hide", "03:00.0")
    unhide = ("--sandbox", box, "unhide", "--rebind", "03:00.0")
    deadline = time.monotonic() + 30
    for _ in range(ROUNDS // 2):
        codes = _race(hide, hide)
        assert codes == [0, 0], codes
        assert _consistent(box) == "seized"
        assert invoke(*unhide).code == 0
        assert time.monotonic() < deadline


def test_recover_waits_for_a_running_operation(pristine_sandbox, tmp_path):
    """An operation in flight holds the lock: recover waits for it instead of "recovering" it."""
    from xenpciback_cli.engine.journal import Journal, JournalEntry

    box = tmp_path / "s"
    shutil.copytree(pristine_sandbox, box, symlinks=True)
    journal = Journal(box / "state")
    entry = JournalEntry("hide", NIC0, "igb", "pciback", "override", [])
    with journal.locked():
        journal.begin(entry)  # as a hide in another process would, before its first write
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read_end)
            run = invoke("--sandbox", box, "--json", "recover")
            os.write(write_end, run.output.encode())
            os._exit(run.code)
        os.close(write_end)
        time.sleep(0.3)
        journal.finish(entry)  # the operation completes while recover waits
    output = b""
    while chunk := os.read(read_end, 65536):
        output += chunk
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert json.loads(output)["operations"] == []
    assert open_sandbox(box).device(NIC0).driver == "igb"


def test_dry_run_takes_no_lock(pristine_sandbox, tmp_path):
    from xenpciback_cli.engine.journal import Journal

    box = tmp_path / "s"
    shutil.copytree(pristine_sandbox, box, symlinks=True)
    with Journal(box / "state").locked():
        started = time.monotonic()
        assert invoke("--sandbox", box, "hide", "--dry-run", "03:00.0").code == 0
        assert invoke("--sandbox", box, "unhide", "--dry-run", "03:00.0").code == 0
        assert time.monotonic() - started < 5
    assert open_sandbox(box).device(NIC0).driver == "igb"

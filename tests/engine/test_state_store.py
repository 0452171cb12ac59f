"""The state dir cannot be turned against root: modes, ownership, symlinks, temp names, liveness."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest

from xenpciback_cli.engine import journal as journal_module
from xenpciback_cli.engine.backend_settings import load_settings, record_attach
from xenpciback_cli.engine.journal import (
    Journal,
    JournalEntry,
    PlannedWrite,
    pending_operations,
)
from xenpciback_cli.engine.records import SeizeRecord, load_record, put_record
from xenpciback_cli.errors import ExitCode, StateDirUnsafe, StateFileCorrupt
from xenpciback_cli.pci.address import Bdf

NIC = Bdf(0, 3, 0, 0)
OTHER = Bdf(0, 3, 0, 1)


def mode(path):
    return stat.S_IMODE(os.lstat(path).st_mode)


def entry(bdf=NIC, **fields):
    steps = [PlannedWrite(f"bus/pci/devices/{bdf}/driver_override", "pciback", "set driver_override"),
             PlannedWrite("bus/pci/drivers/igb/unbind", str(bdf), "unbind from igb")]
    return JournalEntry("hide", bdf, "igb", "pciback", "override", steps, **fields)


def test_dir_and_files_get_explicit_modes_whatever_the_umask(tmp_path):
    old = os.umask(0)
    try:
        state = tmp_path / "state"
        put_record(state, SeizeRecord(NIC, "igb", "pciback"))
        Journal(state).save(entry())
        with Journal(state).locked():
            pass
    finally:
        os.umask(old)
    assert mode(state) == 0o700 and mode(state / "seized") == 0o700 and mode(state / "journal") == 0o700
    assert mode(state / "seized" / "0000-03-00-0.json") == 0o600
    assert mode(state / "journal" / "hide-0000-03-00-0.json") == 0o600
    assert mode(state / ".lock") == 0o600


@pytest.mark.parametrize("bits", [0o020, 0o002, 0o777])
def test_a_writable_state_dir_is_refused_with_the_fix(tmp_path, bits):
    state = tmp_path / "state"
    put_record(state, SeizeRecord(NIC, "igb", "pciback"))
    os.chmod(state, 0o700 | bits)
    for action in (lambda: load_record(state, NIC), lambda: pending_operations(state),
                   lambda: put_record(state, SeizeRecord(OTHER, None, "pciback"))):
        with pytest.raises(StateDirUnsafe) as info:
            action()
        assert str(state) in str(info.value) and "chmod 0700" in str(info.value)
        assert info.value.exit_code == ExitCode.USAGE


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_a_state_dir_owned_by_someone_else_is_refused(tmp_path):
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    os.chown(state, 1000, 1000)
    with pytest.raises(StateDirUnsafe, match="owned by uid 1000"):
        load_record(state, NIC)


@pytest.mark.parametrize("planted", ["seized/0000-03-00-0.json", "journal/hide-0000-03-00-0.json",
                                     "backend-settings/0000-03-00-0.json", "seized.json", ".lock"])
def test_a_planted_symlink_is_never_followed(tmp_path, planted):
    state = tmp_path / "state"
    put_record(state, SeizeRecord(OTHER, "igb", "pciback"))  # creates the dir and seized/
    for sub in ("journal", "backend-settings"):
        (state / sub).mkdir(mode=0o700, exist_ok=True)
    victim = tmp_path / "victim"
    victim.write_text("precious")
    os.symlink(victim, state / planted)
    with pytest.raises(StateFileCorrupt) as info:
        if planted.startswith("seized/"):
            put_record(state, SeizeRecord(NIC, "igb", "pciback"))
        elif planted.startswith("journal/"):
            Journal(state).save(entry())
        elif planted.startswith("backend-settings/"):
            record_attach(state, NIC, permissive=True, quirks=())
        elif planted == ".lock":
            with Journal(state).locked():
                pass
        else:
            load_record(state, NIC)
    assert "symbolic link" in str(info.value) and str(state / planted) in str(info.value)
    assert victim.read_text() == "precious"
    if planted.startswith("journal/"):  # reading it is refused too, and only for its device
        found: list = []
        assert pending_operations(state, corrupt=found) == [] and len(found) == 1
        assert found[0].bdf == NIC


def test_a_symlinked_journal_dir_or_state_dir_is_refused(tmp_path):
    state = tmp_path / "state"
    put_record(state, SeizeRecord(NIC, "igb", "pciback"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    os.symlink(elsewhere, state / "journal")
    with pytest.raises(StateDirUnsafe, match="symlink"):
        Journal(state).save(entry())
    assert os.listdir(elsewhere) == []
    os.symlink(state, tmp_path / "link")
    with pytest.raises(StateDirUnsafe, match="symlink"):
        load_record(tmp_path / "link", NIC)


def test_temporary_names_are_unpredictable_and_exclusive(tmp_path, monkeypatch):
    created = []
    real_open = os.open

    def spy(path, flags, *args, **kwargs):
        if str(path).endswith(".tmp"):
            created.append((str(path), flags))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", spy)
    for _ in range(2):
        put_record(tmp_path / "s", SeizeRecord(NIC, "igb", "pciback"))
    assert len(created) == 2 and created[0][0] != created[1][0]
    assert str(os.getpid()) not in created[0][0]
    for _, flags in created:
        assert flags & os.O_EXCL and flags & os.O_NOFOLLOW and flags & os.O_CREAT


def test_a_fifo_in_place_of_a_state_file_does_not_hang(tmp_path):
    state = tmp_path / "state"
    put_record(state, SeizeRecord(OTHER, "igb", "pciback"))
    os.mkfifo(state / "seized" / "0000-03-00-0.json")
    with pytest.raises(StateFileCorrupt, match="not a regular file"):
        load_record(state, NIC)


# -- journal liveness ----------------------------------------------------------------------------
def test_an_entry_of_a_running_process_is_in_progress_and_not_recovered(tmp_path):
    state = tmp_path / "state"
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        running = entry(pid=child.pid, process_start=journal_module.process_start(child.pid))
        Journal(state).save(running)
        [found] = pending_operations(state)
        assert found.running
        assert found.describe().startswith(f"operation in progress (pid {child.pid}): hide 0000:03:00.0")
        assert journal_module.interrupted_operations(state) == []
    finally:
        child.kill()
        child.wait()
    [found] = pending_operations(state)
    assert not found.running and found.describe().startswith("interrupted operation: hide 0000:03:00.0")
    assert len(journal_module.interrupted_operations(state)) == 1


def test_a_reused_pid_or_another_boot_is_interrupted(tmp_path):
    me = os.getppid()  # alive, and not this process
    start = journal_module.process_start(me)
    assert start is not None
    assert entry(pid=me, process_start=start).running
    assert not entry(pid=me, process_start=start + 1).running  # same pid, another process
    assert not entry(pid=me, process_start=start, boot_id="0" * 8).running  # before a reboot
    assert not entry(pid=me, process_start=None).running  # an old entry without liveness


def test_entry_records_pid_boot_and_start(tmp_path):
    data = entry().to_json()
    assert data["pid"] == os.getpid() and data["boot_id"] == journal_module.boot_id()
    assert data["process_start"] == journal_module.process_start(os.getpid())
    assert JournalEntry.from_json(json.loads(json.dumps(data))) == entry(started=data["started"])


def test_settings_one_file_per_device(tmp_path):
    record_attach(tmp_path, NIC, permissive=True, quirks=())
    record_attach(tmp_path, OTHER, permissive=True, quirks=())
    (tmp_path / "backend-settings" / "0000-03-00-0.json").write_text('{"permissive": 1, "quirks": []}')
    found: list = []
    assert set(load_settings(tmp_path, corrupt=found)) == {OTHER} and found[0].bdf == NIC


@pytest.mark.parametrize("kind", ["records", "settings"])
def test_the_old_single_files_move_the_same_way(tmp_path, kind):
    """Both old single files (seized.json, backend-settings.json) go through one migration: the
    first write moves each entry to its device's file, a device's own file wins, the old file
    goes; a corrupt old file stops the write with nothing moved."""
    nic, vf, gpu = Bdf(0, 3, 0, 0), Bdf(0, 4, 0x10, 1), Bdf(0, 2, 0, 0)
    if kind == "records":
        old, subdir = "seized.json", "seized"
        own = {"format": 2, **SeizeRecord(vf, "e1000e", "pciback", seized_at=1.0).to_json()}
        legacy = {"devices": [SeizeRecord(b, "igb", "pciback", seized_at=1.0).to_json() for b in (nic, vf)]}

        def write():
            put_record(tmp_path, SeizeRecord(gpu, "amdgpu", "pciback"))

        def seen(bdf):
            return load_record(tmp_path, bdf).original_driver
    else:
        old, subdir = "backend-settings.json", "backend-settings"
        own = {"format": 1, "bdf": str(vf), "permissive": False, "quirks": [[64, 1, 255]]}
        legacy = {str(b): {"permissive": True, "quirks": []} for b in (nic, vf)}

        def write():
            record_attach(tmp_path, gpu, permissive=True, quirks=())

        def seen(bdf):
            return load_settings(tmp_path)[bdf].permissive
    (tmp_path / subdir).mkdir(mode=0o700)
    tmp_path.chmod(0o700)
    (tmp_path / subdir / "0000-04-10-1.json").write_text(json.dumps(own))
    (tmp_path / old).write_text("{")
    with pytest.raises(StateFileCorrupt):
        write()
    assert sorted(os.listdir(tmp_path / subdir)) == ["0000-04-10-1.json"]
    (tmp_path / old).write_text(json.dumps(legacy))
    write()
    assert not (tmp_path / old).exists()
    assert sorted(os.listdir(tmp_path / subdir)) == ["0000-02-00-0.json", "0000-03-00-0.json", "0000-04-10-1.json"]
    assert seen(nic) == (True if kind == "settings" else "igb")
    assert seen(vf) == (False if kind == "settings" else "e1000e")  # its own file won

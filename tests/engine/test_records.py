"""Seize records: round trip, atomic replacement, corrupt files reported in one line."""

from __future__ import annotations

import json
import os

import pytest

from xenpciback_cli.engine.records import (SeizeRecord, drop_record, load_record,
                                           load_records, put_record, records_path, save_records)
from xenpciback_cli.engine.statestore import atomic_write
from xenpciback_cli.errors import OperationFailed, StateFileCorrupt
from xenpciback_cli.pci.address import Bdf

NIC = Bdf(0, 3, 0, 0)
VF = Bdf(0, 4, 0x10, 1)


def test_missing_state_dir_means_no_records(tmp_path):
    assert load_records(tmp_path / "absent") == {}


def test_round_trip_keeps_every_field(tmp_path):
    records = {NIC: SeizeRecord(NIC, "igb", "pciback", persist=True, seized_at=12.5, method="slot"),
               VF: SeizeRecord(VF, None, "vfio-pci")}
    save_records(tmp_path, records)
    assert load_records(tmp_path) == records
    assert sorted(os.listdir(tmp_path / "seized")) == ["0000-03-00-0.json", "0000-04-10-1.json"]
    assert json.loads(records_path(tmp_path, VF).read_text())["original_driver"] is None


def test_put_and_drop(tmp_path):
    put_record(tmp_path, SeizeRecord(NIC, "igb", "pciback"))
    put_record(tmp_path, SeizeRecord(VF, "igbvf", "pciback"))
    assert set(load_records(tmp_path)) == {NIC, VF}
    assert drop_record(tmp_path, NIC).original_driver == "igb"
    assert drop_record(tmp_path, NIC) is None
    assert set(load_records(tmp_path)) == {VF}


def test_atomic_write_leaves_no_temporary_and_replaces(tmp_path):
    target = tmp_path / "f.json"
    atomic_write(target, "one")
    atomic_write(target, "two")
    assert target.read_text() == "two"
    assert os.listdir(tmp_path) == ["f.json"]
    put_record(tmp_path, SeizeRecord(NIC, "igb", "pciback"))
    put_record(tmp_path, SeizeRecord(NIC, "e1000e", "pciback"))
    assert os.listdir(tmp_path / "seized") == ["0000-03-00-0.json"]


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    save_records(tmp_path, {NIC: SeizeRecord(NIC, "igb", "pciback")})

    def crash(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OperationFailed) as info:
        put_record(tmp_path, SeizeRecord(VF, None, "pciback"))
    assert "No space left" in str(info.value)
    monkeypatch.undo()
    assert set(load_records(tmp_path)) == {NIC}
    assert os.listdir(tmp_path / "seized") == ["0000-03-00-0.json"]  # the temporary file was cleaned up


@pytest.mark.parametrize("text", ["{", "[]", '{"devices": [{"bdf": "zz"}]}', '{"format": 1}'])
def test_corrupt_legacy_file_is_one_clear_error(tmp_path, text):
    records_path(tmp_path).write_text(text)
    with pytest.raises(StateFileCorrupt) as info:
        load_records(tmp_path)
    assert "corrupt" in str(info.value) and "\n" not in str(info.value)
    assert str(records_path(tmp_path)) in str(info.value)


def test_legacy_single_file_is_read_and_moved_by_the_first_write(tmp_path):
    legacy = {"format": 1, "devices": [SeizeRecord(NIC, "igb", "pciback", seized_at=1.0).to_json()]}
    del legacy["devices"][0]["identity"], legacy["devices"][0]["released"]  # as the old version wrote
    records_path(tmp_path).write_text(json.dumps(legacy))
    assert load_records(tmp_path)[NIC].original_driver == "igb"
    put_record(tmp_path, SeizeRecord(VF, None, "vfio-pci"))
    assert not records_path(tmp_path).exists()
    assert set(load_records(tmp_path)) == {NIC, VF}


BAD_FIELDS = [("original_driver", "../../.."), ("original_driver", ".."), ("original_driver", "a/b"),
              ("original_driver", 3), ("target_driver", "igb"), ("persist", 1), ("seized_at", -1),
              ("seized_at", True), ("method", "x"), ("bdf", "03:00.0"), ("bdf", "0000:04:10.1"),
              ("identity", []), ("released", "yes"), ("unknown", 1), ("name", "has space"),
              ("name", "x" * 65), ("name", 7), ("name", "caf\u00e9")]


@pytest.mark.parametrize("key, value", BAD_FIELDS)
def test_every_field_is_validated_and_only_its_device_is_affected(tmp_path, key, value):
    put_record(tmp_path, SeizeRecord(NIC, "igb", "pciback"))
    put_record(tmp_path, SeizeRecord(VF, "igbvf", "pciback"))
    data = json.loads(records_path(tmp_path, NIC).read_text())
    data[key] = value
    records_path(tmp_path, NIC).write_text(json.dumps(data))
    with pytest.raises(StateFileCorrupt) as info:
        load_record(tmp_path, NIC)
    assert info.value.bdf == NIC and str(records_path(tmp_path, NIC)) in str(info.value)
    assert load_record(tmp_path, VF).original_driver == "igbvf"  # the other device is unaffected
    found: list = []
    assert set(load_records(tmp_path, corrupt=found)) == {VF} and len(found) == 1


# -- one read of the records per operation ------------------------------------------------------
def _count_record_reads(monkeypatch):
    """Every read of a seize-record file (or listing of their dir), by name."""
    from collections import Counter

    from xenpciback_cli.engine import statestore

    counts: Counter[str] = Counter()
    read, listing = statestore.StateStore.read, statestore.StateStore.list

    def counted_read(self, name):
        if name.startswith("seized"):
            counts[name] += 1
        return read(self, name)

    def counted_list(self, subdir=None):
        if subdir == "seized":
            counts["list seized/"] += 1
        return listing(self, subdir)

    monkeypatch.setattr(statestore.StateStore, "read", counted_read)
    monkeypatch.setattr(statestore.StateStore, "list", counted_list)
    return counts


@pytest.mark.parametrize("again", [False, True], ids=["first", "already-seized"])
def test_hide_and_unhide_read_the_records_once(sandbox, monkeypatch, again):
    from xenpciback_cli.engine.seize import Seizer
    from xenpciback_cli.pci.spec import BdfPattern
    from xenpciback_cli.sandbox.host import open_sandbox

    seizer = Seizer(open_sandbox(sandbox), sandbox / "state")
    both = [BdfPattern.parse("03:00.0"), BdfPattern.parse("03:00.1")]
    if again:
        seizer.hide_devices(both, "pciback", force=True)
    counts = _count_record_reads(monkeypatch)
    seizer.hide_devices(both, "pciback", force=True)
    assert counts["list seized/"] == 1, counts
    assert all(n == 1 for n in counts.values()), counts  # each file (the old single one too) once
    counts.clear()
    report = seizer.unhide_devices(both, rebind=True)
    assert [r.driver for r in report.results] == ["igb", "igb"]
    assert all(n == 1 for n in counts.values()), counts


def test_record_set_answers_as_load_record(tmp_path):
    """A RecordSet read once says what load_record says for each device: its own file, else the
    old single file's entry; a corrupt file of its own, or a corrupt old file it falls back on,
    raises for that device only."""
    from xenpciback_cli.engine.records import load_record_set

    put_record(tmp_path, SeizeRecord(NIC, "igb", "pciback"))
    other = Bdf(0, 5, 0, 0)
    records_path(tmp_path, VF).write_text("{")
    records_path(tmp_path).write_text(json.dumps({"devices": [SeizeRecord(other, "e1000e", "pciback").to_json()]}))
    records = load_record_set(tmp_path)
    for bdf in (NIC, other, Bdf(0, 6, 0, 0)):
        assert records.get(bdf) == load_record(tmp_path, bdf)
    with pytest.raises(StateFileCorrupt) as raised:
        records.get(VF)
    assert raised.value.bdf == VF
    records_path(tmp_path).write_text("[")
    records = load_record_set(tmp_path)
    assert records.get(NIC) == load_record(tmp_path, NIC)  # its own file: the old one is not asked
    with pytest.raises(StateFileCorrupt):
        records.get(other)

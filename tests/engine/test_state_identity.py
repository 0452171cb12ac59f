"""Device identity: read from the host, strict JSON, and the words of a mismatch."""

from __future__ import annotations

import struct

import shutil

import pytest

from xenpciback_cli.engine.identity import (
    DeviceIdentity,
    differences,
    identity_of,
    read_serial,
)
from xenpciback_cli.engine.journal import JournalEntry
from xenpciback_cli.engine.records import SeizeRecord
from xenpciback_cli.sandbox.host import open_sandbox
from xenpciback_cli.pci.address import Bdf

NIC = Bdf(0, 3, 0, 0)
NVME = Bdf(0, 1, 0, 0)


@pytest.fixture(scope="module")
def host(pristine_sandbox, tmp_path_factory):
    box = tmp_path_factory.mktemp("id") / "box"
    shutil.copytree(pristine_sandbox, box, symlinks=True)
    return open_sandbox(box)


def test_identity_of_reads_ids_class_and_serial(host):
    nic = identity_of(host, NIC)
    assert (nic.vendor_id, nic.device_id, nic.class_code) == (0x8086, 0x10C9, 0x020000)
    assert nic.serial == "00-1b-21-ff-ff-2b-46-e0"
    assert identity_of(host, Bdf(0, 2, 0, 0)).serial is None


def test_differences_in_words(host):
    nic, nvme = identity_of(host, NIC), identity_of(host, NVME)
    assert differences(nic, nic) == []
    words = differences(nic, nvme)
    assert words[0] == "vendor:device 8086:10c9 recorded, 144d:a826 found"
    assert any(w.startswith("class 020000 recorded, 010802 found") for w in words)
    assert any(w.startswith("serial 00-1b-21-ff-ff-2b-46-e0 recorded") for w in words)


def test_serial_walk_is_bounded_and_tolerant():
    config = bytearray(4096)
    struct.pack_into("<I", config, 0x100, 0x0001 | (0x100 << 20))  # points at itself: a loop
    assert read_serial(bytes(config)) is None
    struct.pack_into("<III", config, 0x100, 0x0003, 0x44332211, 0x88776655)
    assert read_serial(bytes(config)) == "88-77-66-55-44-33-22-11"
    assert read_serial(bytes(config[:0x108])) is None  # truncated capability
    assert read_serial(bytes(config[:64])) is None  # non-root read


def test_json_round_trip_and_strictness(host):
    nic = identity_of(host, NIC)
    assert DeviceIdentity.from_json(nic.to_json()) == nic
    for bad in ([], {**nic.to_json(), "extra": 1}, {**nic.to_json(), "vendor_id": True},
                {**nic.to_json(), "vendor_id": -1}, {**nic.to_json(), "class_code": 1 << 24},
                {**nic.to_json(), "serial": "../../x"}, {**nic.to_json(), "device_id": "10c9"}):
        with pytest.raises(ValueError):
            DeviceIdentity.from_json(bad)


def test_records_and_journal_carry_identity(host):
    nic = identity_of(host, NIC)
    record = SeizeRecord(NIC, "igb", "pciback", identity=nic, released=True)
    assert SeizeRecord.from_json(record.to_json()) == record
    assert SeizeRecord(NIC, "igb", "pciback").identity is None
    entry = JournalEntry("hide", NIC, "igb", "pciback", "override", [], identity=nic)
    assert JournalEntry.from_json(entry.to_json()).identity == nic

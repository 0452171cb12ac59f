"""The one selector parser hide, unhide, bind and rebind share (engine/selection.py)."""

from __future__ import annotations

import pytest

from xenpciback_cli.engine.records import SeizeRecord, put_record
from xenpciback_cli.engine.selection import select_patterns
from xenpciback_cli.errors import DeviceNotFound, InputError
from xenpciback_cli.pci.address import Bdf
from xenpciback_cli.sandbox.host import open_sandbox

NIC0, NIC1, NVME = Bdf(0, 3, 0, 0), Bdf(0, 3, 0, 1), Bdf(0, 1, 0, 0)


def selected(sandbox, words, ids=None, **kwargs):
    kwargs.setdefault("xenstore", _no_xenstore)
    patterns = select_patterns(open_sandbox(sandbox), sandbox / "state", words, ids, verb="seize", **kwargs)
    return [str(p) for p in patterns]


def _no_xenstore():
    raise AssertionError("xenstore asked for an address")


def test_xl_forms_stay_as_typed_and_lspci_forms_become_addresses(sandbox):
    assert selected(sandbox, ["0000:03:00.0", "03:00.*"]) == ["0000:03:00.0", "0000:03:00.*"]
    assert selected(sandbox, ["03:00"]) == ["0000:03:00.*"]
    assert selected(sandbox, [":00.1"]) == ["0000:02:00.1", "0000:03:00.1"]  # lspci: any bus


def test_ids_select_the_matching_devices(sandbox):
    assert selected(sandbox, [], "8086:10c9") == ["0000:03:00.0", "0000:03:00.1"]
    assert selected(sandbox, ["03:00.1"], "8086:10c9") == ["0000:03:00.1"]
    with pytest.raises(DeviceNotFound, match="-d 1234:5678"):
        selected(sandbox, [], "1234:5678")


def test_interfaces_disks_and_names_are_one_device_each(sandbox):
    assert selected(sandbox, ["eth1", "nvme0n1"], xenstore=lambda: None) == [str(NIC1), str(NVME)]
    put_record(sandbox / "state", SeizeRecord(NIC0, "igb", "pciback", name="uplink"))
    assert selected(sandbox, ["uplink"], xenstore=lambda: None) == [str(NIC0)]


def test_bad_words_and_nothing_named_are_input_errors(sandbox):
    with pytest.raises(InputError, match="nor is 'eth9' a device name, network interface or block device"):
        selected(sandbox, ["eth9"], xenstore=lambda: None)
    with pytest.raises(InputError, match=r"name the devices to seize: DEVICE\.\.\. or -d VENDOR:DEVICE"):
        selected(sandbox, [])
    with pytest.raises(InputError):
        selected(sandbox, ["03:00.0"], "zz:1")


def test_held_keeps_only_seized_or_recorded_devices_of_an_id_selection(sandbox):
    assert selected(sandbox, [], "8086:10c9", held=True) == []  # selected, none seized: nothing to do
    put_record(sandbox / "state", SeizeRecord(NIC1, "igb", "pciback", released=True))
    assert selected(sandbox, [], "8086:10c9", held=True) == [str(NIC1)]
    assert selected(sandbox, ["03:00.0"], held=True) == [str(NIC0)]  # without -d: as typed

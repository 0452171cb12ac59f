"""Fast tests of the real-Xen tier's side-by-side report (no QEMU): a difference is either
explained by a named reason or counted as unexplained, and the report is written as text and JSON.
"""

from __future__ import annotations

import json
from pathlib import Path

from realxen import report  # tests/ is on sys.path (rootdir-style imports)


def _config(**patch: int) -> bytearray:
    """A 256-byte header with a capability list: MSI at 0x50 -> PCIe at 0x60."""
    config = bytearray(256)
    config[0:4] = bytes.fromhex("36 1b 05 00".replace(" ", ""))
    config[0x06] = 0x10  # capability list
    config[0x34] = 0x50
    config[0x50:0x52] = bytes([0x05, 0x60])
    config[0x60:0x62] = bytes([0x10, 0x00])
    for offset, value in patch.items():
        config[int(offset[1:], 16)] = value
    return config


def _data(kernel: bytes, ours: bytes, ksweep=None, osweep=None) -> dict:  # noqa: ANN001
    sweep = [["0", "1", "36", "0", "36", "0", "00"]]
    return {"kernel": {"config": {"1b36:0005": kernel.hex()}, "sweep": {"1b36:0005": ksweep or sweep},
                       "latency": {"us_per_read": 50.0, "reads": 100}},
            "ours": {"config": {"1b36:0005": ours.hex()}, "sweep": {"1b36:0005": osweep or sweep},
                     "latency": {"us_per_read": 150.0, "reads": 100}}}


def test_identical_views_have_no_difference() -> None:
    built = report.build(_data(bytes(_config()), bytes(_config())))
    device = built["devices"]["1b36:0005"]
    assert device["config_differences"] == [] and device["sweep_differences"] == []
    assert built["unexplained"] == 0
    assert built["latency"]["ratio_ours_to_kernel"] == 3.0


def test_msi_address_difference_is_explained_and_a_bar_difference_is_not() -> None:
    kernel = _config(o54=0x00, o10=0x00)
    ours = _config(o54=0xEE, o10=0x04)  # MSI address low byte; BAR0's low byte
    built = report.build(_data(bytes(kernel), bytes(ours)))
    diffs = {d["offset"]: d for d in built["devices"]["1b36:0005"]["config_differences"]}
    assert "MSI address/data" in diffs[0x54]["explained"]
    assert diffs[0x10]["explained"] is None
    assert built["unexplained"] == 1


def test_sweep_difference_in_behaviour_is_unexplained() -> None:
    ksweep = [["16", "4", "fe000000", "0", "fffff000", "0", "00"]]
    osweep = [["16", "4", "fe000000", "0", "ffffffff", "0", "00"]]  # sizing differs
    built = report.build(_data(bytes(_config()), bytes(_config()), ksweep, osweep))
    [diff] = built["devices"]["1b36:0005"]["sweep_differences"]
    assert diff["explained"] is None and diff["offset"] == 16 and diff["size"] == 4
    assert built["unexplained"] == 1


def test_missing_sweep_rows_are_unexplained() -> None:
    ksweep = [["0", "1", "36", "0", "36", "0", "00"], ["1", "1", "1b", "0", "1b", "0", "00"]]
    built = report.build(_data(bytes(_config()), bytes(_config()), ksweep, ksweep[:1]))
    assert built["unexplained"] == 1


def test_write_produces_text_and_json(tmp_path: Path) -> None:
    written = report.write(_data(bytes(_config()), bytes(_config(o54=1))), tmp_path)
    assert json.loads((tmp_path / "side-by-side.json").read_text()) == json.loads(json.dumps(written))
    text = (tmp_path / "side-by-side.txt").read_text()
    assert "config 0x054" in text and "MSI address/data" in text and "ratio 3.0" in text


def test_cache_line_size_programmed_by_linux_only_is_explained_by_mwi() -> None:
    """Linux's pciback programs CACHE_LINE_SIZE through pci_set_mwi when the sweep's all-ones
    COMMAND write sets MWI; ours never does (linux-differences #13). The other way round, or
    any other value in ours, is not explained."""
    ksweep = [["12", "1", "10", "0", "ff", "0", "00"]]
    osweep = [["12", "1", "0", "0", "ff", "0", "00"]]
    built = report.build(_data(bytes(_config()), bytes(_config()), ksweep, osweep))
    [diff] = built["devices"]["1b36:0005"]["sweep_differences"]
    assert "#13" in diff["explained"]
    built = report.build(_data(bytes(_config()), bytes(_config()), osweep, ksweep))
    assert built["devices"]["1b36:0005"]["sweep_differences"][0]["explained"] is None
    ksweep = [["12", "1", "10", "0", "ff", "0", "00"]]
    osweep = [["12", "1", "0", "0", "0", "0", "00"]]  # the write behaved differently too
    built = report.build(_data(bytes(_config()), bytes(_config()), ksweep, osweep))
    assert built["devices"]["1b36:0005"]["sweep_differences"][0]["explained"] is None


def test_a_dropped_write_over_different_host_state_is_the_same_behaviour() -> None:
    """Both backends drop the guest's write to the MSI address (it reads back unchanged), the
    host's value differs (Xen left a mapping's address there): explained, not a difference in
    what the backend did. A write that sticks in one and is dropped in the other is not."""
    config = bytes(_config())
    ksweep = [["84", "4", "0", "0", "0", "0", "00"]]          # 0x54: MSI address, dropped
    osweep = [["84", "4", "fee00358", "0", "fee00358", "0", "00"]]
    built = report.build(_data(config, config, ksweep, osweep))
    assert "MSI address/data" in built["devices"]["1b36:0005"]["sweep_differences"][0]["explained"]
    osweep = [["84", "4", "fee00358", "0", "ffffffff", "0", "00"]]  # the write went through
    built = report.build(_data(config, config, ksweep, osweep))
    assert built["devices"]["1b36:0005"]["sweep_differences"][0]["explained"] is None


def test_aer_status_registers_are_host_events_but_aer_masks_are_not() -> None:
    config = bytearray(4096)
    config[0x100:0x104] = (0x00010001).to_bytes(4, "little")  # AER, version 1, last
    kernel, ours = bytearray(config), bytearray(config)
    ours[0x104] = 0x40   # uncorrectable status
    ours[0x118] = 0x0E   # first error pointer
    ours[0x108] = 0x01   # uncorrectable mask: configuration
    diffs = {d["offset"]: d for d in report.compare_bytes(bytes(kernel), bytes(ours))}
    assert "AER status" in diffs[0x104]["explained"] and "AER status" in diffs[0x118]["explained"]
    assert diffs[0x108]["explained"] is None


def test_device_state_left_by_the_kernel_phases_aer_injection_is_explained_by_evidence() -> None:
    """Ours probes after the kernel phase injected an AER error; a byte that differs is
    explained only when the kernel's backend read that same value right after the injection."""
    kernel = bytes(_config(oec=0x11))
    ours = bytes(_config(oec=0x00, oed=0x07))
    after = bytes(_config(oec=0x00))             # the kernel's view right after the injection
    data = _data(kernel, ours)
    data["kernel"]["aer"] = {"ids": "1b36:0005", "guest_config": after.hex()}
    diffs = {d["offset"]: d for d in report.build(data)["devices"]["1b36:0005"]["config_differences"]}
    assert "injected AER error" in diffs[0xEC]["explained"]
    assert diffs[0xED]["explained"] is None     # 0x07 was never seen through the kernel's backend

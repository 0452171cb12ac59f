"""Capability walks agree with lspci on real hardware captures and on this machine, and survive
broken, cyclic and truncated lists."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers.configspace import firecracker_fixtures, id_matches, lspci_decode, pciutils_fixtures
from xenpciback_cli.config import capabilities
from xenpciback_cli.engine.inspect_sources import read_dump_file


def _compare(walk, expected, where):
    got_std = [(c.offset, c.id) for c in walk.standard]
    assert [o for o, _ in got_std] == [o for o, _ in expected["standard"]], where
    for (offset, cap_id), (_, want) in zip(got_std, expected["standard"]):
        assert id_matches(want, cap_id), f"{where}: cap at {offset:#x} id {cap_id:#x}"
    got_ext = [(c.offset, c.id, c.version) for c in walk.extended]
    assert [o for o, _, _ in got_ext] == [o for o, _, _ in expected["extended"]], where
    for (offset, cap_id, version), (_, want, want_version) in zip(got_ext, expected["extended"]):
        assert id_matches(want, cap_id), f"{where}: ext cap at {offset:#x} id {cap_id:#x}"
        assert version == want_version, f"{where}: ext cap at {offset:#x}"


@pytest.mark.parametrize("path", pciutils_fixtures(), ids=lambda p: p.name)
def test_fixture_capabilities_match_lspci(path: Path, require_lspci):
    expected = lspci_decode(["-F", str(path), "-vvv"])
    devices = read_dump_file(path)
    assert devices
    for device in devices:
        key = str(device.bdf)
        assert key in expected, f"{path.name}: lspci does not list {key}"
        _compare(capabilities.walk(device.data), expected[key], f"{path.name} {key}")


@pytest.mark.parametrize("path", pciutils_fixtures(), ids=lambda p: p.name)
def test_fixture_capabilities_match_recorded_text(path: Path):
    """The decoded text inside each capture (lspci run on the real machine) agrees too, as far
    as it goes: the recorded text may come from an older lspci that named fewer capabilities."""
    recorded = parse_lspci_lenient(path.read_text(errors="replace"))
    for device in read_dump_file(path):
        want = recorded.get(str(device.bdf))
        if want is None or not (want["standard"] or want["extended"]):
            continue
        walk = capabilities.walk(device.data)
        assert [c.offset for c in walk.standard] == [o for o, _ in want["standard"]]
        if want["extended"] and device.available > 0x100:
            # pciutils extends some captures with newer capabilities after the recorded text
            recorded_ext = [o for o, _, _ in want["extended"]]
            assert [c.offset for c in walk.extended][:len(recorded_ext)] == recorded_ext


def parse_lspci_lenient(text: str):
    import re

    out = {}
    current = None
    for line in text.splitlines():
        dev = re.match(r"^(?:([0-9a-f]{4}):)?([0-9a-f]{2}):([0-9a-f]{2})\.([0-7]) ", line)
        if dev:
            key = f"{int(dev.group(1) or '0', 16):04x}:{dev.group(2)}:{dev.group(3)}.{dev.group(4)}"
            current = out.setdefault(key, {"standard": [], "extended": []})
            continue
        cap = re.match(r"^\tCapabilities: \[([0-9a-f]+)(?: v(\d+))?\] (.*)$", line)
        if cap and current is not None and not cap.group(3).startswith("<"):
            offset = int(cap.group(1), 16)
            if offset >= 0x100 or cap.group(2):
                current["extended"].append((offset, None, None))
            else:
                current["standard"].append((offset, None))
    return out


def _this_machine_devices():
    root = Path("/sys/bus/pci/devices")
    return sorted(root.iterdir()) if root.is_dir() else []


@pytest.mark.parametrize("devdir", _this_machine_devices(), ids=lambda p: p.name)
def test_this_machine_matches_lspci(devdir: Path, require_lspci):
    data = (devdir / "config").read_bytes()  # read-only; as root we get the full space
    expected = lspci_decode(["-vvv", "-s", devdir.name, "-D"])
    if len(data) <= 64:
        pytest.skip("not root: sysfs gives only 64 bytes, lspci sees the same")
    _compare(capabilities.walk(data), expected[devdir.name], devdir.name)


@pytest.mark.parametrize("path", firecracker_fixtures(), ids=lambda p: p.name)
def test_binary_captures_match_lspci(path: Path, tmp_path: Path, require_lspci):
    """A raw capture re-rendered as an lspci -xxxx dump decodes the same in lspci and here."""
    data = path.read_bytes()
    dump = tmp_path / "dump"
    lines = ["00:00.0 Device"] + [
        f"{off:02x}: " + " ".join(f"{b:02x}" for b in data[off:off + 16])
        for off in range(0, len(data), 16)]
    dump.write_text("\n".join(lines) + "\n")
    expected = lspci_decode(["-F", str(dump), "-vvv"])
    _compare(capabilities.walk(data), expected["0000:00:00.0"], path.name)


# -- hostile lists -----------------------------------------------------------------------------

def _blank(size=256, status_caps=True):
    data = bytearray(size)
    data[0:4] = b"\x86\x80\x34\x12"
    if status_caps:
        data[6] = 0x10
    return data


def test_cyclic_standard_list_stops():
    data = _blank()
    data[0x34] = 0x40
    data[0x40:0x42] = bytes([0x05, 0x50])
    data[0x50:0x52] = bytes([0x01, 0x40])  # back to 0x40
    walk = capabilities.walk(bytes(data))
    assert [(c.offset, c.id) for c in walk.standard] == [(0x40, 5), (0x50, 1)]
    assert any("loops" in p for p in walk.problems)


def test_self_loop_and_broken_id():
    data = _blank()
    data[0x34] = 0x40
    data[0x40:0x42] = bytes([0x01, 0x40])
    assert len(capabilities.walk(bytes(data)).standard) == 1
    data[0x40:0x42] = bytes([0x01, 0x48])
    data[0x48:0x4A] = bytes([0xFF, 0x00])
    walk = capabilities.walk(bytes(data))
    assert [c.offset for c in walk.standard] == [0x40]
    assert any("broken" in p for p in walk.problems)


def test_low_pointer_bits_ignored_and_no_list_without_status_bit():
    data = _blank()
    data[0x34] = 0x43
    data[0x40:0x42] = bytes([0x11, 0x00])
    assert [c.offset for c in capabilities.walk(bytes(data)).standard] == [0x40]
    data[6] = 0
    assert capabilities.walk(bytes(data)).standard == []


def test_truncated_config_reports_problem():
    data = _blank(64)
    data[0x34] = 0x40
    walk = capabilities.walk(bytes(data))
    assert walk.standard == [] and walk.problems


def test_cyclic_extended_list_stops():
    data = _blank(4096)
    data[0x34] = 0x40
    data[0x40:0x44] = bytes([0x10, 0x00, 0x02, 0x00])  # PCIe v2
    data[0x100:0x104] = (0x1 | (1 << 16) | (0x140 << 20)).to_bytes(4, "little")
    data[0x140:0x144] = (0xD | (1 << 16) | (0x100 << 20)).to_bytes(4, "little")
    walk = capabilities.walk(bytes(data))
    assert [(c.offset, c.id) for c in walk.extended] == [(0x100, 1), (0x140, 0xD)]
    assert any("loops" in p for p in walk.problems)


def test_every_random_config_walk_terminates():
    import random

    rng = random.Random(1234)
    for _ in range(300):
        data = bytes(rng.getrandbits(8) for _ in range(4096))
        walk = capabilities.walk(data)
        assert len(walk.standard) <= capabilities.MAX_STD_STEPS
        assert len(walk.extended) <= capabilities.MAX_EXT_STEPS


def test_every_capability_has_a_name():
    for cap_id in range(0x16):
        assert not capabilities.cap_name(cap_id).startswith("Capability ID")
    for cap_id in range(0x35):
        assert not capabilities.ext_cap_name(cap_id).startswith("Extended Capability ID")
    assert capabilities.cap_name(0x7F) == "Capability ID 0x7f"


def _dump_of(data: bytes, path: Path) -> Path:
    lines = ["00:00.0 Device"] + [
        f"{off:02x}: " + " ".join(f"{b:02x}" for b in data[off:off + 16])
        for off in range(0, len(data), 16)]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("case", ["ext-into-std", "ext-all-ones", "std-into-header",
                                  "ext-loop", "std-broken"])
def test_hostile_lists_agree_with_lspci(case, tmp_path, require_lspci):
    data = _blank(4096)
    data[0x34] = 0x40
    data[0x40:0x44] = bytes([0x10, 0x00, 0x02, 0x00])
    if case == "ext-into-std":
        data[0x100:0x104] = (0x1 | (1 << 16) | (0x48 << 20)).to_bytes(4, "little")
        data[0x48:0x4C] = (0xFFFF).to_bytes(4, "little")
    elif case == "ext-all-ones":
        data[0x100:0x1000] = b"\xff" * 0xF00
    elif case == "std-into-header":
        data[0x41] = 0x08
    elif case == "ext-loop":
        data[0x100:0x104] = (0x1 | (1 << 16) | (0x100 << 20)).to_bytes(4, "little")
    elif case == "std-broken":
        data[0x41] = 0x50
        data[0x50:0x52] = bytes([0xFF, 0x60])
    dump = _dump_of(bytes(data), tmp_path / "dump")
    expected = lspci_decode(["-F", str(dump), "-vvv"])["0000:00:00.0"]
    _compare(capabilities.walk(bytes(data)), expected, case)


def _random_devices(seed: int, count: int) -> dict[str, bytes]:
    """Plausible-but-hostile config spaces: planted capability chains with loops, pointers into
    the header, unknown ids, odd header types, lists crossing into standard space."""
    import random

    rng = random.Random(seed)
    out = {}
    for i in range(count):
        size = rng.choice([256, 4096])
        data = bytearray(rng.getrandbits(8) if rng.random() < 0.3 else 0 for _ in range(size))
        data[0:2] = b"\x86\x80"
        data[8:0x40] = bytes(0x38)  # a tame header: lspci itself trips over random BARs
        data[6] |= 0x10
        data[0x0E] = rng.choice([0, 1, 2, 0x80, 0x81, 0x7F, 3])
        pointer = rng.choice([0x40, 0x50, 0x44, 0x04, 0x41, 0xFC, 0])
        data[0x34] = data[0x14] = pointer
        pos = 0x40
        for _ in range(rng.randint(0, 6)):
            # (not 0x14, EA: lspci 3.9 aborts on a garbage EA entry list)
            data[pos] = rng.choice([1, 5, 0x10, 0x11, 7, 0xFF, 9, 0x40, 0x13, 0x12])
            data[pos + 1] = rng.choice([pos + 0x10, 0, 0x40, 0xFC, 0x41]) & 0xFF
            pos += 0x10
        if size == 4096:
            where = 0x100
            for _ in range(rng.randint(0, 5)):
                nxt = rng.choice([where + 0x40, 0, 0x100, 0x48, 0xFFC])
                header = rng.randint(0, 0x36) | (rng.randint(0, 3) << 16) | (nxt << 20)
                data[where:where + 4] = header.to_bytes(4, "little")
                where += 0x40
        out[f"0000:{i // 32:02x}:{i % 32:02x}.0"] = bytes(data)
    return out


def test_random_hostile_devices_agree_with_lspci(tmp_path, require_lspci):
    devices = _random_devices(seed=2024, count=160)
    lines = []
    for name, data in devices.items():
        lines.append(f"{name[5:]} Device")
        lines += [f"{off:02x}: " + " ".join(f"{b:02x}" for b in data[off:off + 16])
                  for off in range(0, len(data), 16)]
        lines.append("")
    dump = tmp_path / "random.dump"
    dump.write_text("\n".join(lines))
    expected = lspci_decode(["-F", str(dump), "-vvv"])
    parsed = {str(d.bdf): d.data for d in read_dump_file(dump)}
    assert parsed == devices  # the dump reader round-trips what we wrote
    for name, data in devices.items():
        _compare(capabilities.walk(data), expected[name], name)


def test_find_extended_is_the_walk_without_its_detours():
    """find_extended (identity's serial, the sandbox's SR-IOV) walks the one extended list, and,
    like Linux, stops where a pointer leads back into standard space; the listing goes on."""
    import struct

    data = bytearray(4096)
    struct.pack_into("<I", data, 0x100, 0x0001 | (0x140 << 20))  # AER -> 0x140
    struct.pack_into("<I", data, 0x140, 0x000B | (0x0C0 << 20))  # vendor-specific -> into 0xc0
    struct.pack_into("<I", data, 0x0C0, 0x0003)  # a "serial" header in standard space
    assert capabilities.find_extended(bytes(data), 0x000B) == 0x140
    assert capabilities.find_extended(bytes(data), 0x0003) is None
    problems: list[str] = []
    assert [where for where, _ in capabilities.extended_list(bytes(data), problems)] == [0x100, 0x140, 0x0C0]
    assert problems == []
    struct.pack_into("<I", data, 0x140, 0x000B | (0x100 << 20))  # back to the start: a loop
    assert capabilities.find_extended(bytes(data), 0x0003) is None
    assert [where for where, _ in capabilities.extended_list(bytes(data), problems)] == [0x100, 0x140]
    assert problems == ["extended capability list loops back to 0x100"]

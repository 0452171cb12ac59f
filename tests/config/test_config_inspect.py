"""``xen-pciback inspect``: JSON agrees with lspci on real captures, the overlay is shown, bad input
is one line with exit code 2, and host devices with a short (non-root) read are labelled."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers.configspace import firecracker_fixtures, id_matches, lspci_decode, pciutils_fixtures
from helpers.cli import invoke
from xenpciback_cli.config.report import build_report
from xenpciback_cli.engine.inspect_sources import collect_sources
from xenpciback_cli.errors import DeviceNotFound, InputError
from xenpciback_cli.host.model import Host
from xenpciback_cli.pci.device import PciDevice
from xenpciback_cli.pci.address import Bdf


@pytest.mark.parametrize("path", pciutils_fixtures(), ids=lambda p: p.name)
def test_json_from_dump_matches_lspci(path: Path, capsys, require_lspci):
    code, out, err = invoke("--json", "inspect", "--from-dump", str(path))
    assert code == 0, err
    reports = json.loads(out)
    expected = lspci_decode(["-F", str(path), "-vvv"])
    assert {r["bdf"] for r in reports} <= set(expected)
    for rep in reports:
        want = expected[rep["bdf"]]
        for key in ("bdf", "vendor_id", "device_id", "header_type", "bars", "capabilities",
                    "extended_capabilities", "fields"):
            assert key in rep
        got = [(c["offset"], int(c["id"], 16)) for c in rep["capabilities"]]
        assert [o for o, _ in got] == [o for o, _ in want["standard"]]
        assert all(id_matches(w, g) for (_, g), (_, w) in zip(got, want["standard"]))
        got_ext = [(c["offset"], int(c["id"], 16)) for c in rep["extended_capabilities"]]
        assert [o for o, _ in got_ext] == [o for o, _, _ in want["extended"]]
        assert all(id_matches(w, g) for (_, g), (_, w, _) in zip(got_ext, want["extended"]))


def test_text_output_and_diff(capsys):
    paths = [p for p in pciutils_fixtures() if p.name == "cap-pcie-1"]
    if not paths:
        pytest.skip("../shared absent")
    code, out, _ = invoke("inspect", "--from-dump", str(paths[0]))
    assert code == 0
    assert "[100 v1] Advanced Error Reporting" in out
    assert "command" in out and "mixed" in out
    code, out, _ = invoke("inspect", "--from-dump", str(paths[0]), "--diff")
    assert "PM capabilities" in out and "vendor ID" not in out


def test_binary_source_and_label(capsys):
    paths = firecracker_fixtures()
    if not paths:
        pytest.skip("../shared absent")
    code, out, _ = invoke("--json", "inspect", "--from-binary", str(paths[1]), "00:02.0")
    assert code == 0
    rep = json.loads(out)[0]
    assert rep["bdf"] == "0000:00:02.0"
    assert rep["bars"][0]["size"] is None  # no resources: size unknown, not guessed


@pytest.mark.parametrize("args", [
    ["inspect"],
    ["inspect", "--from-dump", "/nonexistent/file"],
    ["inspect", "--from-binary", "/nonexistent/file"],
    ["inspect", "zz:zz.z", "--from-dump", "/dev/null"],
    ["inspect", "--from-dump", "/dev/null"],
])
def test_bad_input_is_one_line_exit_2(capsys, args):
    code, _out, err = invoke(*args)
    assert code == 2
    assert err.startswith("xen-pciback: error: ") and err.count("\n") == 1


def test_short_binary_refused(tmp_path, capsys):
    image = tmp_path / "img"
    image.write_bytes(b"\x86\x80" * 10)
    code, _, err = invoke("inspect", "--from-binary", str(image))
    assert code == 2 and "at least 64" in err


def test_missing_device_in_dump(capsys):
    paths = [p for p in pciutils_fixtures() if p.name == "cap-pcie-1"]
    if not paths:
        pytest.skip("../shared absent")
    code, _, err = invoke("inspect", "--from-dump", str(paths[0]), "07:00.0")
    assert code == 1 and "0000:07:00.0" in err


class FakeHost(Host):
    """A host whose sysfs gives 64 bytes (as for a non-root reader)."""

    def __init__(self, config: bytes, resources):
        super().__init__()
        self.config = config
        self.dev = PciDevice(Bdf(0, 3, 0, 0), 0x8086, 0x10D3, 0x020000, 0, irq=42,
                             resources=tuple(resources))

    def devices(self):
        return [self.dev]

    def device(self, bdf):
        if bdf != self.dev.bdf:
            raise DeviceNotFound(f"no PCI device {bdf}", bdf=bdf)
        return self.dev

    def read_config(self, bdf, offset=0, length=None):
        return self.config[:64]

    def loaded_drivers(self):
        return frozenset()

    def supports_driver_override(self, bdf):
        return True

    def pciback_slots(self):
        return []

    def usage(self, bdf):
        raise NotImplementedError

    def _write(self, write):
        raise AssertionError("inspect must never write")


class FakeApp:
    sandbox_dir = None

    def __init__(self, host):
        self.host = host


def test_host_device_short_read_is_labelled_and_sized_from_resources():
    from config.test_config_overlay import RESOURCES, make_config

    app = FakeApp(FakeHost(bytes(make_config()), RESOURCES))
    sources = collect_sources(app, ["03:00.0"])
    rep = build_report(sources[0])
    assert rep["config_bytes"] == 64
    assert any("64 bytes" in n for n in rep["notes"])
    assert rep["capabilities"] == []
    bars = {b["index"]: b for b in rep["bars"]}
    assert bars[0]["size"] == 0x10000 and bars[1]["size"] == 32 and bars[2]["size"] == 1 << 28
    line = next(f for f in rep["fields"] if f["name"] == "interrupt line")
    assert line["guest_value"] == "0x2a"  # dom0's IRQ, not the register
    with pytest.raises(DeviceNotFound):
        collect_sources(app, ["04:00.0"])
    with pytest.raises(InputError):
        collect_sources(app, [])


def test_this_machine_inspect_matches_lspci(capsys, require_lspci):
    root = Path("/sys/bus/pci/devices")
    if not root.is_dir():
        pytest.skip("no sysfs")
    names = sorted(p.name for p in root.iterdir())
    if not names:
        pytest.skip("no PCI devices")
    for name in names:
        data = (root / name / "config").read_bytes()
        if len(data) <= 64:
            pytest.skip("not root")
        code, out, err = invoke("--json", "inspect", "--from-binary",
                             str(root / name / "config"), name)
        assert code == 0, err
        rep = json.loads(out)[0]
        want = lspci_decode(["-vvv", "-D", "-s", name])[name]
        assert [c["offset"] for c in rep["capabilities"]] == [o for o, _ in want["standard"]]
        assert [c["offset"] for c in rep["extended_capabilities"]] == \
            [o for o, _, _ in want["extended"]]


def test_inspect_real_host_devices_through_the_host_model(capsys, require_lspci):
    """The real-device path (SysfsHost, read-only) agrees with lspci -vvv, sizes included."""
    pytest.importorskip("xenpciback_cli.host.sysfs")
    root = Path("/sys/bus/pci/devices")
    names = sorted(p.name for p in root.iterdir()) if root.is_dir() else []
    if not names:
        pytest.skip("no PCI devices")
    from config.test_config_decode import lspci_regions

    code, out, err = invoke("--sysfs-root", "/sys", "--json", "inspect", *names)
    assert code == 0, err
    reports = {r["bdf"]: r for r in json.loads(out)}
    regions = lspci_regions(["-vvv", "-D"])
    for name in names:
        rep = reports[name]
        want = lspci_decode(["-vvv", "-D", "-s", name])[name]
        if rep["config_bytes"] > 64:
            assert [c["offset"] for c in rep["capabilities"]] == [o for o, _ in want["standard"]]
            assert [c["offset"] for c in rep["extended_capabilities"]] == \
                [o for o, _, _ in want["extended"]]
        else:
            assert any("64 bytes" in n for n in rep["notes"])
        got = [(b["index"], b["type"], b["size"]) for b in rep["bars"]]
        assert got == [(r[0], r[1], r[5]) for r in regions.get(name, [])]


def test_simulated_xsa120_write_keeps_decode(capsys):
    """inspect --write shows what a guest write would do: XSA-120 on a real capture."""
    paths = [p for p in pciutils_fixtures() if p.name == "cap-pcie-2"]
    if not paths:
        pytest.skip("../shared absent")
    code, out, err = invoke("--json", "inspect", "--from-dump", str(paths[0]),
                         "--write", "0x04:2:0x0007", "--write", "0x04:2:0x0000",
                         "--write", "-4:4:0", "--write", "0x10:4:0xffffffff")
    assert code == 0, err
    for rep in json.loads(out):
        enable, clear, negative, sizing = rep["guest_writes"]
        assert clear["err"] == 0 and clear["guest_reads_back"] == "0x0000"  # as wide as the 2-byte read
        hw_after = bytes.fromhex(rep["config_after_writes"])
        assert hw_after[4] & 0x3 == 0x3 or not bytes.fromhex(rep["config"])[4] & 0x3
        assert all(c["offset"] in (4, 5) for c in enable["hardware_changes"] +
                   clear["hardware_changes"])
        assert negative["err"] == -2 and not negative["hardware_changes"]
        assert not sizing["hardware_changes"]


@pytest.mark.parametrize("text", ["4:3:0", "4:2:0x10000", "zz:2:0", "4:2", "4:2:0:1"])
def test_bad_simulated_write_is_exit_2(capsys, text):
    code, _, err = invoke("inspect", "--from-binary", "/dev/null", "--write", text)
    assert code == 2 and "guest write" in err

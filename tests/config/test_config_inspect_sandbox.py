"""``inspect`` on a sandbox device: the host-model path, sizes from the sandbox's resource file,
the kernel's ids for SR-IOV VFs; lspci reading the same sandbox tree is the oracle."""

from __future__ import annotations

import json

import pytest

from helpers.configspace import lspci_decode
from config.test_config_decode import lspci_regions
from helpers.cli import invoke

sandbox_mod = pytest.importorskip("xenpciback_cli.sandbox.host")


@pytest.fixture()
def sandbox_dir(pristine_sandbox):
    return pristine_sandbox  # only read here


def _lspci_args(sandbox_dir):
    return ["-A", "linux-sysfs", "-O", f"sysfs.path={sandbox_dir}/sys/bus/pci", "-D", "-vvv"]


def test_every_sandbox_device_matches_lspci(sandbox_dir, capsys, require_lspci):
    host = sandbox_mod.open_sandbox(sandbox_dir)
    names = [str(d.bdf) for d in host.devices()]
    code, out, err = invoke("--sandbox", str(sandbox_dir), "--json", "inspect", *names)
    assert code == 0, err
    reports = {r["bdf"]: r for r in json.loads(out)}
    caps = lspci_decode(_lspci_args(sandbox_dir))
    regions = lspci_regions(_lspci_args(sandbox_dir))
    for name in names:
        rep = reports[name]
        assert [c["offset"] for c in rep["capabilities"]] == [o for o, _ in caps[name]["standard"]]
        assert [c["offset"] for c in rep["extended_capabilities"]] == \
            [o for o, _, _ in caps[name]["extended"]]
        got = [(b["index"], b["type"], b["size"]) for b in rep["bars"]]
        want = [(r[0], r[1], r[5]) for r in regions.get(name, [])]
        assert got == want, name
        device = host.device(sandbox_mod_bdf(name))
        assert rep["vendor_id"] == f"{device.vendor_id:#06x}"  # kernel ids, even for a VF


def sandbox_mod_bdf(name):
    from xenpciback_cli.pci.address import Bdf

    return Bdf.parse(name)


def test_sandbox_overlay_bars_follow_resources(sandbox_dir, capsys):
    host = sandbox_mod.open_sandbox(sandbox_dir)
    for device in host.devices():
        code, out, err = invoke("--sandbox", str(sandbox_dir), "--json", "inspect",
                             str(device.bdf))
        assert code == 0, err
        rep = json.loads(out)[0]
        fields = {f["offset"]: f for f in rep["fields"]}
        for res in device.resources:
            if res.index > 5 or device.header_type != 0 or not res.start:
                continue
            guest = int(fields[0x10 + 4 * res.index]["guest_value"], 16)
            assert guest & ~0xF == res.start & 0xFFFFFFF0, (str(device.bdf), res)
            assert bool(guest & 1) == res.is_io


def test_not_a_sandbox_device(sandbox_dir, capsys):
    code, _, err = invoke("--sandbox", str(sandbox_dir), "inspect", "0000:7e:00.0")
    assert code == 1 and err.startswith("xen-pciback: error: ") and err.count("\n") == 1

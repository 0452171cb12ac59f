"""xl's words (issue 14 item 2): device names, -r/-f, the domain first or by name, pci-list,
detach taking what attach takes, and @VSLOT said to be ignored for a PV guest."""

from __future__ import annotations

import json

import pytest

from helpers.cli import invoke, ok

VF = "0000:04:10.1"
VF2 = "0000:04:10.3"


def record(sandbox, bdf):
    return json.loads((sandbox / "state" / "seized" / f"{bdf.replace(':', '-').replace('.', '-')}.json").read_text())


def test_hide_name_is_recorded_unique_and_resolves_for_unhide(sandbox):
    ok("hide", "04:10.1", "--name", "nic-a", sandbox=sandbox)
    assert record(sandbox, VF)["name"] == "nic-a"
    from xenpciback_cli.engine.names import device_names

    assert {str(b): n for b, n in device_names(sandbox / "state").items()} == {VF: "nic-a"}
    taken = invoke("hide", "04:10.3", "-n", "nic-a", sandbox=sandbox)
    assert taken.code == 2 and "already 0000:04:10.1's" in taken.error
    bad = invoke("hide", "04:10.3", "-n", "two words", sandbox=sandbox)
    assert bad.code == 2 and "visible characters" in bad.error
    several = invoke("hide", "04:10.*", "-n", "x", sandbox=sandbox)
    assert several.code == 2
    assert "released 0000:04:10.1: now igbvf" in ok("unhide", "-r", "nic-a", sandbox=sandbox).out
    assert not (sandbox / "state" / "seized" / "0000-04-10-1.json").exists()
    unknown = invoke("unhide", "nic-a", sandbox=sandbox)
    assert unknown.code == 2 and "nor is 'nic-a' a device name" in unknown.error


def test_short_options_rebind_and_force(sandbox):
    refused = invoke("hide", "eth1", sandbox=sandbox)
    assert refused.code == 3
    ok("hide", "-f", "04:10.3", sandbox=sandbox)
    assert "now igbvf" in ok("unhide", "-r", "-f", VF2, sandbox=sandbox).out


@pytest.fixture
def guest(sandbox):
    ok("sandbox", "domain", "create", "5", sandbox=sandbox)
    ok("hide", VF, "--name", "vf1", sandbox=sandbox)
    return sandbox


def test_domain_positional_or_by_name_pci_list_and_detach_by_name(guest):
    sandbox = guest
    name = ok("xenstore", "read", "/local/domain/5/name", sandbox=sandbox).out.strip()
    attached = ok("attach", name, "name=vf1,vslot=3", sandbox=sandbox)
    assert f"{VF} attached to domain 5" in attached.out
    assert "@03 (virtual slot) is ignored for a PV guest: pciback picks the guest slot" in attached.err
    ok("status", "--domid", "5", "--wait", "10", sandbox=sandbox)
    listed = ok("pci-list", "5", sandbox=sandbox).out.splitlines()
    assert listed[0] == "Vdev Device" and listed[1].endswith(f" {VF}") and len(listed) == 2
    assert ok("pci-list", name, "--json", sandbox=sandbox).json()["devices"][0]["bdf"] == VF
    twice = invoke("detach", "5", VF, "--domid", "5", sandbox=sandbox)
    assert twice.code == 2 and "give the domain once" in twice.error
    nodomain = invoke("detach", VF, sandbox=sandbox)
    assert nodomain.code == 2 and "give the domain" in nodomain.error
    unknown = invoke("detach", "nosuch", VF, sandbox=sandbox)
    assert unknown.code == 2 and "unknown domain 'nosuch'" in unknown.error
    detached = ok("detach", name, "name=vf1,permissive=1", sandbox=sandbox)
    assert f"{VF} detached from domain 5" in detached.out
    assert ok("pci-list", "5", sandbox=sandbox).out == "Vdev Device\n"
    ok("attach", "5", VF, sandbox=sandbox)  # xl's order with a plain BDF
    ok("detach", VF, "--domid", "5", sandbox=sandbox)  # and the old spelling still works


def test_a_name_given_by_xl_resolves_too(guest):
    sandbox = guest
    ok("xenstore", "write", "/libxl/pci/0000-04-10-3/name", "from-xl", sandbox=sandbox)
    refused = invoke("hide", VF, "--name", "from-xl", sandbox=sandbox)
    assert refused.code == 2 and "already 0000:04:10.3's" in refused.error
    assert ok("xenstore", "read", "/libxl/pci/0000-04-10-1/name", sandbox=sandbox).out.strip() == "vf1"
    ok("unhide", "vf1", sandbox=sandbox)  # the seize ends: libxl's name node goes with it
    gone = invoke("xenstore", "read", "/libxl/pci/0000-04-10-1/name", sandbox=sandbox)
    assert gone.code != 0


def test_unhide_takes_lspci_ids_and_selectors(sandbox):
    """unhide -d VENDOR:DEVICE[:CLASS] releases the seized devices with those ids (others with
    them are not touched nor listed); none seized is nothing to do; none at all is an error."""
    ok("hide", "--persist", VF, VF2, sandbox=sandbox)
    out = ok("unhide", "-r", "-d", "8086:10ca:0200", sandbox=sandbox).out
    assert out.splitlines() == ["released 0000:04:10.1: now igbvf", "released 0000:04:10.3: now igbvf"]
    assert "04:10" not in (sandbox / "etc" / "xen-pciback" / "seized.toml").read_text()
    again = ok("--json", "unhide", "-d", "8086:10ca", sandbox=sandbox).json()
    assert again == {"changed": False, "dry_run": False, "devices": [], "unpersisted": False}
    assert "nothing to do" in ok("unhide", "-d", "8086:10ca", sandbox=sandbox).out
    assert invoke("unhide", "-d", "1234:", sandbox=sandbox).code == 1
    assert invoke("unhide", "-d", "zz", sandbox=sandbox).code == 2
    assert invoke("unhide", sandbox=sandbox).code == 2
    # lspci's -s forms select the functions there, and their persisted entries go too.
    ok("hide", "--persist", VF, sandbox=sandbox)
    released = ok("--json", "unhide", "-r", "0000:04:", sandbox=sandbox).json()
    assert [d["bdf"] for d in released["devices"] if d["changed"]] == [VF]
    assert released["unpersisted"] is True


def test_rebind_takes_lspci_ids(sandbox):
    ok("hide", VF, VF2, sandbox=sandbox)
    planned = ok("rebind", "--dry-run", "-d", "8086:10ca", sandbox=sandbox).out
    assert "would bind 0000:04:10.1" in planned and "would bind 0000:04:10.3" in planned
    assert invoke("rebind", sandbox=sandbox).code == 2


def test_assignable_list_with_names_like_xl_n(sandbox):
    ok("hide", VF, "--name", "nic-a", sandbox=sandbox)
    ok("hide", VF2, sandbox=sandbox)
    assert ok("list", "--assignable", "--format", "xl", sandbox=sandbox).out == f"{VF}\n{VF2}\n"
    assert ok("list", "--assignable", "--format", "xl", "-n", sandbox=sandbox).out == f"{VF} nic-a\n{VF2}\n"

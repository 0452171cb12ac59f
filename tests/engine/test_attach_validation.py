"""attach and detach read and validate everything before their first write, and tell one story
about devices held by vfio-pci or pci-stub (with ``list``, with and without ``--seize``)."""

from __future__ import annotations

import json

import pytest

from helpers.cli import invoke, ok
from xenpciback_cli.sandbox.host import open_sandbox
from xenpciback_cli.pci.address import Bdf

VF1, VF3, XHCI = Bdf.parse("04:10.1"), Bdf.parse("04:10.3"), Bdf.parse("00:14.0")




def snapshot(sandbox):
    """Everything a write would change: drivers, state dir files, the xenstore tree."""
    host = open_sandbox(sandbox)
    drivers = {d.bdf: d.driver for d in host.devices()}
    state = {p.name: p.read_bytes() for p in (sandbox / "state").rglob("*") if p.is_file()
             and "lock" not in p.name} if (sandbox / "state").exists() else {}
    tree = ok("--sandbox", sandbox, "--json", "xenstore", "ls", "/").output
    return drivers, state, tree


def test_attach_seize_finds_the_slot_taken_before_seizing(sandbox):
    ok("--sandbox", sandbox, "sandbox", "domain", "create", 7, "--no-guest")
    ok("--sandbox", sandbox, "attach", f"{VF1}@2", "--domid", 7, "--seize")
    before = snapshot(sandbox)
    result = invoke("--sandbox", sandbox, "attach", f"{VF3}@2", "--domid", 7, "--seize")
    assert result.code == 2
    assert "virtual slot 0x02 of domain 7 is taken by 0000:04:10.1" in result.output
    assert snapshot(sandbox) == before  # 04:10.3 still on igbvf, no record, no journal


def test_attach_seize_finds_the_device_held_elsewhere_before_seizing(sandbox):
    ok("--sandbox", sandbox, "sandbox", "domain", "create", 7, "--no-guest")
    ok("--sandbox", sandbox, "sandbox", "domain", "create", 8, "--no-guest")
    ok("--sandbox", sandbox, "xenstore", "write", f"/libxl/pci/{VF3.xs_key}/domid", "8")
    before = snapshot(sandbox)
    result = invoke("--sandbox", sandbox, "attach", VF3, "--domid", 7, "--seize")
    assert result.code == 3 and "attached to domain 8" in result.output
    assert snapshot(sandbox) == before
    result = invoke("--sandbox", sandbox, "attach", VF3, "--domid", 9, "--seize")  # no such domain
    assert result.code == 2 and "unknown domain 9" in result.output
    assert snapshot(sandbox) == before


def test_corrupt_backend_settings_stop_detach_before_any_write_and_spare_other_devices(sandbox):
    ok("--sandbox", sandbox, "sandbox", "domain", "create", 7, "--no-guest")
    ok("--sandbox", sandbox, "attach", VF1, "--domid", 7, "--seize", "--quirk", "e0:2:ff00")
    settings = sandbox / "state" / "backend-settings" / f"{VF1.xs_key}.json"
    assert settings.exists()
    settings.write_text("{not json")
    before = snapshot(sandbox)
    for args in (("detach", VF1, "--domid", 7), ("detach", VF1, "--domid", 7, "--force")):
        result = invoke("--sandbox", sandbox, *args)
        assert result.code == 2, args
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1 and str(settings) in lines[0], result.output
        assert "Traceback" not in result.output
        assert snapshot(sandbox) == before, args  # still attached, nothing changed
    # The corrupt file is about 04:10.1 alone: another device still attaches with settings.
    ok("--sandbox", sandbox, "attach", VF3, "--domid", 7, "--seize", "--permissive")
    settings.unlink()
    ok("--sandbox", sandbox, "detach", VF1, "--domid", 7)


@pytest.mark.parametrize("driver", ["vfio-pci", "pci-stub"])
def test_devices_held_for_other_consumers_tell_one_story(sandbox, driver):
    ok("--sandbox", sandbox, "hide", "--driver", driver, XHCI)
    ok("--sandbox", sandbox, "sandbox", "domain", "create", 7, "--no-guest")
    [row] = json.loads(ok("--sandbox", sandbox, "--json", "list", XHCI).output)
    assert row["state"] == "seized" and row["driver"] == driver and row["attachable"] is False
    before = snapshot(sandbox)
    plain = invoke("--sandbox", sandbox, "attach", XHCI, "--domid", 7)
    seize = invoke("--sandbox", sandbox, "attach", XHCI, "--domid", 7, "--seize")
    assert plain.code == seize.code == 3
    assert plain.output == seize.output
    assert plain.output.count("\n") == 1
    assert f"is seized by {driver}" in plain.output and "not seized" not in plain.output
    assert f"unhide {XHCI}" in plain.output and "--force" not in plain.output
    assert snapshot(sandbox) == before
    # The way out the message gives works.
    ok("--sandbox", sandbox, "unhide", XHCI)
    ok("--sandbox", sandbox, "attach", XHCI, "--domid", 7, "--seize")
    [row] = json.loads(ok("--sandbox", sandbox, "--json", "list", XHCI).output)
    assert row["state"] == "attached" and row["driver"] == "pciback" and row["attachable"] is True


def test_build_spec_merges_the_command_options_over_the_spec():
    """The merge the attach command used to do in its click callback, now the engine's."""
    from xenpciback_cli.engine.attach import build_spec
    from xenpciback_cli.errors import InputError

    spec = build_spec("0000:03:00.0,permissive=1,rdm_policy=relaxed", permissive=False, msitranslate=True)
    assert spec.bdf == Bdf.parse("03:00.0") and not spec.all_functions
    assert (spec.options.permissive, spec.options.msitranslate, spec.options.rdm_policy) == (False, True, "relaxed")
    spec = build_spec("03:00.*", vslot="4", rdm_policy="STRICT", seize=None, quirks=("0x40:2:0xffff",))
    assert spec.all_functions and spec.bdf == Bdf.parse("03:00.0") and spec.vslot == 4
    assert spec.options.rdm_policy == "strict" and not spec.seize and len(spec.quirks) == 1
    assert build_spec(None, name="nic").name == "nic" and build_spec("03:00.0,seize=1").seize
    for args, kwargs, message in ((("03:00.0@4",), {"vslot": "5"}, "virtual slot once"),
                                  (("03:00.0",), {"name": "nic"}, "not both"),
                                  ((None,), {}, "give a device")):
        with pytest.raises(InputError, match=message):
            build_spec(*args, **kwargs)

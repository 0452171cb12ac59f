"""Quirks and permissive mode reach whichever backend serves: the kernel pciback's sysfs files (here
the sandbox's simulated kernel) and the settings recorded for a userspace backend's overlay."""

from __future__ import annotations

import pytest

from xenpciback_cli.config.overlay import OverlayDevice
from xenpciback_cli.engine.backend_settings import load_settings, record_attach, record_detach
from xenpciback_cli.errors import InputError
from xenpciback_cli.sandbox.host import open_sandbox
from xenpciback_cli.pci.address import Bdf
from xenpciback_cli.pci.quirk import Quirk, parse_pciback_quirk, parse_quirk

from .test_attach_cli import run

NIC = Bdf.parse("0000:03:00.0")


@pytest.mark.parametrize("text, quirk", [("e0:2:ff00", Quirk(0xE0, 2, 0xFF00)),
                                         ("0x44:4:0xffffffff", Quirk(0x44, 4, 0xFFFFFFFF)),
                                         ("fff:1:1", Quirk(0xFFF, 1, 1))])
def test_quirk_specs(text, quirk):
    assert parse_quirk(text) == quirk
    assert parse_pciback_quirk(quirk.sysfs_line(NIC)) == (NIC, quirk)


@pytest.mark.parametrize("text", ["e0:3:ff", "1000:1:1", "e0:1:1ff", "e1:2:ff", "e0:2", "zz:1:1",
                                  "-4:4:1", "e0:2:ff:1", ""])
def test_bad_quirk_specs_are_one_line_errors(text):
    with pytest.raises(InputError) as exc:
        parse_quirk(text)
    assert "\n" not in str(exc.value) and "invalid quirk" in str(exc.value)


def test_sandbox_kernel_quirks_file_behaves_like_pciback(sandbox):
    host = open_sandbox(sandbox)
    quirks_file = sandbox / "sys/bus/pci/drivers/pciback/quirks"
    with pytest.raises(Exception, match=r"no such device|device gone"):  # not bound to pciback: ENODEV
        host.write_attribute("bus/pci/drivers/pciback/quirks", "03:00.0-e0:2:ff00")
    host.set_driver_override(NIC, "pciback")
    host.unbind(NIC, "igb")
    host.probe(NIC)
    with pytest.raises(Exception, match="invalid argument"):  # EINVAL
        host.write_attribute("bus/pci/drivers/pciback/quirks", "03:00.0-e0:3:ff00")
    host.write_attribute("bus/pci/drivers/pciback/quirks", "03:00.0-e0:2:ff00")
    host.write_attribute("bus/pci/drivers/pciback/quirks", "0000:03:00.0-e0:2:00ff")  # same start: ignored
    assert quirks_file.read_text() == "03:00.0\n\t\t000000e0:2:0000ff00\n"
    host.unbind(NIC, "pciback")  # leaving pciback frees the device's quirk fields
    assert quirks_file.read_text() == ""


def test_recorded_settings_build_an_overlay_that_enforces_the_mask(sandbox, tmp_path):
    host = open_sandbox(sandbox)
    state = tmp_path / "state"
    record_attach(state, NIC, permissive=False, quirks=(Quirk(0xE0, 2, 0xFF00),))
    settings = load_settings(state)[NIC]
    config = bytearray(host.read_config(NIC))

    def hw_read(offset, size):
        return int.from_bytes(config[offset:offset + size], "little")

    def hw_write(offset, size, value):
        config[offset:offset + size] = value.to_bytes(size, "little")

    class Accessor:
        read = staticmethod(hw_read)
        write = staticmethod(hw_write)

    before = hw_read(0xE0, 2)
    device = OverlayDevice(Accessor(), config_size=len(config), **settings.overlay_options())
    assert device.write(0xE0, 2, 0xFFFF) == 0
    assert hw_read(0xE0, 2) == (before & 0x00FF) | 0xFF00  # only the masked bits reached hardware
    record_detach(state, NIC)
    assert NIC not in load_settings(state)  # nothing left to apply: the entry goes


def test_attach_applies_quirks_and_detach_drops_them(tmp_path):
    s = tmp_path / "s"
    run(s, "sandbox", "init", str(s))
    try:
        run(s, "sandbox", "domain", "create", "7", "--no-guest")
        out = run(s, "attach", "03:00.0", "--domid", "7", "--seize", "--quirk", "e0:2:ff00",
                  "--permissive")
        assert "quirks e0:2:ff00" in out.err and "permissive" in out.err
        pciback = s / "sys/bus/pci/drivers/pciback"
        assert (pciback / "quirks").read_text() == "03:00.0\n\t\t000000e0:2:0000ff00\n"
        assert (pciback / "permissive").read_text() == "0000:03:00.0\n"
        assert load_settings(s / "state")[NIC].quirks == (Quirk(0xE0, 2, 0xFF00),)
        bad = run(s, "attach", "03:00.1", "--domid", "7", "--quirk", "e0:1:fff", check=False)
        assert bad.code == 2 and bad.err.count("\n") == 1
        run(s, "detach", "03:00.0", "--domid", "7", "--force")
        settings = load_settings(s / "state")[NIC]
        assert settings.quirks == () and settings.permissive  # permissive lasts, as in Linux
    finally:
        run(s, "sandbox", "stop", check=False)


def test_unhide_ends_the_recorded_settings(tmp_path):
    s = tmp_path / "s"
    run(s, "sandbox", "init", str(s))
    run(s, "hide", "03:00.0")
    record_attach(s / "state", NIC, permissive=True, quirks=())
    run(s, "unhide", "--rebind", "03:00.0")
    assert NIC not in load_settings(s / "state")

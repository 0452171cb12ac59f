"""Persistence: the TOML file round trip, restore at boot, and the cmdline parameter."""

from __future__ import annotations

import tomllib

import pytest
from xenpciback_cli.engine import persist
from xenpciback_cli.errors import InputError
from xenpciback_cli.sandbox.host import create_sandbox, open_sandbox
from xenpciback_cli.pci.address import Bdf
from xenpciback_cli.pci.spec import BdfPattern

from helpers.cli import invoke

NIC0 = Bdf(0, 3, 0, 0)


def test_toml_round_trip_is_stable(tmp_path):
    path = tmp_path / "seized.toml"
    persist.add(path, [BdfPattern.parse("03:00.0"), BdfPattern.parse("0000:02:00.*")], "pciback")
    persist.add(path, [BdfPattern.parse("0000:04:10.1")], "vfio-pci")
    first = path.read_text()
    assert tomllib.loads(first)["device"][0] == {"bdf": "0000:02:00.*", "driver": "pciback"}
    loaded = persist.load(path)
    assert [(str(d.pattern), d.driver) for d in loaded] == [
        ("0000:02:00.*", "pciback"), ("0000:03:00.0", "pciback"), ("0000:04:10.1", "vfio-pci")]
    persist.save(path, loaded)
    assert path.read_text() == first
    assert persist.remove(path, [BdfPattern.parse("0000:03:00.0")])
    assert not persist.remove(path, [BdfPattern.parse("0000:03:00.0")])
    assert len(persist.load(path)) == 2


@pytest.mark.parametrize("text, words", [
    ("[[device]]\nbdf = 3\n", "needs a string 'bdf'"),
    ("[[device]]\nbdf = \"0000:03:00.0\"\ndriver = \"e1000\"\n", "not pciback"),
    ("[[device]]\nbdf = \"03:00.9\"\n", "function"),
    ("device = [", "invalid TOML"),
])
def test_bad_config_is_input_error(tmp_path, text, words):
    path = tmp_path / "seized.toml"
    path.write_text(text)
    with pytest.raises(InputError) as info:
        persist.load(path)
    assert words in str(info.value)


def test_hide_parameter_forms():
    devices = [persist.PersistedDevice(BdfPattern.parse("03:00.0")),
               persist.PersistedDevice(BdfPattern.parse("04:00.*")),
               persist.PersistedDevice(BdfPattern.parse("05:00.0"), "vfio-pci")]
    assert persist.hide_parameter(devices) == "xen-pciback.hide=(0000:03:00.0)(0000:04:00.*)"
    assert persist.hide_parameter(devices, modprobe=True) == \
        "options xen-pciback hide=(0000:03:00.0)(0000:04:00.*)"


def test_persist_restore_cmdline_through_the_cli(sandbox, tmp_path):
    box = sandbox
    config = tmp_path / "seized.toml"
    base = ["--sandbox", str(box)]
    result = invoke(*base, *["hide", "--persist", "--config", str(config), "03:00.0"])
    assert result.code == 0, result.output
    assert [str(d.pattern) for d in persist.load(config)] == ["0000:03:00.0"]
    result = invoke(*base, *["cmdline", "--config", str(config)])
    assert result.output.strip() == "xen-pciback.hide=(0000:03:00.0)"
    # A reboot: the sandbox comes back with igb owning the NIC; restore seizes it again.
    create_sandbox(box, force=True)
    assert open_sandbox(box).device(NIC0).driver == "igb"
    result = invoke(*base, *["--json", "restore", "--config", str(config)])
    assert result.code == 0, result.output
    assert open_sandbox(box).device(NIC0).driver == "pciback"
    # Idempotent: a second restore leaves it seized and says so.
    result = invoke(*base, *["restore", "--config", str(config)])
    assert result.code == 0 and "already-seized" in result.output
    # unhide drops it from the persisted set.
    result = invoke(*base, *["unhide", "--rebind", "--config", str(config), "03:00.0"])
    assert result.code == 0, result.output
    assert persist.load(config) == []
    assert open_sandbox(box).device(NIC0).driver == "igb"


def test_restore_reports_refusals_and_continues(sandbox, tmp_path):
    box = sandbox
    config = tmp_path / "seized.toml"
    persist.add(config, [BdfPattern.parse("01:00.0"), BdfPattern.parse("03:00.0")], "pciback")
    result = invoke("--sandbox", box, "restore", "--config", config)
    assert result.code == 3
    assert "0000:01:00.0: refused" in result.output and "mounted on /" in result.output
    assert open_sandbox(box).device(NIC0).driver == "pciback"


def test_cmdline_with_nothing_persisted_fails_clearly(sandbox):
    box = sandbox
    result = invoke("--sandbox", box, "cmdline")
    assert result.code == 1 and "no pciback devices persisted" in result.error


# -- wrong paths and garbage configs (issue 9 item 5) ---------------------------------------------
def test_restore_with_a_missing_named_config_is_an_error_but_the_default_missing_is_nothing(sandbox, tmp_path):
    box = sandbox
    result = invoke("--sandbox", box, "restore", "--config", tmp_path / "nonexistent.toml")
    assert result.code == 2 and "does not exist" in result.error and "nonexistent.toml" in result.error
    result = invoke("--sandbox", box, "restore")  # the default config: nothing persisted
    assert result.code == 0 and "nothing to restore" in result.output


def test_persist_never_creates_the_directory_of_a_named_config(sandbox, tmp_path):
    box = sandbox
    config = tmp_path / "a" / "b" / "x.toml"
    result = invoke("--sandbox", box, "hide", "--persist", "--config", config, "03:00.0")
    assert result.code == 2 and f"{tmp_path / 'a' / 'b'} does not exist" in result.error
    assert not (tmp_path / "a").exists()
    # The default config's directory may be created.
    invoke("--sandbox", box, "unhide", "--rebind", "03:00.0")
    result = invoke("--sandbox", box, "hide", "--persist", "03:00.0")
    assert result.code == 0 and (box / "etc" / "xen-pciback" / "seized.toml").is_file()


@pytest.mark.parametrize("content, words", [
    (b"\x7fELF\x02\x01\x01\x00\xff\xfe\x00\x00", "invalid UTF-8"),
    (b"\x00\x01\x02garbage", "invalid TOML"),
    (b"a = " + b"[" * 5000 + b"]" * 5000, "invalid TOML"),
    (b"[[device]]\nbdf = \"0000:03:00.0\"\ndriver = \"../../x\"\n", "not pciback"),
    (b"[[device]]\nbdf = \"0000:03:00.0\"\nshell = \"rm -rf /\"\n", "unknown key 'shell'"),
    (b"hidden = 1\n", "unknown key 'hidden'"),
    (b"[[device]]\nbdf = \"../../../etc\"\n", "bdf"),
])
def test_a_garbage_config_is_one_clean_line_naming_the_file(sandbox, tmp_path, content, words):
    box = sandbox
    config = tmp_path / "seized.toml"
    config.write_bytes(content)
    for args in (["restore", "--config", config], ["cmdline", "--config", config],
                 ["hide", "--persist", "--config", config, "03:00.0"]):
        result = invoke("--sandbox", box, *args)
        assert result.code == 2, (args, result.output)
        assert words in result.error and str(config) in result.error and "\n" not in result.error


def test_a_directory_as_config_is_input_error(tmp_path):
    with pytest.raises(InputError, match="is a directory"):
        persist.load(tmp_path)

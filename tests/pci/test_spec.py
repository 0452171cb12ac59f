"""PCI_SPEC_STRING, wildcard patterns and the kernel hide= list; errors are one line, exit 2."""

from __future__ import annotations

import subprocess
import sys

import pytest

from xenpciback_cli.errors import InputError
from xenpciback_cli.pci.address import Bdf
from xenpciback_cli.pci.spec import (BdfPattern, format_hide_list, parse_hide_list, parse_pci_spec)


def test_patterns():
    assert BdfPattern.parse("03:00.*") == BdfPattern(0, 3, 0, None)
    assert BdfPattern.parse("0001:03:*.*") == BdfPattern(1, 3, None, None)
    assert BdfPattern.parse("03:00.2").as_bdf() == Bdf(0, 3, 0, 2)
    pattern = BdfPattern.parse("03:00.*")
    devices = [Bdf(0, 3, 0, 1), Bdf(0, 3, 0, 0), Bdf(0, 3, 1, 0), Bdf(1, 3, 0, 0)]
    assert pattern.select(devices) == [Bdf(0, 3, 0, 0), Bdf(0, 3, 0, 1)]
    assert BdfPattern.parse("03:*.*").select(devices) == [Bdf(0, 3, 0, 0), Bdf(0, 3, 0, 1), Bdf(0, 3, 1, 0)]
    assert str(pattern) == "0000:03:00.*" and str(BdfPattern.parse("3:*.*")) == "0000:03:*.*"


@pytest.mark.parametrize("text, fragment", [
    ("03:*.0", "a '*' slot needs a '*' function"),
    ("03:00.8", "function '8' is not 0-7"),
    ("03:20.0", "slot '20' is above 0x1f"),
    ("1ffffffff:03:00.0", "domain '1ffffffff' is above 0xffffffff"),
    ("zz:00.0", "bus 'zz' is not hex"),
    ("03-00-0", "expected [DDDD:]BB:DD.F"),
])
def test_pattern_errors(text, fragment):
    with pytest.raises(InputError) as info:
        BdfPattern.parse(text)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_spec_equivalent_forms():
    a = parse_pci_spec("36:00.0@1a,seize=1")
    b = parse_pci_spec("36:00.0,vslot=1a,seize=1")
    c = parse_pci_spec("bdf=36:00.0,vslot=1A,seize=1")
    assert a == b == c
    assert a.bdf == Bdf(0, 0x36, 0, 0) and a.vslot == 0x1A and a.seize and not a.permissive


def test_spec_all_keys_and_booleans():
    spec = parse_pci_spec("0000:03:00.1,permissive=yes,msitranslate=false,power_mgmt=on,"
                          "rdm_policy=Relaxed,seize=0")
    assert spec.permissive and not spec.msitranslate and spec.power_mgmt and not spec.seize
    assert spec.rdm_policy == "relaxed"
    assert spec.format() == "0000:03:00.1,permissive=1,msitranslate=0,seize=0,power_mgmt=1,rdm_policy=relaxed"
    assert parse_pci_spec(spec.format()) == spec


def test_spec_name_and_multifunction():
    named = parse_pci_spec("name=gpu0,vslot=5")
    assert named.name == "gpu0" and named.bdf is None and named.format() == "name=gpu0,vslot=05"
    multi = parse_pci_spec("02:00.*@7")
    assert multi.target == BdfPattern(0, 2, 0, None) and multi.vslot == 7 and multi.bdf is None
    assert multi.format() == "0000:02:00.*@07"


@pytest.mark.parametrize("text, fragment", [
    ("03:00.0@zz", "vslot 'zz' is not hex (0-1f)"),
    ("03:00.0@20", "vslot '20' is above 0x1f"),
    ("03:00.0@", "vslot '' is not hex"),
    ("03:00.0,permissive=maybe", "permissive='maybe' is not a boolean"),
    ("03:00.0,colour=red", "unknown option 'colour'"),
    ("03:00.0,seize=1,seize=0", "'seize' is given twice"),
    ("03:00.0,name=x", "exactly one of an address or name="),
    ("seize=1", "exactly one of an address or name="),
    ("03:00.*", "needs a vslot"),
    ("03:*.*@1", "only a function wildcard"),
    ("03:00.0,rdm_policy=loose", "rdm_policy 'loose' is not strict or relaxed"),
    ("03:00.0,,seize=1", "empty item at position 2"),
    ("03:00.0,36:00.0", "is not key=value"),
    ("", "it is empty"),
    ("name=has space", "name must be 1-64 visible characters"),
    ("3:00.9", "function '9' is not 0-7"),
])
def test_spec_errors_say_what_and_where(text, fragment):
    with pytest.raises(InputError) as info:
        parse_pci_spec(text)
    message = str(info.value)
    assert fragment in message and repr(text) in message and "\n" not in message


def test_domain_limits_follow_the_consumer():
    assert BdfPattern.parse("10000:e1:00.*").domain == 0x10000  # a host's VMD domain
    with pytest.raises(InputError, match="domain '10000' is above 0xffff"):
        parse_pci_spec("10000:e1:00.0")  # xl takes 16-bit domains
    with pytest.raises(InputError, match="domain '10000' is above 0xffff"):
        parse_hide_list("(10000:e1:00.0)")


def test_hide_list_round_trip():
    text = "xen-pciback.hide=(0000:01:00.0) (02:00.*)(0001:03:*.*)"
    patterns = parse_hide_list(text)
    assert [str(p) for p in patterns] == ["0000:01:00.0", "0000:02:00.*", "0001:03:*.*"]
    assert format_hide_list(patterns) == "xen-pciback.hide=(0000:01:00.0)(0000:02:00.*)(0001:03:*.*)"
    assert parse_hide_list(format_hide_list(patterns)) == patterns
    assert format_hide_list([Bdf(0, 3, 0, 0), Bdf(0, 3, 0, 0)], parameter=False) == "(0000:03:00.0)"


@pytest.mark.parametrize("text, fragment", [
    ("(03:00.0", "is never closed"),
    ("03:00.0", "expected '(' at character 1"),
    ("(03:00.0)x", "expected '(' at character 10"),
    ("()", "expected [DDDD:]BB:DD.F"),
    ("", "no (BDF) entries"),
    ("(03:00.9)", "function '9'"),
])
def test_hide_list_errors(text, fragment):
    with pytest.raises(InputError) as info:
        parse_hide_list(text)
    assert fragment in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("argument", ["03:00.9", "zz:00.0", "1:2:03:00.0", "0000:03:0g", "1ffffffff:00:00.0"])
def test_cli_bad_pattern_is_one_line_exit_2(tmp_path, argument):
    result = subprocess.run([sys.executable, "-m", "xenpciback_cli", "--sysfs-root", str(tmp_path),
                             "list", argument], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("xen-pciback: error: invalid")
    assert "Traceback" not in result.stderr


from hypothesis import given, settings, strategies as st  # noqa: E402

_SPEC_ALPHABET = st.sampled_from(list("0123456789abcdefABCDEF:.*@,=() xyz\n\t") +
                                 ["bdf=", "vslot=", "seize=", "name=", "permissive=", "rdm_policy="])


@settings(max_examples=300, deadline=None)
@given(st.lists(_SPEC_ALPHABET, max_size=20).map("".join))
def test_parsers_only_ever_raise_input_errors(text):
    """Whatever a person (or a config file) hands us: a result or one InputError line."""
    for parse in (parse_pci_spec, parse_hide_list, BdfPattern.parse, Bdf.parse):
        try:
            parse(text)
        except InputError as exc:
            assert "\n" not in str(exc)


@settings(max_examples=200, deadline=None)
@given(domain=st.integers(0, 0xFFFF), bus=st.integers(0, 0xFF), slot=st.integers(0, 0x1F),
       function=st.one_of(st.none(), st.integers(0, 7)), vslot=st.one_of(st.none(), st.integers(0, 0x1F)),
       flags=st.fixed_dictionaries({k: st.booleans() for k in ("permissive", "msitranslate", "seize", "power_mgmt")}),
       rdm=st.sampled_from([None, "strict", "relaxed"]))
def test_format_then_parse_is_identity(domain, bus, slot, function, vslot, flags, rdm):
    if function is None and vslot is None:
        vslot = 3  # a multi-function spec needs a vslot
    target = BdfPattern(domain, bus, slot, function)
    text = str(target) + (f"@{vslot:x}" if vslot is not None else "")
    text += "".join(f",{k}={'yes' if v else 'no'}" for k, v in flags.items())
    if rdm:
        text += f",rdm_policy={rdm}"
    spec = parse_pci_spec(text)
    assert spec.target == target and spec.vslot == vslot and spec.rdm_policy == rdm
    assert all(getattr(spec, k) == v for k, v in flags.items())
    assert parse_pci_spec(spec.format()) == spec
    assert parse_hide_list(format_hide_list([target])) == [target]

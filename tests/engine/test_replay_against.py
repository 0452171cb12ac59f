"""``replay --against``: a trace re-run on a live device (the sandbox's) instead of its snapshot:
read-only unless --allow-writes, and then only what the filter passes reaches the device."""

from __future__ import annotations

import json

from helpers.cli import invoke as run
from helpers.cli import ok
from helpers.traces import READ, WRITE, TraceMaker

NIC0, VF = "0000:03:00.0", "0000:04:10.1"


def config_file(sandbox, bdf):
    return sandbox / "sys" / "bus" / "pci" / "devices" / bdf / "config"


def driver(path):
    maker = TraceMaker(path)
    maker.op(READ, 0x00, 4)
    maker.op(WRITE, 0x04, 2, 0x0000)            # decode and bus mastering off
    maker.op(WRITE, 0x10, 4, 0xFFFFFFFF)        # BAR0 sizing: emulated, never the device's
    maker.op(READ, 0x10, 4)
    maker.op(WRITE, 0x4C, 4, 0x1234)            # denied: not permissive
    maker.op(READ, 0x04, 2)
    maker.close()
    return path


def test_read_only_against_the_sandbox_device_leaves_it_untouched(sandbox, tmp_path):
    trace = driver(tmp_path / "t.jsonl")
    before = config_file(sandbox, NIC0).read_bytes()
    assert before[4] & 0x7 == 0x7                      # the host driver left decode on
    data = json.loads(ok("--sandbox", sandbox, "--json", "replay", trace, "--check",
                         "--against", "sandbox").out)
    assert data["against"] == {NIC0: f"{NIC0} (sandbox)"} and data["ops"] == 6
    assert data["writes_withheld"] >= 1               # the COMMAND write, kept in the shadow
    assert config_file(sandbox, NIC0).read_bytes() == before
    # the shadow answers the later read as the device would have: no mismatch at op 5
    assert all(m["index"] != 5 for m in data["mismatches"]), data["mismatches"]
    text = ok("--sandbox", sandbox, "replay", trace, "--against", NIC0).out
    assert f"{NIC0} replayed on {NIC0} (sandbox) (read-only: " in text


def test_allow_writes_passes_only_what_the_filter_passes(sandbox, tmp_path):
    trace = driver(tmp_path / "t.jsonl")
    before = config_file(sandbox, NIC0).read_bytes()
    ok("--sandbox", sandbox, "replay", trace, "--against", "sandbox", "--allow-writes")
    after = config_file(sandbox, NIC0).read_bytes()
    changed = [i for i in range(len(before)) if before[i] != after[i]]
    assert 4 in changed and not after[4] & 0x4        # COMMAND (bus mastering) reached it
    assert not set(changed) - {4, 5, 0x44, 0x45}       # COMMAND; PMCSR's PME bits at export
    assert after[0x10:0x14] == before[0x10:0x14]      # BAR sizing stayed in the overlay
    assert after[0x4C:0x50] == before[0x4C:0x50]      # the denied write was denied


def test_another_device_is_named_in_a_note(sandbox, tmp_path):
    trace = driver(tmp_path / "t.jsonl")
    data = json.loads(run("--sandbox", sandbox, "--json", "replay", trace, "--check",
                          "--against", VF).out)
    assert data["against"] == {NIC0: f"{VF} (sandbox)"}
    assert any("the trace's 0000:03:00.0 8086:10c9" in n for n in data["notes"])


def test_against_mistakes_are_one_line(sandbox, tmp_path):
    trace = driver(tmp_path / "t.jsonl")
    cases = [
        (("replay", trace, "--against", "sandbox"), 2, "needs --sandbox"),
        (("replay", trace, "--allow-writes"), 2, "--allow-writes goes with --against"),
        (("--sandbox", sandbox, "replay", trace, "--against", "nope"), 2, "invalid PCI address"),
        (("--sandbox", sandbox, "replay", trace, "--against", "0000:09:00.0"), 1,
         "cannot read the config space of 0000:09:00.0"),
    ]
    for args, code, text in cases:
        res = run(*args)
        assert res.code == code and text in res.err, (args, res.err)
        assert len(res.err.strip().splitlines()) == 1

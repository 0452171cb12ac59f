"""``trace show|stats|diff`` on traces made in-process (helpers/traces.py): registers named from
the device's snapshot, filters, counts, and where two traces of one device part."""

from __future__ import annotations

import json

import pytest

from helpers.cli import invoke as run
from helpers.cli import ok
from helpers.traces import (
    DISABLE_MSIX,
    ENABLE_MSIX,
    READ,
    WRITE,
    TraceMaker,
    lines,
    write_lines,
)
from xenpciback_cli.engine.trace_names import RegisterNames
from xenpciback_cli.engine.trace_view import parse_offsets
from xenpciback_cli.errors import InputError


def probe(path, *, permissive=False):
    """A driver's probe: ids, COMMAND on, BAR2 sized and restored, MSI-X found and enabled,
    a write nobody owns, a read of a function that is not there."""
    maker = TraceMaker(path, permissive=permissive)
    maker.line({"kind": "state", "t": maker.time, "domid": 7, "state": 4, "name": "Connected",
                "end": "backend"})
    maker.op(READ, 0x00, 4)
    maker.op(WRITE, 0x04, 2, 0x0006)
    maker.op(WRITE, 0x18, 4, 0xFFFFFFFF)
    maker.op(READ, 0x18, 4)
    maker.op(WRITE, 0x18, 4, 0)
    maker.op(READ, 0x72, 2)
    maker.op(WRITE, 0x4C, 4, 0x1234)            # no field owns it: denied unless permissive
    maker.op(READ, 0x4C, 4)
    maker.op(READ, 0x00, 4, devfn=8)            # no device at 00:01.0
    maker.op(ENABLE_MSIX, 0, 0, 2, entries=(0, 1))
    maker.op(DISABLE_MSIX)
    maker.line({"kind": "aer", "t": maker.time, "domid": 7, "host": "0000:03:00.0",
                "step": "error_detected", "result": "need_reset", "outcome": "relayed"})
    maker.close()
    return path


def test_register_names_from_the_snapshot():
    from helpers.traces import config

    names = RegisterNames(config())
    assert names.name(0x04, 2) == "0x04 COMMAND"
    assert names.name(0x18, 4, WRITE, 0xFFFFFFFF) == "0x18 BAR2 sizing"
    assert names.name(0x18, 4, WRITE, 0) == "0x18 BAR2"
    assert names.name(0x72, 2) == "0x72 MSI-X+0x2 Message Control"
    assert names.name(0x104, 4) == "0x104 AER+0x4 Uncorrectable Error Status"
    assert names.name(0x05, 1) == "0x05 COMMAND+0x1"
    assert names.name(0x4C, 4) == "0x4c"
    assert names.name(0, 0, ENABLE_MSIX) == "enable_msix"
    assert RegisterNames(b"").name(0x72, 2) == "0x72"          # no snapshot: offsets only
    assert RegisterNames(b"").name(0x04, 2) == "0x04 COMMAND"   # the header is the same


def test_show_names_registers_and_filters(tmp_path):
    path = probe(tmp_path / "t.jsonl")
    out = ok("trace", "show", path).out.splitlines()
    assert "device 0000:03:00.0 as 0000:00:00.0 [8086:10c9]" in out[0]
    assert any("state backend Connected (4)" in x for x in out)
    sizing = next(x for x in out if "BAR2 sizing" in x)
    assert sizing.split()[0] == "2" and "<- 0xffffffff: ok" in sizing
    assert any("0x72 MSI-X+0x2 Message Control [2] -> 0x" in x for x in out)
    assert any("0x4c [4] <- 0x00001234: ok (denied by the filter)" in x for x in out)
    assert any("enable_msix entries 0,1 -> vectors 100,101: ok" in x for x in out)
    errors = ok("trace", "show", path, "--errors").out.splitlines()
    assert len(errors) == 1 and "0000:00:01.0" in errors[0] and "dev_not_found" in errors[0]
    bars = ok("trace", "show", path, "--offset", "0x10-0x24", "--kind", "conf_write").out
    assert len(bars.splitlines()) == 2 and "BAR2 sizing" in bars
    denied = ok("trace", "show", path, "--denied").out.splitlines()
    assert len(denied) == 1 and "0x4c" in denied[0]
    assert ok("trace", "show", path, "--kind", "state,aer").out.count("\n") == 2
    assert ok("trace", "show", path, "--device", "0000:00:01.0").out.count("\n") == 1
    data = [json.loads(x) for x in ok("--json", "trace", "show", path, "--kind", "conf_write")
            .out.splitlines()]
    assert [d["register"] for d in data] == ["0x04 COMMAND", "0x18 BAR2 sizing", "0x18 BAR2",
                                            "0x4c"]
    assert [d["denied"] for d in data] == [False, False, False, True]
    permissive = probe(tmp_path / "p.jsonl", permissive=True)
    assert ok("trace", "show", permissive, "--denied").out == ""


def test_stats_counts_kinds_denied_errors_registers_and_the_timeline(tmp_path):
    path = probe(tmp_path / "t.jsonl")
    data = json.loads(ok("--json", "trace", "stats", path).out)
    assert data["ops"] == 11 and data["writes"] == 4 and data["denied"] == 1
    assert data["by_kind"] == {"conf_read": 5, "conf_write": 4, "enable_msix": 1,
                               "disable_msix": 1}
    assert data["errors"] == 1 and data["by_error"] == {"dev_not_found": 1}
    assert data["denied_registers"] == {"0x4c": 1}
    busiest = {b["register"]: b["ops"] for b in data["busiest"]}
    assert busiest["0x00 VENDOR_ID/DEVICE_ID"] == 2 and busiest["0x4c"] == 2
    assert [s["state"] for s in data["states"]] == ["backend Connected (4)"]
    assert data["aer"][0]["event"] == "error_detected on 0000:03:00.0: need_reset (relayed)"
    text = ok("trace", "stats", path).out
    assert "11 op(s)" in text and "4 write(s), 1 denied; 1 error(s)" in text
    assert "busiest register" in text and "backend Connected (4)" in text


def test_diff_of_a_trace_with_itself_agrees(tmp_path):
    path = probe(tmp_path / "t.jsonl")
    res = run("trace", "diff", path, path)
    assert res.code == 0 and "the traces agree" in res.out and "11 alike" in res.out


def test_diff_finds_where_two_backends_part(tmp_path):
    """The same guest ops, once under a non-permissive filter and once permissive: they part
    at the read of the denied write's dword; the note says why."""
    a = probe(tmp_path / "a.jsonl")
    b = probe(tmp_path / "b.jsonl", permissive=True)
    res = run("trace", "diff", a, b)
    assert res.code == 1 and len(res.err.strip().splitlines()) == 1
    assert "they part at op 7 (after 7 alike): answered differently" in res.out
    assert "conf_read 0x4c [4] -> 0x00000000: ok" in res.out
    assert "conf_read 0x4c [4] -> 0x00001234: ok" in res.out
    assert "permissive false in A, true in B" in res.out
    data = json.loads(run("--json", "trace", "diff", a, b).out)
    assert (data["same"], data["answers_differ"], data["requests_differ"]) == (10, 1, 0)
    assert data["first"]["line_a"] == data["first"]["line_b"] == 10


def test_diff_when_the_guests_asked_differently_or_one_stopped(tmp_path):
    a = probe(tmp_path / "a.jsonl")
    items = lines(a)
    shorter = write_lines(tmp_path / "short.jsonl", items[:-4])
    data = json.loads(run("--json", "trace", "diff", a, shorter).out)
    assert data["ops_a"] == 11 and data["ops_b"] == 8
    assert data["first"]["why"] == "only in A" and data["first"]["b"] == "(trace ended)"
    other = [dict(x, offset=0x08) if x.get("kind") == "op" and x["offset"] == 0x72 else x
             for x in items]
    data = json.loads(run("--json", "trace", "diff", a, write_lines(tmp_path / "o.jsonl",
                                                                     other)).out)
    assert data["first"]["why"] == "the guests asked differently" and data["first"]["index"] == 5


def test_bad_input_is_one_line_and_exit_2(tmp_path):
    path = probe(tmp_path / "t.jsonl")
    for args in (("--offset", "0x20-0x10"), ("--offset", "zz"), ("--kind", "conf_peek"),
                 ("--device", "nope")):
        res = run("trace", "show", path, *args)
        assert res.code == 2 and len(res.err.strip().splitlines()) == 1, (args, res.err)
    broken = tmp_path / "broken.jsonl"
    broken.write_text(path.read_text()[:-5])
    for command in (("show",), ("stats",), ("diff", str(path))):
        res = run("trace", *command, broken)
        assert res.code == 2 and "line 14: truncated" in res.err, (command, res.err)


@pytest.mark.parametrize("text, expected", [
    ("0x10-0x24", (0x10, 0x24)), ("0x04", (4, 4)), ("0x70+12", (0x70, 0x7B)), ("16", (16, 16)),
])
def test_offset_ranges(text, expected):
    assert parse_offsets(text) == expected


def test_an_offset_beyond_config_space_is_refused():
    with pytest.raises(InputError):
        parse_offsets("0x1000")


@pytest.mark.parametrize("text", ["-1", "0x10-", "+4"])
def test_an_offset_with_a_part_missing_says_so(text):
    with pytest.raises(InputError, match="a number is missing"):
        parse_offsets(text)


def test_text_from_the_trace_is_printed_inertly(tmp_path):
    """A trace may come from elsewhere: what it says (a state's name, an AER step) reaches the
    terminal without its control characters."""
    path = probe(tmp_path / "t.jsonl")
    items = lines(path)
    items.insert(2, {"kind": "state", "t": 1.0, "domid": 7, "state": 4,
                     "name": "\x1b[2JConnected", "end": "backend\x07"})
    items.insert(3, {"kind": "aer", "t": 1.0, "domid": 7, "host": "x\x1b]0;pwned\x07",
                     "step": "resume", "result": "none"})
    out = ok("trace", "show", write_lines(tmp_path / "e.jsonl", items), "--kind", "state,aer").out
    assert "\x1b" not in out and "\x07" not in out and "\\x1b[2JConnected" in out

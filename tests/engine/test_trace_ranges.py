"""A trace's numbers are checked against what they stand for (docs/trace-format.md, "Bad
traces"): a device line's domain id (below DOMID_FIRST_RESERVED), IRQ, ids and resources, and
every line's time (a finite number, not JSON's true). ``replay`` and ``trace show|stats|diff``
refuse them alike: one line ``FILE: line N: why``, exit 2, never a traceback."""

from __future__ import annotations

import json

import pytest

from helpers.cli import invoke as run
from helpers.cli import ok
from helpers.traces import READ, WRITE, TraceMaker, lines, write_lines


@pytest.fixture
def trace(tmp_path):
    path = tmp_path / "t.jsonl"
    maker = TraceMaker(path)
    maker.line({"kind": "state", "t": maker.time, "domid": 7, "state": 4, "name": "Connected",
                "end": "backend"})
    maker.op(READ, 0x00, 4)
    maker.op(WRITE, 0x04, 2, 0x0006)
    maker.op(READ, 0x04, 2)
    maker.close()
    return path


def _device(items):
    """The header's device as a line of its own after the header (line 2)."""
    header, *rest = items
    device = header["devices"][0]
    return [dict(header, devices=[]), device, *rest]


def _refused(path, number, why):
    for command in (("replay", "--check"), ("trace", "show"), ("trace", "stats"), ("trace", "diff", path)):
        res = run(*command, path)
        assert res.code == 2, (command, res.out, res.err)
        assert f"line {number}: " in res.err and why in res.err, (command, res.err)
        assert len(res.err.strip().splitlines()) == 1 and "Traceback" not in res.err


def test_the_trace_made_here_replays_and_shows(trace):
    assert "3 op(s) replayed on 1 device(s), 3 checked, 0 mismatch" in ok("replay", trace, "--check").out
    ok("trace", "show", trace)
    moved = write_lines(trace.parent / "moved.jsonl", _device(lines(trace)))
    assert "0 mismatch" in ok("replay", moved, "--check").out
    ok("trace", "show", moved)


DEVICE_CHANGES = [
    ({"domid": 0x7FF0}, "domid"), ({"domid": -1}, "domid"), ({"domid": 2**16}, "domid"),
    ({"irq": -1}, "irq"), ({"irq": 2**32}, "irq"), ({"irq": True}, "irq"),
    ({"vendor_id": "0x10000"}, "vendor_id"), ({"device_id": "-0x1"}, "device_id"),
    ({"resources": [[0, 2**64, 2**64 + 15, 0x200]]}, "resource"),
    ({"resources": [[0, -4096, 0, 0x200]]}, "resource"),
    ({"resources": [[0, 0xFE000000, 0xFE00FFFF, 2**64]]}, "resource"),
    ({"resources": [[-1, 0xFE000000, 0xFE00FFFF, 0x200]]}, "resource"),
    ({"resources": [[64, 0xFE000000, 0xFE00FFFF, 0x200]]}, "resource"),
    ({"config": "00" * 4097}, "config"),
]


@pytest.mark.parametrize(("change", "why"), DEVICE_CHANGES, ids=[f"{next(iter(c))}={str(next(iter(c.values())))[:12]}"
                                                                  for c, _ in DEVICE_CHANGES])
def test_a_device_out_of_range_is_refused_in_the_header_and_on_its_own_line(trace, change, why):
    header, *rest = lines(trace)
    bad_header = dict(header, devices=[dict(header["devices"][0], **change)])
    _refused(write_lines(trace.parent / "h.jsonl", [bad_header, *rest]), 1, why)
    items = _device(lines(trace))
    items[1] = dict(items[1], **change)
    _refused(write_lines(trace.parent / "d.jsonl", items), 2, why)


def test_the_edges_of_a_device_line_are_kept(trace):
    header, *rest = lines(trace)
    edge = dict(header["devices"][0], domid=7, irq=2**32 - 1,
                resources=[[0, 0xFFFFFFFFFFFFF000, 2**64 - 1, 2**64 - 1]])
    path = write_lines(trace.parent / "edge.jsonl", [dict(header, devices=[edge]), *rest])
    assert "0 mismatch" in ok("replay", path, "--check").out
    ok("trace", "show", path)


@pytest.mark.parametrize("kind", ["op", "state", "device"])
@pytest.mark.parametrize("t", [True, "NaN", "Infinity", "-Infinity", "soon"])
def test_a_time_that_is_no_finite_number_is_refused(trace, kind, t):
    text = [json.dumps(x, separators=(",", ":")) + "\n" for x in _device(lines(trace))]
    number = next(i for i, line in enumerate(text, 1) if json.loads(line)["kind"] == kind)
    data = json.loads(text[number - 1])
    data["t"] = "@T@"
    value = json.dumps(t) if t in (True, "soon") else t  # NaN and Infinity as Python's json writes them
    text[number - 1] = json.dumps(data, separators=(",", ":")).replace('"@T@"', value) + "\n"
    path = trace.parent / "bad.jsonl"
    path.write_text("".join(text))
    _refused(path, number, "t ")


@pytest.mark.parametrize("t", ["1e999", "1" + "0" * 400, "1000000000000000000", "1e18"],
                         ids=["1e999", "400-digits", "1e18-integer", "1e18"])
@pytest.mark.parametrize("repeated", [False, True], ids=["new-line", "a-line-seen-before"])
def test_a_time_beyond_1e18_is_refused_even_on_replays_fastest_path(trace, t, repeated):
    # A line seen before but for its t skips the JSON parse: its t is checked as text there.
    text = trace.read_text().splitlines(keepends=True)
    last = json.loads(text[-1])
    last["t"] = "@T@"
    bad = json.dumps(last, separators=(",", ":")).replace('"@T@"', t) + "\n"
    text = text + [text[-1], bad] if repeated else text[:-1] + [bad]
    path = trace.parent / "bad.jsonl"
    path.write_text("".join(text))
    _refused(path, len(text), "t ")


def test_times_as_serve_writes_them_replay_on_the_fastest_path(trace):
    text = trace.read_text().splitlines(keepends=True)
    again = [text[-1].replace('"t":1700000000.000375', f'"t":{t}')
             for t in ("5e-05", "0", "-12.5", "999999999999999999")]
    assert all(line != text[-1] for line in again)
    path = trace.parent / "again.jsonl"
    path.write_text("".join(text + again))
    assert "7 op(s) replayed on 1 device(s), 7 checked, 0 mismatch" in ok("replay", path, "--check").out

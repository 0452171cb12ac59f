"""``serve foreground --record`` writes a trace (docs/trace-format.md) that ``replay --check``
re-runs clean; a changed overlay setting shows as named mismatches; bad traces exit 2."""

from __future__ import annotations

import gzip
import json

import pytest

from helpers.cli import invoke as run
from helpers.cli import ok
from helpers.pcifront import serving

NIC0 = "0000:03:00.0"
READ, WRITE, ENABLE_MSIX, DISABLE_MSIX = 0, 1, 4, 5


@pytest.fixture
def recorded(sandbox):
    ok("--sandbox", sandbox, "sandbox", "domain", "create", 7, "--no-guest")
    ok("--sandbox", sandbox, "attach", NIC0, "--domid", 7, "--seize")
    trace = sandbox.parent / "trace.jsonl"
    with serving(sandbox, 7, "--record", str(trace)) as front:
        assert front.op(READ, 0, 0, 4)[:2] == (0, 0x10C98086)
        assert front.op(WRITE, 0, 0xFC, 4, 0xFFFFFFFF)[0] == 0      # denied: not permissive
        front.op(READ, 0, 0xFC, 4)
        front.op(READ, 0x08, 0, 4)                                  # no device there: -1
        front.op(WRITE, 0, 0x04, 2, 0x0006)
        front.op(READ, 0, 0x04, 2)
        assert front.op(ENABLE_MSIX, 0, 0, 0, 2, entries=(0, 1))[0] == 0
        front.op(DISABLE_MSIX, 0, 0, 0, 0)
    return trace


def lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_record_then_replay_clean_gz_and_with_a_changed_setting(recorded, tmp_path):
    _format(recorded)
    _clean(recorded, tmp_path)
    _changed(recorded, tmp_path)


def _format(recorded):
    first, *rest = lines(recorded)
    assert (first["kind"], first["version"], first["mode"]) == ("header", 1, "vpci")
    device = next(x for x in rest if x["kind"] == "device")
    assert device["host"] == NIC0 and device["permissive"] is False
    assert bytes.fromhex(device["config"])[:4] == bytes.fromhex("8680c910")
    ops = [x for x in rest if x["kind"] == "op"]
    assert len(ops) == 8 and ops[0]["op"] == "conf_read" and ops[0]["value_out"] == 0x10C98086
    assert ops[3]["err"] == -1 and ops[3]["host"] is None
    assert ops[6]["entries"] == [[0, 0], [0, 1]] and len(ops[6]["vectors"]) == 2


def _clean(recorded, tmp_path):
    out = json.loads(ok("--json", "replay", recorded, "--check").out)
    assert (out["ops"], out["checked"], out["mismatch_count"]) == (8, 8, 0)
    packed = tmp_path / "t.jsonl.gz"
    packed.write_bytes(gzip.compress(recorded.read_bytes()))
    assert "8 op(s) replayed on 1 device(s), 8 checked, 0 mismatch" in \
        ok("replay", packed, "--check").out


def _changed(recorded, tmp_path):
    changed = tmp_path / "permissive.jsonl"
    changed.write_text("".join(json.dumps(dict(x, permissive=True) if x["kind"] == "device"
                                          else x) + "\n" for x in lines(recorded)))
    res = run("replay", changed, "--check")
    assert res.code == 1
    assert "0xfc" in res.out and "1 mismatch" in res.out
    only = run("--json", "replay", changed, "--check", "--only", "conf_write")
    assert only.code == 0 and json.loads(only.out)["checked"] == 2


BAD = [
    (lambda ls: ls[:-1] + [ls[-1][:-10]], "last"),                 # truncated
    (lambda ls: ls[:2] + ["{not json\n"] + ls[2:], 3),             # not JSON
    (lambda ls: [ls[0].replace('"version":1', '"version":99')] + ls[1:], 1),
    (lambda ls: ls[:2] + [ls[-1].replace(NIC0, "0000:09:00.0")] + ls[2:], 3),
]


def test_a_bad_trace_is_one_line_with_its_number_and_exit_2(recorded, tmp_path):
    text = recorded.read_text().splitlines(keepends=True)
    for edit, where in BAD:
        bad = edit(text)
        path = tmp_path / "bad.jsonl"
        path.write_text("".join(bad))
        number = len(bad) if where == "last" else where
        res = run("replay", path, "--check")
        assert res.code == 2 and f"line {number}:" in res.err, (where, res.err)
        assert "Traceback" not in res.err and len(res.err.strip().splitlines()) == 1


def test_only_with_a_non_ascii_digit_is_bad_input_not_a_traceback():
    import pytest as _pytest

    from xenpciback_cli.engine.replay import parse_kinds
    from xenpciback_cli.errors import InputError

    with _pytest.raises(InputError):  # '²'.isdigit() passed, then int() raised ValueError
        parse_kinds("\u00b2")

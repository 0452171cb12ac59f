"""replay's fast path (op lines parsed field by field, lines seen before not parsed again)
decides exactly as the slow one: same answers, same mismatches, same refusals of bad lines."""

from __future__ import annotations

import json

import pytest

from helpers.cli import invoke as run
from helpers.traces import READ, WRITE, TraceMaker, driver_session, lines, write_lines
from xenpciback_cli.engine.replay import replay
from xenpciback_cli.errors import InputError


def test_a_driver_session_replays_clean(tmp_path):
    path = driver_session(tmp_path / "t.jsonl", 3000)
    result = replay(str(path))
    assert (result.ops, result.checked, result.mismatch_count) == (3000, 3000, 0)


def test_a_repeated_line_is_still_run_through_the_engine(tmp_path):
    """A read line seen before (the same text but for its time) is not parsed again, but it is
    run again: a write between the two changes the answer, and the replay must see that."""
    maker = TraceMaker(tmp_path / "t.jsonl", permissive=True)
    assert maker.op(READ, 0x4C, 4) == (0, 0)
    maker.op(WRITE, 0x4C, 4, 0xABCD)  # a dword no field owns: permissive lets it through
    assert maker.op(READ, 0x4C, 4) == (0, 0xABCD)
    maker.close()
    assert replay(str(tmp_path / "t.jsonl")).mismatch_count == 0
    items = lines(tmp_path / "t.jsonl")
    items[-1]["value_out"] = 0  # now the same line as the first read: a hit in the fast path
    path = write_lines(tmp_path / "w.jsonl", items)
    result = replay(str(path))
    assert result.mismatch_count == 1 and result.mismatches[0].index == 2
    assert result.mismatches[0].recorded[1] == 0 and result.mismatches[0].replayed[1] == 0xABCD


@pytest.mark.parametrize("change, why", [
    ({"size": True}, "size is not an integer"),
    ({"t": "soon"}, "t 'soon' is not a finite number of seconds"),
    ({"value_in": 2**32}, "value_in 4294967296 is out of range"),
    ({"err": -2**31 - 1}, "out of range"),
    ({"guest": "0000:00:00.8"}, "is not an address"),
    ({"guest": ["x"]}, "is not an address"),
])
def test_a_bad_field_after_good_lines_is_refused_with_its_line(tmp_path, change, why):
    path = driver_session(tmp_path / "t.jsonl", 50)
    items = lines(path)
    items.append(dict(items[-1], **change))      # line 52: the same op as line 51 but for this
    bad = write_lines(tmp_path / "bad.jsonl", items)
    with pytest.raises(InputError, match=f"line 52: .*{why}"):
        replay(str(bad))


def test_a_line_with_more_after_its_object_is_not_json(tmp_path):
    path = driver_session(tmp_path / "t.jsonl", 5)
    text = path.read_text().splitlines(keepends=True)
    text[3] = text[3][:-1] + " {}\n"
    path.write_text("".join(text))
    res = run("replay", path)
    assert res.code == 2 and "line 4: not JSON" in res.err


def test_until_and_only_count_as_before(tmp_path):
    path = driver_session(tmp_path / "t.jsonl", 400)
    result = replay(str(path), until=150, only=frozenset({WRITE}))
    writes = sum(1 for x in lines(path)[1:151] if x["code"] == WRITE)
    assert (result.ops, result.checked) == (150, writes)
    assert json.loads(run("--json", "replay", path, "--until", "0").out)["ops"] == 0


def test_progress_is_reported_in_bytes_as_the_trace_is_read(tmp_path):
    path = driver_session(tmp_path / "t.jsonl", 20000)
    seen = []
    replay(str(path), progress=lambda done, total: seen.append((done, total)))
    size = path.stat().st_size
    assert len(seen) == 20000 // 8192 and all(total == size for _, total in seen)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen) and 0 < seen[-1][0] <= size


def test_a_trace_whose_lines_never_repeat_replays_clean_too(tmp_path):
    """Past the table's size with few repeats, lines are no longer looked up (for a while);
    the answers are the same either way."""
    path = driver_session(tmp_path / "t.jsonl", 12000, unique=True, permissive=True)
    result = replay(str(path))
    assert (result.ops, result.mismatch_count) == (12000, 0)


def test_a_device_declared_again_was_released_in_between(tmp_path):
    """serve writes a device line at every export: unplugged and plugged again, the same
    device is declared twice. The second line replaces the first (a fresh overlay)."""
    path = driver_session(tmp_path / "t.jsonl", 30)
    items = lines(path)
    header = items[0]
    again = dict(header["devices"][0], kind="device")
    path = write_lines(tmp_path / "again.jsonl", items + [again] + items[1:])
    result = replay(str(path))
    assert (result.devices, result.ops, result.mismatch_count) == (2, 60, 0)


def test_a_host_that_is_not_a_string_is_a_bad_line_not_a_crash(tmp_path):
    path = driver_session(tmp_path / "t.jsonl", 5)
    items = lines(path)
    items.append(dict(items[-1], host=["0000:03:00.0"]))
    bad = write_lines(tmp_path / "bad.jsonl", items)
    res = run("replay", bad)
    assert res.code == 2 and "line 7:" in res.err and "Traceback" not in res.err

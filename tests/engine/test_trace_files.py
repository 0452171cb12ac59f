"""The trace file itself: size-based rotation (--record-max-size, --record-keep), .gz written and
read, .zst read through the optional 'zstandard' package (a clear line when it is missing)."""

from __future__ import annotations

import builtins
import gzip
import json
import shutil
import subprocess

import pytest

from helpers.cli import invoke as run
from helpers.traces import HOST, config
from xenpciback_cli.engine.replay import replay
from xenpciback_cli.engine.trace import TraceWriter, parse_size, rotated_name
from xenpciback_cli.errors import InputError
from xenpciback_cli.pv.codec import decode_op, encode_op
from xenpciback_cli.pv.trace import DeviceSnapshot, TraceRecord


def snapshot(permissive=False):
    return DeviceSnapshot(7, HOST, "0000:00:00.0", 0x8086, 0x10C9, 11, (), config(), permissive)


def read_op(offset, value):
    return TraceRecord(7, decode_op(encode_op(0, 0, 0, 0, offset, 4, 0)).raw, 0, value)


def test_rotation_keeps_n_files_each_readable_on_its_own(tmp_path):
    path = str(tmp_path / "t.jsonl")
    writer = TraceWriter(path, tool_version="t", mode="vpci", max_size=4000, keep=2,
                         clock=lambda: 1.0)
    writer.device(snapshot())
    vendor = int.from_bytes(config()[0:4], "little")
    for _ in range(100):                     # ~190 bytes a line: a new file every ~21 lines
        writer.op(read_op(0, vendor), HOST)
    writer.close()
    assert writer.rotations >= 4
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["t.jsonl", "t.jsonl.1", "t.jsonl.2"]      # the older ones went
    for name in names:
        lines = (tmp_path / name).read_text().splitlines()
        header = json.loads(lines[0])
        assert header["kind"] == "header" and header["devices"][0]["host"] == HOST
        assert len("".join(x + "\n" for x in lines[1:])) < 4000 + 200
        result = replay(str(tmp_path / name))
        assert result.mismatch_count == 0 and result.ops == len(lines) - 1


def test_gz_rotated_names_keep_the_suffix(tmp_path):
    assert rotated_name("a/t.jsonl.gz", 3) == "a/t.jsonl.3.gz"
    assert rotated_name("t.jsonl", 1) == "t.jsonl.1"
    path = str(tmp_path / "t.jsonl.gz")
    writer = TraceWriter(path, tool_version="t", mode="vpci", max_size=3000, keep=3)
    writer.device(snapshot())
    for _ in range(40):
        writer.op(read_op(0, 0x10C98086), HOST)
    writer.close()
    assert (tmp_path / "t.jsonl.1.gz").exists()
    text = gzip.decompress((tmp_path / "t.jsonl.1.gz").read_bytes()).decode()
    assert json.loads(text.splitlines()[0])["kind"] == "header"


@pytest.mark.parametrize("text, size", [("64K", 65536), ("100m", 100 << 20), ("1G", 1 << 30),
                                        ("70000", 70000), ("2MiB", 2 << 20)])
def test_sizes(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "10", "1K", "lots", "-5M", "1.5M", "\u00b2M"])
def test_bad_sizes(text):
    with pytest.raises(InputError):
        parse_size(text)


def test_record_options_are_checked_before_anything_runs(sandbox, tmp_path):
    res = run("--sandbox", sandbox, "serve", "foreground", "--record-max-size", "1M")
    assert res.code == 2 and "--record-max-size goes with --record FILE" in res.err
    res = run("--sandbox", sandbox, "serve", "foreground", "--record-keep", "3")
    assert res.code == 2 and "--record-keep goes with --record FILE" in res.err
    res = run("--sandbox", sandbox, "serve", "foreground", "--record", tmp_path / "t.zst")
    assert res.code == 2 and "traces are written plain or .gz" in res.err
    res = run("--sandbox", sandbox, "serve", "foreground", "--record", tmp_path / "t.jsonl",
              "--record-max-size", "1K")
    assert res.code == 2 and "at least 64K" in res.err


def _trace(tmp_path):
    path = tmp_path / "t.jsonl"
    writer = TraceWriter(str(path), tool_version="t", mode="vpci")
    writer.device(snapshot())
    writer.op(read_op(0, 0x10C98086), HOST)
    writer.close()
    return path


def test_zst_without_the_package_is_one_line(tmp_path, monkeypatch):
    packed = tmp_path / "t.jsonl.zst"
    packed.write_bytes(b"\x28\xb5\x2f\xfd")  # what the file holds matters not: no reader
    real_import = builtins.__import__

    def no_zstandard(name, *args, **kwargs):
        if name == "zstandard":
            raise ImportError("no zstandard here")
        return real_import(name, *args, **kwargs)
    monkeypatch.setattr(builtins, "__import__", no_zstandard)
    with pytest.raises(InputError, match=r"\.zst traces need the Python package 'zstandard'"):
        replay(str(packed))


@pytest.mark.skipif(shutil.which("zstd") is None, reason="no zstd command to make a .zst")
def test_zst_reads_the_same_when_the_package_is_there(tmp_path):
    pytest.importorskip("zstandard")
    path = _trace(tmp_path)
    subprocess.run(["zstd", "-q", str(path), "-o", str(path) + ".zst"], check=True)
    result = replay(str(path) + ".zst")
    assert (result.ops, result.mismatch_count, result.devices) == (1, 0, 1)


def _random_ops(seed, count):
    """(record, host) pairs of config ops with odd offsets, sizes, errors and hosts."""
    import random

    rnd = random.Random(seed)
    for _ in range(count):
        cmd = rnd.choice([0, 1])
        raw = encode_op(cmd, rnd.choice([0, 0xFFFF]), rnd.randrange(256), rnd.randrange(256),
                        rnd.randrange(-8, 4096), rnd.choice([1, 2, 4, 0, -1]),
                        rnd.randrange(2**32))
        record = TraceRecord(rnd.randrange(2**16), raw, rnd.choice([0, -1, -5, 2**31 - 1]),
                             rnd.randrange(2**32))
        yield record, rnd.choice([None, HOST])


def test_the_fast_op_line_is_the_json_one(tmp_path):
    """TraceWriter formats config ops itself; the text must be json.dumps(op_dict(...))'s."""
    from xenpciback_cli.pv.trace import op_dict

    times = iter([1_700_000_000.123456789, 0.1, 1e-7, 12345.5, 3.0, 1e16] * 50)
    path = tmp_path / "t.jsonl"
    writer = TraceWriter(str(path), tool_version="t", mode="vpci", clock=lambda: next(times))
    for record, host in _random_ops(3, 300):
        writer.op(record, host)
    writer.close()
    times = iter([1_700_000_000.123456789, 0.1, 1e-7, 12345.5, 3.0, 1e16] * 50)
    expected = [json.dumps(op_dict(record, next(times), host), separators=(",", ":"))
                for record, host in _random_ops(3, 300)]
    assert path.read_text().splitlines()[1:] == expected

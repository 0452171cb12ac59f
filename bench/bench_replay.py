#!/usr/bin/env python3
"""``replay --check`` throughput and memory, and what ``serve --record`` costs a guest (run by
hand).

    PYTHONPATH=.:tools python bench/bench_replay.py [--ops N] [--rounds R] [--skip-serve]

1. Replay: a generated trace of N ops (default 1,000,000) on the sandbox's 82576 capture, as a
   driver would send them (mostly reads of the header, BARs and capabilities, one in five a
   write: BAR sizing, COMMAND, scratch values), each answer the engine's own, is replayed with
   ``--check`` in a fresh process: ops/s (this process's CPU time), and peak RSS (VmHWM) after
   the first 100k ops and after all N: streaming means the two are the same. A second trace
   where every write is a new value (no two lines alike: the replay's worst case) is run the
   same way. Baseline in the same run: the least any reader of the file must do, one
   ``json.loads`` per line; ratio = replay time / baseline time. Target >= 300k ops/s.
2. Recording: the round trip of one ``conf_read`` (bench_serve.py's bare frontend loop) to
   ``serve foreground`` without and with ``--record``: two serve processes on one sandbox (one
   per guest, ``--domid``), both guests connected, timed in alternating blocks so load on the
   machine hits both alike; p50/p99, ratio = with / without. Target p50 <= 1.5x.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[1])
sys.path[:0] = [ROOT, str(Path(__file__).resolve().parent)]

from xenpciback_cli.backend.session import GuestSession  # noqa: E402
from xenpciback_cli.config.fields import MemoryAccessor  # noqa: E402
from xenpciback_cli.pci.address import Bdf  # noqa: E402
from xenpciback_cli.pci.device import PciDevice  # noqa: E402
from xenpciback_cli.pv.codec import decode_op, encode_op  # noqa: E402
from xenpciback_cli.pv.trace import (  # noqa: E402
    DeviceSnapshot,
    TraceRecord,
    header_dict,
    op_dict,
)

CAPTURE = Path(ROOT) / "xenpciback_cli" / "sandbox" / "captures" / "nic-intel-82576-sriov.bin"
HOST, GUEST = "0000:03:00.0", "0000:00:00.0"
REGISTERS = [(0x00, 4), (0x04, 2), (0x06, 2), (0x08, 4), (0x0C, 4), (0x10, 4), (0x14, 4),
             (0x18, 4), (0x2C, 4), (0x34, 1), (0x3C, 1), (0x40, 4), (0x44, 2), (0x50, 4),
             (0x70, 4), (0x72, 2), (0xA0, 4), (0xA8, 2), (0x100, 4), (0x104, 4), (0x4C, 4)]


class Control:
    def enable_msi(self, domid, host):  # noqa: ANN001, ANN201
        return 50

    def disable_msi(self, domid, host):  # noqa: ANN001, ANN201
        return None

    def enable_msix(self, domid, host, entries):  # noqa: ANN001, ANN201
        return [100 + i for i in range(len(entries))]

    def disable_msix(self, domid, host):  # noqa: ANN001, ANN201
        return None

    def legacy_pirq(self, domid, host):  # noqa: ANN001, ANN201
        return 11

    def adopt(self, *args):  # noqa: ANN002, ANN201
        return None


def generate(path: Path, ops: int, unique: bool) -> None:
    """A driver's trace of ``ops`` ops, answered by the engine itself (so --check is clean)."""
    data = CAPTURE.read_bytes()
    data += bytes(4096 - len(data))
    host = Bdf.parse(HOST)
    session = GuestSession(7, Control())
    session.export(host, MemoryAccessor(data), device=PciDevice(host, 0x8086, 0x10C9, 0, 0,
                                                                 irq=11),
                   permissive=True, guest=Bdf.parse(GUEST))
    snap = DeviceSnapshot(7, HOST, GUEST, 0x8086, 0x10C9, 11, (), data, True)
    rnd = random.Random(1)
    dumps = json.JSONEncoder(separators=(",", ":")).encode
    t = 1_700_000_000.0
    with open(path, "w", encoding="utf-8") as out:
        out.write(dumps(header_dict("bench", "vpci", (snap,))) + "\n")
        chunk = []
        for i in range(ops):
            offset, size = rnd.choice(REGISTERS)
            if rnd.random() < 0.2:
                value = (i * 2654435761 if unique
                         else rnd.choice([0xFFFFFFFF, 0x0006, 0, 0x12345678]))
                raw = encode_op(1, 0, 0, 0, offset, size, value & ((1 << (8 * size)) - 1))
            else:
                raw = encode_op(0, 0, 0, 0, offset, size, 0)
            op = decode_op(raw)
            record = TraceRecord.of(7, op.raw, session.handle(op))
            t += 0.000125
            chunk.append(dumps(op_dict(record, t, HOST)))
            if len(chunk) == 10000:
                out.write("\n".join(chunk) + "\n")
                chunk.clear()
        if chunk:
            out.write("\n".join(chunk) + "\n")


#: Alternating blocks of round trips with and without --record.
BLOCKS = 40

CHILD = """
import json, resource, sys, time
sys.path.insert(0, {root!r})
from xenpciback_cli.engine.replay import replay
path, until = sys.argv[1], int(sys.argv[2])
started = time.process_time()
if sys.argv[3] == "baseline":
    n = 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            json.loads(line)
            n += 1
            if n > until:
                break
    ops, mismatches = n - 1, 0
else:
    r = replay(path, check=True, until=until)
    ops, mismatches = r.ops, r.mismatch_count
cpu = time.process_time() - started
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]
print(json.dumps({{"ops": ops, "cpu": cpu, "hwm_mb": int(hwm) / 1024,
                  "mismatches": mismatches}}))
"""


def child(path: Path, until: int, what: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD.format(root=ROOT), str(path), str(until),
                          what], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def bench_replay(scratch: Path, ops: int) -> None:
    for unique in (False, True):
        path = scratch / ("unique.jsonl" if unique else "driver.jsonl")
        started = time.monotonic()
        generate(path, ops, unique)
        size = path.stat().st_size
        print(f"{'every write a new value' if unique else 'driver mix'}: {ops} ops, "
              f"{size / 1e6:.0f} MB, generated in {time.monotonic() - started:.0f} s")
        small = child(path, min(100_000, ops), "replay")
        full = child(path, ops, "replay")
        base = child(path, ops, "baseline")
        assert full["ops"] == ops and full["mismatches"] == 0, full
        rate = full["ops"] / full["cpu"]
        print(f"  replay --check   {rate:9.0f} ops/s  ({full['cpu']:.2f} s CPU; target >= 300k)")
        print(f"  json.loads only  {base['ops'] / base['cpu']:9.0f} lines/s  ratio "
              f"{full['cpu'] / base['cpu']:.2f}x")
        print(f"  peak RSS: {small['hwm_mb']:.1f} MB after {small['ops']} ops, "
              f"{full['hwm_mb']:.1f} MB after {full['ops']} ops")


def start_serve(sandbox: Path, *args: str) -> subprocess.Popen[bytes]:
    log_path = sandbox / "serve.log"
    log = open(log_path, "wb")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "xenpciback_cli", "--sandbox", str(sandbox),
                             "serve", "foreground", *args], stderr=log,
                            env=dict(os.environ, PYTHONPATH=ROOT))
    deadline = time.monotonic() + 15
    while b"serve: ready" not in log_path.read_bytes():
        if time.monotonic() > deadline or proc.poll() is not None:
            raise SystemExit(f"serve did not start: {log_path.read_text()}")
        time.sleep(0.05)
    return proc


def bench_record(scratch: Path, rounds: int) -> None:
    """Two serve processes on one sandbox, domain 1 without --record and domain 2 with it,
    each with its guest connected; timed in alternating blocks."""
    import bench_serve as bs

    from xenpciback_cli.sandbox.domains import create_domain
    from xenpciback_cli.sandbox.pcifront import PciFront
    from xenpciback_cli.xenstore.client import XenstoreClient

    sandbox = scratch / "s"
    bs.cli(sandbox, "sandbox", "init", str(sandbox))
    bs.cli(sandbox, "sandbox", "domain", "create", "1", "--no-guest")
    client = XenstoreClient.open_socket(str(sandbox / "xenstore" / "socket"), timeout=10)
    create_domain(client, 2)
    bs.give(client, 1, bs.DEVICES[:1])
    bs.give(client, 2, bs.DEVICES[:1])
    client.close()
    trace = scratch / "served.jsonl"
    procs = [start_serve(sandbox, "--domid", "1"),
             start_serve(sandbox, "--domid", "2", "--record", str(trace))]
    fronts = [PciFront(sandbox, domid, ref=8, port=8, timeout=10) for domid in (1, 2)]
    samples: list[list[float]] = [[], []]
    ratios = []
    block = max(rounds // BLOCKS, 50)
    clock = time.perf_counter_ns
    try:
        links = []
        for front in fronts:
            front.connect()
            page, chan = front.grant.page, front.channel  # type: ignore[union-attr]
            chan.sock.setblocking(True)
            links.append((page, chan.sock, str(chan.peer)))
            for _ in range(300):  # warm up
                bs.round_trip(*links[-1], bs.CONF_READ_VENDOR)
        for _ in range(BLOCKS):
            medians = []
            for which in (0, 1):
                times = []
                for _ in range(block):
                    t = clock()
                    bs.round_trip(*links[which], bs.CONF_READ_VENDOR)
                    times.append((clock() - t) / 1000)
                samples[which] += times
                medians.append(bs.pct(times, 0.5))
            ratios.append(medians[1] / medians[0])
    finally:
        for front in fronts:
            front.close()
        for proc in procs:
            proc.terminate()
            proc.wait(10)
        subprocess.run([sys.executable, "-m", "xenpciback_cli", "--sandbox", str(sandbox),
                        "sandbox", "stop"], capture_output=True,
                       env=dict(os.environ, PYTHONPATH=ROOT))
    with open(trace, encoding="utf-8") as recorded:
        ops = sum(1 for line in recorded if line.startswith('{"kind":"op"'))
    off50, off99 = bs.pct(samples[0], 0.5), bs.pct(samples[0], 0.99)
    on50, on99 = bs.pct(samples[1], 0.5), bs.pct(samples[1], 0.99)
    print(f"conf_read round trip to serve, {len(samples[1])} rounds each, alternating blocks "
          f"(microseconds):")
    print(f"  without --record  p50 {off50:7.1f}  p99 {off99:7.1f}")
    print(f"  with --record     p50 {on50:7.1f}  p99 {on99:7.1f}  ratio p50 {on50 / off50:4.2f}x"
          f"  p99 {on99 / off99:4.2f}x  (target p50 <= 1.5x; {ops} op lines recorded)")
    print(f"  median of the {BLOCKS} blocks' p50 ratios: {bs.pct(ratios, 0.5):4.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ops", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=5000)
    parser.add_argument("--skip-serve", action="store_true")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="br-", dir="/tmp"))
    try:
        bench_replay(scratch, args.ops)
        if not args.skip_serve:
            bench_record(scratch, args.rounds)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()

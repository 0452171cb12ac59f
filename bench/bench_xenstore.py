#!/usr/bin/env python3
"""xenstore throughput and latency, against Debian's real C xenstored in the same run.

    PYTHONPATH=.:tools python bench/bench_xenstore.py [--ops 5000] [--conns 256]

Measures (each figure is the best of --repeat runs, to damp the noise of a shared machine):
  1. our client vs pyxs, writes/s and reads/s, both against C xenstored, both run by the same
     interpreter (/usr/bin/python3, the one python3-pyxs is installed for)   target >= 1.0x
  2. our embedded daemon vs C xenstored with the same client (ours)          target >= 0.5x
  3. watch-event latency (write on one connection -> event on another), each daemon
  4. reads/s with 256 idle connections open vs none, each daemon (C slows down; ours should not
     collapse)

Prints figures and ratios; asserts nothing (speed is judged by a person reading the numbers).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import xsdaemons  # noqa: E402  from tools/ (shared with the tests)

SYSTEM_PYTHON = "/usr/bin/python3"

# Runs in a child interpreter: one client library, one daemon, prints JSON figures.
WORKER = r"""
import json, sys, time
lib, sock, ops = sys.argv[1], sys.argv[2], int(sys.argv[3])
if lib == "pyxs":
    import pyxs
    c = pyxs.Client(unix_socket_path=sock); c.connect()
    write = lambda p, v: c.write(p.encode(), v)
    read = lambda p: c.read(p.encode())
else:
    from xenpciback_cli.xenstore.client import connect
    c = connect(sock)
    write, read = c.write, c.read
write("/bench/key", b"x")
t = time.perf_counter()
for i in range(ops):
    write("/bench/key", b"value")
w = ops / (time.perf_counter() - t)
t = time.perf_counter()
for i in range(ops):
    read("/bench/key")
r = ops / (time.perf_counter() - t)
print(json.dumps({"writes": w, "reads": r}))
"""


def worker(python: str, lib: str, sock: str, ops: int) -> dict[str, float]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = subprocess.run([python, "-c", WORKER, lib, sock, str(ops)], capture_output=True,
                         text=True, env=env, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"{lib} worker failed: {out.stderr.strip()[-400:]}")
    return json.loads(out.stdout)


def best(python: str, lib: str, sock: str, ops: int, repeat: int) -> dict[str, float]:
    runs = [worker(python, lib, sock, ops) for _ in range(repeat)]
    return {k: max(r[k] for r in runs) for k in runs[0]}


def watch_latency(sock: str, samples: int) -> float:
    """Median microseconds from a write on one connection to the event on another."""
    from xenpciback_cli.xenstore.client import connect

    with connect(sock) as watcher, connect(sock) as writer:
        watcher.watch("/lat", "t")
        watcher.next_event(5)
        times = []
        for i in range(samples):
            t = time.perf_counter()
            writer.write("/lat/x", str(i))
            event = watcher.next_event(5)
            times.append(time.perf_counter() - t)
            assert event is not None
        times.sort()
        return times[len(times) // 2] * 1e6


def reads_with_idle(sock: str, conns: int, ops: int) -> float:
    from xenpciback_cli.xenstore.client import connect

    idle = []
    for _ in range(conns):
        s = socket.socket(socket.AF_UNIX)
        s.connect(sock)
        idle.append(s)
    try:
        with connect(sock) as c:
            c.write("/bench/idle", "v")
            t = time.perf_counter()
            for _ in range(ops):
                c.read("/bench/idle")
            return ops / (time.perf_counter() - t)
    finally:
        for s in idle:
            s.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ops", type=int, default=5000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--conns", type=int, default=256)
    ap.add_argument("--latency-samples", type=int, default=500)
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-xenstore-"))
    shim = xsdaemons.build_shim(work / "shim")
    cxs = xsdaemons.start_cxenstored(work / "c", shim)
    ours = xsdaemons.start_embedded(work / "e", extra=["--no-state"])
    try:
        have_pyxs = subprocess.run([SYSTEM_PYTHON, "-c", "import pyxs"],
                                   capture_output=True).returncode == 0
        print(f"xenstore bench: {args.ops} ops x best of {args.repeat}; python {SYSTEM_PYTHON}")
        print()
        print("1. client vs pyxs, against C xenstored")
        mine = best(SYSTEM_PYTHON, "ours", cxs.socket, args.ops, args.repeat)
        if have_pyxs:
            theirs = best(SYSTEM_PYTHON, "pyxs", cxs.socket, args.ops, args.repeat)
            for k in ("writes", "reads"):
                print(f"   {k:6}/s  ours {mine[k]:9.0f}   pyxs {theirs[k]:9.0f}   "
                      f"ratio {mine[k] / theirs[k]:.2f}x  (target >= 1.0x)")
        else:
            print("   pyxs not importable by /usr/bin/python3 (apt install python3-pyxs): skipped")
        print()
        print("2. embedded daemon vs C xenstored, same client (ours)")
        emb = best(SYSTEM_PYTHON, "ours", ours.socket, args.ops, args.repeat)
        for k in ("writes", "reads"):
            print(f"   {k:6}/s  embedded {emb[k]:9.0f}   C {mine[k]:9.0f}   "
                  f"ratio {emb[k] / mine[k]:.2f}x  (target >= 0.5x)")
        print()
        print("3. watch-event latency (median, write -> event on another connection)")
        for name, d in (("C xenstored", cxs), ("embedded", ours)):
            print(f"   {name:12} {watch_latency(d.socket, args.latency_samples):8.0f} us")
        print()
        print(f"4. reads/s with {args.conns} idle connections open")
        for name, d in (("C xenstored", cxs), ("embedded", ours)):
            base = reads_with_idle(d.socket, 0, args.ops)
            loaded = reads_with_idle(d.socket, args.conns, args.ops)
            print(f"   {name:12} none {base:9.0f}   {args.conns} open {loaded:9.0f}   "
                  f"slowdown {base / loaded:.2f}x")
    finally:
        cxs.stop()
        ours.stop()


if __name__ == "__main__":
    main()

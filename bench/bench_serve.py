"""``serve`` over the sandbox transport, against a do-nothing backend on the same primitive (run
by hand).

    PYTHONPATH=.:tools python bench/bench_serve.py [--rounds N] [--guests G] [--seconds S]
                                                   [--busy-poll auto|USEC]

1. Round trip of one ``conf_read`` (4 bytes of the vendor/device id) between a frontend and
   ``xen-pciback serve foreground`` (a real process), p50/p99, measured two ways: with a bare
   frontend loop (write the op, set bit 0, one datagram, block on the ``.front`` socket until the
   bit is clear) and with the simulated guest's own engine (``sandbox.pcifront.PciFront.op``).
   The baseline, in the same run: the same bare frontend loop against a do-nothing backend in a
   second process - a shared ``mmap`` of a 4096-byte file and two unix datagram sockets, copying
   the op out, writing ``value``, clearing the bit, notifying. Ratio = serve / baseline.
   The baseline sleeps until each notification; serve by default polls the page after an answer
   (docs/backend-core.md, "Answering a burst"), so the bare loop's back-to-back ops mostly skip
   the wake-up: ``--busy-poll 0`` measures serve's wake-up path against the same baseline.
2. G guests x 4 devices served at once (default 64): every guest keeps one ``conf_read`` in
   flight for S seconds (one driver process multiplexes them all with ``select``): total ops/s,
   fairness (slowest guest's ops / fastest's), serve's RSS (VmRSS and VmHWM).

The sandbox has a dozen functions and the toolstack gives each one to one guest only, so for (2)
the bench writes the backend directories itself (libxl's layout, ``toolstack.libxl_layout``):
every guest gets the same four functions, read-only in practice (only ``conf_read``s are sent).
``serve`` neither checks nor cares that two guests share a function; the toolstack does.
"""

from __future__ import annotations

import argparse
import mmap
import multiprocessing
import os
import select
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from xenpciback_cli.pci.address import Bdf
from xenpciback_cli.sandbox.domains import create_domain
from xenpciback_cli.sandbox.pcifront import PciFront
from xenpciback_cli.toolstack.libxl_layout import (
    DeviceRequest,
    PciOptions,
    backend_path,
    create_backend_ops,
    device_ops,
)
from xenpciback_cli.toolstack.plan import Write
from xenpciback_cli.toolstack.xsexec import apply_ops
from xenpciback_cli.xenstore.client import XenstoreClient

ROOT = str(Path(__file__).resolve().parents[1])
DEVICES = [Bdf.parse(b) for b in ("0000:03:00.0", "0000:00:14.0", "0000:02:00.1", "0000:04:10.1")]
OP = struct.Struct("<IiIIIiiII")  # cmd, err, domain, bus, devfn, offset, size, value, info
CONF_READ_VENDOR = OP.pack(0, 0, 0, 0, 0, 0, 4, 0, 0)
SET = (1).to_bytes(4, "little")


def cli(sandbox: Path, *args: str) -> None:
    subprocess.run([sys.executable, "-m", "xenpciback_cli", "--sandbox", str(sandbox), *args],
                   check=True, capture_output=True, env=dict(os.environ, PYTHONPATH=ROOT))


# -- the bare frontend loop, used against both backends ---------------------------------------
def notify(sock: socket.socket, back: str) -> None:
    """One notification; a full queue means the backend has some waiting already (an event
    channel's pending bit does not count either: serve drains once per burst it polls for)."""
    try:
        sock.sendto(b"\x01", back)
    except BlockingIOError:
        pass


def round_trip(page: memoryview, sock: socket.socket, back: str, op: bytes) -> int:
    page[4:4 + len(op)] = op
    page[0:4] = SET
    notify(sock, back)
    while True:
        sock.recv(64)  # blocking: a notification
        if not page[0] & 1:
            return int.from_bytes(page[32:36], "little")


def timed(page: memoryview, sock: socket.socket, back: str, rounds: int) -> list[float]:
    for _ in range(min(500, rounds)):
        round_trip(page, sock, back, CONF_READ_VENDOR)
    samples = []
    clock = time.perf_counter_ns
    for _ in range(rounds):
        t = clock()
        round_trip(page, sock, back, CONF_READ_VENDOR)
        samples.append((clock() - t) / 1000)
    return samples


# -- the do-nothing backend ---------------------------------------------------------------------
def nothing_backend(grant: str, back: str, front: str) -> None:
    fd = os.open(grant, os.O_RDWR)
    page = memoryview(mmap.mmap(fd, 4096, mmap.MAP_SHARED))
    os.close(fd)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(back)
    while True:
        sock.recv(64)
        if page[0] & 1:
            op = bytes(page[4:40])  # copied out once
            if op[0] == 0xFF:
                return
            page[32:36] = (0x10C98086).to_bytes(4, "little")
            page[8:12] = bytes(4)
            page[0:4] = bytes(4)
            sock.sendto(b"\x01", front)


def baseline(scratch: Path, rounds: int) -> list[float]:
    grant, back, front = scratch / "page", str(scratch / "b.sock"), str(scratch / "f.sock")
    grant.write_bytes(bytes(4096))
    fd = os.open(grant, os.O_RDWR)
    page = memoryview(mmap.mmap(fd, 4096, mmap.MAP_SHARED))
    os.close(fd)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(front)
    child = multiprocessing.get_context("fork").Process(
        target=nothing_backend, args=(str(grant), back, front), daemon=True)
    child.start()
    while not os.path.exists(back):
        time.sleep(0.01)
    samples = timed(page, sock, back, rounds)
    page[4] = 0xFF
    page[0:4] = SET
    notify(sock, back)
    child.join(5)
    return samples


# -- serve ----------------------------------------------------------------------------------------
def give(client: XenstoreClient, domid: int, devices: list[Bdf]) -> None:
    """libxl's backend directory for ``domid`` with ``devices`` (what attach writes)."""
    ops = create_backend_ops(domid, None)
    for index, bdf in enumerate(devices):
        ops += device_ops(domid, index, DeviceRequest(bdf), PciOptions(), None)
    ops.append(Write(f"{backend_path(domid)}/num_devs", str(len(devices))))
    client.transact(lambda tx: apply_ops(tx, ops))


def start_serve(sandbox: Path, busy_poll: str) -> subprocess.Popen[bytes]:
    log = open(sandbox / "serve.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "xenpciback_cli", "--sandbox", str(sandbox),
                             "serve", "foreground", "--busy-poll", busy_poll], stderr=log,
                            env=dict(os.environ, PYTHONPATH=ROOT))
    deadline = time.monotonic() + 15
    while b"serve: ready" not in (sandbox / "serve.log").read_bytes():
        if time.monotonic() > deadline or proc.poll() is not None:
            raise SystemExit(f"serve did not start: {(sandbox / 'serve.log').read_text()}")
        time.sleep(0.05)
    return proc


def rss(pid: int) -> tuple[float, float]:
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024
    return values["VmRSS"], values["VmHWM"]


def many(fronts: list[PciFront], seconds: float) -> list[int]:
    """Every guest keeps one conf_read in flight; returns each guest's ops answered."""
    pages = [f.grant.page for f in fronts]  # type: ignore[union-attr]
    socks = [f.channel.sock for f in fronts]  # type: ignore[union-attr]
    backs = [str(f.channel.peer) for f in fronts]  # type: ignore[union-attr]
    by_fd = {s.fileno(): i for i, s in enumerate(socks)}
    counts = [0] * len(fronts)

    def post(i: int) -> None:
        pages[i][4:4 + OP.size] = CONF_READ_VENDOR
        pages[i][0:4] = SET
        notify(socks[i], backs[i])

    for i in range(len(fronts)):
        post(i)
    poller = select.epoll()
    for s in socks:
        poller.register(s.fileno(), select.EPOLLIN)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for fd, _ in poller.poll(0.5):
            i = by_fd[fd]
            try:
                while socks[i].recv(64, socket.MSG_DONTWAIT):
                    pass
            except BlockingIOError:
                pass
            if not pages[i][0] & 1:
                counts[i] += 1
                post(i)
    poller.close()
    for i in range(len(fronts)):  # let the last ops finish before the guests go
        deadline = time.monotonic() + 2
        while pages[i][0] & 1 and time.monotonic() < deadline:
            time.sleep(0.001)
    return counts


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5000)
    parser.add_argument("--guests", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--busy-poll", default="auto",
                        help="serve's --busy-poll (0: every op by wake-up, the path polling skips)")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="bs-", dir="/tmp"))
    sandbox = scratch / "s"
    proc = None
    fronts: list[PciFront] = []
    try:
        base = baseline(scratch, args.rounds)
        cli(sandbox, "sandbox", "init", str(sandbox))
        cli(sandbox, "sandbox", "domain", "create", "1", "--no-guest")  # starts xenstored
        client = XenstoreClient.open_socket(str(sandbox / "xenstore" / "socket"), timeout=10)
        for domid in range(1, args.guests + 1):
            if domid > 1:
                create_domain(client, domid)
            give(client, domid, DEVICES if domid > 1 else DEVICES[:1])
        proc = start_serve(sandbox, args.busy_poll)

        first = PciFront(sandbox, 1, ref=8, port=8)
        first.connect()
        fronts.append(first)
        page, chan = first.grant.page, first.channel  # type: ignore[union-attr]
        chan.sock.setblocking(True)
        got = round_trip(page, chan.sock, str(chan.peer), CONF_READ_VENDOR)
        assert got == 0x10C98086, (hex(got), page[4:40].hex(), (sandbox / "serve.log").read_text())
        bare = timed(page, chan.sock, str(chan.peer), args.rounds)
        chan.sock.setblocking(False)
        engine = []
        nic = Bdf(0, 0, 0, 0)
        for _ in range(args.rounds):
            t = time.perf_counter_ns()
            first.conf_read(nic, 0, 4)
            engine.append((time.perf_counter_ns() - t) / 1000)
        first.results.clear()
        b50, b99 = pct(base, 0.5), pct(base, 0.99)
        s50, s99 = pct(bare, 0.5), pct(bare, 0.99)
        e50, e99 = pct(engine, 0.5), pct(engine, 0.99)
        print(f"conf_read round trip, {args.rounds} rounds (microseconds; serve --busy-poll "
              f"{args.busy_poll}):")
        print(f"  do-nothing backend (same primitive)   p50 {b50:7.1f}  p99 {b99:7.1f}")
        print(f"  serve, bare frontend loop             p50 {s50:7.1f}  p99 {s99:7.1f}  "
              f"ratio p50 {s50 / b50:4.2f}x  p99 {s99 / b99:4.2f}x  (target p50 <= 2x)")
        print(f"  serve, simulated guest's PciFront.op  p50 {e50:7.1f}  p99 {e99:7.1f}  "
              f"ratio p50 {e50 / b50:4.2f}x  p99 {e99 / b99:4.2f}x")

        started = time.monotonic()
        for domid in range(2, args.guests + 1):
            front = PciFront(sandbox, domid, ref=8, port=8)
            front.connect()
            fronts.append(front)
        connect_s = time.monotonic() - started
        counts = many(fronts, args.seconds)
        live, peak = rss(proc.pid)
        total = sum(counts)
        print(f"{args.guests} guests x 4 devices (guest 1: 1 device), all connected in "
              f"{connect_s:.1f} s; {args.seconds:g} s of conf_reads, one in flight per guest:")
        print(f"  total {total / args.seconds:9.0f} ops/s; per guest min {min(counts)} max "
              f"{max(counts)}: fairness {min(counts) / max(max(counts), 1):.2f} (target >= 0.5)")
        print(f"  serve RSS {live:.1f} MB (peak {peak:.1f} MB; target < 100 MB)")
        client.close()
    finally:
        for front in fronts:
            front.close()
        if proc is not None:
            proc.terminate()
            proc.wait(10)
        subprocess.run([sys.executable, "-m", "xenpciback_cli", "--sandbox", str(sandbox),
                        "sandbox", "stop"], capture_output=True, env=dict(os.environ, PYTHONPATH=ROOT))
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()

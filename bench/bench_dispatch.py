#!/usr/bin/env python3
"""In-process op dispatch: decode an op from a shared page, the overlay, encode the result.

Run by hand:  PYTHONPATH=.:tools python bench/bench_dispatch.py [--ops N] [--repeat R]
For steadier figures on a shared machine, pin it:  taskset -c 1 python bench/bench_dispatch.py

Engine: ``GuestSession.process(page)`` - one copy of the op out of the page (XSA-155), header
unpack, device lookup, the overlay's conf_read/conf_write with every check, err and value packed
back. Baseline, in the same run: the least any Python backend does per op - the same one-call
copy (``OP_COPY``), the same header unpack and the two ``pack_into`` of err and value, with no
lookup and no filter. Hardware is the in-memory config space of the tests (``MemoryAccessor``,
with its access counters) holding an e1000e-like device (PM, MSI, MSI-X, Express, AER),
exported with its resources as ``serve`` exports it. Times are this thread's CPU time, best of
interleaved rounds.

The mix, one op per prepared page (pages cycled), drawn with fixed weights:
  * 80% conf_read: header registers (IDs, COMMAND/STATUS, class, header type, BARs, subsystem,
    capability pointer, interrupt line/pin), the capability walk and registers (PM, MSI, MSI-X,
    Express) and the extended-capability header at 0x100 - byte, word and dword accesses;
  * 12% accepted conf_write: BAR sizing and restore, COMMAND (decode and bus master on),
    cache line size, PMCSR to D0, a dropped write to the read-only subsystem IDs;
  * 5% denied conf_write (-3): MSI and MSI-X enable bits through config space, PMCSR to D1
    on a device without D1;
  * 3% ops for an absent device (-1), as pcifront's bus scan sends them.
The answers are counted by error code and printed: the mix does what it says.
The issue's target: >= 1M ops/s.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_overlay import RESOURCES, device_config

from xenpciback_cli.backend.session import GuestSession
from xenpciback_cli.config.fields import MemoryAccessor
from xenpciback_cli.pci.address import Bdf
from xenpciback_cli.pci.device import PciDevice
from xenpciback_cli.pv.abi import ERR, OP_END, OP_HEADER, OP_OFFSET, VALUE
from xenpciback_cli.pv.codec import OP_COPY, encode_op

HOST = Bdf(0, 3, 0, 0)

READS = [(0, 4), (0, 2), (2, 2), (4, 2), (6, 2), (8, 4), (0x0C, 1), (0x0E, 1), (0x10, 4),
         (0x14, 4), (0x18, 4), (0x1C, 4), (0x2C, 4), (0x30, 4), (0x34, 1), (0x3C, 1), (0x3D, 1),
         (0x40, 1), (0x41, 1), (0x42, 2), (0x44, 2), (0x50, 1), (0x51, 1), (0x52, 2),
         (0x54, 4), (0x70, 1), (0x71, 1), (0x72, 2), (0x74, 4), (0xA0, 2), (0xA2, 2),
         (0xA8, 2), (0xB2, 2), (0x100, 4)]
WRITES = [(0x10, 4, 0xFFFFFFFF), (0x10, 4, 0xFEBF0000), (0x04, 2, 0x0406), (0x04, 2, 0x0006),
          (0x0C, 1, 0x10), (0x44, 2, 0x0000), (0x2C, 4, 0x12345678)]
DENIED = [(0x52, 2, 0x0181), (0x72, 2, 0x8003), (0x44, 2, 0x0001)]
MIX = ((0.80, "read"), (0.12, "write"), (0.05, "denied"), (0.03, "absent"))


class NoInterrupts:
    def enable_msi(self, domid: int, host: Bdf) -> int:
        return 0

    def disable_msi(self, domid: int, host: Bdf) -> None:
        pass

    def enable_msix(self, domid: int, host: Bdf, entries: object) -> list[int]:
        return []

    def disable_msix(self, domid: int, host: Bdf) -> None:
        pass

    def legacy_pirq(self, domid: int, host: Bdf) -> int:
        return 0


def make_session() -> GuestSession:
    """One guest with the bench device exported at 00:00.0, as serve exports it."""
    device = PciDevice(HOST, 0x8086, 0x10D3, 0x020000, 0, irq=11, resources=RESOURCES)
    session = GuestSession(1, NoInterrupts())
    session.export(HOST, MemoryAccessor(device_config()), device=device)
    return session


def pages(count: int, seed: int = 7) -> list[bytearray]:
    """``count`` shared pages, one op each, drawn from :data:`MIX`."""
    rng = random.Random(seed)
    weights = [w for w, _ in MIX]
    out = []
    for _ in range(count):
        kind = rng.choices([k for _, k in MIX], weights)[0]
        page = bytearray(4096)
        if kind == "read":
            offset, size = rng.choice(READS)
            op = encode_op(0, 0, 0, 0, offset, size)
        elif kind == "absent":
            op = encode_op(0, 0, 0, rng.randrange(1, 256), 0, 4)  # devfn 00.0 is the device
        else:
            offset, size, value = rng.choice(WRITES if kind == "write" else DENIED)
            op = encode_op(1, 0, 0, 0, offset, size, value)
        page[OP_OFFSET:OP_END] = op
        out.append(page)
    return out


def baseline(work: list[memoryview]) -> None:
    copy, unpack = OP_COPY.unpack_from, OP_HEADER.unpack_from
    pack_err, pack_value = ERR.pack_into, VALUE.pack_into
    for page in work:
        header = unpack(copy(page, OP_OFFSET)[0])
        pack_err(page, 8, 0)
        pack_value(page, 32, header[7])


def engine(session: GuestSession, work: list[memoryview]) -> None:
    process = session.process
    for page in work:
        process(page)


def timed(fn: Callable[..., None], *args: object) -> float:
    start = time.thread_time()
    fn(*args)
    return time.thread_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    work = [memoryview(p) for p in pages(args.ops)]
    check = make_session()
    answers = Counter(check.process(page)[0] for page in work)
    session = make_session()
    base, eng = [], []
    for _ in range(args.repeat):  # interleaved: both see the same quiet and busy moments
        base.append(timed(baseline, work))
        eng.append(timed(engine, session, work))
    b, e = min(base), min(eng)
    n = args.ops
    mix = ", ".join(f"{w:.0%} {k}" for w, k in MIX)
    print(f"ops per round: {n} ({mix}; best of {args.repeat})")
    print("answers by err: " + ", ".join(f"{err}: {count}" for err, count in sorted(answers.items())))
    print(f"baseline (copy + unpack + pack err/value): {n / b:12,.0f} ops/s  {b / n * 1e9:7.0f} ns/op")
    print(f"engine   (GuestSession.process):           {n / e:12,.0f} ops/s  {e / n * 1e9:7.0f} ns/op")
    print(f"engine / baseline per op: {e / b:.2f}x   target >= 1,000,000 ops/s: "
          f"{'met' if n / e >= 1_000_000 else 'NOT met'}")


if __name__ == "__main__":
    main()

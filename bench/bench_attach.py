"""How long attach / hot-plug / detach take against each xenstored (run by hand).

    PYTHONPATH=. python bench/bench_attach.py [--rounds N] [--kinds embedded,cxenstored,oxenstored]

For every daemon, in the same run: the baseline is one plain XS_WRITE round trip; then a cold
attach + detach of one device with nobody answering (the toolstack's own cost: two or three
transactions of ~20 requests), and a hot-plug attach + detach with the simulated pciback and
pcifront in threads (two full Reconfiguring rounds). Figures are medians; ratios are against the
baseline of the same daemon.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))
sys.path.insert(0, str(REPO))

import xsdaemons  # noqa: E402

from xenpciback_cli.pci.address import Bdf  # noqa: E402
from xenpciback_cli.engine.attach import AttachSpec, attach  # noqa: E402
from xenpciback_cli.engine.detach import detach  # noqa: E402
from xenpciback_cli.sandbox.domains import create_domain  # noqa: E402
from xenpciback_cli.toolstack.handshake import round_finished, wait_for  # noqa: E402
from xenpciback_cli.xenstore.client import XenstoreClient  # noqa: E402

NIC, GPU = Bdf(0, 3, 0, 0), Bdf(0, 2, 0, 0)


def median_ms(fn, rounds: int) -> float:
    samples = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t) * 1000)
    return statistics.median(samples)


def bench(kind: str, rounds: int, scratch: Path) -> None:
    from tests.toolstack.helpers import SimGuest

    try:
        daemon = xsdaemons.start(kind, scratch / kind, scratch / "shim")
    except xsdaemons.Unavailable as exc:
        print(f"{kind:11s} unavailable: {exc}")
        return
    try:
        client = XenstoreClient.open_socket(daemon.socket)
        domids = itertools.count(10)
        base = median_ms(lambda: client.write("/bench/x", "1"), rounds * 20)

        cold_dom = next(domids)
        create_domain(client, cold_dom)

        def cold() -> None:
            attach(client, AttachSpec(cold_dom, NIC), timeout=5)
            detach(client, NIC, cold_dom, reset=False)

        cold_ms = median_ms(cold, rounds)

        hot_dom = next(domids)
        create_domain(client, hot_dom)
        guest = SimGuest(daemon, hot_dom)
        attach(client, AttachSpec(hot_dom, NIC), timeout=5)
        wait_for(client, hot_dom, round_finished, timeout=5, what="cold plug")

        def hot() -> None:
            attach(client, AttachSpec(hot_dom, GPU), timeout=5)
            detach(client, GPU, hot_dom, reset=False, timeout=5)

        hot_ms = median_ms(hot, rounds)
        guest.stop()
        client.close()
        print(f"{kind:11s} write {base:7.3f} ms | cold attach+detach {cold_ms:7.2f} ms "
              f"({cold_ms / base:5.0f}x) | hot-plug attach+detach with handshake {hot_ms:7.2f} ms "
              f"({hot_ms / base:5.0f}x)")
    finally:
        daemon.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--kinds", default=",".join(xsdaemons.KINDS))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.kinds.split(","):
            bench(kind, args.rounds, Path(tmp))


if __name__ == "__main__":
    main()

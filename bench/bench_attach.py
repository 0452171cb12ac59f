"""How long attach / hot-plug / detach take against each xenstored (run by hand).

    PYTHONPATH=.:tools python bench/bench_attach.py [--rounds N] [--kinds embedded,cxenstored,oxenstored]

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
import tempfile
import threading
import time
from pathlib import Path

import xsdaemons  # tools/xsdaemons.py: Debian's xenstoreds and the embedded one, as the tests use them

from xenpciback_cli.engine.attach import AttachSpec, attach
from xenpciback_cli.engine.detach import detach
from xenpciback_cli.pci.address import Bdf
from xenpciback_cli.sandbox import guest as simguest
from xenpciback_cli.sandbox.domains import create_domain
from xenpciback_cli.toolstack.handshake import round_finished, wait_for
from xenpciback_cli.xenstore.client import XenstoreClient

NIC, GPU = Bdf(0, 3, 0, 0), Bdf(0, 2, 0, 0)


def median_ms(fn, rounds: int) -> float:
    samples = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t) * 1000)
    return statistics.median(samples)


def bench(kind: str, rounds: int, scratch: Path) -> None:
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
        # The sandbox's simulated guest (pciback as dom0, pcifront as the guest), in a thread.
        stop = threading.Event()
        guest = threading.Thread(target=simguest.serve, args=(daemon.socket, hot_dom, stop), daemon=True)
        guest.start()
        attach(client, AttachSpec(hot_dom, NIC), timeout=5)
        # Not timed: the guest first waits up to 5 s for a per-domain socket the daemon may lack.
        wait_for(client, hot_dom, round_finished, timeout=15, what="cold plug")

        def hot() -> None:
            attach(client, AttachSpec(hot_dom, GPU), timeout=5)
            detach(client, GPU, hot_dom, reset=False, timeout=5)

        hot_ms = median_ms(hot, rounds)
        stop.set()
        guest.join(5)
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

"""A simulated guest's PV PCI peers for the sandbox, as a background process.

``python -m xenpciback_cli.sandbox.guest --socket S/xenstore/socket --domid N`` runs the
simulated kernel pciback (as dom0, on the main socket) and pcifront (as domain N, on the
per-domain socket ``<socket>.d/N``) until it is signalled or the daemon goes away. ``sandbox
domain create`` starts one per domain (pid in ``S/domains/N.pid``), ``destroy`` stops it.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from xenpciback_cli.sandbox import processes
from xenpciback_cli.sandbox.peer_runner import PeerRunner
from xenpciback_cli.backend.xenbus import XenbusBackend
from xenpciback_cli.sandbox.peers import SimFrontend

if TYPE_CHECKING:
    from xenpciback_cli.xenstore.client import XenstoreClient

MODULE = "xenpciback_cli.sandbox.guest"


def serve(socket: str, domid: int, stop: threading.Event) -> None:
    from xenpciback_cli.xenstore.client import XenstoreClient

    guest_socket = f"{socket}.d/{domid}"
    deadline = time.monotonic() + 5
    while not os.path.exists(guest_socket) and time.monotonic() < deadline:
        time.sleep(0.05)
    if not os.path.exists(guest_socket):
        guest_socket = socket  # a daemon without per-domain sockets: act as dom0
    backend = PeerRunner(XenstoreClient.open_socket(socket, timeout=None), XenbusBackend(domid))
    frontend = PeerRunner(XenstoreClient.open_socket(guest_socket, timeout=None),
                          SimFrontend(domid))
    def run(runner: PeerRunner) -> None:
        try:
            runner.run(stop)
        except Exception as exc:  # noqa: BLE001 - one line in the log; the daemon went away
            sys.stderr.write(f"simguest {domid}: {type(runner.peer).__name__} stopped: {exc}\n")

    threads = [threading.Thread(target=run, args=(r,), daemon=True) for r in (backend, frontend)]
    for t in threads:
        t.start()
    while not stop.is_set() and all(t.is_alive() for t in threads):
        stop.wait(0.5)
    stop.set()
    for t in threads:
        t.join(2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=MODULE)
    parser.add_argument("--socket", required=True)
    parser.add_argument("--domid", type=int, required=True)
    args = parser.parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        serve(args.socket, args.domid, stop)
    except Exception as exc:  # noqa: BLE001 - a background helper: one line in its log
        sys.stderr.write(f"simguest {args.domid}: {type(exc).__name__}: {exc}\n")
        return 1
    return 0


def pid_file(sandbox: Path, domid: int) -> Path:
    return sandbox / "domains" / f"{domid}.pid"


def _marks(domid: int) -> tuple[bytes, ...]:
    return (MODULE.encode(), str(domid).encode())


def start(sandbox: Path, socket: str, domid: int) -> int:
    """Start the peers for ``domid`` in the background (stopping one already running for it,
    never two); returns the pid."""
    stop(sandbox, domid)
    pidf = pid_file(sandbox, domid)
    pidf.parent.mkdir(parents=True, exist_ok=True)
    proc = processes.spawn([MODULE, "--socket", socket, "--domid", str(domid)],
                           log=pidf.with_suffix(".log"), pid_file=pidf)
    return proc.pid


def stop(sandbox: Path, domid: int, timeout: float = 5.0) -> int | None:
    """Stop the peers of ``domid`` if they run; returns the pid stopped."""
    pidf = pid_file(sandbox, domid)
    pid = processes.read_pid(pidf)
    if pid is None:
        return None
    pidf.unlink(missing_ok=True)
    if not processes.is_ours(pid, _marks(domid)):
        return None
    processes.stop([pid], _marks(domid), timeout=timeout)
    return pid


def is_running(sandbox: Path, domid: int) -> bool:
    pid = processes.read_pid(pid_file(sandbox, domid))
    return pid is not None and processes.is_ours(pid, _marks(domid))


def wanted(sandbox: Path) -> list[int]:
    """Domains created with a simulated guest: their pid file stays while the domain lives, also
    after the guest stopped with the sandbox's xenstored (``sandbox stop``)."""
    out = []
    for path in (Path(sandbox) / "domains").glob("*.pid"):
        if path.stem.isdigit():
            out.append(int(path.stem))
    return sorted(out)


def revive(sandbox: Path, socket: str, client: XenstoreClient) -> list[int]:
    """Restart the simulated guest of every domain that should have one and has none running
    (it stopped with the xenstored it talked to); forget those whose domain is gone."""
    restarted = []
    for domid in wanted(sandbox):
        if is_running(sandbox, domid):
            continue
        if not client.exists(f"/local/domain/{domid}"):
            pid_file(sandbox, domid).unlink(missing_ok=True)
            continue
        start(sandbox, socket, domid)
        restarted.append(domid)
    return restarted


def running_processes(sandbox: Path) -> list[int]:
    """Every simulated-guest process serving this sandbox, found by its command line (so one
    whose pid file is gone is found too)."""
    from xenpciback_cli.sandbox.xenstored import socket_path

    return processes.find((MODULE.encode(), socket_path(sandbox).encode()))


def stop_all(sandbox: Path, *, forget: bool, timeout: float = 5.0) -> list[int]:
    """Stop every simulated guest of the sandbox (SIGKILL those that do not stop in time);
    ``forget`` also drops their pid files (the sandbox is being replaced), else they stay so that
    the next use restarts them."""
    pids = running_processes(sandbox)
    processes.stop(pids, (MODULE.encode(),), timeout=timeout, kill=True)
    if forget:
        for path in (Path(sandbox) / "domains").glob("*.pid"):
            path.unlink(missing_ok=True)
    return pids


if __name__ == "__main__":
    raise SystemExit(main())

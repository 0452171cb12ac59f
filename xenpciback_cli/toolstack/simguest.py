"""A simulated guest's PV PCI peers for the sandbox, as a background process.

``python -m xenpciback_cli.toolstack.simguest --socket S/xenstore/socket --domid N`` runs the
simulated kernel pciback (as dom0, on the main socket) and pcifront (as domain N, on the
per-domain socket ``<socket>.d/N``) until it is signalled or the daemon goes away. ``sandbox
domain create`` starts one per domain (pid in ``S/domains/N.pid``), ``destroy`` stops it.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from xenpciback_cli.toolstack.peer_runner import PeerRunner
from xenpciback_cli.toolstack.peers import SimBackend, SimFrontend

if TYPE_CHECKING:
    from xenpciback_cli.xenstore.client import XenstoreClient

MODULE = "xenpciback_cli.toolstack.simguest"


def serve(socket: str, domid: int, stop: threading.Event) -> None:
    from xenpciback_cli.xenstore.client import XenstoreClient

    guest_socket = f"{socket}.d/{domid}"
    deadline = time.monotonic() + 5
    while not os.path.exists(guest_socket) and time.monotonic() < deadline:
        time.sleep(0.05)
    if not os.path.exists(guest_socket):
        guest_socket = socket  # a daemon without per-domain sockets: act as dom0
    backend = PeerRunner(XenstoreClient.open_socket(socket, timeout=None), SimBackend(domid))
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


def _ours(pid: int, domid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return MODULE.encode() in cmdline and str(domid).encode() in cmdline


def start(sandbox: Path, socket: str, domid: int) -> int:
    """Start the peers for ``domid`` in the background (stopping one already running for it,
    never two); returns the pid."""
    stop(sandbox, domid)
    pidf = pid_file(sandbox, domid)
    pidf.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    log = open(pidf.with_suffix(".log"), "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen([sys.executable, "-m", MODULE, "--socket", socket, "--domid", str(domid)],
                            stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
                            start_new_session=True, close_fds=True)
    log.close()
    pidf.write_text(f"{proc.pid}\n")
    return proc.pid


def stop(sandbox: Path, domid: int, timeout: float = 5.0) -> int | None:
    """Stop the peers of ``domid`` if they run; returns the pid stopped."""
    pidf = pid_file(sandbox, domid)
    try:
        pid = int(pidf.read_text().strip())
    except (OSError, ValueError):
        return None
    pidf.unlink(missing_ok=True)
    if not _ours(pid, domid):
        return None
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _ours(pid, domid):
        try:
            if os.waitpid(pid, os.WNOHANG)[0]:
                break
        except ChildProcessError:
            pass
        time.sleep(0.05)
    return pid


def is_running(sandbox: Path, domid: int) -> bool:
    try:
        pid = int(pid_file(sandbox, domid).read_text().strip())
    except (OSError, ValueError):
        return False
    return _ours(pid, domid)


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
    from xenpciback_cli.xenstore.sandbox import socket_path

    sock = socket_path(sandbox).encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if MODULE.encode() in cmdline and sock in cmdline:
            found.append(int(entry.name))
    return found


def stop_all(sandbox: Path, *, forget: bool, timeout: float = 5.0) -> list[int]:
    """Stop every simulated guest of the sandbox; ``forget`` also drops their pid files (the
    sandbox is being replaced), else they stay so that the next use restarts them."""
    pids = running_processes(sandbox)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    for pid in pids:
        while time.monotonic() < deadline and Path(f"/proc/{pid}/cmdline").exists():
            try:
                if os.waitpid(pid, os.WNOHANG)[0]:
                    break
            except ChildProcessError:
                pass
            time.sleep(0.02)
        if Path(f"/proc/{pid}/cmdline").exists():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    if forget:
        for path in (Path(sandbox) / "domains").glob("*.pid"):
            path.unlink(missing_ok=True)
    return pids


if __name__ == "__main__":
    raise SystemExit(main())

"""The sandbox's own xenstored: started in the background on demand, stopped by ``sandbox stop``.

Layout under the sandbox directory S::

    S/xenstore/socket        dom0's socket (S/xenstore/socket.d/D for introduced domain D)
    S/xenstore/state.json    the tree, saved when the daemon stops cleanly
    S/xenstore/pid           the daemon's pid
    S/xenstore/daemon.log    its stderr
    S/xenstore/lock          serialises concurrent "start it if needed"

Why a detached process rather than a thread: every ``xen-pciback`` invocation is short-lived,
and the simulated guests and backends of a sandbox must share one store between commands.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from xenpciback_cli.xenstore.client import XenstoreClient

from xenpciback_cli.sandbox import processes

START_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0


class SandboxDaemonError(Exception):
    """The sandbox's xenstored could not be started or stopped (message says why)."""


def xenstore_dir(sandbox: str | os.PathLike[str]) -> Path:
    """Absolute, so the daemon (started in this directory) and its pid check agree on paths."""
    return Path(sandbox).absolute() / "xenstore"


def socket_path(sandbox: str | os.PathLike[str]) -> str:
    return str(xenstore_dir(sandbox) / "socket")


def domain_socket_path(sandbox: str | os.PathLike[str], domid: int) -> str:
    """Where a simulated guest of domain ``domid`` connects (exists once it is introduced)."""
    return f"{socket_path(sandbox)}.d/{domid}"


def connect_sandbox(sandbox: str | os.PathLike[str], domid: int = 0, *,
                    timeout: float | None = 10.0) -> XenstoreClient:
    """A client of the sandbox's xenstored (started if needed), as dom0 or as ``domid``."""
    from xenpciback_cli.xenstore.client import connect

    sock = ensure_running(sandbox)
    return connect(sock if domid == 0 else domain_socket_path(sandbox, domid), timeout=timeout)


def _answers(path: str) -> bool:
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(1.0)
    try:
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()


def _marks(sandbox: str | os.PathLike[str]) -> tuple[bytes, ...]:
    """The words of the command line of the xenstored serving this sandbox."""
    return (b"xenstored", socket_path(sandbox).encode())


def read_pid(sandbox: str | os.PathLike[str]) -> int | None:
    pid = processes.read_pid(xenstore_dir(sandbox) / "pid")
    return pid if pid is not None and processes.is_ours(pid, _marks(sandbox)) else None


def ensure_running(sandbox: str | os.PathLike[str]) -> str:
    """Start the sandbox's xenstored unless it already answers; return its socket path."""
    sandbox = Path(sandbox)
    if not sandbox.is_dir():
        raise SandboxDaemonError(f"sandbox {sandbox} does not exist (create it with 'sandbox init')")
    sock = socket_path(sandbox)
    if _answers(sock):
        return sock
    xdir = xenstore_dir(sandbox)
    xdir.mkdir(exist_ok=True)
    with open(xdir / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _answers(sock):
            return sock
        proc = processes.spawn(
            ["xenpciback_cli", "sandbox", "xenstored", "--socket", sock,
             "--state", str(xdir / "state.json")],
            log=xdir / "daemon.log", pid_file=xdir / "pid", cwd=xdir)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                tail = (xdir / "daemon.log").read_text(errors="replace").strip().splitlines()[-1:]
                raise SandboxDaemonError(f"xenstored for {sandbox} exited at start"
                                         + (f": {tail[0]}" if tail else ""))
            if _answers(sock):
                return sock
            time.sleep(0.02)
        proc.terminate()
        raise SandboxDaemonError(f"xenstored for {sandbox} did not start within {START_TIMEOUT:g}s")


def stop(sandbox: str | os.PathLike[str]) -> int | None:
    """Stop the sandbox's xenstored (it saves its tree); returns its pid, None if not running.
    Found by its pid file, else by its command line (the pid file may be gone)."""
    marks = _marks(sandbox)
    pid = read_pid(sandbox) or next(iter(processes.find(marks)), None)
    if pid is None:
        return None
    if processes.stop([pid], marks, timeout=STOP_TIMEOUT):
        raise SandboxDaemonError(f"xenstored (pid {pid}) did not stop within {STOP_TIMEOUT:g}s")
    (xenstore_dir(sandbox) / "pid").unlink(missing_ok=True)
    return pid

"""The sandbox's one background-process manager: start, find, stop.

A sandbox runs two kinds of detached helpers - its xenstored (``xenstored.py``) and one simulated
guest per domain (``guest.py``). Both outlive the short ``xen-pciback`` command that started them,
are started with this package importable (``PYTHONPATH``), log to a file, and leave their pid in a
file. A pid file can be stale and a pid recycled, so a process counts as ours only while its
``/proc/PID/cmdline`` still holds the words it was started with (``marks``); that is also how one
whose pid file is gone is found again.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

#: Where this package is importable from, for children started with ``python -m``.
PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


def spawn(args: Sequence[str], *, log: Path, pid_file: Path, cwd: Path | None = None) -> subprocess.Popen[bytes]:
    """Start ``python -m ARGS`` detached (own session, no stdin), stdout and stderr appended to
    ``log``; write its pid to ``pid_file``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = PACKAGE_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    for var in ("XENSTORED_PATH", "XENSTORED_RUNDIR"):  # a child never follows the host's daemon
        env.pop(var, None)
    out = open(log, "ab")  # noqa: SIM115 - handed to the child
    try:
        proc = subprocess.Popen([sys.executable, "-m", *args], stdin=subprocess.DEVNULL, stdout=out,
                                stderr=out, cwd=str(cwd) if cwd else None, env=env,
                                start_new_session=True, close_fds=True)
    finally:
        out.close()
    pid_file.write_text(f"{proc.pid}\n")
    return proc


def read_pid(pid_file: Path) -> int | None:
    """The pid a pid file names, None if it is missing or not a number."""
    try:
        return int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None


def is_ours(pid: int, marks: Sequence[bytes]) -> bool:
    """``pid`` is alive and its command line holds every one of ``marks`` as a word."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return all(mark in cmdline for mark in marks)


def find(marks: Sequence[bytes]) -> list[int]:
    """Every live process whose command line holds ``marks``."""
    return [int(entry.name) for entry in Path("/proc").iterdir()
            if entry.name.isdigit() and is_ours(int(entry.name), marks)]


def send(pid: int, sig: int = signal.SIGTERM) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def wait_gone(pid: int, marks: Sequence[bytes], deadline: float, *, poll: float = 0.02) -> bool:
    """Wait until ``pid`` is no longer ours (reaping it if it is our child); False on timeout."""
    while is_ours(pid, marks):
        try:
            if os.waitpid(pid, os.WNOHANG)[0]:
                return True
        except ChildProcessError:
            pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll)
    return True


def stop(pids: Sequence[int], marks: Sequence[bytes], *, timeout: float, kill: bool = False) -> list[int]:
    """SIGTERM each of ``pids`` and wait up to ``timeout`` for all; with ``kill``, SIGKILL those
    still running. Returns the pids that did not stop."""
    for pid in pids:
        send(pid)
    deadline = time.monotonic() + timeout
    left = [pid for pid in pids if not wait_gone(pid, marks, deadline)]
    if kill:
        for pid in left:
            send(pid, signal.SIGKILL)
    return left

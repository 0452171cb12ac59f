"""The demo's script: which commands it runs, in which order, and the backend it starts.

Two flows. Until ``serve`` exists: list, hide, a refused hide, a guest domain with its simulated
peers, attach, status, the guest's config-space view, detach, unhide, list. With ``serve`` (the
CLI's command table has it; the caller says so, this module imports no CLI): the whole main job
- seize a NIC's virtual function, create a guest with ``--no-guest``, attach, run ``serve
foreground`` in the background, run the simulated guest (``sandbox guest``: its view of the
device, reads through the filter, MSI-X on), then stop serve, detach, unhide.

A step is a command line (run in-process by the CLI) or a background action (start or stop
``serve``), so both the text and the ``--json`` demo walk the same list.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

NIC = "0000:03:00.0"
VF = "0000:04:10.1"
ROOT_DISK = "0000:01:00.0"
DOMID = "5"
SERVE_MODULE = "xenpciback_cli"


@dataclass(frozen=True)
class Step:
    """``args``: a command as typed after ``xen-pciback --sandbox DIR``; ``action``: a background
    step instead (``start-serve``, ``stop-serve``); ``refusal_expected``: shown as a success."""

    args: tuple[str, ...] = ()
    action: str | None = None
    refusal_expected: bool = False
    note: str = ""


def steps(*, serve: bool) -> list[Step]:
    if not serve:
        return [Step(("list",)), Step(("hide", NIC)),
                Step(("hide", ROOT_DISK), refusal_expected=True),
                Step(("sandbox", "domain", "create", DOMID)),
                Step(("attach", NIC, "--domid", DOMID)), Step(("list", "--seized")),
                Step(("status", "--domid", DOMID, "--wait", "10")), Step(("inspect", NIC, "--diff")),
                Step(("detach", NIC, "--domid", DOMID)), Step(("unhide", "--rebind", NIC)),
                Step(("list",))]
    return [Step(("list",)), Step(("hide", VF), note="seize the NIC's virtual function"),
            Step(("hide", ROOT_DISK), refusal_expected=True),
            Step(("sandbox", "domain", "create", DOMID, "--no-guest"),
                 note="a guest whose pcifront is ours to play"),
            Step(("attach", VF, "--domid", DOMID)),
            Step(action="start-serve", note="the userspace backend, in the background"),
            Step(("sandbox", "guest", DOMID, "--timeout", "15"),
                 note="the guest: its view of the device, reads through the filter, MSI-X on"),
            Step(("status", "--domid", DOMID)),
            Step(action="stop-serve"),
            Step(("detach", VF, "--domid", DOMID)), Step(("unhide", "--rebind", VF)),
            Step(("list",))]


def serve_command(directory: str) -> list[str]:
    return ["-m", SERVE_MODULE, "--sandbox", directory, "serve", "foreground"]


class BackgroundServe:
    """``xen-pciback serve foreground`` for the demo's sandbox, as a child process."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = Path(directory) / "serve.log"

    def start(self) -> int:
        import sys

        from xenpciback_cli.sandbox.processes import PACKAGE_ROOT

        env = dict(os.environ)
        env["PYTHONPATH"] = PACKAGE_ROOT + os.pathsep + env.get("PYTHONPATH", "")
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen([sys.executable, *serve_command(self.directory)],
                                         stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                         env=env, start_new_session=True)
        time.sleep(0.2)
        if self.proc.poll() is not None:
            raise RuntimeError(f"serve exited at once ({self.proc.returncode}); see {self.log}")
        return self.proc.pid

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM (serve drains in-flight ops), SIGKILL if it does not stop in time."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return None if proc is None else proc.returncode
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait(5)

"""Helpers for the seize tests: run the CLI with the real error boundary's exit codes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from click.testing import CliRunner

from xenpciback_cli.cli import cli
from xenpciback_cli.errors import XenPcibackError

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Run:
    code: int
    output: str  # what the command printed (stdout, plus stderr where click mixes them)
    error: str  # the one error line the boundary would print ("" on success)


def invoke(*args: object) -> Run:
    """CliRunner, mapping our typed errors to their exit codes as ``main`` does."""
    result = CliRunner().invoke(cli, [str(a) for a in args])
    exc = result.exception
    if isinstance(exc, XenPcibackError):
        return Run(int(exc.exit_code), result.output, str(exc))
    if exc is not None and not isinstance(exc, SystemExit):
        raise exc
    return Run(result.exit_code, result.output, "")


def script(*args: object, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """The installed ``xen-pciback`` console script in a real process (``python -m
    xenpciback_cli`` where it is not installed), our tree first on the path."""
    environment = dict(os.environ)
    environment["PYTHONPATH"] = str(REPO) + os.pathsep + environment.get("PYTHONPATH", "")
    environment.update(env or {})
    installed = shutil.which("xen-pciback")
    entry = [installed] if installed else [sys.executable, "-m", "xenpciback_cli"]
    return subprocess.run([*entry, *[str(a) for a in args]],
                          capture_output=True, text=True, env=environment, timeout=timeout)

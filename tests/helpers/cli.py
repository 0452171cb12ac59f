"""The one way tests run the CLI: in this process through ``main`` (the real error boundary), or as
a real process. Both answer with a :class:`Run`: exit code, stdout, stderr and the error line.

The process runs the same package this test session imported (the installed one under CI, the
source tree under ``PYTHONPATH=.``), never silently the other one.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import xenpciback_cli
from xenpciback_cli.cli import main

ERROR_PREFIX = "xen-pciback: error: "
# The directory the imported package lives in: what a child process must find first.
PACKAGE_ROOT = str(Path(xenpciback_cli.__file__).resolve().parents[1])


@dataclass(frozen=True)
class Run:
    """What a person sees after one command. Unpacks as ``code, out, err``."""

    code: int
    out: str  # stdout
    err: str  # stderr

    @property
    def output(self) -> str:
        """Everything printed, stdout then stderr."""
        return self.out + self.err

    @property
    def error(self) -> str:
        """The message of the boundary's one error line (without its prefix), "" when there is none."""
        for line in self.err.splitlines():
            if line.startswith(ERROR_PREFIX):
                return line[len(ERROR_PREFIX):]
        return ""

    def json(self) -> Any:
        return json.loads(self.out)

    def __iter__(self) -> Iterator[object]:
        return iter((self.code, self.out, self.err))


def _argv(args: tuple[object, ...], sandbox: object) -> list[str]:
    prefix = [] if sandbox is None else ["--sandbox", str(sandbox)]
    return prefix + [str(a) for a in args]


@contextmanager
def _environment(env: Mapping[str, str]) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def invoke(*args: object, sandbox: object = None, env: Mapping[str, str] | None = None) -> Run:
    """Run ``xen-pciback ARGS`` in this process through ``main``, stdout and stderr apart (as
    pytest's capsys sees them: no terminal, empty stdin)."""
    stdout, stderr = io.StringIO(), io.StringIO()
    stdin, sys.stdin = sys.stdin, io.StringIO("")
    try:
        with _environment(env or {}), redirect_stdout(stdout), redirect_stderr(stderr):
            try:
                main(_argv(args, sandbox))
                code = 0
            except SystemExit as exc:
                code = int(exc.code) if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.stdin = stdin
    return Run(code, stdout.getvalue(), stderr.getvalue())


def ok(*args: object, sandbox: object = None, env: Mapping[str, str] | None = None) -> Run:
    """:func:`invoke` that must succeed."""
    run = invoke(*args, sandbox=sandbox, env=env)
    assert run.code == 0, (args, run.code, run.out, run.err)
    return run


def script(*args: object, sandbox: object = None, env: Mapping[str, str] | None = None,
           cwd: object = None, timeout: float = 60, check: bool = False) -> Run:
    """``xen-pciback ARGS`` in a real process: the installed console script where there is one,
    ``python -m xenpciback_cli`` otherwise. ``XEN_PCIBACK_SANDBOX`` is not inherited."""
    environment = dict(os.environ)
    environment.pop("XEN_PCIBACK_SANDBOX", None)
    environment["PYTHONPATH"] = PACKAGE_ROOT + os.pathsep + environment.get("PYTHONPATH", "")
    environment.update(env or {})
    installed = shutil.which("xen-pciback")
    entry = [installed] if installed else [sys.executable, "-m", "xenpciback_cli"]
    proc = subprocess.run([*entry, *_argv(args, sandbox)], capture_output=True, text=True,
                          env=environment, cwd=None if cwd is None else str(cwd), timeout=timeout)
    run = Run(proc.returncode, proc.stdout, proc.stderr)
    if check:
        assert run.code == 0, (args, run.code, run.out, run.err)
    return run

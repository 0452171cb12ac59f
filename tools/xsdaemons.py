"""Start xenstore daemons for tests: ours, Debian's C xenstored and oxenstored.

The real daemons need a hypervisor; ``tools/xenstore_shim/xsshim.c`` (an LD_PRELOAD object built
here with gcc against libxen-dev's headers) stands in for it. Each daemon gets its own scratch
directory and environment, so two never fight over one socket.

Every launcher returns a :class:`Daemon` whose ``stop()`` ends exactly the process it started.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHIM_SOURCE = REPO / "tools" / "xenstore_shim" / "xsshim.c"
XEN_BIN = Path("/usr/lib/xen-4.17/bin")
CXENSTORED = XEN_BIN / "xenstored"
OXENSTORED = XEN_BIN / "oxenstored"
KINDS = ("embedded", "cxenstored", "oxenstored")


class Unavailable(Exception):
    """This daemon cannot run here (the reason says what is missing)."""


@dataclass
class Daemon:
    kind: str
    socket: str
    workdir: Path
    proc: subprocess.Popen
    trace: Path | None = None
    env: dict[str, str] = field(default_factory=dict)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()

    def output(self) -> str:
        log = self.workdir / "daemon.log"
        return log.read_text(errors="replace") if log.exists() else ""


def build_shim(cache_dir: Path) -> Path:
    """Compile the LD_PRELOAD shim (once per cache dir); Unavailable if gcc or headers lack."""
    out = cache_dir / "xsshim.so"
    if out.exists() and out.stat().st_mtime >= SHIM_SOURCE.stat().st_mtime:
        return out
    gcc = shutil.which("gcc")
    if gcc is None:
        raise Unavailable("gcc is not installed (needed to build the xenstore test shim)")
    if not Path("/usr/include/xenctrl.h").exists():
        raise Unavailable("libxen-dev headers are missing (/usr/include/xenctrl.h)")
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache_dir / f"xsshim.{os.getpid()}.so"
    proc = subprocess.run([gcc, "-shared", "-fPIC", "-O2", "-Wall", "-o", str(tmp),
                           str(SHIM_SOURCE), "-ldl"], capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise Unavailable(f"building the xenstore shim failed: {proc.stderr.strip()[:500]}")
    tmp.replace(out)
    return out


def wait_for_socket(path: str, proc: subprocess.Popen, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"daemon exited with {proc.returncode} before listening on {path}")
        if os.path.exists(path):
            s = socket.socket(socket.AF_UNIX)
            try:
                s.connect(path)
                return
            except OSError:
                pass
            finally:
                s.close()
        time.sleep(0.01)
    raise RuntimeError(f"daemon did not listen on {path} within {timeout}s")


def _scratch(workdir: Path) -> None:
    """What the shim serves as /proc/xen/xsd_port (no newline: oxenstored) and xsd_kva."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "xsd_port").write_text("1")
    (workdir / "xsd_kva").write_bytes(bytes(4096))


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("XENSTORED_PATH", "XENSTORED_RUNDIR", "LD_PRELOAD")}
    return env


def start_cxenstored(workdir: Path, shim: Path, *, trace: bool = False) -> Daemon:
    if not os.access(CXENSTORED, os.X_OK):
        raise Unavailable(f"{CXENSTORED} is missing (apt install xen-utils-4.17)")
    _scratch(workdir)
    sock = str(workdir / "socket")
    env = _clean_env()
    env.update(XS_SHIM_DIR=str(workdir), XENSTORED_RUNDIR=str(workdir), XENSTORED_PATH=sock,
               LD_PRELOAD=str(shim))
    argv = [str(CXENSTORED), "-N", "-F", str(workdir / "pid")]
    trace_file = workdir / "trace" if trace else None
    if trace_file:
        argv += ["-T", str(trace_file)]
    log = open(workdir / "daemon.log", "wb")  # noqa: SIM115 - owned by the daemon's lifetime
    proc = subprocess.Popen(argv, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)
    log.close()
    daemon = Daemon("cxenstored", sock, workdir, proc, trace_file, env)
    _ready(daemon)
    return daemon


def start_oxenstored(workdir: Path, shim: Path) -> Daemon:
    if not os.access(OXENSTORED, os.X_OK):
        raise Unavailable(f"{OXENSTORED} is missing (apt install xen-utils-4.17)")
    _scratch(workdir)
    sock = str(workdir / "socket")
    conf = workdir / "oxenstored.conf"
    conf.write_text("\n".join([
        f"pid-file = {workdir / 'pid'}",
        f"xenstored-log-file = {workdir / 'xenstored.log'}",
        f"access-log-file = {workdir / 'access.log'}",
        "persistent = false", "perms-activate = true", "quota-activate = true",
        "quota-maxentity = 1000", "quota-maxsize = 2048", "quota-maxwatch = 100",
        "quota-transaction = 10",
        "xenstored-kva = /proc/xen/xsd_kva", "xenstored-port = /proc/xen/xsd_port", ""]))
    env = _clean_env()
    env.update(XS_SHIM_DIR=str(workdir), XENSTORED_PATH=sock, LD_PRELOAD=str(shim))
    log = open(workdir / "daemon.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([str(OXENSTORED), "--no-fork", "--config-file", str(conf)],
                            cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)
    log.close()
    daemon = Daemon("oxenstored", sock, workdir, proc, None, env)
    _ready(daemon)
    return daemon


def start_embedded(workdir: Path, *, trace: bool = False, extra: list[str] | None = None,
                   preexec_fn: object = None) -> Daemon:
    workdir.mkdir(parents=True, exist_ok=True)
    sock = str(workdir / "socket")
    env = _clean_env()
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    argv = [sys.executable, "-m", "xenpciback_cli", "sandbox", "xenstored", "--socket", sock]
    trace_file = workdir / "trace" if trace else None
    if trace_file:
        argv += ["--trace", str(trace_file)]
    argv += extra or []
    log = open(workdir / "daemon.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(argv, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, preexec_fn=preexec_fn)  # type: ignore[arg-type]
    log.close()
    daemon = Daemon("embedded", sock, workdir, proc, trace_file, env)
    _ready(daemon)
    return daemon


def _ready(daemon: Daemon) -> None:
    try:
        wait_for_socket(daemon.socket, daemon.proc)
    except RuntimeError as exc:
        daemon.stop()
        raise Unavailable(f"{daemon.kind}: {exc}; log: {daemon.output()[-500:]}") from None


def start(kind: str, workdir: Path, shim_cache: Path, **kwargs: object) -> Daemon:
    """Start a daemon of ``kind`` (one of :data:`KINDS`) in ``workdir``."""
    if kind == "embedded":
        return start_embedded(workdir, **kwargs)  # type: ignore[arg-type]
    shim = build_shim(shim_cache)
    if kind == "cxenstored":
        return start_cxenstored(workdir, shim, **kwargs)  # type: ignore[arg-type]
    if kind == "oxenstored":
        return start_oxenstored(workdir, shim)
    raise ValueError(kind)

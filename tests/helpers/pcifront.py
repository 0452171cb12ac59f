"""A minimal PCI frontend written from docs/sandbox-protocol.md only (the test's guest): a grant
file, a ``.front`` datagram socket, xenstore writes through the domain's own socket."""

from __future__ import annotations

import contextlib
import mmap
import os
import select
import socket
import struct
import sys
import subprocess
import time
from pathlib import Path
from collections.abc import Iterator
from typing import Any

from xenpciback_cli.xenstore.client import XenstoreClient

OP = struct.Struct("<IiIIIiiII")  # cmd, err, domain, bus, devfn, offset, size, value, info
PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


def encode(cmd: int, devfn: int, offset: int = 0, size: int = 4, value: int = 0,
           entries: tuple[int, ...] = ()) -> bytes:
    flat = []
    for entry in entries:
        flat += [0, entry]
    flat += [0] * (2 * 128 - len(flat))
    return OP.pack(cmd, 0, 0, 0, devfn, offset, size, value, 0) + struct.pack("<256H", *flat)


class Frontend:
    def __init__(self, sandbox: Path, domid: int, ref: int = 11, port: int = 5) -> None:
        self.root, self.domid, self.ref, self.port = Path(sandbox), domid, ref, port
        self.xs = XenstoreClient.open_socket(str(self.root / "xenstore" / "socket.d" / str(domid)),
                                             timeout=5)
        self.be = f"/local/domain/0/backend/pci/{domid}/0"
        self.fe = f"/local/domain/{domid}/device/pci/0"
        self.sock: socket.socket | None = None
        self.page: mmap.mmap | None = None

    def read(self, path: str) -> str | None:
        try:
            return self.xs.read(path).decode()
        except Exception:  # noqa: BLE001
            return None

    def wait_backend(self, states: tuple[str, ...], timeout: float = 5.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.read(f"{self.be}/state")
            if state in states:
                return state
            time.sleep(0.02)
        raise TimeoutError(f"backend state {self.read(f'{self.be}/state')!r}, wanted {states}")

    @property
    def grant(self) -> Path:
        return self.root / "xen" / "grant" / str(self.domid) / str(self.ref)

    def channel(self, end: str) -> str:
        return str(self.root / "xen" / "evtchn" / f"{self.domid}-{self.port}.{end}")

    def connect(self, timeout: float = 5.0) -> None:
        self.wait_backend(("2", "3"), timeout)
        self.grant.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.grant, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        os.ftruncate(fd, 4096)
        self.page = mmap.mmap(fd, 4096, mmap.MAP_SHARED)
        os.close(fd)
        Path(self.channel("front")).parent.mkdir(parents=True, exist_ok=True)
        if os.path.exists(self.channel("front")):
            os.unlink(self.channel("front"))
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.channel("front"))
        for key, value in (("pci-op-ref", self.ref), ("event-channel", self.port),
                           ("magic", 7), ("state", 3)):
            self.xs.write(f"{self.fe}/{key}", str(value))
        self.wait_backend(("4",), timeout)
        self.xs.write(f"{self.fe}/state", "4")

    def notify(self) -> None:
        assert self.sock is not None
        try:
            self.sock.sendto(b"\x01", self.channel("back"))
        except OSError:
            pass  # backend gone or restarting: the op stays pending (bit 0)

    def post(self, op: bytes) -> None:
        assert self.page is not None
        self.page[4:4 + len(op)] = op
        self.page[0:4] = struct.pack("<I", struct.unpack("<I", self.page[0:4])[0] | 1)
        self.notify()

    def answer(self, timeout: float = 3.0) -> tuple[int, int, tuple[int, ...]]:
        assert self.page is not None and self.sock is not None
        deadline = time.monotonic() + timeout
        while struct.unpack("<I", self.page[0:4])[0] & 1:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no answer")
            if select.select([self.sock], [], [], min(left, 0.1))[0]:
                self.sock.recv(64)
        _cmd, err, *_rest, value, _info = OP.unpack_from(self.page, 4)
        vectors = struct.unpack_from("<256H", self.page, 4 + OP.size)[0::2]
        return err, value, vectors

    def op(self, cmd: int, devfn: int, offset: int = 0, size: int = 4, value: int = 0,
           entries: tuple[int, ...] = (), timeout: float = 3.0) -> tuple[int, int, tuple[int, ...]]:
        self.post(encode(cmd, devfn, offset, size, value, entries))
        return self.answer(timeout)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
        if self.page is not None:
            self.page.close()
        self.xs.close()


def start_serve(sandbox: Path, *args: str) -> subprocess.Popen[bytes]:
    """``xen-pciback --sandbox S serve foreground ARGS`` as a real process; returns once it said
    it is ready (its stderr keeps flowing to a pipe the test may read)."""
    env = dict(os.environ, PYTHONPATH=PACKAGE_ROOT)
    env.pop("XEN_PCIBACK_SANDBOX", None)
    proc = subprocess.Popen([sys.executable, "-m", "xenpciback_cli", "--sandbox", str(sandbox),
                             "serve", "foreground", *args], stderr=subprocess.PIPE, env=env)
    assert proc.stderr is not None
    os.set_blocking(proc.stderr.fileno(), False)
    deadline = time.monotonic() + 10
    seen = ""
    while time.monotonic() < deadline:
        select.select([proc.stderr], [], [], 0.1)
        seen += _read(proc)
        if "serve: ready" in seen:
            proc.log = seen  # type: ignore[attr-defined]
            return proc
        if proc.poll() is not None:
            break
    proc.kill()
    raise AssertionError(f"serve did not start: {seen}")


def _read(proc: subprocess.Popen[bytes]) -> str:
    assert proc.stderr is not None
    try:
        data = os.read(proc.stderr.fileno(), 1 << 20)
    except BlockingIOError:
        return ""
    return data.decode(errors="replace")


def serve_log(proc: subprocess.Popen[bytes]) -> str:
    assert proc.stderr is not None
    proc.log += _read(proc)  # type: ignore[attr-defined]
    return proc.log  # type: ignore[attr-defined,no-any-return]


def stop_serve(proc: subprocess.Popen[bytes], timeout: float = 5.0) -> int:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)
    serve_log(proc)
    return proc.returncode


def start_guest(sandbox: Path, domid: int, *args: str) -> subprocess.Popen[bytes]:
    """``sandbox guest DOMID --stay ARGS`` as a real process (its stdout collected in
    ``proc.out``); returns once it holds the connection."""
    env = dict(os.environ, PYTHONPATH=PACKAGE_ROOT)
    env.pop("XEN_PCIBACK_SANDBOX", None)
    proc = subprocess.Popen([sys.executable, "-m", "xenpciback_cli", "--sandbox", str(sandbox),
                             "sandbox", "guest", str(domid), "--stay", "--timeout", "10", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert proc.stdout is not None
    os.set_blocking(proc.stdout.fileno(), False)
    proc.out = ""  # type: ignore[attr-defined]
    wait_out(proc, "holding domain")
    return proc


def wait_out(proc: Any, text: str, timeout: float = 15.0, count: int = 1) -> str:
    """Wait until the guest printed ``text`` ``count`` times; its output so far."""
    deadline = time.monotonic() + timeout
    while proc.out.count(text) < count:
        left = deadline - time.monotonic()
        if left <= 0 or proc.poll() is not None:
            raise AssertionError(f"guest did not print {text!r}: {proc.out}"
                                 f"{proc.stderr.read().decode() if proc.poll() is not None else ''}")
        select.select([proc.stdout], [], [], min(left, 0.1))
        try:
            proc.out += os.read(proc.stdout.fileno(), 1 << 16).decode()
        except BlockingIOError:
            pass
    return proc.out


def stop_guest(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@contextlib.contextmanager
def serving(sandbox: Path, domid: int, *args: str) -> Iterator[Frontend]:
    """``serve foreground ARGS`` and domain DOMID's Frontend, connected; both closed after."""
    proc = start_serve(sandbox, *args)
    front = Frontend(sandbox, domid)
    try:
        front.connect()
        yield front
    finally:
        front.close()
        stop_serve(proc)

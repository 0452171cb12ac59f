"""Where xenstore is, and a byte pipe to it: the only module here that opens anything.

Discovery follows Xen's own library (``xs_open``: ``xs_daemon_socket()``, then
``xs_domain_dev()`` in libxenstore): ``XENSTORED_PATH`` names the socket (or device) outright;
otherwise ``$XENSTORED_RUNDIR/socket``, ``/run/xenstored/socket``, ``/var/run/xenstored/socket``,
and last ``/dev/xen/xenbus`` then ``/proc/xen/xenbus`` (a guest or a dom0 without a local daemon
talks through the kernel's xenbus device: the same wire protocol, each request one write, replies
echoing the request's header; ``tests/xenstore/test_xenstore_xenbus_device.py`` plays it on a pty).
"""

from __future__ import annotations

import os
import stat
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import socket  # imported where a socket is opened: a host without Xen never needs it

DEVICE_PATHS = ("/dev/xen/xenbus", "/proc/xen/xenbus")
DEFAULT_SOCKETS = ("/run/xenstored/socket", "/var/run/xenstored/socket")


def any_candidate_exists(environ: dict[str, str] | None = None) -> bool:
    """Whether any place discovery would try exists at all: without one, no daemon can answer
    and callers that treat "no xenstore" as normal can skip loading the client."""
    return any(os.path.exists(path) for path in candidate_paths(environ))


def candidate_paths(environ: dict[str, str] | None = None) -> list[str]:
    """Every place we would try, in order (shown in the error when none answers)."""
    env = os.environ if environ is None else environ
    if env.get("XENSTORED_PATH"):
        return [env["XENSTORED_PATH"]]
    paths = []
    if env.get("XENSTORED_RUNDIR"):
        paths.append(os.path.join(env["XENSTORED_RUNDIR"], "socket"))
    paths.extend(DEFAULT_SOCKETS)
    paths.extend(DEVICE_PATHS)
    return paths


class Transport:
    """A connected byte pipe (unix socket or xenbus character device) with a file descriptor."""

    def __init__(self, fd: int, path: str, sock: socket.socket | None = None) -> None:
        self.fd = fd
        self.path = path
        self._sock = sock  # keeps the socket object (and the fd) alive

    @classmethod
    def open(cls, path: str) -> Transport:
        """Open a socket or a character device; OSError as raised by the system."""
        st = os.stat(path)
        if stat.S_ISSOCK(st.st_mode):
            import socket

            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(path)
            except OSError:
                sock.close()
                raise
            return cls(sock.fileno(), path, sock)
        # O_NOCTTY: a service (a session leader without a terminal) must never acquire a
        # tty-like device as its controlling terminal by opening it.
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOCTTY)
        return cls(fd, path)

    def send(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self.fd, view)
            view = view[n:]

    def recv(self, size: int = 65536) -> bytes:
        return os.read(self.fd, size)

    def close(self) -> None:
        if self.fd < 0:
            return
        if self._sock is not None:
            self._sock.close()
        else:
            os.close(self.fd)
        self.fd = -1


def discover(environ: dict[str, str] | None = None) -> Transport:
    """Connect to the first place that answers; FileNotFoundError naming all tried if none."""
    tried: list[str] = []
    last: OSError | None = None
    for path in candidate_paths(environ):
        try:
            return Transport.open(path)
        except OSError as exc:
            tried.append(f"{path} ({exc.strerror or exc})")
            last = exc
    err = FileNotFoundError(last.errno if last else 2,
                            "no xenstore found; tried " + ", ".join(tried))
    raise err

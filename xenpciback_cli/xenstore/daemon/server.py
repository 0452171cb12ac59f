"""The edge of the embedded xenstored: one select loop moving bytes between sockets and the core.

Sockets: ``PATH`` (connections act as dom0) and, for every introduced domain D,
``PATH.d/D`` (connections act as D). A client that breaks the framing is dropped, as C
xenstored does. SIGTERM/SIGINT end the loop cleanly: the tree is saved, sockets removed.

Hardening, because a guest (and any local user who can reach a socket) may be hostile:

* Every socket is mode 0600 and ``PATH.d`` 0700, whatever the umask (C xenstored's socket is
  0600): only the daemon's user connects. Both paths are checked against the AF_UNIX limit
  (107 bytes) before anything is bound, so a long path is an error at start, never a daemon
  that dies at the first INTRODUCE and then on every restart.
* Connections are limited per guest domain and in total (``Quotas``); one over the limit is
  accepted and closed at once, with a log line. When the process runs out of descriptors
  (EMFILE/ENFILE) accepting stops for a moment, existing connections keep being served.
"""

from __future__ import annotations

import errno
import os
import selectors
import signal
import socket
import sys
import time
from pathlib import Path
from typing import TextIO, cast

from xenpciback_cli.xenstore import wire
from xenpciback_cli.xenstore.daemon import persist
from xenpciback_cli.xenstore.daemon.core import Connection, Core, Quotas

READ_SIZE = 65536
BACKLOG = 128
#: A peer that lets this much output pile up (never reads its replies or watch events) is
#: dropped: a hostile guest must not make the daemon grow without bound.
MAX_PENDING = 8 << 20
#: ``sun_path`` holds 108 bytes including the terminating NUL.
SOCKET_PATH_MAX = 107
#: The longest domain socket name: ``PATH.d/`` plus a domain id of up to 5 digits.
DOMAIN_SUFFIX_MAX = len(".d/") + 5
SOCKET_MODE = 0o600
DIR_MODE = 0o700
#: How long accepting pauses after EMFILE/ENFILE (seconds).
ACCEPT_BACKOFF = 0.2


def check_socket_path(path: str) -> None:
    """ValueError (one line) unless ``path`` and every ``PATH.d/D`` fit in an AF_UNIX address."""
    size = len(os.fsencode(path))
    if size + DOMAIN_SUFFIX_MAX > SOCKET_PATH_MAX:
        raise ValueError(
            f"socket path {path} is {size} bytes, over the {SOCKET_PATH_MAX - DOMAIN_SUFFIX_MAX} "
            f"that fit (AF_UNIX allows {SOCKET_PATH_MAX} bytes, and PATH.d/DOMID must fit "
            "too): choose a shorter path")


class _Peer:
    __slots__ = ("conn", "decoder", "pending", "sock")

    def __init__(self, sock: socket.socket, conn: Connection) -> None:
        self.sock = sock
        self.conn = conn
        self.decoder = wire.Decoder()
        self.pending = bytearray()  # bytes the kernel would not take yet


class Server:
    """Serve ``core`` on ``socket_path`` until :meth:`stop` (or a signal)."""

    def __init__(self, core: Core, socket_path: str, *, trace: TextIO | None = None,
                 state_file: str | None = None) -> None:
        self.core = core
        self.socket_path = socket_path
        self.domain_dir = Path(socket_path + ".d")
        self.trace = trace
        self.state_file = state_file
        self.selector = selectors.DefaultSelector()
        self.peers: dict[int, _Peer] = {}  # core connection id -> peer
        self.listeners: dict[int, socket.socket] = {}  # domid -> listening socket
        self._running = False
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._reserve = -1  # a spare descriptor, given up to accept-and-close under EMFILE
        self._paused: dict[int, socket.socket] = {}  # listeners resting after EMFILE
        self._resume_at = 0.0
        self._refused = 0  # connections refused since the last log line about it
        self._refused_logged = 0.0

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        check_socket_path(self.socket_path)
        if self.state_file:
            persist.load(self.core, self.state_file)
        self._reserve_fd()
        self._listen(0, self.socket_path)
        self.selector.register(self._wake_r, selectors.EVENT_READ, ("wake", None))
        self._apply_actions()

    def stop(self) -> None:
        """Ask the loop to end (safe from a signal handler or another thread)."""
        self._running = False
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass

    def serve_forever(self, *, handle_signals: bool = True) -> None:
        if handle_signals:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                signal.signal(sig, lambda *_: self.stop())
        self._running = True
        try:
            while self._running:
                timeout = None
                if self._paused:
                    timeout = max(0.0, self._resume_at - time.monotonic())
                    if timeout == 0.0:
                        self._resume_accepting()
                        timeout = None
                for key, events in self.selector.select(timeout):
                    kind, obj = key.data
                    if kind == "peer":
                        if events & selectors.EVENT_READ:
                            self._on_readable(obj)
                        if events & selectors.EVENT_WRITE and not obj.conn.closed:
                            self._flush_peer(obj)
                    elif kind == "listen":
                        self._accept(cast(socket.socket, key.fileobj), obj)  # registered as such
                    else:
                        try:
                            os.read(self._wake_r, 64)
                        except BlockingIOError:
                            pass
        finally:
            self.close()

    def close(self) -> None:
        if self.state_file:
            persist.save(self.core, self.state_file)
        for peer in list(self.peers.values()):
            self._drop(peer)
        self._resume_accepting()
        for domid in list(self.listeners):
            self._unlisten(domid)
        self.selector.close()
        if self._reserve >= 0:
            os.close(self._reserve)
            self._reserve = -1
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
        if self.trace:
            self.trace.flush()

    # -- sockets --------------------------------------------------------------------------------
    def _listen(self, domid: int, path: str) -> None:
        if os.path.exists(path):
            probe = socket.socket(socket.AF_UNIX)
            try:
                probe.connect(path)
            except OSError:
                os.unlink(path)  # stale socket of a daemon that died
            else:
                probe.close()
                raise OSError(98, f"another xenstored is already listening on {path}")
            finally:
                probe.close()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            os.fchmod(sock.fileno(), SOCKET_MODE)  # Linux gives the bound file this mode
            sock.bind(path)
            os.chmod(path, SOCKET_MODE)  # and whatever the umask did, it is 0600 now
            sock.listen(BACKLOG)
        except BaseException:
            sock.close()
            raise
        sock.setblocking(False)
        self.listeners[domid] = sock
        self.selector.register(sock, selectors.EVENT_READ, ("listen", domid))

    def _unlisten(self, domid: int) -> None:
        sock = self.listeners.pop(domid, None)
        if sock is None:
            return
        path = sock.getsockname()
        if self._paused.pop(domid, None) is None:
            self.selector.unregister(sock)
        sock.close()
        try:
            os.unlink(path)
        except OSError:
            pass

    def _accept(self, listener: socket.socket, domid: int) -> None:
        try:
            sock, _ = listener.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return
        except OSError as exc:
            if exc.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                raise
            self._out_of_descriptors(listener, exc)
            return
        if not self.core.may_connect(domid):
            sock.close()
            self._refused += 1
            now = time.monotonic()
            if now - self._refused_logged >= 1.0:
                q = self.core.quotas
                self._warn(f"refused {self._refused} connection(s) for domain {domid}: over the "
                           f"limit of {q.max_connections} per domain / "
                           f"{q.max_connections_total} in total")
                self._refused, self._refused_logged = 0, now
            return
        sock.setblocking(False)
        conn = self.core.connect(domid)
        peer = _Peer(sock, conn)
        self.peers[conn.id] = peer
        self.selector.register(sock, selectors.EVENT_READ, ("peer", peer))
        self._log(f"CREATE connection {conn.id} domain {domid}")

    def _reserve_fd(self) -> None:
        if self._reserve < 0:
            try:
                self._reserve = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                self._reserve = -1

    def _out_of_descriptors(self, listener: socket.socket, exc: OSError) -> None:
        """EMFILE: close the waiting client (with the spare descriptor) so it is not left
        hanging, and stop accepting for a moment; existing connections are served on."""
        if self._reserve >= 0:
            os.close(self._reserve)
            self._reserve = -1
            try:
                sock, _ = listener.accept()
                sock.close()
            except OSError:
                pass
            self._reserve_fd()
        self._warn(f"out of file descriptors ({exc.strerror}) with {len(self.peers)} "
                   f"connections: not accepting for {ACCEPT_BACKOFF:g}s")
        for domid, sock in self.listeners.items():
            if domid not in self._paused:
                self.selector.unregister(sock)
                self._paused[domid] = sock
        self._resume_at = time.monotonic() + ACCEPT_BACKOFF

    def _resume_accepting(self) -> None:
        paused, self._paused = self._paused, {}
        for domid, sock in paused.items():
            if self.listeners.get(domid) is sock:
                self.selector.register(sock, selectors.EVENT_READ, ("listen", domid))

    def _drop(self, peer: _Peer) -> None:
        if peer.conn.id not in self.peers:
            return
        del self.peers[peer.conn.id]
        self.core.disconnect(peer.conn)
        try:
            self.selector.unregister(peer.sock)
        except (KeyError, ValueError):
            pass
        peer.sock.close()
        self._log(f"DESTROY connection {peer.conn.id}")

    # -- bytes in, bytes out --------------------------------------------------------------------
    def _on_readable(self, peer: _Peer) -> None:
        try:
            data = peer.sock.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(peer)
            return
        peer.decoder.feed(data)
        core = self.core
        try:
            while (msg := peer.decoder.next_message()) is not None:
                if self.trace:
                    self._trace("IN", peer.conn.id, msg)
                core.handle(peer.conn, msg)
                if peer.conn.closed:
                    break
        except wire.ProtocolError as exc:
            self._log(f"connection {peer.conn.id}: {exc}; dropping it")
            self._drop(peer)
        if core.internal_errors:
            for text in core.internal_errors:
                sys.stderr.write(f"xenstored: internal error (answered EIO):\n{text}")
            core.internal_errors.clear()
        if core.actions:
            self._apply_actions()
        self._flush_dirty()

    def _flush_dirty(self) -> None:
        dirty = self.core.dirty
        while dirty:
            conn = dirty.pop()
            peer = self.peers.get(conn.id)
            if peer is None:
                conn.outbox.clear()
                continue
            if self.trace:
                for frame in conn.outbox:
                    self._trace("OUT", conn.id, wire.Message._make((*wire.HEADER.unpack_from(frame)[:3],
                                                                     frame[wire.HEADER_SIZE:])))
            peer.pending += b"".join(conn.outbox)
            conn.outbox.clear()
            if len(peer.pending) > MAX_PENDING:
                self._log(f"connection {conn.id}: over {MAX_PENDING} bytes unread; dropping it")
                self._drop(peer)
                continue
            self._flush_peer(peer)

    def _flush_peer(self, peer: _Peer) -> None:
        try:
            sent = peer.sock.send(peer.pending)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self._drop(peer)
            return
        del peer.pending[:sent]
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if peer.pending else 0)
        if self.selector.get_key(peer.sock).events != events:
            self.selector.modify(peer.sock, events, ("peer", peer))

    def _apply_actions(self) -> None:
        actions, self.core.actions = self.core.actions, []
        for what, domid in actions:
            if what == "introduced" and domid not in self.listeners:
                try:
                    self.domain_dir.mkdir(mode=DIR_MODE, exist_ok=True)
                    os.chmod(self.domain_dir, DIR_MODE)
                    self._listen(domid, str(self.domain_dir / str(domid)))
                except OSError as exc:  # the domain stays introduced, without a socket
                    self._warn(f"cannot listen for domain {domid} on "
                               f"{self.domain_dir / str(domid)}: {exc.strerror or exc}")
            elif what == "released":
                self._unlisten(domid)
                for peer in list(self.peers.values()):
                    if peer.conn.closed:
                        self._drop(peer)

    # -- trace ----------------------------------------------------------------------------------
    def _trace(self, direction: str, conn_id: int, msg: wire.Message) -> None:
        assert self.trace is not None
        shown = msg.payload.replace(b"\0", b" ").decode("utf-8", "backslashreplace")
        stamp = time.strftime("%Y%m%d %H:%M:%S")
        self.trace.write(f"{direction} {conn_id} {stamp} {wire.type_name(msg.type)} "
                         f"req={msg.req_id} tx={msg.tx_id} ({shown})\n")

    def _log(self, line: str) -> None:
        if self.trace:
            self.trace.write(line + "\n")

    def _warn(self, line: str) -> None:
        """Something an administrator should see (stderr is the daemon's log)."""
        sys.stderr.write(f"xenstored: {line}\n")
        sys.stderr.flush()
        self._log(line)


def run(socket_path: str, *, trace_path: str | None = None, state_file: str | None = None,
        quotas: object = None, ready: object = None) -> None:
    """Run a daemon in the foreground until SIGTERM/SIGINT (what ``sandbox xenstored`` does)."""
    from xenpciback_cli.xenstore.daemon.core import Quotas

    core = Core(quotas if isinstance(quotas, Quotas) else None)
    _raise_descriptor_limit(core.quotas)
    trace = open(trace_path, "a", buffering=1) if trace_path else None  # noqa: SIM115
    try:
        server = Server(core, socket_path, trace=trace, state_file=state_file)
        server.start()
        if callable(ready):
            ready(server)
        server.serve_forever()
    finally:
        if trace:
            trace.close()


def _raise_descriptor_limit(quotas: Quotas) -> None:
    """Use the descriptors the hard limit allows, and keep the total connection limit below
    what the process can open (a few are the daemon's own: listeners, log, state file)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 65536
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (ValueError, OSError):
            pass
    if soft != resource.RLIM_INFINITY:
        room = max(1, soft - 64)
        if quotas.max_connections_total > room:
            quotas.max_connections_total = room

"""The edge of the embedded xenstored: one select loop moving bytes between sockets and the core.

Sockets: ``PATH`` (connections act as dom0) and, for every introduced domain D,
``PATH.d/D`` (connections act as D). A client that breaks the framing is dropped, as C
xenstored does. SIGTERM/SIGINT end the loop cleanly: the tree is saved, sockets removed.
"""

from __future__ import annotations

import os
import selectors
import signal
import socket
import time
from pathlib import Path
from typing import TextIO

from xenpciback_cli.xenstore import wire
from xenpciback_cli.xenstore.daemon import persist
from xenpciback_cli.xenstore.daemon.core import Connection, Core

READ_SIZE = 65536
BACKLOG = 128
#: A peer that lets this much output pile up (never reads its replies or watch events) is
#: dropped: a hostile guest must not make the daemon grow without bound.
MAX_PENDING = 8 << 20


class _Peer:
    __slots__ = ("sock", "conn", "decoder", "pending")

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

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        if self.state_file:
            persist.load(self.core, self.state_file)
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
                for key, events in self.selector.select():
                    kind, obj = key.data
                    if kind == "peer":
                        if events & selectors.EVENT_READ:
                            self._on_readable(obj)
                        if events & selectors.EVENT_WRITE and not obj.conn.closed:
                            self._flush_peer(obj)
                    elif kind == "listen":
                        self._accept(key.fileobj, obj)
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
        for domid in list(self.listeners):
            self._unlisten(domid)
        self.selector.close()
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
        sock.bind(path)
        sock.listen(BACKLOG)
        sock.setblocking(False)
        self.listeners[domid] = sock
        self.selector.register(sock, selectors.EVENT_READ, ("listen", domid))

    def _unlisten(self, domid: int) -> None:
        sock = self.listeners.pop(domid, None)
        if sock is None:
            return
        path = sock.getsockname()
        self.selector.unregister(sock)
        sock.close()
        try:
            os.unlink(path)
        except OSError:
            pass

    def _accept(self, listener: socket.socket, domid: int) -> None:
        try:
            sock, _ = listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        sock.setblocking(False)
        conn = self.core.connect(domid)
        peer = _Peer(sock, conn)
        self.peers[conn.id] = peer
        self.selector.register(sock, selectors.EVENT_READ, ("peer", peer))
        self._log(f"CREATE connection {conn.id} domain {domid}")

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
            import sys

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
                    self._trace("OUT", conn.id, wire.Message(*wire.HEADER.unpack_from(frame)[:3],
                                                              frame[wire.HEADER_SIZE:]))
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
                self.domain_dir.mkdir(exist_ok=True)
                self._listen(domid, str(self.domain_dir / str(domid)))
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


def run(socket_path: str, *, trace_path: str | None = None, state_file: str | None = None,
        quotas: object = None, ready: object = None) -> None:
    """Run a daemon in the foreground until SIGTERM/SIGINT (what ``sandbox xenstored`` does)."""
    from xenpciback_cli.xenstore.daemon.core import Quotas

    core = Core(quotas if isinstance(quotas, Quotas) else None)
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

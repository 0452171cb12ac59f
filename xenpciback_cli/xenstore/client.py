"""A xenstore client on top of the sans-IO codec: one connection, one request in flight.

Why it looks like this:

* Replies and watch events share the connection and the two real daemons order them
  differently (C xenstored sends the event a WRITE causes *before* the WRITE's reply,
  oxenstored after), so every frame read is demultiplexed by type: WATCH_EVENT frames go to an
  event queue whenever they arrive, replies are matched by ``req_id``.
* No thread. :meth:`XenstoreClient.fileno` is an epoll descriptor watching both the connection
  and an eventfd that is signalled while events are queued, so a select loop wakes up for
  events that arrived during an earlier request as well as for new ones.
* Every wait is bounded (``timeout``); a closed or silent daemon raises
  :class:`XenstoreConnectionLost` instead of hanging.
* The event queue is bounded too (``max_events``): a guest rewriting a watched node in a loop
  must not grow a dom0 tool without limit. An event already queued is not queued twice (it
  says the same thing: "look at this path again"); past the bound, events are dropped and one
  :data:`EVENTS_DROPPED` marker event (with the first dropped event's token) takes their
  place, so a consumer knows to re-read what it watches.
"""

from __future__ import annotations

import os
import select
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import NamedTuple, TypeVar

from xenpciback_cli.errors import OperationFailed
from xenpciback_cli.xenstore import wire
from xenpciback_cli.xenstore.transport import Transport, discover
from xenpciback_cli.xenstore.wire import MessageType as T
from xenpciback_cli.xenstore.wire import Perm

__all__ = ["EVENTS_DROPPED", "Perm", "Transaction", "WatchEvent", "XenstoreClient", "XenstoreConnectionLost",
           "XenstoreError", "XenstoreUnavailable", "connect"]

R = TypeVar("R")
DEFAULT_TIMEOUT = 10.0
DEFAULT_RETRIES = 16
REPLY_MAX = 1 << 20  # bound on what we buffer for one reply (the daemons' own limit is 4096)
MAX_EVENTS = 1024  # distinct watch events queued at most (then: dropped, one marker)
#: The path of the marker event queued in place of events dropped from a full queue. Not a
#: valid node path (xenstore paths never contain "!"), so it cannot be mistaken for one.
EVENTS_DROPPED = "@events-dropped!"


class XenstoreError(OperationFailed):
    """The daemon answered with an error (``errno_name`` as on the wire), about ``path``."""

    def __init__(self, errno_name: str, path: str | None = None, op: str | None = None,
                 detail: str | None = None) -> None:
        self.errno_name = errno_name
        self.path = path
        self.op = op
        value = wire.ERROR_NAMES.get(errno_name)
        self.errno = value
        words = detail or (os.strerror(value) if value else errno_name)
        what = " ".join(x for x in ("xenstore", op and op.lower(), path) if x)
        super().__init__(f"{what}: {errno_name} ({words})" if errno_name else f"{what}: {words}")


class XenstoreConnectionLost(XenstoreError):
    """The connection closed, broke the protocol, or stopped answering."""

    def __init__(self, detail: str, path: str | None = None, op: str | None = None) -> None:
        super().__init__("EIO", path, op, detail)
        what = " ".join(x for x in ("xenstore", op and op.lower(), path) if x)
        self.message = f"{what}: {detail}"
        self.args = (self.message,)


class XenstoreUnavailable(XenstoreConnectionLost):
    """No daemon could be reached at all."""


class WatchEvent(NamedTuple):
    path: str
    token: str


class XenstoreClient:
    """A synchronous client. Not thread-safe: one request at a time per client."""

    def __init__(self, transport: Transport, *, timeout: float | None = DEFAULT_TIMEOUT,
                 max_events: int = MAX_EVENTS) -> None:
        self.transport = transport
        self.timeout = timeout
        self.max_events = max(1, max_events)
        self.dropped_events = 0  # events dropped because the queue was full (ever)
        self._queued: set[WatchEvent] = set()  # what _events holds, for coalescing
        # Lenient on input: oxenstored 4.17 answers DIRECTORY with replies over PAYLOAD_MAX.
        self._decoder = wire.Decoder(max_payload=REPLY_MAX)
        self._req_id = 0
        self._events: deque[WatchEvent] = deque()
        self._poll = select.poll()
        self._poll.register(transport.fd, select.POLLIN)
        self._epoll: select.epoll | None = None
        self._eventfd = -1
        self._lost: str | None = None

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def open_socket(cls, path: str, *, timeout: float | None = DEFAULT_TIMEOUT,
                    max_events: int = MAX_EVENTS) -> XenstoreClient:
        return cls._open(path, timeout=timeout, max_events=max_events)

    @classmethod
    def open_device(cls, path: str = "/dev/xen/xenbus", *, timeout: float | None = DEFAULT_TIMEOUT,
                    max_events: int = MAX_EVENTS) -> XenstoreClient:
        return cls._open(path, timeout=timeout, max_events=max_events)

    @classmethod
    def _open(cls, path: str, *, timeout: float | None = DEFAULT_TIMEOUT,
              max_events: int = MAX_EVENTS) -> XenstoreClient:
        try:
            transport = Transport.open(path)
        except OSError as exc:
            raise XenstoreUnavailable(f"cannot connect: {exc.strerror or exc}", path) from None
        return cls(transport, timeout=timeout, max_events=max_events)

    @property
    def path(self) -> str:
        return self.transport.path

    def close(self) -> None:
        self.transport.close()
        if self._epoll is not None:
            self._epoll.close()
            self._epoll = None
        if self._eventfd >= 0:
            os.close(self._eventfd)
            self._eventfd = -1

    def __enter__(self) -> XenstoreClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the request/reply engine ---------------------------------------------------------------
    def request(self, msg_type: int, payload: bytes, tx_id: int = 0, *,
                path: str | None = None) -> bytes:
        """Send one request and return the reply payload; XenstoreError on an ERROR reply."""
        if self._lost is not None:
            raise XenstoreConnectionLost(self._lost, path, wire.type_name(msg_type))
        if len(payload) > wire.PAYLOAD_MAX:
            raise XenstoreError("E2BIG", path, wire.type_name(msg_type),
                                f"request of {len(payload)} bytes is over the "
                                f"{wire.PAYLOAD_MAX}-byte limit")
        self._req_id = req_id = (self._req_id + 1) & 0xFFFFFFFF
        try:
            self.transport.send(wire.encode(msg_type, req_id, tx_id, payload))
        except OSError as exc:
            self._lose(f"connection lost: {exc.strerror or exc}")
            raise XenstoreConnectionLost(self._lost or "", path, wire.type_name(msg_type)) from None
        while True:
            msg = self._next_message()
            if msg is None:
                self._fill(self.timeout, path, msg_type)
                continue
            if msg.type == T.WATCH_EVENT:
                self._queue_event(msg.payload)
                continue
            if msg.req_id != req_id:
                continue  # a late answer to a request that timed out: drop it
            if self._decoder.buffered:
                self._drain_events()
            if msg.type == T.ERROR:
                raise XenstoreError(wire.parse_error(msg.payload), path, wire.type_name(msg_type))
            return msg.payload

    def _drain_events(self) -> None:
        """Queue events already read with a reply (so the eventfd tells a select loop)."""
        while (msg := self._next_message()) is not None:
            if msg.type == T.WATCH_EVENT:
                self._queue_event(msg.payload)

    def _fill(self, timeout: float | None, path: str | None = None, msg_type: int = 0) -> bool:
        """Read what the daemon sent; False if nothing came within ``timeout``."""
        ms = -1 if timeout is None else max(0, int(timeout * 1000))
        if not self._poll.poll(ms):
            if msg_type:
                self._lose(f"no reply within {timeout:g}s")
                raise XenstoreConnectionLost(self._lost or "", path, wire.type_name(msg_type))
            return False
        try:
            data = self.transport.recv()
        except OSError as exc:
            data = b""
            reason = f"connection lost: {exc.strerror or exc}"
        else:
            reason = "connection closed by the daemon"
        if not data:
            self._lose(reason)
            raise XenstoreConnectionLost(reason, path, wire.type_name(msg_type) if msg_type else None)
        self._decoder.feed(data)
        return True

    def _next_message(self) -> wire.Message | None:
        try:
            return self._decoder.next_message()
        except wire.ProtocolError as exc:
            self._lose(f"protocol error from the daemon: {exc}")
            raise XenstoreConnectionLost(self._lost or "") from None

    def _lose(self, reason: str) -> None:
        self._lost = reason

    # -- watch events ---------------------------------------------------------------------------
    def _queue_event(self, payload: bytes) -> None:
        try:
            event = WatchEvent(*wire.parse_watch_event(payload))
        except wire.ProtocolError:
            return
        queued = self._queued
        if event in queued:
            return  # the same event is still waiting: coalesce
        if len(self._events) >= self.max_events:
            self.dropped_events += 1
            if self._events[-1].path != EVENTS_DROPPED:
                marker = WatchEvent(EVENTS_DROPPED, event.token)
                dropped = self._events.pop()  # make room for the marker
                queued.discard(dropped)
                self.dropped_events += 1
                self._events.append(marker)
                queued.add(marker)
            return
        if not self._events and self._eventfd >= 0:
            os.eventfd_write(self._eventfd, 1)
        self._events.append(event)
        queued.add(event)

    def fileno(self) -> int:
        """A descriptor that is readable whenever :meth:`next_event` has something to give."""
        if self._epoll is None:
            self._eventfd = os.eventfd(1 if self._events else 0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            self._epoll = select.epoll()
            self._epoll.register(self.transport.fd, select.EPOLLIN)
            self._epoll.register(self._eventfd, select.EPOLLIN)
        return self._epoll.fileno()

    def next_event(self, timeout: float | None = None) -> WatchEvent | None:
        """The next watch event, waiting up to ``timeout`` seconds (None: forever, 0: poll)."""
        import time

        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._events:
                event = self._events.popleft()
                self._queued.discard(event)
                if not self._events and self._eventfd >= 0:
                    try:
                        os.eventfd_read(self._eventfd)
                    except BlockingIOError:
                        pass
                return event
            msg = self._next_message()
            if msg is not None:
                if msg.type == T.WATCH_EVENT:
                    self._queue_event(msg.payload)
                continue  # a stray reply (late answer to a timed-out request)
            if self._lost is not None:
                raise XenstoreConnectionLost(self._lost)
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not self._fill(remaining) and remaining is not None:
                if deadline is not None and time.monotonic() >= deadline:
                    return None

    def pending_events(self) -> int:
        return len(self._events)

    def buffered(self) -> int:
        """Bytes read from the daemon and not yet parsed (a watch event may be among them)."""
        return self._decoder.buffered

    def watch(self, path: str, token: str) -> None:
        self.request(T.WATCH, wire.args(path, token), path=path)

    def unwatch(self, path: str, token: str) -> None:
        self.request(T.UNWATCH, wire.args(path, token), path=path)

    def reset_watches(self) -> None:
        self.request(T.RESET_WATCHES, b"")
        self._events.clear()
        self._queued.clear()

    # -- node operations (tx_id 0 = outside any transaction) ------------------------------------
    def read(self, path: str, tx_id: int = 0) -> bytes:
        return self.request(T.READ, path.encode() + b"\0", tx_id, path=path)

    def write(self, path: str, value: bytes | str, tx_id: int = 0) -> None:
        self.request(T.WRITE, wire.write_payload(path, value), tx_id, path=path)

    def mkdir(self, path: str, tx_id: int = 0) -> None:
        self.request(T.MKDIR, path.encode() + b"\0", tx_id, path=path)

    def rm(self, path: str, tx_id: int = 0) -> None:
        self.request(T.RM, path.encode() + b"\0", tx_id, path=path)

    def exists(self, path: str, tx_id: int = 0) -> bool:
        try:
            self.read(path, tx_id)
        except XenstoreError as exc:
            if exc.errno_name == "ENOENT":
                return False
            raise
        return True

    def directory(self, path: str, tx_id: int = 0) -> list[str]:
        """Children names; falls back to DIRECTORY_PART when the list is over one message."""
        try:
            return wire.split_strings(self.request(T.DIRECTORY, path.encode() + b"\0", tx_id,
                                                   path=path))
        except XenstoreError as exc:
            if exc.errno_name != "E2BIG":
                raise
        return self.directory_part(path, tx_id)

    def directory_part(self, path: str, tx_id: int = 0, *, attempts: int = 8) -> list[str]:
        """The whole child list in chunks, restarting if the node changes in between."""
        for _ in range(attempts):
            children: list[str] = []
            generation: str | None = None
            offset = 0
            while True:
                reply = self.request(T.DIRECTORY_PART, wire.args(path, str(offset)), tx_id,
                                     path=path)
                gen, chunk, last = wire.parse_directory_part(reply)
                if generation is None:
                    generation = gen
                elif gen != generation:
                    break  # changed under us: start again
                children.extend(chunk)
                offset += sum(len(c.encode("utf-8", "surrogateescape")) + 1 for c in chunk)
                if last:
                    return children
                if not chunk:
                    raise XenstoreConnectionLost("DIRECTORY_PART made no progress", path)
        raise XenstoreError("EAGAIN", path, "DIRECTORY_PART", "directory kept changing")

    def get_perms(self, path: str, tx_id: int = 0) -> list[Perm]:
        return wire.parse_perms(self.request(T.GET_PERMS, path.encode() + b"\0", tx_id, path=path))

    def set_perms(self, path: str, perms: list[Perm] | tuple[Perm, ...], tx_id: int = 0) -> None:
        perms = [p if isinstance(p, Perm) else Perm.parse(str(p)) for p in perms]
        if not perms:
            raise XenstoreError("EINVAL", path, "SET_PERMS", "at least the owner entry is needed")
        self.request(T.SET_PERMS, path.encode() + b"\0" + wire.perms_payload(perms), tx_id,
                     path=path)

    # -- domains --------------------------------------------------------------------------------
    def get_domain_path(self, domid: int) -> str:
        return wire.split_strings(self.request(T.GET_DOMAIN_PATH, wire.args(str(domid))))[0]

    def introduce(self, domid: int, mfn: int, port: int) -> None:
        self.request(T.INTRODUCE, wire.args(str(domid), str(mfn), str(port)))

    def release(self, domid: int) -> None:
        self.request(T.RELEASE, wire.args(str(domid)))

    def is_domain_introduced(self, domid: int) -> bool:
        return self.request(T.IS_DOMAIN_INTRODUCED, wire.args(str(domid))).startswith(b"T")

    def set_target(self, domid: int, target: int) -> None:
        self.request(T.SET_TARGET, wire.args(str(domid), str(target)))

    def resume(self, domid: int) -> None:
        self.request(T.RESUME, wire.args(str(domid)))

    # -- transactions ---------------------------------------------------------------------------
    def transaction_start(self) -> int:
        reply = self.request(T.TRANSACTION_START, b"\0")
        return int(reply.rstrip(b"\0") or b"0")

    def transaction_end(self, tx_id: int, commit: bool = True) -> None:
        self.request(T.TRANSACTION_END, b"T\0" if commit else b"F\0", tx_id)

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """One attempt: commit on a clean exit, abort on an exception. EAGAIN at commit raises."""
        tx = Transaction(self, self.transaction_start())
        try:
            yield tx
        except BaseException:
            if self._lost is None:
                try:
                    self.transaction_end(tx.tx_id, commit=False)
                except XenstoreError:
                    pass
            raise
        self.transaction_end(tx.tx_id, commit=True)

    def transact(self, fn: Callable[[Transaction], R], *, retries: int = DEFAULT_RETRIES) -> R:
        """Run ``fn(tx)`` in a fresh transaction until it commits (EAGAIN: again, ``retries`` times)."""
        import time

        attempt = 0
        while True:
            try:
                with self.transaction() as tx:
                    result = fn(tx)
                return result
            except XenstoreError as exc:
                if exc.errno_name != "EAGAIN" or isinstance(exc, XenstoreConnectionLost) \
                        or attempt >= retries:
                    raise
            attempt += 1
            time.sleep(min(0.001 * (2 ** attempt), 0.05))


class Transaction:
    """The node operations, bound to one transaction id."""

    __slots__ = ("client", "tx_id")

    def __init__(self, client: XenstoreClient, tx_id: int) -> None:
        self.client = client
        self.tx_id = tx_id

    def read(self, path: str) -> bytes:
        return self.client.read(path, self.tx_id)

    def write(self, path: str, value: bytes | str) -> None:
        self.client.write(path, value, self.tx_id)

    def mkdir(self, path: str) -> None:
        self.client.mkdir(path, self.tx_id)

    def rm(self, path: str) -> None:
        self.client.rm(path, self.tx_id)

    def exists(self, path: str) -> bool:
        return self.client.exists(path, self.tx_id)

    def directory(self, path: str) -> list[str]:
        return self.client.directory(path, self.tx_id)

    def get_perms(self, path: str) -> list[Perm]:
        return self.client.get_perms(path, self.tx_id)

    def set_perms(self, path: str, perms: list[Perm] | tuple[Perm, ...]) -> None:
        self.client.set_perms(path, perms, self.tx_id)


def connect(path: str | None = None, *, timeout: float | None = DEFAULT_TIMEOUT) -> XenstoreClient:
    """Connect to ``path`` (socket or xenbus device), or discover the daemon as libxenstore does."""
    if path is not None:
        return XenstoreClient._open(path, timeout=timeout)
    try:
        transport = discover()
    except OSError as exc:
        raise XenstoreUnavailable(exc.strerror or str(exc)) from None
    return XenstoreClient(transport, timeout=timeout)

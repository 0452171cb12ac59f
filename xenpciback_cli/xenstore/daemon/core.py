"""The embedded xenstored's brain: requests in, frames out, per connection. No sockets here.

``Core.handle(conn, message)`` applies one request and returns nothing; the frames to send are
appended to each affected connection's ``outbox`` (the edge writes them), and domain lifecycle
changes go to :attr:`Core.actions` (the edge opens or closes per-domain sockets).

Ordering follows C xenstored, which clients are tested against: a WATCH_EVENT caused by a
request goes out *before* that request's reply on the same connection, except for WATCH (reply,
then the initial event) and RELEASE (reply, then @releaseDomain).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from xenpciback_cli.xenstore import wire
from xenpciback_cli.xenstore.daemon.store import (Node, Store, StoreError, Tree, TxView,
                                                   can_read, canonical, is_under, parent_of)
from xenpciback_cli.xenstore.wire import REL_PATH_MAX, Message, Perm
from xenpciback_cli.xenstore.wire import MessageType as T
from xenpciback_cli.untrusted import decimal

SPECIAL_WATCHES = ("@introduceDomain", "@releaseDomain")
_encode = wire.encode


@dataclass
class Quotas:
    """Limits for unprivileged domains (dom0 is exempt, as in C xenstored 4.17, whose defaults
    these are, except the connection limits: C serves a guest on one ring, we on a socket)."""

    max_nodes: int = 1000  # nodes a domain may own, pending transactions included
    max_value: int = 2048  # bytes in one value
    max_watches: int = 128  # per domain, over all its connections
    max_transactions: int = 10  # open at once, per connection
    max_tx_nodes: int = 1024  # nodes one transaction may touch
    max_perms: int = 5  # entries in one node's permission list
    max_connections: int = 16  # per guest domain
    max_connections_total: int = 1024  # every connection, dom0's included


@dataclass(eq=False)
class Watch:
    given: str  # the path as the client wrote it (events are reported relative to it)
    path: str  # absolute path, or a special @name
    token: str


@dataclass(eq=False)
class Connection:
    id: int
    domid: int
    outbox: list[bytes] = field(default_factory=list)
    watches: list[Watch] = field(default_factory=list)
    transactions: dict[int, TxView] = field(default_factory=dict)
    next_tx: int = 1
    closed: bool = False

    @property
    def prefix(self) -> str:
        return f"/local/domain/{self.domid}/"


@dataclass
class Domain:
    domid: int
    mfn: int
    port: int


class Core:
    """All state of the daemon: the store, connections, introduced domains."""

    def __init__(self, quotas: Quotas | None = None) -> None:
        self.store = Store()
        self.quotas = quotas or Quotas()
        self.connections: dict[int, Connection] = {}
        self.domains: dict[int, Domain] = {0: Domain(0, 0, 0)}
        self.actions: list[tuple[str, int]] = []  # ("introduced"|"released", domid)
        self.dirty: set[Connection] = set()  # connections with frames waiting in their outbox
        self.internal_errors: list[str] = []  # tracebacks of our own bugs, for the edge to log
        self.by_domain: dict[int, set[Connection]] = {}  # domid -> its open connections
        self.watch_count: dict[int, int] = {}  # domid -> watches over all its connections
        # Who receives @introduceDomain / @releaseDomain (dom0 may change it, as in C).
        self.special_perms: dict[str, tuple[Perm, ...]] = {
            name: (Perm(0, "n"),) for name in SPECIAL_WATCHES}
        self._next_conn = 1
        tree = Tree(self.store, 0)
        tree.write("/tool/xenstored", b"")
        self._dispatch: dict[int, Callable[[Connection, Message, TxView | None], bytes]] = {
            T.READ: self._read, T.WRITE: self._write, T.DIRECTORY: self._directory,
            T.DIRECTORY_PART: self._directory_part, T.MKDIR: self._mkdir, T.RM: self._rm,
            T.GET_PERMS: self._get_perms, T.SET_PERMS: self._set_perms,
            T.WATCH: self._watch, T.UNWATCH: self._unwatch,
            T.TRANSACTION_START: self._tx_start, T.TRANSACTION_END: self._tx_end,
            T.INTRODUCE: self._introduce, T.RELEASE: self._release,
            T.GET_DOMAIN_PATH: self._get_domain_path,
            T.IS_DOMAIN_INTRODUCED: self._is_introduced, T.RESUME: self._resume,
            T.SET_TARGET: self._set_target, T.RESET_WATCHES: self._reset_watches,
        }

    def _send(self, conn: Connection, frame: bytes) -> None:
        conn.outbox.append(frame)
        self.dirty.add(conn)

    # -- connections ----------------------------------------------------------------------------
    def may_connect(self, domid: int) -> bool:
        """Whether one more connection for ``domid`` is within the connection limits."""
        if len(self.connections) >= self.quotas.max_connections_total:
            return False
        return domid == 0 or len(self.by_domain.get(domid, ())) < self.quotas.max_connections

    def connect(self, domid: int = 0) -> Connection:
        conn = Connection(self._next_conn, domid)
        self._next_conn += 1
        self.connections[conn.id] = conn
        self.by_domain.setdefault(domid, set()).add(conn)
        return conn

    def disconnect(self, conn: Connection) -> None:
        if conn.closed:
            return
        conn.closed = True
        self.dirty.discard(conn)
        conn.transactions.clear()
        self._drop_watches(conn)
        self.connections.pop(conn.id, None)
        peers = self.by_domain.get(conn.domid)
        if peers is not None:
            peers.discard(conn)
            if not peers:
                del self.by_domain[conn.domid]

    def _drop_watches(self, conn: Connection) -> None:
        if conn.watches:
            self.watch_count[conn.domid] = self.watch_count.get(conn.domid, 0) - len(conn.watches)
            conn.watches.clear()

    # -- the one entry point --------------------------------------------------------------------
    def handle(self, conn: Connection, msg: Message) -> None:
        self._after: list[str] = []
        handler = self._dispatch.get(msg.type)
        try:
            if handler is None:
                raise StoreError("EINVAL" if msg.type == T.CONTROL else "ENOSYS")
            tx = None
            if msg.tx_id and msg.type != T.TRANSACTION_START:
                tx = conn.transactions.get(msg.tx_id)
                if tx is None:
                    raise StoreError("ENOENT")
            body = handler(conn, msg, tx)
        except _Done:
            return
        except StoreError as exc:
            self._send(conn, _encode(T.ERROR, msg.req_id, msg.tx_id, exc.name.encode() + b"\0"))
            return
        except Exception:  # a bug of ours must not take the daemon (and every guest) down
            import traceback

            self.internal_errors.append(traceback.format_exc())
            self._send(conn, _encode(T.ERROR, msg.req_id, msg.tx_id, b"EIO\0"))
            return
        self._send(conn, _encode(msg.type, msg.req_id, msg.tx_id, body))
        for path in self._after:
            self.fire(path, True)

    # -- argument helpers -----------------------------------------------------------------------
    @staticmethod
    def _one_arg(payload: bytes) -> str:
        """Exactly one NUL-terminated string, else EINVAL (as C xenstored)."""
        if not payload.endswith(b"\0") or b"\0" in payload[:-1]:
            raise StoreError("EINVAL")
        return payload[:-1].decode("utf-8", "surrogateescape")

    @staticmethod
    def _args(payload: bytes, count: int) -> list[str]:
        parts = payload.split(b"\0")
        if len(parts) < count + 1:
            raise StoreError("EINVAL")
        return [p.decode("utf-8", "surrogateescape") for p in parts[:count]]

    @staticmethod
    def _domid(text: str) -> int:
        value = decimal(text, max_digits=5)
        if value is None or value > 0x7FEF:
            raise StoreError("EINVAL")
        return value

    def _tree(self, conn: Connection, tx: TxView | None) -> Tree:
        budget = None
        if conn.domid != 0:
            budget = self.quotas.max_nodes - self.store.owned_by(conn.domid) \
                - self._pending_nodes(conn.domid)
        return Tree(tx if tx is not None else self.store, conn.domid, budget)

    def _pending_nodes(self, domid: int) -> int:
        """Nodes ``domid``'s open transactions would add if they all committed."""
        pending = 0
        for conn in self.by_domain.get(domid, ()):
            for tx in conn.transactions.values():
                gained = tx.delta.get(domid, 0)
                if gained > 0:
                    pending += gained
        return pending

    def _path(self, conn: Connection, text: str) -> str:
        return canonical(conn.domid, text)

    # -- node requests --------------------------------------------------------------------------
    def _read(self, conn: Connection, msg: Message, tx: TxView | None) -> bytes:
        return self._tree(conn, tx).read(self._path(conn, self._one_arg(msg.payload)))

    def _directory(self, conn: Connection, msg: Message, tx: TxView | None) -> bytes:
        node = self._tree(conn, tx).children(self._path(conn, self._one_arg(msg.payload)))
        body = b"".join(c.encode("utf-8", "surrogateescape") + b"\0" for c in node.children)
        if len(body) > wire.PAYLOAD_MAX:
            raise StoreError("E2BIG")
        return body

    def _directory_part(self, conn: Connection, msg: Message, tx: TxView | None) -> bytes:
        path_text, offset_text = self._args(msg.payload, 2)
        off = self._atoi(offset_text)  # C: atoi into an unsigned: "abc" is 0, "-1" past the end
        node = self._tree(conn, tx).children(self._path(conn, path_text))
        blob = b"".join(c.encode("utf-8", "surrogateescape") + b"\0" for c in node.children)
        gen = str(node.gen).encode() + b"\0"
        if off >= len(blob):
            return gen + b"\0"
        room = wire.PAYLOAD_MAX - len(gen) - 1
        end = off
        while end < len(blob):
            nxt = blob.index(b"\0", end) + 1
            if nxt - off > room:
                break
            end = nxt
        chunk = blob[off:end]
        return gen + chunk + (b"\0" if end == len(blob) else b"")

    def _check_value_quota(self, conn: Connection, value: bytes) -> None:
        if conn.domid != 0 and len(value) > self.quotas.max_value:
            raise StoreError("ENOSPC")

    def _write(self, conn: Connection, msg: Message, tx: TxView | None) -> bytes:
        path_b, sep, value = msg.payload.partition(b"\0")
        if not sep:
            raise StoreError("EINVAL")
        path = self._path(conn, path_b.decode("utf-8", "surrogateescape"))
        self._check_value_quota(conn, value)
        self._tree(conn, tx).write(path, value)
        self._changed(tx, path, False)
        return wire.OK

    def _mkdir(self, conn: Connection, msg: Message, tx: TxView | None) -> bytes:
        path = self._path(conn, self._one_arg(msg.payload))
        if self._tree(conn, tx).mkdir(path) >= 0:
            self._changed(tx, path, False)
        return wire.OK

    def _rm(self, conn: Connection, msg: Message, tx: TxView | None) -> bytes:
        path = self._path(conn, self._one_arg(msg.payload))
        removed = self._tree(conn, tx).rm(path)
        if removed is not None:
            for p in removed[:-1]:
                self._changed(tx, p, True)
            self._changed(tx, path, False)
        return wire.OK

    def _get_perms(self, conn: Connection, msg: Message, tx: TxView | None) -> bytes:
        perms = self._tree(conn, tx).get_perms(self._path(conn, self._one_arg(msg.payload)))
        return wire.perms_payload(perms)

    def _set_perms(self, conn: Connection, msg: Message, tx: TxView | None) -> bytes:
        parts = msg.payload.split(b"\0")
        if len(parts) < 3 or parts[-1] != b"":
            raise StoreError("EINVAL")
        if conn.domid != 0 and len(parts) - 2 > self.quotas.max_perms:
            raise StoreError("ENOSPC")
        try:
            perms = tuple(Perm.parse(p.decode("ascii")) for p in parts[1:-1])
        except (ValueError, UnicodeDecodeError):
            raise StoreError("EINVAL") from None
        name = parts[0].decode("utf-8", "surrogateescape")
        if name.startswith("@"):
            if name not in self.special_perms:
                raise StoreError("EINVAL")
            if conn.domid != 0 and self.special_perms[name][0].domid != conn.domid:
                raise StoreError("EACCES")
            self.special_perms[name] = perms
            return wire.OK
        path = self._path(conn, name)
        self._tree(conn, tx).set_perms(path, perms)
        self._changed(tx, path, False)
        return wire.OK

    def _changed(self, tx: TxView | None, path: str, exact: bool) -> None:
        if tx is not None:
            tx.events.append((path, exact))
        else:
            self.fire(path, exact)

    # -- watches --------------------------------------------------------------------------------
    def _watch(self, conn: Connection, msg: Message, tx: TxView | None) -> bytes:
        given, token = self._args(msg.payload, 2)
        path = self._watch_path(conn, given)
        if any(w.path == path and w.token == token for w in conn.watches):
            raise StoreError("EEXIST")
        if conn.domid != 0 and self.watch_count.get(conn.domid, 0) >= self.quotas.max_watches:
            raise StoreError("E2BIG")
        watch = Watch(given, path, token)
        conn.watches.append(watch)
        self.watch_count[conn.domid] = self.watch_count.get(conn.domid, 0) + 1
        self._send(conn, _encode(T.WATCH, msg.req_id, msg.tx_id, wire.OK))
        self._send(conn, _encode(T.WATCH_EVENT, 0, 0, wire.args(given, token)))
        raise _Done

    def _watch_path(self, conn: Connection, given: str) -> str:
        if given.startswith("@"):
            if len(given) > REL_PATH_MAX:
                raise StoreError("EINVAL")
            return given
        return self._path(conn, given)

    def _unwatch(self, conn: Connection, msg: Message, tx: TxView | None) -> bytes:
        given, token = self._args(msg.payload, 2)
        path = self._watch_path(conn, given)
        for w in conn.watches:
            if w.path == path and w.token == token:
                conn.watches.remove(w)
                self.watch_count[conn.domid] -= 1
                return wire.OK
        raise StoreError("ENOENT")

    def _reset_watches(self, conn: Connection, msg: Message, tx: TxView | None) -> bytes:
        self._drop_watches(conn)
        return wire.OK

    def fire(self, path: str, exact: bool = False) -> None:
        """Queue a WATCH_EVENT on every connection watching ``path`` (or, unless exact, above it)."""
        special = path.startswith("@")
        for conn in self.connections.values():
            sent: set[bytes] = set()  # one event per (path, token), as C xenstored
            for w in conn.watches:
                hit = (w.path == path) if (exact or special) else is_under(path, w.path)
                if not hit or not self._may_see(conn, path, special):
                    continue
                shown = path
                if not special and w.given[:1] != "/" and path.startswith(conn.prefix):
                    shown = path[len(conn.prefix):]
                body = wire.args(shown, w.token)
                if body not in sent:
                    sent.add(body)
                    self._send(conn, _encode(T.WATCH_EVENT, 0, 0, body))

    def _may_see(self, conn: Connection, path: str, special: bool) -> bool:
        if conn.domid == 0:
            return True
        if special:
            perms = self.special_perms.get(path)
            return perms is not None and can_read(conn.domid, perms)
        node = self.store.get(path) or self.store.get(parent_of(path))
        return node is not None and can_read(conn.domid, node.perms)

    # -- transactions ---------------------------------------------------------------------------
    def _tx_start(self, conn: Connection, msg: Message, tx: TxView | None) -> bytes:
        if msg.tx_id:
            raise StoreError("EBUSY")
        if conn.domid != 0 and len(conn.transactions) >= self.quotas.max_transactions:
            raise StoreError("ENOSPC")
        tx_id = conn.next_tx
        conn.next_tx += 1
        conn.transactions[tx_id] = TxView(
            self.store, None if conn.domid == 0 else self.quotas.max_tx_nodes)
        return str(tx_id).encode() + b"\0"

    def _tx_end(self, conn: Connection, msg: Message, tx: TxView | None) -> bytes:
        arg = self._one_arg(msg.payload) if msg.payload.endswith(b"\0") else None
        if arg not in ("T", "F"):
            raise StoreError("EINVAL")
        if tx is None:
            raise StoreError("ENOENT")
        del conn.transactions[msg.tx_id]
        if arg == "T":
            gained = tx.delta.get(conn.domid, 0)
            if conn.domid != 0 and gained > 0 \
                    and self.store.owned_by(conn.domid) + gained > self.quotas.max_nodes:
                raise StoreError("ENOSPC")  # checked again at commit, as C xenstored does
            if tx.conflicts():
                raise StoreError("EAGAIN")
            tx.apply()
            for path, exact in tx.events:
                self.fire(path, exact)
        return wire.OK

    # -- domains --------------------------------------------------------------------------------
    def _introduce(self, conn: Connection, msg: Message, tx: TxView | None) -> bytes:
        if conn.domid != 0:
            raise StoreError("EACCES")
        domid_t, _mfn, port_t = self._args(msg.payload, 3)
        domid, port = self._atoi(domid_t), self._atoi(port_t, signed=True)  # C: atoi
        if port <= 0 or domid > 0x7FEF:
            raise StoreError("EINVAL")
        mfn = decimal(_mfn) or 0
        if domid in self.domains:
            return wire.OK  # already introduced: no event (C xenstored)
        self.domains[domid] = Domain(domid, mfn, port)
        self.actions.append(("introduced", domid))
        self.fire("@introduceDomain", True)
        return wire.OK

    def _release(self, conn: Connection, msg: Message, tx: TxView | None) -> bytes:
        if conn.domid != 0:
            raise StoreError("EACCES")
        domid = self._domid(self._one_arg(msg.payload))
        if domid == 0:
            raise StoreError("EINVAL")
        if domid not in self.domains:
            raise StoreError("ENOENT")
        removals = self._orphans(domid)  # planned first: nothing changes if this fails
        store = self.store
        snapshot = (dict(store.nodes), dict(store.owned), store.generation)
        try:
            for top, removed in removals:
                for p in removed:
                    store.delete(p)
                parent_path = parent_of(top)
                parent = store.nodes[parent_path]
                name = top[len(parent_path):].lstrip("/")
                store.put(parent_path, Node(parent.value, parent.perms,
                                            tuple(c for c in parent.children if c != name)))
        except BaseException:
            store.nodes, store.owned, store.generation = snapshot
            raise
        del self.domains[domid]
        self.actions.append(("released", domid))
        for other in list(self.by_domain.get(domid, ())):
            self.disconnect(other)
        for top, removed in removals:
            for p in removed[:-1]:
                self.fire(p, True)
            self.fire(top, False)
        self._after.append("@releaseDomain")  # after the reply, as C xenstored
        return wire.OK

    def _orphans(self, domid: int) -> list[tuple[str, list[str]]]:
        """The subtrees the released domain owns (C xenstored deletes them): each top path
        with its nodes deepest first. An iterative walk; changes nothing."""
        nodes = self.store.nodes
        tree = Tree(self.store, 0)
        found: list[tuple[str, list[str]]] = []
        stack = ["/"]
        while stack:
            path = stack.pop()
            node = nodes.get(path)
            if node is None:
                continue
            if path != "/" and node.perms[0].domid == domid:
                found.append((path, tree.subtree(path, node)))
                continue
            prefix = "/" if path == "/" else path + "/"
            stack.extend(prefix + c for c in reversed(node.children))
        return found

    @staticmethod
    def _atoi(text: str, signed: bool = False) -> int:
        """C xenstored reads these numbers with atoi (leading sign and digits, else 0), mostly
        into an unsigned int: "-1" is then 4294967295."""
        digits = re.match(r"\s*([-+]?[0-9]{1,10})", text)
        value = int(digits.group(1)) if digits else 0
        return value if signed else value & 0xFFFFFFFF

    def _get_domain_path(self, conn: Connection, msg: Message, tx: TxView | None) -> bytes:
        domid = self._atoi(self._one_arg(msg.payload))
        return f"/local/domain/{domid}\0".encode()

    def _is_introduced(self, conn: Connection, msg: Message, tx: TxView | None) -> bytes:
        domid = self._atoi(self._one_arg(msg.payload))
        return b"T\0" if domid in self.domains else b"F\0"

    def _resume(self, conn: Connection, msg: Message, tx: TxView | None) -> bytes:
        if conn.domid != 0:
            raise StoreError("EACCES")
        if self._domid(self._one_arg(msg.payload)) not in self.domains:
            raise StoreError("ENOENT")
        return wire.OK

    def _set_target(self, conn: Connection, msg: Message, tx: TxView | None) -> bytes:
        if conn.domid != 0:
            raise StoreError("EACCES")
        domid_t, target_t = self._args(msg.payload, 2)
        domid, target = self._domid(domid_t), self._domid(target_t)
        if domid not in self.domains or target not in self.domains:
            raise StoreError("ENOENT")
        return wire.OK


class _Done(StoreError):
    """A handler queued its own reply (WATCH)."""

    def __init__(self) -> None:
        super().__init__("")

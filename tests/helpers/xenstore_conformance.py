"""Request/response scripts run byte for byte against every xenstore daemon.

Each script is a list of :class:`Step`: a raw request sent on a named connection, the reply
it must get (what Debian's real C xenstored answers), and the watch events each connection must
receive because of it. ``alt`` records where oxenstored answers differently; those cases are
listed in docs/xenstore-differences.md (generated from the same data by :func:`differences`).

Events on *other* connections are collected deterministically: after each step, every other
connection sends a GET_DOMAIN_PATH and everything that arrives before its reply is counted
(each daemon is single-threaded and keeps per-connection order, so no sleeps are needed).
"""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass, field

from xenpciback_cli.xenstore import wire
from xenpciback_cli.xenstore.wire import MessageType as T


@dataclass(frozen=True)
class Err:
    name: str

    def __repr__(self) -> str:
        return f"Err({self.name})"


@dataclass(frozen=True)
class Like:
    """A reply payload matching a regular expression (transaction ids, generations)."""

    pattern: bytes

    def matches(self, payload: bytes) -> bool:
        return re.fullmatch(self.pattern, payload, re.S) is not None

    def __repr__(self) -> str:
        return f"Like({self.pattern!r})"


@dataclass(frozen=True)
class OneOf:
    """Any of these replies (where the real daemon's answer is not deterministic)."""

    options: tuple

    def __repr__(self) -> str:
        return " or ".join(repr(o) for o in self.options)


OK = b"OK\0"
TXID = Like(rb"[1-9][0-9]*\0")
Reply = bytes | Err | Like | OneOf
REPLY_FIRST = {T.WATCH, T.RELEASE}  # C xenstored sends these replies before the events


@dataclass
class Step:
    conn: str
    op: str
    payload: bytes
    reply: Reply
    events: dict[str, list[bytes]] = field(default_factory=dict)
    tx: str | None = None  # send inside the transaction saved under this name
    save_tx: str | None = None  # TRANSACTION_START: remember the id under this name
    alt: dict[str, Reply] = field(default_factory=dict)  # kind -> its (documented) answer
    alt_events: dict[str, dict[str, list[bytes]]] = field(default_factory=dict)  # kind -> events
    sorted_reply: bool = False  # compare DIRECTORY-like replies as sets (oxenstored sorts)
    note: str = ""


def ev(path: str, token: str) -> bytes:
    return wire.args(path, token)


def S(conn: str, op: str, payload: bytes | str, reply: Reply, **kw: object) -> Step:
    if isinstance(payload, str):
        payload = payload.encode()
    return Step(conn, op, payload, reply, **kw)  # type: ignore[arg-type]


SCRIPTS: dict[str, list[Step]] = {
    "read_write": [
        S("a", "WRITE", "/rw/x\0hello", OK),
        S("a", "READ", "/rw/x\0", b"hello"),
        S("a", "WRITE", b"/rw/bin\0\0\x01\xff\0", OK),
        S("a", "READ", "/rw/bin\0", b"\0\x01\xff\0"),
        S("a", "WRITE", "/rw/empty\0", OK),
        S("a", "READ", "/rw/empty\0", b""),
        S("a", "READ", "/rw\0", b""),
        S("a", "DIRECTORY", "/rw\0", b"x\0bin\0empty\0", sorted_reply=True),
        S("a", "WRITE", "/rw/x\0again", OK),
        S("a", "READ", "/rw/x\0", b"again"),
        S("a", "MKDIR", "/rw/d/e\0", OK),
        S("a", "READ", "/rw/d/e\0", b""),
        S("a", "MKDIR", "/rw/d\0", OK, note="MKDIR of an existing node"),
        S("a", "DIRECTORY", "/rw/d\0", b"e\0"),
        S("a", "RM", "/rw/d\0", OK),
        S("a", "READ", "/rw/d/e\0", Err("ENOENT")),
        S("a", "RM", "/rw/nothing\0", OK, note="RM of a missing leaf whose parent exists"),
        S("a", "RM", "/rw/no/thing\0", Err("ENOENT")),
        S("a", "DIRECTORY", "/\0", b"tool\0rw\0", sorted_reply=True,
          alt={"oxenstored": Like(rb"(?:[@a-z]+[A-Za-z]*\0)+")},
          note="oxenstored's fresh tree also has /local, @introduceDomain, @releaseDomain"),
        S("a", "READ", "/tool/xenstored\0", b"",
          alt={"oxenstored": Like(rb"/.*oxenstored")},
          note="oxenstored stores its own binary path in /tool/xenstored"),
        S("a", "WRITE", "relative/x\0r", OK, note="dom0's relative paths are under /local/domain/0"),
        S("a", "READ", "/local/domain/0/relative/x\0", b"r"),
        S("a", "READ", "relative/x\0", b"r"),
    ],
    "errors": [
        S("a", "READ", "/err/missing\0", Err("ENOENT")),
        S("a", "DIRECTORY", "/err/missing\0", Err("ENOENT")),
        S("a", "GET_PERMS", "/err/missing\0", Err("ENOENT")),
        S("a", "READ", "/err/bad//path\0", Err("EINVAL")),
        S("a", "READ", "/err/trailing/\0", Err("EINVAL")),
        S("a", "READ", "/err/bad char\0", Err("EINVAL")),
        S("a", "WRITE", "/err/x*y\0v", Err("EINVAL")),
        S("a", "READ", "/err/nonul", OneOf((Err("EINVAL"), Err("ENOENT"))),
          note="READ whose path lacks its NUL (C xenstored reads past the payload: its answer "
               "depends on leftover buffer bytes, and random sequences of such requests crashed "
               "it; ours and oxenstored answer EINVAL)"),
        S("a", "WRITE", "/err/no-separator", Err("EINVAL")),
        S("a", "GET_DOMAIN_PATH", "abc\0", b"/local/domain/0\0",
          note="a domain id that is not a number (C reads it with atoi)"),
        S("a", "IS_DOMAIN_INTRODUCED", "abc\0", b"T\0", alt={"oxenstored": Err("EINVAL")},
          note="IS_DOMAIN_INTRODUCED with a domain id that is not a number"),
        S("a", "TRANSACTION_END", "T\0", Err("ENOENT"), tx="bogus",
          alt={"oxenstored": Err("EIO")}, note="TRANSACTION_END on an unknown transaction"),
        S("a", "READ", "/tool\0", Err("ENOENT"), tx="bogus",
          alt={"oxenstored": Err("EIO")}, note="a request inside an unknown transaction"),
        S("a", "UNWATCH", "/err\0nosuch\0", Err("ENOENT")),
        S("a", "SET_PERMS", "/tool\0x9\0", Err("EINVAL")),
        S("a", "READ", "/tool/xenstored\0", Like(rb".*"), note="the connection still works"),
        S("a", "RM", "/\0", Err("EINVAL"), alt={"oxenstored": OK},
          note="RM of the root node (oxenstored empties the store)"),
    ],
    "permissions": [
        S("a", "WRITE", "/perm/n\0v", OK),
        S("a", "GET_PERMS", "/perm/n\0", b"n0\0"),
        S("a", "SET_PERMS", "/perm/n\0b5\0r7\0w9\0", OK),
        S("a", "GET_PERMS", "/perm/n\0", b"b5\0r7\0w9\0"),
        S("a", "READ", "/perm/n\0", b"v", note="dom0 may read whatever the owner"),
        S("a", "WRITE", "/perm/n/child\0c", OK),
        S("a", "GET_PERMS", "/perm/n/child\0", b"b5\0r7\0w9\0", note="children inherit"),
        S("a", "MKDIR", "/perm/n/a/b\0", OK),
        S("a", "GET_PERMS", "/perm/n/a\0", b"b5\0r7\0w9\0"),
        S("a", "SET_PERMS", "/perm/n\0n0\0", OK),
        S("a", "GET_PERMS", "/perm/n\0", b"n0\0"),
        S("a", "GET_PERMS", "/perm/n/child\0", b"b5\0r7\0w9\0", note="not recursive"),
    ],
    "transactions": [
        S("a", "WRITE", "/tx/n\0base", OK),
        S("a", "TRANSACTION_START", "\0", TXID, save_tx="t1"),
        S("a", "WRITE", "/tx/n\0in-tx", OK, tx="t1"),
        S("a", "READ", "/tx/n\0", b"in-tx", tx="t1"),
        S("b", "READ", "/tx/n\0", b"base", note="isolated until commit"),
        S("a", "WRITE", "/tx/new/deep\0x", OK, tx="t1"),
        S("a", "DIRECTORY", "/tx\0", b"n\0new\0", tx="t1", sorted_reply=True),
        S("b", "READ", "/tx/new/deep\0", Err("ENOENT")),
        S("a", "TRANSACTION_END", "T\0", OK, tx="t1"),
        S("b", "READ", "/tx/new/deep\0", b"x"),
        # A conflict: what t2 read changes under it.
        S("a", "TRANSACTION_START", "\0", TXID, save_tx="t2"),
        S("a", "READ", "/tx/n\0", b"in-tx", tx="t2"),
        S("a", "WRITE", "/tx/other\0y", OK, tx="t2"),
        S("b", "WRITE", "/tx/n\0outside", OK),
        S("a", "TRANSACTION_END", "T\0", Err("EAGAIN"), tx="t2"),
        S("a", "READ", "/tx/other\0", Err("ENOENT")),
        S("a", "READ", "/tx/n\0", b"outside"),
        # Abort.
        S("a", "TRANSACTION_START", "\0", TXID, save_tx="t3"),
        S("a", "RM", "/tx/new\0", OK, tx="t3"),
        S("a", "READ", "/tx/new/deep\0", Err("ENOENT"), tx="t3"),
        S("a", "TRANSACTION_END", "F\0", OK, tx="t3"),
        S("a", "READ", "/tx/new/deep\0", b"x"),
        S("a", "TRANSACTION_END", "T\0", Err("ENOENT"), tx="t3", alt={"oxenstored": Err("EIO")},
          note="TRANSACTION_END on a finished transaction"),
        # Two transactions writing different existing nodes do not conflict.
        S("a", "WRITE", "/tx/p\0", OK),
        S("a", "WRITE", "/tx/q\0", OK),
        S("a", "TRANSACTION_START", "\0", TXID, save_tx="t4"),
        S("b", "TRANSACTION_START", "\0", TXID, save_tx="t5"),
        S("a", "WRITE", "/tx/p\0pp", OK, tx="t4"),
        S("b", "WRITE", "/tx/q\0qq", OK, tx="t5"),
        S("a", "TRANSACTION_END", "T\0", OK, tx="t4"),
        S("b", "TRANSACTION_END", "T\0", OK, tx="t5"),
        S("a", "READ", "/tx/p\0", b"pp"),
        S("a", "READ", "/tx/q\0", b"qq"),
        S("a", "TRANSACTION_END", "X\0", Err("ENOENT"), tx="t4", alt={"oxenstored": Err("EIO")}),
        S("a", "TRANSACTION_START", "\0", TXID, save_tx="t6"),
        S("a", "TRANSACTION_END", "X\0", Err("EINVAL"), tx="t6",
          note="TRANSACTION_END with an argument other than T or F"),
        S("a", "TRANSACTION_END", "F\0", OK, tx="t6"),
    ],
    "watches": [
        S("a", "WRITE", "/w/x\0", OK),
        S("a", "WATCH", "/w\0tokA\0", OK, events={"a": [ev("/w", "tokA")]}),
        S("b", "WATCH", "/w/x\0tokB\0", OK, events={"b": [ev("/w/x", "tokB")]}),
        S("b", "WRITE", "/w/x\0v", OK, events={"a": [ev("/w/x", "tokA")],
                                              "b": [ev("/w/x", "tokB")]}),
        S("a", "WRITE", "/w/y\0v", OK, events={"a": [ev("/w/y", "tokA")]}),
        S("a", "WRITE", "/other\0v", OK),
        S("a", "WATCH", "/w\0tokA\0", Err("EEXIST")),
        S("a", "WATCH", "/w\0tokA2\0", OK, events={"a": [ev("/w", "tokA2")]}),
        S("a", "UNWATCH", "/w\0tokA2\0", OK),
        S("a", "MKDIR", "/w/x\0", OK, note="no event for an existing node"),
        S("a", "SET_PERMS", "/w/y\0n0\0r3\0", OK, events={"a": [ev("/w/y", "tokA")]}),
        S("a", "RM", "/w/x\0", OK, events={"a": [ev("/w/x", "tokA")], "b": [ev("/w/x", "tokB")]}),
        S("a", "WATCH", "rel\0tokR\0", OK, events={"a": [ev("rel", "tokR")]}),
        S("b", "WRITE", "/local/domain/0/rel/k\0v", OK, events={"a": [ev("rel/k", "tokR")]}),
        S("a", "UNWATCH", "rel\0tokR\0", OK),
        S("a", "TRANSACTION_START", "\0", TXID, save_tx="t1"),
        S("a", "WRITE", "/w/t\0v", OK, tx="t1", note="no event until commit"),
        S("a", "TRANSACTION_END", "T\0", OK, tx="t1", events={"a": [ev("/w/t", "tokA")]}),
        S("a", "TRANSACTION_START", "\0", TXID, save_tx="t2"),
        S("a", "WRITE", "/w/u\0v", OK, tx="t2"),
        S("a", "TRANSACTION_END", "F\0", OK, tx="t2", note="an aborted transaction fires nothing"),
        S("a", "UNWATCH", "/w\0tokA\0", OK),
        S("b", "UNWATCH", "/w/x\0tokB\0", OK),
        S("a", "WRITE", "/w/x\0v", OK),
    ],
    "domains": [
        S("a", "GET_DOMAIN_PATH", "7\0", b"/local/domain/7\0"),
        S("a", "IS_DOMAIN_INTRODUCED", "0\0", b"T\0"),
        S("a", "IS_DOMAIN_INTRODUCED", "7\0", b"F\0"),
        S("b", "WATCH", "@introduceDomain\0in\0", OK, events={"b": [ev("@introduceDomain", "in")]}),
        S("b", "WATCH", "@releaseDomain\0out\0", OK, events={"b": [ev("@releaseDomain", "out")]}),
        S("a", "INTRODUCE", "7\0" "1234\0" "5\0", OK, events={"b": [ev("@introduceDomain", "in")]}),
        S("a", "IS_DOMAIN_INTRODUCED", "7\0", b"T\0"),
        S("a", "RELEASE", "7\0", OK, events={"b": [ev("@releaseDomain", "out")]}),
        S("a", "IS_DOMAIN_INTRODUCED", "7\0", b"F\0"),
        S("a", "RELEASE", "7\0", Err("ENOENT"), alt={"oxenstored": Err("EINVAL")},
          note="RELEASE of a domain that is not introduced"),
        S("b", "UNWATCH", "@introduceDomain\0in\0", OK),
        S("b", "UNWATCH", "@releaseDomain\0out\0", OK),
    ],
    "large_directory": [
        *[S("a", "WRITE", f"/big/{'n' * 50}-{i:04d}\0", OK) for i in range(90)],
        S("a", "DIRECTORY", "/big\0", Err("E2BIG"),
          alt={"oxenstored": Like(rb"(?:n{50}-\d{4}\0){90}")},
          note="a DIRECTORY reply over 4096 bytes"),
        S("a", "DIRECTORY_PART", "/big\0" "0\0", Like(rb"\d+\0(?:n{50}-\d{4}\0){73}"),
          alt={"oxenstored": Err("ENOSYS")}, note="DIRECTORY_PART"),
        S("a", "DIRECTORY_PART", "/big\0" "4088\0", Like(rb"\d+\0(?:n{50}-\d{4}\0){17}\0"),
          alt={"oxenstored": Err("ENOSYS")}),
        S("a", "DIRECTORY_PART", "/big\0" "99999\0", Like(rb"\d+\0\0"),
          alt={"oxenstored": Err("ENOSYS")}),
    ],
    "edge_cases": [
        S("a", "WATCH", "/e/later\0tL\0", OK, events={"a": [ev("/e/later", "tL")]},
          note="a watch on a node that does not exist yet"),
        S("a", "WATCH", "/e/sub/deep\0tD\0", OK, events={"a": [ev("/e/sub/deep", "tD")]}),
        S("a", "WATCH", "/e\0tE\0", OK, events={"a": [ev("/e", "tE")]}),
        S("b", "WRITE", "/e/later/x/y\0v", OK, events={"a": [ev("/e/later/x/y", "tL"),
                                                            ev("/e/later/x/y", "tE")]}),
        S("b", "WRITE", "/e/sub/deep/z\0v", OK, events={"a": [ev("/e/sub/deep/z", "tD"),
                                                             ev("/e/sub/deep/z", "tE")]}),
        S("b", "RM", "/e/sub\0", OK, events={"a": [ev("/e/sub/deep", "tD"), ev("/e/sub", "tE")]},
          note="RM of a subtree fires watches set inside it"),
        S("b", "RM", "/e/sub\0", OK),
        S("a", "WATCH", "/e\0\0", OK, events={"a": [ev("/e", "")]}, note="an empty token"),
        S("a", "UNWATCH", "/e\0\0", OK),
        S("a", "WATCH", "/e/only-path\0", Err("EINVAL"), note="WATCH without a token"),
        S("a", "WRITE", "/e/v\0" + "x" * 2000, OK, events={"a": [ev("/e/v", "tE")]}),
        S("a", "READ", "/e/v\0", b"x" * 2000),
        S("a", "WRITE", "/e/big\0" + "x" * 4000, OK, events={"a": [ev("/e/big", "tE")]},
          alt={"oxenstored": Err("E2BIG")}, alt_events={"oxenstored": {}},
          note="dom0 writes a 4000-byte value (oxenstored's quota-maxsize applies to dom0 too)"),
        S("a", "READ", "/e/big\0", b"x" * 4000, alt={"oxenstored": Err("ENOENT")}),
        S("a", "READ", "/e/" + "p" * 3100 + "\0", Err("EINVAL"),
          note="a path over XENSTORE_ABS_PATH_MAX"),
        S("a", "SET_PERMS", "/e/v\0", Err("EINVAL"), note="SET_PERMS without any entry"),
        S("a", "SET_PERMS", "/e/v\0r\0", Err("EINVAL")),
        S("a", "SET_PERMS", "/e/missing\0n0\0", Err("ENOENT")),
        S("a", "INTRODUCE", "9\0" "1\0" "1\0", OK),
        S("a", "INTRODUCE", "9\0" "1\0" "1\0", OK, note="INTRODUCE of a domain already introduced"),
        S("a", "INTRODUCE", "9\0" "1\0", Err("EINVAL"), note="INTRODUCE with too few arguments"),
        S("a", "RELEASE", "9\0", OK),
        S("a", "TRANSACTION_START", "\0", TXID, save_tx="t1"),
        S("a", "TRANSACTION_START", "\0", Err("EBUSY"), tx="t1", note="TRANSACTION_START inside one"),
        S("b", "TRANSACTION_START", "\0", TXID, save_tx="t2"),
        S("a", "WRITE", "/e/kid1\0", OK, tx="t1"),
        S("b", "WRITE", "/e/kid2\0", OK, tx="t2"),
        S("a", "TRANSACTION_END", "T\0", OK, tx="t1", events={"a": [ev("/e/kid1", "tE")]}),
        S("b", "TRANSACTION_END", "T\0", Err("EAGAIN"), tx="t2",
          alt={"oxenstored": OK}, alt_events={"oxenstored": {"a": [ev("/e/kid2", "tE")]}},
          note="two transactions adding different children to one parent (oxenstored merges)"),
        S("a", "TRANSACTION_START", "\0", TXID, save_tx="t3"),
        S("a", "READ", "/e/not-there\0", Err("ENOENT"), tx="t3"),
        S("b", "WRITE", "/e/not-there\0now", OK, events={"a": [ev("/e/not-there", "tE")]}),
        S("a", "WRITE", "/e/unrelated\0", OK, tx="t3"),
        S("a", "TRANSACTION_END", "T\0", Err("EAGAIN"), tx="t3",
          note="a node read as missing was created meanwhile"),
        S("a", "TRANSACTION_START", "\0", TXID, save_tx="t4"),
        S("a", "RM", "/e/never-there\0", OK, tx="t4",
          note="RM of a missing leaf whose parent exists, inside a transaction"),
        S("a", "TRANSACTION_END", "F\0", OK, tx="t4"),
        S("a", "DIRECTORY", "/e/v\0", b""),
        S("a", "GET_PERMS", "relative-missing\0", Err("ENOENT")),
    ],
    "unknown_type": [
        S("a", "UNKNOWN_99", "\0", Err("ENOSYS")),
        S("a", "READ", "/tool\0", b""),
    ],
}


# -- the runner ---------------------------------------------------------------------------------
class RawConnection:
    """A byte-level connection: send one frame, read frames; no interpretation."""

    def __init__(self, path: str, timeout: float = 5.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(path)  # blocking: C xenstored's listen backlog is tiny
        self.sock.settimeout(timeout)
        self.decoder = wire.Decoder(max_payload=1 << 20)
        self.req_id = 100

    def send(self, msg_type: int, payload: bytes, tx_id: int = 0) -> int:
        self.req_id += 1
        self.sock.sendall(wire.encode(msg_type, self.req_id, tx_id, payload))
        return self.req_id

    def until_reply(self, req_id: int) -> list[wire.Message]:
        """Frames up to and including the reply to ``req_id``."""
        got: list[wire.Message] = []
        while True:
            while (msg := self.decoder.next_message()) is not None:
                got.append(msg)
                if msg.type != T.WATCH_EVENT and msg.req_id == req_id:
                    return got
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError(f"daemon closed the connection; got so far {got}")
            self.decoder.feed(data)

    def close(self) -> None:
        self.sock.close()


def op_type(name: str) -> int:
    if name.startswith("UNKNOWN_"):
        return int(name.split("_")[1])
    return int(T[name])


def check_reply(step: Step, kind: str, msg: wire.Message) -> str | None:
    """None if ``msg`` is an acceptable reply to ``step`` from a daemon of ``kind``."""
    expected = step.alt.get(kind, step.reply)
    return _check(step, expected, msg)


def _check(step: Step, expected: Reply, msg: wire.Message) -> str | None:
    if isinstance(expected, OneOf):
        if any(_check(step, o, msg) is None for o in expected.options):
            return None
        return f"want {expected!r}, got {wire.type_name(msg.type)} {msg.payload!r}"
    if isinstance(expected, Err):
        ok = msg.type == T.ERROR and msg.payload == expected.name.encode() + b"\0"
    elif msg.type == T.ERROR:
        ok = False
    elif isinstance(expected, Like):
        ok = expected.matches(msg.payload)
    elif step.sorted_reply:
        ok = sorted(wire.split_strings(msg.payload)) == sorted(wire.split_strings(expected))
    else:
        ok = msg.payload == expected
    if ok:
        return None
    got = (f"ERROR {msg.payload!r}" if msg.type == T.ERROR else f"{wire.type_name(msg.type)} "
           f"{msg.payload!r}")
    return f"want {expected!r}, got {got}"


def run_script(socket_path: str, steps: list[Step], kind: str) -> list[str]:
    """Run one script; returns the list of mismatches (empty when the daemon conforms)."""
    names = sorted({s.conn for s in steps} | {c for s in steps for c in s.events})
    conns = {n: RawConnection(socket_path) for n in names}
    txs: dict[str, int] = {"bogus": 4_000_000_000}
    problems: list[str] = []
    try:
        for i, step in enumerate(steps):
            where = f"step {i} {step.conn} {step.op} {step.payload[:40]!r}"
            conn = conns[step.conn]
            tx_id = txs[step.tx] if step.tx else 0
            req = conn.send(op_type(step.op), step.payload, tx_id)
            try:
                frames = conn.until_reply(req)
            except OSError as exc:
                problems.append(f"{where}: no reply ({exc})")
                break
            reply = frames[-1]
            problem = check_reply(step, kind, reply)
            if problem:
                problems.append(f"{where}: {problem}")
            if step.save_tx and reply.type != T.ERROR:
                txs[step.save_tx] = int(reply.payload.rstrip(b"\0"))
            # Everything each connection receives because of this step.
            seen: dict[str, list[wire.Message]] = {step.conn: frames[:-1]}
            for name, other in conns.items():
                sync = other.send(T.GET_DOMAIN_PATH, b"0\0")
                try:
                    got = other.until_reply(sync)
                except OSError as exc:
                    problems.append(f"{where}: connection {name} stopped answering ({exc})")
                    return problems
                seen.setdefault(name, []).extend(got[:-1])
            for name in names:
                events = [m.payload for m in seen.get(name, []) if m.type == T.WATCH_EVENT]
                want = step.alt_events.get(kind, step.events).get(name, [])
                if sorted(events) != sorted(want):
                    problems.append(f"{where}: connection {name} events {events} want {want}")
            # Order on the sender: C xenstored sends caused events before the reply.
            own = step.alt_events.get(kind, step.events).get(step.conn)
            if own and kind != "oxenstored":
                before = [m.payload for m in frames[:-1] if m.type == T.WATCH_EVENT]
                want_before = [] if op_type(step.op) in REPLY_FIRST else own
                if sorted(before) != sorted(want_before):
                    problems.append(f"{where}: events before the reply {before}, "
                                    f"want {want_before}")
    finally:
        for c in conns.values():
            c.close()
    return problems


def differences() -> list[tuple[str, str, str, str]]:
    """(script, case, C xenstored answer, oxenstored answer) for the docs table.

    Only steps with a note: the others follow from a documented one (a later READ of what a
    refused WRITE would have written, the next chunk of a DIRECTORY_PART...).
    """
    def short(r: Reply) -> str:
        text = repr(r)
        return text if len(text) <= 48 else text[:45] + "..."

    rows = []
    for name, steps in SCRIPTS.items():
        for step in steps:
            if step.note and "oxenstored" in step.alt and step.alt["oxenstored"] != step.reply:
                rows.append((name, step.note, short(step.reply), short(step.alt["oxenstored"])))
    return rows

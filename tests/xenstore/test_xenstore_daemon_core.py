"""The embedded xenstored's core, sans-IO: permissions as a guest, quotas, transactions, watches.

These behaviours need a connection acting as a guest domain, which the real daemons only offer
through a hypervisor ring; the per-domain sockets test in test_xenstore_embedded.py covers the
same through the real socket edge.
"""

import pytest

from xenpciback_cli.xenstore import wire
from xenpciback_cli.xenstore.daemon.core import Core, Quotas
from xenpciback_cli.xenstore.wire import MessageType as T


class Peer:
    def __init__(self, core, domid=0):
        self.core = core
        self.conn = core.connect(domid)
        self.req = 0

    def ask(self, op, payload, tx=0):
        """(reply type, payload) of one request, after draining events into self.events."""
        self.req += 1
        self.core.handle(self.conn, wire.Message(op, self.req, tx, payload))
        frames = self.drain()
        replies = [m for m in frames if m.type != T.WATCH_EVENT]
        assert len(replies) == 1
        return replies[0].type, replies[0].payload

    def drain(self):
        dec = wire.Decoder()
        dec.feed(b"".join(self.conn.outbox))
        self.conn.outbox.clear()
        frames = list(dec)
        self.events = getattr(self, "events", []) + [wire.parse_watch_event(m.payload)
                                                      for m in frames if m.type == T.WATCH_EVENT]
        return frames

    def ok(self, op, payload, tx=0):
        t, p = self.ask(op, payload, tx)
        assert t == op, (t, p)
        return p

    def err(self, op, payload, tx=0):
        t, p = self.ask(op, payload, tx)
        assert t == T.ERROR, (t, p)
        return p.rstrip(b"\0").decode()


@pytest.fixture
def core():
    c = Core(Quotas(max_nodes=20, max_value=64, max_watches=3, max_transactions=2))
    dom0 = Peer(c)
    dom0.ok(T.INTRODUCE, b"5\x001\x001\0")
    dom0.ok(T.MKDIR, b"/local/domain/5\0")
    dom0.ok(T.SET_PERMS, b"/local/domain/5\0b5\0r0\0")
    dom0.ok(T.WRITE, b"/private\0secret")
    dom0.ok(T.WRITE, b"/public\0hello")
    dom0.ok(T.SET_PERMS, b"/public\0n0\0r5\0")
    return c


def test_guest_permissions(core):
    guest = Peer(core, 5)
    assert guest.err(T.READ, b"/private\0") == "EACCES"
    assert guest.ok(T.READ, b"/public\0") == b"hello"
    assert guest.err(T.WRITE, b"/public\0x") == "EACCES"
    assert guest.err(T.WRITE, b"/public/child\0x") == "EACCES"  # needs write on the parent
    assert guest.err(T.READ, b"/private/missing\0") == "EACCES"  # no probing under hidden nodes
    assert guest.err(T.READ, b"/public/missing\0") == "ENOENT"
    # Relative paths are under the guest's home; what it creates it owns.
    guest.ok(T.WRITE, b"device/pci/0/state\x001")
    assert guest.ok(T.GET_PERMS, b"/local/domain/5/device/pci/0/state\0") == b"b5\0r0\0"
    assert guest.ok(T.GET_DOMAIN_PATH, b"5\0") == b"/local/domain/5\0"
    # It may not give a node away, nor introduce domains.
    assert guest.err(T.SET_PERMS, b"device\0n7\0") == "EPERM"
    guest.ok(T.SET_PERMS, b"device\0b5\0r0\0r9\0")
    assert guest.err(T.INTRODUCE, b"6\x001\x001\0") == "EACCES"
    assert guest.err(T.RELEASE, b"5\0") == "EACCES"


def test_guest_quotas(core):
    guest = Peer(core, 5)
    assert guest.err(T.WRITE, b"big\0" + b"x" * 65) == "ENOSPC"
    guest.ok(T.WRITE, b"ok\0" + b"x" * 64)
    for i in range(25):
        t, p = guest.ask(T.WRITE, f"n{i}\0".encode())
        if t == T.ERROR:
            assert p == b"ENOSPC\0"
            break
    else:
        pytest.fail("node quota never hit")
    assert core.store.owned_by(5) == 20  # exactly the quota: its home, "ok" and 18 more
    for i in range(3):
        guest.ok(T.WATCH, f"w{i}\0t\0".encode())
    assert guest.err(T.WATCH, b"w9\0t\0") == "E2BIG"
    guest.ok(T.TRANSACTION_START, b"\0")
    guest.ok(T.TRANSACTION_START, b"\0")
    assert guest.err(T.TRANSACTION_START, b"\0") == "ENOSPC"
    # dom0 is exempt.
    Peer(core).ok(T.WRITE, b"/dom0-big\0" + b"y" * 3000)


def test_guest_watch_sees_only_what_it_may_read(core):
    guest = Peer(core, 5)
    guest.ok(T.WATCH, b"/\0all\0")
    guest.drain()
    guest.events = []
    dom0 = Peer(core)
    dom0.ok(T.WRITE, b"/private\0changed")
    dom0.ok(T.WRITE, b"/public\0changed")
    guest.drain()
    assert guest.events == [("/public", "all")]


def test_relative_watch_reports_relative_paths(core):
    guest = Peer(core, 5)
    guest.ok(T.WATCH, b"device\0tok\0")
    Peer(core).ok(T.WRITE, b"/local/domain/5/device/x\0v")
    guest.drain()
    assert guest.events == [("device", "tok"), ("device/x", "tok")]


def test_release_drops_guest_connections_and_fires(core):
    guest = Peer(core, 5)
    dom0 = Peer(core)
    dom0.ok(T.WATCH, b"@releaseDomain\0r\0")
    core.actions.clear()
    dom0.ok(T.RELEASE, b"5\0")
    assert guest.conn.closed
    assert core.actions == [("released", 5)]
    assert ("@releaseDomain", "r") in dom0.events


def test_transaction_conflict_on_deleted_node(core):
    a, b = Peer(core), Peer(core)
    a.ok(T.WRITE, b"/t/x\0")
    tx = int(a.ok(T.TRANSACTION_START, b"\0").rstrip(b"\0"))
    a.ok(T.READ, b"/t/x\0", tx)
    b.ok(T.RM, b"/t/x\0")
    a.ok(T.WRITE, b"/t/y\0", tx)
    assert a.err(T.TRANSACTION_END, b"T\0", tx) == "EAGAIN"
    assert a.err(T.READ, b"/t/y\0") == "ENOENT"


def test_directory_part_pages_through_children(core):
    dom0 = Peer(core)
    names = [f"{'c' * 60}{i:04d}" for i in range(200)]
    for n in names:
        dom0.ok(T.WRITE, f"/dp/{n}\0".encode())
    assert dom0.err(T.DIRECTORY, b"/dp\0") == "E2BIG"
    got, offset = [], 0
    while True:
        _gen, chunk, last = wire.parse_directory_part(
            dom0.ok(T.DIRECTORY_PART, f"/dp\0{offset}\0".encode()))
        got += chunk
        offset += sum(len(c) + 1 for c in chunk)
        if last:
            break
    assert got == names


def test_hostile_requests_get_errors_not_crashes(core):
    dom0 = Peer(core)
    for op in range(0, 30):
        for payload in (b"", b"\0", b"\xff\xfe\0", b"/a\0b\0c\0", b"x" * 10):
            dom0.ask(op, payload)  # exactly one reply each, whatever it is
    assert dom0.ok(T.READ, b"/public\0") == b"hello"


from hypothesis import example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_paths = st.sampled_from([b"/f", b"/f/a", b"/f/a/b", b"f/rel", b"/", b"@introduceDomain", b""])
_payloads = st.one_of(
    st.binary(max_size=64),
    st.builds(lambda p, v: p + b"\0" + v, _paths, st.binary(max_size=16)),
    st.builds(lambda p: p + b"\0", _paths),
    st.builds(lambda p, a, b: p + b"\0" + a + b"\0" + b + b"\0", _paths,
              st.sampled_from([b"n0", b"r5", b"b3", b"x", b"T", b"F", b"1", b"0"]),
              st.sampled_from([b"tok", b"", b"w7", b"1"])),
)


@settings(max_examples=150, deadline=None)
@example([(0, 0, b"", 0), (4, 0, b"/f\x00\x80\x00", 0)])  # a watch token that is not UTF-8
@given(st.lists(st.tuples(st.integers(0, 30), st.integers(0, 3), _payloads, st.sampled_from([0, 5])),
                max_size=40))
def test_fuzzed_requests_each_get_exactly_one_reply(requests):
    core = Core(Quotas(max_nodes=30))
    Peer(core).ok(T.INTRODUCE, b"5\x001\x001\0")  # so a domain-5 connection is legitimate
    peers = {0: Peer(core, 0), 5: Peer(core, 5)}
    for op, tx, payload, domid in requests:
        peer = peers[domid]
        if peer.conn.closed:
            continue
        peer.req += 1
        core.handle(peer.conn, wire.Message(op, peer.req, tx, payload))
        replies = [m for m in peer.drain() if m.type != T.WATCH_EVENT]
        assert len(replies) == 1
        assert replies[0].req_id == peer.req and replies[0].tx_id == tx
        assert len(replies[0].payload) <= wire.PAYLOAD_MAX
    # The store is still a tree: every child listed exists and every node's parent lists it.
    nodes = core.store.nodes
    for path, node in nodes.items():
        for child in node.children:
            assert (path.rstrip("/") + "/" + child) in nodes
        if path != "/":
            parent = path.rsplit("/", 1)[0] or "/"
            assert path.rsplit("/", 1)[1] in nodes[parent].children


def test_a_bug_in_a_handler_answers_eio_and_is_kept_for_the_log(core, monkeypatch):
    dom0 = Peer(core)

    def broken(*_):
        raise ZeroDivisionError("oops")

    monkeypatch.setitem(core._dispatch, T.READ, broken)
    assert dom0.err(T.READ, b"/public\0") == "EIO"
    assert "ZeroDivisionError" in core.internal_errors[0]
    assert dom0.ok(T.WRITE, b"/still\0works") == b"OK\0"

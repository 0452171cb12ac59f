"""The embedded xenstored under a hostile guest, sans-IO: deep trees, quotas that transactions
cannot escape, per-domain (not per-connection) limits, permissions a guest cannot widen.

Each test reproduces an attack that worked before; limits are scaled down through ``Quotas``
where the real ones would make the test slow.
"""

import random
import time

import pytest

from xenpciback_cli.xenstore import wire
from xenpciback_cli.xenstore.daemon.core import Core, Quotas
from xenpciback_cli.xenstore.wire import MessageType as T


class Peer:
    def __init__(self, core, domid=0):
        self.core = core
        self.conn = core.connect(domid)
        self.req = 0
        self.events = []

    def ask(self, op, payload, tx=0):
        self.req += 1
        self.core.handle(self.conn, wire.Message(op, self.req, tx, payload))
        dec = wire.Decoder()
        dec.feed(b"".join(self.conn.outbox))
        self.conn.outbox.clear()
        frames = list(dec)
        self.events += [m for m in frames if m.type == T.WATCH_EVENT]
        replies = [m for m in frames if m.type != T.WATCH_EVENT]
        assert len(replies) == 1
        return replies[0].type, replies[0].payload

    def ok(self, op, payload, tx=0):
        t, p = self.ask(op, payload, tx)
        assert t == op, (wire.type_name(op), p)
        return p

    def err(self, op, payload, tx=0):
        t, p = self.ask(op, payload, tx)
        assert t == T.ERROR, (wire.type_name(op), p)
        return p.rstrip(b"\0").decode()

    def tx(self):
        return int(self.ok(T.TRANSACTION_START, b"\0").rstrip(b"\0"))


def make_core(**quotas):
    core = Core(Quotas(**quotas))
    dom0 = Peer(core)
    for domid in (5, 6):
        dom0.ok(T.INTRODUCE, f"{domid}\x001\x001\0".encode())
        dom0.ok(T.MKDIR, f"/local/domain/{domid}\0".encode())
        dom0.ok(T.SET_PERMS, f"/local/domain/{domid}\0n{domid}\0r0\0".encode())
    return core, dom0


def recount(core):
    counts = {}
    for node in core.store.nodes.values():
        counts[node.perms[0].domid] = counts.get(node.perms[0].domid, 0) + 1
    return counts


# -- deep trees: no recursion anywhere -----------------------------------------------------------
DEEP = "/".join(["a"] * 990)


def test_rm_of_a_990_level_path_works():
    core, _dom0 = make_core()
    guest = Peer(core, 5)
    guest.ok(T.WRITE, f"{DEEP}\0x".encode())  # relative: under /local/domain/5, 990 levels
    guest.ok(T.RM, b"a\0")
    assert guest.err(T.READ, b"a\0") == "ENOENT"
    assert recount(core).get(5) == 1  # only its home is left


def test_rm_of_a_990_level_path_inside_a_transaction():
    core, _dom0 = make_core()
    guest = Peer(core, 5)
    guest.ok(T.WRITE, f"{DEEP}\0x".encode())
    tx = guest.tx()
    guest.ok(T.RM, b"a\0", tx)
    guest.ok(T.TRANSACTION_END, b"T\0", tx)
    assert guest.err(T.READ, b"a\0") == "ENOENT"


def test_release_of_a_domain_with_a_990_level_tree_removes_it_all():
    core, dom0 = make_core()
    guest = Peer(core, 5)
    guest.ok(T.WRITE, f"{DEEP}\0x".encode())
    dom0.ok(T.RELEASE, b"5\0")
    assert dom0.err(T.READ, b"/local/domain/5\0") == "ENOENT"
    assert 5 not in core.domains
    assert recount(core).get(5) is None and core.store.owned.get(5, 0) == 0


def test_release_is_all_or_nothing(monkeypatch):
    core, dom0 = make_core()
    Peer(core, 5).ok(T.WRITE, b"x/y\0v")
    before = dict(core.store.nodes)

    def broken(*_a, **_k):
        raise RuntimeError("injected")

    monkeypatch.setattr(core.store, "delete", broken)
    assert dom0.err(T.RELEASE, b"5\0") == "EIO"
    assert core.store.nodes == before and 5 in core.domains
    monkeypatch.undo()
    dom0.ok(T.RELEASE, b"5\0")  # and it can still be released afterwards
    assert "/local/domain/5" not in core.store.nodes


# -- node quota: per-domain counts, transactions counted --------------------------------------
def test_transactions_cannot_escape_the_node_quota():
    core, _ = make_core(max_nodes=20, max_transactions=10)
    guests = [Peer(core, 5) for _ in range(3)]
    created = 0
    for g in guests:
        for _ in range(3):
            tx = g.tx()
            for i in range(30):
                t, p = g.ask(T.WRITE, f"t{tx}-{id(g)}-{i}\0".encode(), tx)
                if t == T.ERROR:
                    assert p == b"ENOSPC\0"
                    break
                created += 1
    # Everything pending together stays within the quota (the home node counts too).
    assert created <= 19
    for g in guests:
        for tx in list(g.conn.transactions):
            g.ask(T.TRANSACTION_END, b"T\0", tx)
    assert recount(core)[5] <= 20


def test_commit_checks_the_quota_again():
    core, _ = make_core(max_nodes=10)
    g = Peer(core, 5)
    tx = g.tx()
    for i in range(5):
        g.ok(T.WRITE, f"tx{i}\0".encode(), tx)
    g.ok(T.TRANSACTION_END, b"F\0", tx)  # aborted: frees its pending nodes
    tx = g.tx()
    for i in range(5):
        g.ok(T.WRITE, f"tx{i}\0".encode(), tx)
    # Meanwhile dom0 gives the guest more nodes (chown), outside the quota check.
    dom0 = Peer(core)
    for i in range(5):
        dom0.ok(T.WRITE, f"/gift{i}\0".encode())
        dom0.ok(T.SET_PERMS, f"/gift{i}\0n5\0".encode())
    assert g.err(T.TRANSACTION_END, b"T\0", tx) == "ENOSPC"
    assert recount(core)[5] == 6


def test_nodes_per_transaction_are_limited():
    core, dom0 = make_core(max_nodes=1000, max_tx_nodes=16)
    g = Peer(core, 5)
    tx = g.tx()
    answers = [g.ask(T.WRITE, f"n{i}\0".encode(), tx) for i in range(40)]
    assert (T.ERROR, b"ENOSPC\0") in answers
    assert len(core.connections[g.conn.id].transactions[tx].seen) <= 16
    # dom0 is exempt.
    tx0 = dom0.tx()
    for i in range(40):
        dom0.ok(T.WRITE, f"/d0/n{i}\0".encode(), tx0)
    dom0.ok(T.TRANSACTION_END, b"T\0", tx0)


def test_per_domain_counts_follow_every_change():
    core, dom0 = make_core(max_nodes=200)
    rng = random.Random(7)
    peers = [dom0, Peer(core, 5), Peer(core, 6), Peer(core, 5)]
    txs = {}
    for _ in range(600):
        p = rng.choice(peers)
        home = "/local/domain/5" if rng.random() < 0.7 else "/local/domain/6"
        path = home + "/" + "/".join(rng.choice("abc") for _ in range(rng.randint(1, 3)))
        tx = txs.get(id(p), 0) if rng.random() < 0.5 else 0
        kind = rng.random()
        if kind < 0.4:
            p.ask(T.WRITE, f"{path}\0v".encode(), tx)
        elif kind < 0.6:
            p.ask(T.RM, f"{path}\0".encode(), tx)
        elif kind < 0.7:
            p.ask(T.SET_PERMS, f"{path}\0n{rng.choice([0, 5, 6])}\0".encode(), tx)
        elif kind < 0.85:
            if tx:
                p.ask(T.TRANSACTION_END, rng.choice([b"T\0", b"F\0"]), tx)
                txs.pop(id(p))
            elif id(p) not in txs:
                txs[id(p)] = p.tx()
        else:
            p.ask(T.MKDIR, f"{path}\0".encode(), tx)
        want = recount(core)
        assert {d: n for d, n in core.store.owned.items() if n} == want


def test_a_new_node_does_not_scan_the_store():
    core, dom0 = make_core()
    nodes = core.store.nodes
    from xenpciback_cli.xenstore.daemon.store import Node
    from xenpciback_cli.xenstore.wire import Perm
    dom0.ok(T.WRITE, b"/big\0")
    big = nodes["/big"]
    names = tuple(f"n{i}" for i in range(200_000))
    for name in names:
        nodes["/big/" + name] = Node(b"", (Perm(0, "n"),))
    nodes["/big"] = Node(big.value, big.perms, names, big.gen)
    core.store.recount()
    g = Peer(core, 5)
    start = time.perf_counter()
    for i in range(300):
        g.ok(T.WRITE, f"n{i}\0".encode())
    elapsed = time.perf_counter() - start
    assert elapsed < 0.5, f"300 guest writes took {elapsed:.2f}s with a 200k-node store"


# -- watches per domain, SET_PERMS -------------------------------------------------------------
def test_watch_quota_is_per_domain_not_per_connection():
    core, _ = make_core(max_watches=4)
    a, b = Peer(core, 5), Peer(core, 5)
    for i in range(2):
        a.ok(T.WATCH, f"w{i}\0t\0".encode())
        b.ok(T.WATCH, f"w{i}\0t\0".encode())
    assert a.err(T.WATCH, b"w9\0t\0") == "E2BIG"
    assert b.err(T.WATCH, b"w9\0t\0") == "E2BIG"
    a.ok(T.UNWATCH, b"w0\0t\0")
    b.ok(T.WATCH, b"w9\0t\0")
    core.disconnect(b.conn)
    c = Peer(core, 5)
    for i in range(3):
        c.ok(T.WATCH, f"c{i}\0t\0".encode())
    Peer(core, 6).ok(T.WATCH, b"x\0t\0")  # another domain has its own budget


def test_set_perms_needs_ownership_not_just_write_access():
    core, dom0 = make_core()
    dom0.ok(T.WRITE, b"/shared\0")
    dom0.ok(T.SET_PERMS, b"/shared\0n0\0b5\0")  # guest 5 may read and write, dom0 owns it
    guest = Peer(core, 5)
    guest.ok(T.WRITE, b"/shared\0x")
    assert guest.err(T.SET_PERMS, b"/shared\0n0\0b5\0b6\0") == "EACCES"
    assert dom0.ok(T.GET_PERMS, b"/shared\0") == b"n0\0b5\0"


def test_set_perms_entry_limit_for_guests():
    core, dom0 = make_core()
    guest = Peer(core, 5)
    guest.ok(T.WRITE, b"mine\0")
    five = b"".join(f"r{d}\0".encode() for d in range(1, 5))
    guest.ok(T.SET_PERMS, b"mine\0n5\0" + five)  # 5 entries: C's limit
    assert guest.err(T.SET_PERMS, b"mine\0n5\0" + five + b"r9\0") == "ENOSPC"
    dom0.ok(T.SET_PERMS, b"/local/domain/5/mine\0n5\0" + five * 3)  # dom0 is exempt


# -- connections per domain -------------------------------------------------------------------
def test_connections_per_domain_are_limited():
    core, _ = make_core(max_connections=3)
    for _ in range(3):
        assert core.may_connect(5)
        core.connect(5)
    assert not core.may_connect(5)
    assert core.may_connect(6) and core.may_connect(0)



# -- the socket edge, as a process ------------------------------------------------------------
import os  # noqa: E402
import socket  # noqa: E402
import stat  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import xsdaemons  # noqa: E402
from helpers.cli import script  # noqa: E402
from xenpciback_cli.xenstore.client import connect  # noqa: E402


def _raw(path):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(5)
    s.connect(path)
    return s


def _answers(s):
    try:
        s.sendall(wire.encode(T.GET_DOMAIN_PATH, 1, 0, b"0\0"))
        data = s.recv(4096)
    except OSError:
        return False
    return data[wire.HEADER_SIZE:] == b"/local/domain/0\0"


EMFILE_SERVER = r"""
import resource, sys
from xenpciback_cli.xenstore.daemon.core import Core, Quotas
from xenpciback_cli.xenstore.daemon.server import Server
resource.setrlimit(resource.RLIMIT_NOFILE, (48, 48))
core = Core(Quotas(max_connections_total=100000))
server = Server(core, sys.argv[1])
server.start()
server.serve_forever()
"""


def test_out_of_descriptors_on_accept_does_not_kill_the_daemon(tmp_path):
    sock_path = str(tmp_path / "s")
    env = dict(os.environ, PYTHONPATH=str(xsdaemons.REPO))
    with open(tmp_path / "log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-c", EMFILE_SERVER, sock_path], env=env,
                                stdout=log, stderr=subprocess.STDOUT)
    held = []
    try:
        xsdaemons.wait_for_socket(sock_path, proc)
        first = _raw(sock_path)
        assert _answers(first)
        for _ in range(80):  # well past the 48 descriptors the daemon may hold
            try:
                held.append(_raw(sock_path))
            except OSError:
                break
        # connect() returns once the kernel queues us; wait until the daemon has caught up with
        # the queue and met the limit (on a loaded machine that is not at once).
        deadline = time.monotonic() + 20
        while ("out of file descriptors" not in (tmp_path / "log").read_text()
               and time.monotonic() < deadline and proc.poll() is None):
            time.sleep(0.05)
        assert _answers(first)  # existing connections are still served...
        assert proc.poll() is None  # ...and the daemon is alive
        for s in held:
            s.close()
        held.clear()
        for _ in range(50):  # once descriptors are free again, new connections work
            try:
                late = _raw(sock_path)
                if _answers(late):
                    late.close()
                    break
                late.close()
            except OSError:
                pass
            time.sleep(0.05)
        else:
            pytest.fail("no new connection accepted after descriptors were freed")
        first.close()
    finally:
        for s in held:
            s.close()
        proc.terminate()
        proc.wait(timeout=5)
    assert "out of file descriptors" in (tmp_path / "log").read_text()


@pytest.fixture
def limited(tmp_path):
    daemon = xsdaemons.start_embedded(tmp_path / "d", extra=["--no-state", "--quota-connections",
                                                             "3"],
                                      preexec_fn=lambda: os.umask(0))
    yield daemon
    daemon.stop()


def test_connections_per_domain_are_limited_and_logged(limited):
    with connect(limited.socket) as dom0:
        dom0.introduce(5, 1, 1)
        guests = [_raw(limited.socket + ".d/5") for _ in range(5)]
        answered = [_answers(g) for g in guests]
        assert answered == [True, True, True, False, False]
        assert dom0.read("/tool/xenstored") == b""  # dom0 is not limited
        for g in guests:
            g.close()
    time.sleep(0.1)
    assert "over the limit of 3 per domain" in limited.output()


def test_sockets_are_private_whatever_the_umask(limited):
    with connect(limited.socket) as dom0:
        dom0.introduce(7, 1, 1)
        assert _answers(_raw(limited.socket + ".d/7"))
    assert stat.S_IMODE(os.stat(limited.socket).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(limited.socket + ".d").st_mode) == 0o700
    assert stat.S_IMODE(os.stat(limited.socket + ".d/7").st_mode) == 0o600


@pytest.mark.parametrize("extra", [60, 0])
def test_an_over_long_socket_path_is_a_clear_error(tmp_path, extra):
    # extra=0: the dom0 socket itself would fit, but PATH.d/DOMID would not: refused at start,
    # not at the first INTRODUCE (which killed the daemon, then every restart).
    base = tmp_path / ("x" * max(1, 100 - len(str(tmp_path)) - len("/socket") + extra))
    base.mkdir()
    path = str(base / "socket")
    assert len(path) + 8 > 107
    proc = script("sandbox", "xenstored", "--socket", path, "--no-state")
    assert proc.code == 2, proc.err
    assert len(proc.err.strip().splitlines()) == 1, proc.err
    assert "choose a shorter path" in proc.err and "Traceback" not in proc.err
    assert not os.path.exists(path)


def test_state_is_saved_with_fsync(tmp_path, monkeypatch):
    from xenpciback_cli.xenstore.daemon import persist

    synced = []
    real = os.fsync

    def fsync(fd):
        synced.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    core, _ = make_core()
    persist.save(core, tmp_path / "state.json")
    assert synced == [False, True]  # the file, then (after the rename) its directory
    assert os.listdir(tmp_path) == ["state.json"]
    again = Core()
    assert persist.load(again, tmp_path / "state.json")
    assert again.store.owned == core.store.owned


def test_a_sandbox_in_a_long_directory_gets_one_clear_line(tmp_path):
    sandbox = tmp_path / ("s" * 90)
    assert script("sandbox", "init", str(sandbox)).code == 0
    proc = script("--sandbox", str(sandbox), "xenstore", "ls")
    assert proc.code != 0
    lines = proc.err.strip().splitlines()
    assert len(lines) == 1 and "choose a shorter path" in lines[0], proc.err
    assert not (sandbox / "xenstore" / "socket").exists()


def test_dom0_may_let_a_guest_see_release_events():
    core, dom0 = make_core()
    guest = Peer(core, 5)
    guest.ok(T.WATCH, b"@releaseDomain\0r\0")
    assert Peer(core, 6).err(T.SET_PERMS, b"@releaseDomain\0n6\0") == "EACCES"
    dom0.ok(T.INTRODUCE, b"8\x001\x001\0")
    dom0.ok(T.RELEASE, b"8\0")
    assert not any(m.payload.startswith(b"@releaseDomain") for m in guest.events[1:])
    dom0.ok(T.SET_PERMS, b"@releaseDomain\0n0\0r5\0")
    dom0.ok(T.INTRODUCE, b"8\x001\x001\0")
    dom0.ok(T.RELEASE, b"8\0")
    guest.ask(T.GET_DOMAIN_PATH, b"5\0")
    assert [m.payload for m in guest.events[1:]] == [b"@releaseDomain\0r\0"]

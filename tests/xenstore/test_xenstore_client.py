"""Our client against each daemon (embedded, Debian's C xenstored, oxenstored).

One daemon per kind for the whole module; each test works under its own path.
"""

import select
import threading

import pytest

from xenpciback_cli.xenstore.client import (Perm, WatchEvent, XenstoreClient, XenstoreConnectionLost,
                                            XenstoreError, XenstoreUnavailable, connect)


@pytest.fixture
def xs(xenstored_socket):
    with connect(xenstored_socket) as client:
        yield client


def test_write_read_binary_and_directory(xs):
    xs.write("/t1/a", b"\0\xffbinary")
    xs.write("/t1/b", "text")
    assert xs.read("/t1/a") == b"\0\xffbinary"
    assert xs.read("/t1/b") == b"text"
    assert sorted(xs.directory("/t1")) == ["a", "b"]
    assert xs.exists("/t1/a") and not xs.exists("/t1/zz")


def test_errors_carry_name_and_path(xs):
    with pytest.raises(XenstoreError) as exc:
        xs.read("/t2/missing")
    assert exc.value.errno_name == "ENOENT"
    assert exc.value.path == "/t2/missing"
    assert "/t2/missing" in str(exc.value)


def test_mkdir_rm_and_perms(xs):
    xs.mkdir("/t3/d")
    assert xs.read("/t3/d") == b""
    xs.set_perms("/t3/d", [Perm(0, "n"), Perm(5, "r")])
    assert xs.get_perms("/t3/d") == [Perm(0, "n"), Perm(5, "r")]
    xs.rm("/t3")
    assert not xs.exists("/t3/d")


def test_domain_path_and_introduce(xs):
    assert xs.get_domain_path(5) == "/local/domain/5"
    assert xs.is_domain_introduced(0)
    assert not xs.is_domain_introduced(41)
    xs.introduce(41, 4242, 7)
    assert xs.is_domain_introduced(41)
    xs.release(41)
    assert not xs.is_domain_introduced(41)


def test_transaction_commits_and_aborts(xs):
    with xs.transaction() as tx:
        tx.write("/t5/a", "1")
        assert tx.read("/t5/a") == b"1"
    assert xs.read("/t5/a") == b"1"
    with pytest.raises(RuntimeError), xs.transaction() as tx:
        tx.write("/t5/a", "2")
        raise RuntimeError("boom")
    assert xs.read("/t5/a") == b"1"


def test_conflict_raises_eagain_and_transact_retries(xs, xenstored_socket):
    xs.write("/t6/n", "0")
    with connect(xenstored_socket) as other:
        with pytest.raises(XenstoreError) as exc, xs.transaction() as tx:
            tx.read("/t6/n")
            tx.write("/t6/n", "tx")
            other.write("/t6/n", "outside")
        assert exc.value.errno_name == "EAGAIN"
        assert xs.read("/t6/n") == b"outside"

        attempts = []

        def bump(tx):
            attempts.append(1)
            value = int(tx.read("/t6/c") or b"0") if tx.exists("/t6/c") else 0
            if len(attempts) == 1:
                other.write("/t6/c", "10")  # make the first attempt conflict
            tx.write("/t6/c", str(value + 1))
            return value + 1

        assert xs.transact(bump) == 11
        assert len(attempts) == 2
        assert xs.read("/t6/c") == b"11"


def test_watch_events_through_a_pollable_fd(xs, xenstored_socket):
    xs.watch("/t7", "tok")
    assert xs.next_event(2) == WatchEvent("/t7", "tok")  # the initial event
    with connect(xenstored_socket) as other:
        other.write("/t7/x", "1")
    r, _, _ = select.select([xs], [], [], 2)
    assert r == [xs]
    assert xs.next_event(0) == WatchEvent("/t7/x", "tok")
    # An event that arrives while we wait for a reply is queued and the fd stays readable.
    xs.write("/t7/y", "2")
    r, _, _ = select.select([xs], [], [], 2)
    assert r == [xs]
    assert xs.next_event(2) == WatchEvent("/t7/y", "tok")
    assert xs.next_event(0) is None
    r, _, _ = select.select([xs], [], [], 0)
    assert r == []
    xs.unwatch("/t7", "tok")
    xs.write("/t7/z", "3")
    assert xs.next_event(0.2) is None


def test_introduce_domain_watch(xs):
    xs.watch("@introduceDomain", "intro")
    assert xs.next_event(2) == WatchEvent("@introduceDomain", "intro")
    xs.introduce(42, 1, 1)
    assert xs.next_event(2) == WatchEvent("@introduceDomain", "intro")
    xs.unwatch("@introduceDomain", "intro")
    xs.watch("@releaseDomain", "rel")
    assert xs.next_event(2) == WatchEvent("@releaseDomain", "rel")
    xs.release(42)
    assert xs.next_event(2) == WatchEvent("@releaseDomain", "rel")
    xs.unwatch("@releaseDomain", "rel")


def test_large_directory(xs, xenstored_daemon):
    names = [f"child-with-a-long-name-{i:05d}" for i in range(400)]  # ~12 KiB of names
    for start in range(0, len(names), 100):
        with xs.transaction() as tx:
            for n in names[start:start + 100]:
                tx.write(f"/t9/{n}", "")
    # C xenstored: E2BIG then DIRECTORY_PART; oxenstored 4.17 answers with an oversized reply.
    assert sorted(xs.directory("/t9")) == names


def test_oversized_request_refused_locally(xs):
    with pytest.raises(XenstoreError) as exc:
        xs.write("/t10", b"x" * 5000)
    assert exc.value.errno_name == "E2BIG"
    xs.write("/t10", "still connected")


def test_lost_connection_is_reported_not_hung(tmp_path):
    import socket

    path = str(tmp_path / "sock")
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    server.listen(1)

    def accept_and_close():
        conn, _ = server.accept()
        conn.recv(100)
        conn.close()

    t = threading.Thread(target=accept_and_close)
    t.start()
    client = XenstoreClient.open_socket(path, timeout=5)
    with pytest.raises(XenstoreConnectionLost):
        client.read("/x")
    with pytest.raises(XenstoreConnectionLost):
        client.read("/x")
    t.join(5)
    server.close()
    client.close()


def test_silent_daemon_times_out(tmp_path):
    import socket

    path = str(tmp_path / "sock")
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    server.listen(1)
    client = XenstoreClient.open_socket(path, timeout=0.2)
    with pytest.raises(XenstoreConnectionLost, match="no reply"):
        client.read("/x")
    client.close()
    server.close()


def test_discovery_order(tmp_path, monkeypatch):
    from xenpciback_cli.xenstore.transport import candidate_paths

    assert candidate_paths({"XENSTORED_PATH": "/x"}) == ["/x"]
    assert candidate_paths({"XENSTORED_RUNDIR": "/r"}) == [
        "/r/socket", "/run/xenstored/socket", "/var/run/xenstored/socket",
        "/dev/xen/xenbus", "/proc/xen/xenbus"]
    monkeypatch.setenv("XENSTORED_PATH", str(tmp_path / "none"))
    with pytest.raises(XenstoreUnavailable):
        connect()


# -- a flood of watch events cannot grow the client without bound -----------------------------
def _fake_daemon_pair():
    import socket

    from xenpciback_cli.xenstore.transport import Transport

    ours, theirs = socket.socketpair()
    return XenstoreClient(Transport(ours.fileno(), "fake", ours), max_events=64), theirs


def test_event_queue_is_bounded_with_a_marker():
    from xenpciback_cli.xenstore import wire
    from xenpciback_cli.xenstore.client import EVENTS_DROPPED
    from xenpciback_cli.xenstore.wire import MessageType as T

    client, daemon = _fake_daemon_pair()
    flood = b"".join(wire.encode(T.WATCH_EVENT, 0, 0, wire.args(f"/g/{i}", "tok"))
                     for i in range(20000))
    repeat = wire.encode(T.WATCH_EVENT, 0, 0, wire.args("/g/same", "tok")) * 5000

    def serve():
        daemon.recv(4096)
        daemon.sendall(repeat + flood + wire.encode(T.READ, 1, 0, b"v"))

    t = threading.Thread(target=serve)
    t.start()
    assert client.read("/x") == b"v"
    t.join()
    assert client.pending_events() == 64
    assert client.dropped_events >= 20000 - 64
    events = [client.next_event(0) for _ in range(64)]
    assert events[0] == WatchEvent("/g/same", "tok")  # 5000 identical events coalesced into one
    assert events[-1] == WatchEvent(EVENTS_DROPPED, "tok")
    assert client.next_event(0) is None
    client.close()
    daemon.close()


def test_a_guest_flood_does_not_grow_a_dom0_waiter(tmp_path):
    import time

    import xsdaemons

    daemon = xsdaemons.start_embedded(tmp_path / "d", extra=["--no-state"])
    stop = threading.Event()
    try:
        with connect(daemon.socket) as dom0:
            dom0.introduce(5, 1, 1)
            dom0.write("/local/domain/5/state", "1")
            dom0.set_perms("/local/domain/5", [Perm(5, "n")])
            dom0.set_perms("/local/domain/5/state", [Perm(5, "n")])

            def flood():
                with connect(daemon.socket + ".d/5") as guest:
                    i = 0
                    while not stop.is_set():
                        guest.write("state", str(i))
                        guest.write(f"n{i % 500}", "x")
                        i += 1

            t = threading.Thread(target=flood)
            dom0.max_events = 32
            dom0.watch("/local/domain/5", "w")
            t.start()
            deadline = time.monotonic() + 1.0
            peak = 0
            while time.monotonic() < deadline:  # what a slow waiter does: one event, two reads
                dom0.next_event(0.1)
                dom0.read("/local/domain/5/state")
                dom0.read("/local/domain/5/state")
                peak = max(peak, dom0.pending_events())
            stop.set()
            t.join()
            assert peak <= 32
    finally:
        stop.set()
        daemon.stop()

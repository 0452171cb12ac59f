"""The embedded daemon as a process: per-domain sockets, save/reload, trace, and real clients
(Debian's xenstore-utils and pyxs) talking to it unchanged. The real-client tests also run
against the two real daemons, which shows the tests expect what real xenstored does."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import xsdaemons
from xenpciback_cli.xenstore.client import Perm, WatchEvent, XenstoreError, connect

PYXS_PYTHON = "/usr/bin/python3"


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    daemon = xsdaemons.start_embedded(tmp_path_factory.mktemp("embedded"), trace=True)
    yield daemon
    daemon.stop()


def tool(name):
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} not installed (apt install xenstore-utils)")
    return path


def run_tool(daemon, *argv, check=True):
    env = dict(os.environ, XENSTORED_PATH=daemon.socket)
    proc = subprocess.run([tool(argv[0]), *argv[1:]], env=env, capture_output=True, text=True,
                          timeout=20)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_xenstore_utils_round_trip(xenstored_daemon):
    run_tool(xenstored_daemon, "xenstore-write", "/u/a", "one", "/u/b", "two")
    assert run_tool(xenstored_daemon, "xenstore-read", "/u/a").stdout == "one\n"
    assert run_tool(xenstored_daemon, "xenstore-list", "/u").stdout.split() == ["a", "b"]
    run_tool(xenstored_daemon, "xenstore-chmod", "/u/a", "n0", "r5")
    out = run_tool(xenstored_daemon, "xenstore-ls", "-p", "/u").stdout
    assert 'a = "one"' in out and "(n0,r5)" in out
    run_tool(xenstored_daemon, "xenstore-rm", "/u/a")
    bad = run_tool(xenstored_daemon, "xenstore-read", "/u/a", check=False)
    assert bad.returncode != 0
    with connect(xenstored_daemon.socket) as client:
        assert client.get_perms("/u/b") == [Perm(0, "n")]


def test_xenstore_watch_tool(xenstored_daemon):
    env = dict(os.environ, XENSTORED_PATH=xenstored_daemon.socket)
    proc = subprocess.Popen([tool("xenstore-watch"), "-n", "2", "/uw"], env=env,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "/uw\n"  # the initial event: its watch is in place
        with connect(xenstored_daemon.socket) as client:
            client.write("/uw/x", "1")
        out, _ = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert out == "/uw/x\n"
    assert proc.returncode == 0


def test_pyxs_against_each_daemon(xenstored_daemon):
    if not Path(PYXS_PYTHON).exists() or subprocess.run(
            [PYXS_PYTHON, "-c", "import pyxs"], capture_output=True).returncode != 0:
        pytest.skip("python3-pyxs is not installed for /usr/bin/python3")
    script = f"""
import json, pyxs
with pyxs.Client(unix_socket_path={xenstored_daemon.socket!r}) as c:
    c[b'/py/a'] = b'v\\x00bin'
    out = {{'read': c[b'/py/a'].decode('latin-1'), 'list': [x.decode() for x in c.list(b'/py')]}}
    c.set_perms(b'/py/a', [b'b0', b'r3'])
    out['perms'] = [p.decode() for p in c.get_perms(b'/py/a')]
    c.transaction(); c[b'/py/t'] = b'1'; c.commit()
    out['tx'] = c[b'/py/t'].decode()
    out['domain_path'] = c.get_domain_path(3).decode()
    m = c.monitor(); m.watch(b'/py', b'tk')
    events = m.wait()
    first = next(events)
    c[b'/py/b'] = b'2'
    second = next(events)
    out['events'] = [[first[0].decode(), first[1].decode()], [second[0].decode(), second[1].decode()]]
    c.delete(b'/py/a')
    out['exists'] = c.exists(b'/py/a')
print(json.dumps(out))
"""
    proc = subprocess.run([PYXS_PYTHON, "-c", script], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out == {"read": "v\x00bin", "list": ["a"], "perms": ["b0", "r3"], "tx": "1",
                   "domain_path": "/local/domain/3",
                   "events": [["/py", "tk"], ["/py/b", "tk"]], "exists": False}


def test_domain_socket_acts_as_that_domain(embedded):
    with connect(embedded.socket) as dom0:
        dom0.introduce(12, 77, 3)
        dom0.mkdir("/local/domain/12")
        dom0.set_perms("/local/domain/12", [Perm(12, "n")])
        dom0.write("/secret", "x")
        path = embedded.socket + ".d/12"
        assert os.path.exists(path)
        with connect(path) as guest:
            guest.write("data/feature", "1")  # relative: /local/domain/12/data/feature
            assert dom0.read("/local/domain/12/data/feature") == b"1"
            with pytest.raises(XenstoreError) as exc:
                guest.read("/secret")
            assert exc.value.errno_name == "EACCES"
            with pytest.raises(XenstoreError):
                guest.introduce(13, 1, 1)
            guest.watch("data", "g")
            assert guest.next_event(2) == WatchEvent("data", "g")
            dom0.write("/local/domain/12/data/x", "2")
            assert guest.next_event(2) == WatchEvent("data/x", "g")
            dom0.release(12)
            with pytest.raises(XenstoreError):
                guest.read("data/feature")
        assert not os.path.exists(path)


def test_trace_records_every_message(embedded):
    with connect(embedded.socket) as client:
        client.write("/traced", "yes")
    text = embedded.trace.read_text()
    assert "IN" in text and "WRITE" in text and "(/traced yes)" in text
    assert "OUT" in text and "(OK )" in text


def test_tree_saved_on_clean_shutdown_and_reloaded(tmp_path):
    daemon = xsdaemons.start_embedded(tmp_path / "a")
    try:
        with connect(daemon.socket) as client:
            client.write("/keep/me", b"\x00\x01")
            client.set_perms("/keep/me", [Perm(3, "r")])
            client.introduce(4, 1, 1)
    finally:
        daemon.stop()  # SIGTERM: a clean shutdown
    assert Path(daemon.socket + ".state.json").exists()
    daemon = xsdaemons.start_embedded(tmp_path / "a")
    try:
        with connect(daemon.socket) as client:
            assert client.read("/keep/me") == b"\x00\x01"
            assert client.get_perms("/keep/me") == [Perm(3, "r")]
            assert client.is_domain_introduced(4)
        assert os.path.exists(daemon.socket + ".d/4")
    finally:
        daemon.stop()


def test_oversized_frame_drops_connection(embedded):
    import socket as s
    import struct

    sock = s.socket(s.AF_UNIX)
    sock.settimeout(5)
    sock.connect(embedded.socket)
    sock.sendall(struct.pack("<IIII", 2, 1, 0, 5000) + b"x" * 5000)
    assert sock.recv(100) == b""  # closed, like C xenstored
    sock.close()
    with connect(embedded.socket) as client:  # the daemon itself is fine
        client.write("/still", "up")


def test_sandbox_xenstored_refuses_a_live_socket(embedded):
    proc = subprocess.run([sys.executable, "-m", "xenpciback_cli", "sandbox", "xenstored",
                           "--socket", embedded.socket, "--no-state"],
                          capture_output=True, text=True, timeout=30, env=embedded.env)
    assert proc.returncode == 1
    assert proc.stderr.startswith("xen-pciback: error: ") and "already listening" in proc.stderr


def test_a_peer_that_never_reads_is_dropped_not_buffered_forever(tmp_path):
    import socket as s

    from xenpciback_cli.xenstore import wire
    from xenpciback_cli.xenstore.daemon import server

    daemon = xsdaemons.start_embedded(tmp_path / "d", extra=["--no-state"])
    try:
        greedy = s.socket(s.AF_UNIX)
        greedy.connect(daemon.socket)
        greedy.settimeout(10)
        request = wire.encode(wire.MessageType.READ, 1, 0, b"/big\0")
        with connect(daemon.socket) as client:
            client.write("/big", b"x" * 4000)
            # Ask for ~4 KiB replies without ever reading them, until the daemon gives up on us.
            sent = 0
            try:
                while sent < 4 * server.MAX_PENDING:
                    greedy.sendall(request * 64)
                    sent += 64 * 4000
            except OSError:
                pass
            assert client.read("/big") == b"x" * 4000  # everyone else is still served
        greedy.settimeout(5)
        drained = 0
        while True:
            try:
                chunk = greedy.recv(1 << 20)
            except OSError:
                break
            if not chunk:
                break
            drained += len(chunk)
        assert drained < 4 * server.MAX_PENDING  # the connection was closed, not fed forever
        greedy.close()
    finally:
        daemon.stop()

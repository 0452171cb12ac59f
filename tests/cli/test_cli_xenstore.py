"""``xen-pciback xenstore ...`` against Debian's real C xenstored, and the sandbox lifecycle."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.cli import invoke, ok, script
from xenpciback_cli.xenstore.client import Perm, connect

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.realdaemon
def test_commands_against_real_cxenstored(real_cxenstored_socket):
    sock = real_cxenstored_socket
    r = script("xenstore", "--socket", sock, "write", "/cli/a", "va\\x01", "/cli/b/c", "deep")
    assert r.code == 0, r.err
    with connect(sock) as client:
        assert client.read("/cli/a") == b"va\x01"
        client.set_perms("/cli/a", [Perm(0, "n"), Perm(7, "r")])
    r = script("xenstore", "read", "/cli/a", "/cli/b/c", env={"XENSTORED_PATH": sock})  # discovery
    assert r.code == 0, r.err
    assert r.out == "va\\x01\ndeep\n"
    r = script("xenstore", "--socket", sock, "ls", "-p", "/cli")
    assert r.out.splitlines() == ['a = "va\\x01"  (n0,r7)', 'b = ""  (n0)', ' c = "deep"  (n0)']
    r = script("--json", "xenstore", "ls", "--socket", sock, "/cli/b")
    assert json.loads(r.out) == [{"path": "/cli/b/c", "value": "deep"}]
    r = script("--json", "xenstore", "read", "--socket", sock, "/cli/a")
    assert json.loads(r.out) == {"/cli/a": "va\\x01"}
    r = script("xenstore", "--socket", sock, "rm", "/cli/b")
    assert r.code == 0
    r = script("xenstore", "--socket", sock, "read", "/cli/b/c")
    assert r.code == 1
    assert r.err == "xen-pciback: error: xenstore read /cli/b/c: ENOENT (No such file or directory)\n"


@pytest.mark.realdaemon
def test_watch_command_against_real_cxenstored(real_cxenstored_socket):
    sock = real_cxenstored_socket
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "xenpciback_cli", "--json", "xenstore",
                             "--socket", sock, "watch", "/cw", "--count", "2", "--timeout", "20"],
                            stdout=subprocess.PIPE, text=True, env=env)
    try:
        first = proc.stdout.readline()  # the initial event: the watch is in place
        assert json.loads(first) == {"path": "/cw", "watch": "/cw"}
        with connect(sock) as client:
            client.write("/cw/x", "1")
        rest, _ = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert json.loads(rest) == {"path": "/cw/x", "watch": "/cw"}
    assert proc.returncode == 0


@pytest.mark.realdaemon
def test_watch_timeout_ends_quietly(real_cxenstored_socket):
    r = script("xenstore", "--socket", real_cxenstored_socket, "watch", "/quiet", "--timeout", "0.3")
    assert r.code == 0
    assert r.out == "/quiet /quiet\n"  # the initial event only


def test_usage_errors(tmp_path):
    r = script("xenstore", "--socket", str(tmp_path / "none"), "write", "/only-path")
    assert r.code == 2 and "PATH VALUE pairs" in r.err
    r = script("xenstore", "--socket", str(tmp_path / "none"), "read", "/x")
    assert r.code == 1
    assert r.err.startswith("xen-pciback: error: xenstore ") and "cannot connect" in r.err
    r = script("sandbox", "stop")
    assert r.code == 2 and "--sandbox" in r.err


def test_sandbox_daemon_starts_on_demand_and_keeps_state(tmp_path):
    sandbox = tmp_path / "sb"
    sandbox.mkdir()
    try:
        r = script("--sandbox", str(sandbox), "xenstore", "write", "/sb/k", "v")
        assert r.code == 0, r.err
        assert (sandbox / "xenstore" / "socket").exists()
        r = script("--sandbox", str(sandbox), "xenstore", "read", "/sb/k")
        assert r.out == "v\n"
        r = script("--sandbox", str(sandbox), "--json", "sandbox", "stop")
        assert r.code == 0, r.err
        assert json.loads(r.out)["xenstored"]["stopped"] is True
        assert not (sandbox / "xenstore" / "socket").exists()
        r = script("--sandbox", str(sandbox), "sandbox", "stop")
        assert r.code == 0 and "not running" in r.err
        r = script("--sandbox", str(sandbox), "xenstore", "read", "/sb/k")  # restarted, reloaded
        assert r.out == "v\n", r.err
    finally:
        script("--sandbox", str(sandbox), "sandbox", "stop")


def test_missing_sandbox_is_one_line(tmp_path):
    r = script("--sandbox", str(tmp_path / "nope"), "xenstore", "ls")
    assert r.code == 1
    assert r.err.count("\n") == 1 and "does not exist" in r.err


def test_connect_sandbox_as_dom0_and_as_guest(tmp_path):
    from xenpciback_cli.xenstore.client import XenstoreError
    from xenpciback_cli.sandbox.xenstored import connect_sandbox, domain_socket_path, stop

    try:
        with connect_sandbox(tmp_path) as dom0:
            dom0.introduce(3, 1, 1)
            dom0.mkdir("/local/domain/3")
            dom0.set_perms("/local/domain/3", [Perm(3, "n"), Perm(0, "r")])
            assert os.path.exists(domain_socket_path(tmp_path, 3))
            with connect_sandbox(tmp_path, 3) as guest:
                guest.write("device/x", "1")
                try:
                    guest.write("/elsewhere", "no")
                    raise AssertionError("a guest wrote outside its home")
                except XenstoreError as exc:
                    assert exc.errno_name == "EACCES"
            assert dom0.read("/local/domain/3/device/x") == b"1"
    finally:
        assert stop(tmp_path) is not None


def test_sandbox_daemon_starts_from_a_relative_sandbox_path(tmp_path, monkeypatch):
    """`--sandbox S` is usually typed relative to the current directory."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "S").mkdir()
    try:
        ok("--sandbox", "S", "xenstore", "write", "/a", "1")
        assert ok("--sandbox", "S", "xenstore", "read", "/a").out.strip() == "1"
    finally:
        invoke("--sandbox", "S", "sandbox", "stop")

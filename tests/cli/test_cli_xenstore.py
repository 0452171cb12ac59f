"""``xen-pciback xenstore ...`` against Debian's real C xenstored, and the sandbox lifecycle."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from xenpciback_cli.xenstore.client import Perm, connect

REPO = Path(__file__).resolve().parents[2]


def xp(*args, env=None, timeout=30):
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = str(REPO) + os.pathsep + full_env.get("PYTHONPATH", "")
    full_env.pop("XEN_PCIBACK_SANDBOX", None)
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "xenpciback_cli", *args], capture_output=True,
                          text=True, timeout=timeout, env=full_env)


@pytest.mark.realdaemon
def test_commands_against_real_cxenstored(real_cxenstored_socket):
    sock = real_cxenstored_socket
    r = xp("xenstore", "--socket", sock, "write", "/cli/a", "va\\x01", "/cli/b/c", "deep")
    assert r.returncode == 0, r.stderr
    with connect(sock) as client:
        assert client.read("/cli/a") == b"va\x01"
        client.set_perms("/cli/a", [Perm(0, "n"), Perm(7, "r")])
    r = xp("xenstore", "read", "/cli/a", "/cli/b/c", env={"XENSTORED_PATH": sock})  # discovery
    assert r.returncode == 0, r.stderr
    assert r.stdout == "va\\x01\ndeep\n"
    r = xp("xenstore", "--socket", sock, "ls", "-p", "/cli")
    assert r.stdout.splitlines() == ['a = "va\\x01"  (n0,r7)', 'b = ""  (n0)', ' c = "deep"  (n0)']
    r = xp("--json", "xenstore", "ls", "--socket", sock, "/cli/b")
    assert json.loads(r.stdout) == [{"path": "/cli/b/c", "value": "deep"}]
    r = xp("--json", "xenstore", "read", "--socket", sock, "/cli/a")
    assert json.loads(r.stdout) == {"/cli/a": "va\\x01"}
    r = xp("xenstore", "--socket", sock, "rm", "/cli/b")
    assert r.returncode == 0
    r = xp("xenstore", "--socket", sock, "read", "/cli/b/c")
    assert r.returncode == 1
    assert r.stderr == "xen-pciback: error: xenstore read /cli/b/c: ENOENT (No such file or directory)\n"


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
    r = xp("xenstore", "--socket", real_cxenstored_socket, "watch", "/quiet", "--timeout", "0.3")
    assert r.returncode == 0
    assert r.stdout == "/quiet /quiet\n"  # the initial event only


def test_usage_errors(tmp_path):
    r = xp("xenstore", "--socket", str(tmp_path / "none"), "write", "/only-path")
    assert r.returncode == 2 and "PATH VALUE pairs" in r.stderr
    r = xp("xenstore", "--socket", str(tmp_path / "none"), "read", "/x")
    assert r.returncode == 1
    assert r.stderr.startswith("xen-pciback: error: xenstore ") and "cannot connect" in r.stderr
    r = xp("sandbox", "stop")
    assert r.returncode == 2 and "--sandbox" in r.stderr


def test_sandbox_daemon_starts_on_demand_and_keeps_state(tmp_path):
    sandbox = tmp_path / "sb"
    sandbox.mkdir()
    try:
        r = xp("--sandbox", str(sandbox), "xenstore", "write", "/sb/k", "v")
        assert r.returncode == 0, r.stderr
        assert (sandbox / "xenstore" / "socket").exists()
        r = xp("--sandbox", str(sandbox), "xenstore", "read", "/sb/k")
        assert r.stdout == "v\n"
        r = xp("--sandbox", str(sandbox), "--json", "sandbox", "stop")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["xenstored"]["stopped"] is True
        assert not (sandbox / "xenstore" / "socket").exists()
        r = xp("--sandbox", str(sandbox), "sandbox", "stop")
        assert r.returncode == 0 and "not running" in r.stderr
        r = xp("--sandbox", str(sandbox), "xenstore", "read", "/sb/k")  # restarted, reloaded
        assert r.stdout == "v\n", r.stderr
    finally:
        xp("--sandbox", str(sandbox), "sandbox", "stop")


def test_missing_sandbox_is_one_line(tmp_path):
    r = xp("--sandbox", str(tmp_path / "nope"), "xenstore", "ls")
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1 and "does not exist" in r.stderr


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
    from click.testing import CliRunner

    from xenpciback_cli.cli import cli

    monkeypatch.chdir(tmp_path)
    (tmp_path / "S").mkdir()
    runner = CliRunner()
    try:
        result = runner.invoke(cli, ["--sandbox", "S", "xenstore", "write", "/a", "1"])
        assert result.exit_code == 0, result.output
        result = runner.invoke(cli, ["--sandbox", "S", "xenstore", "read", "/a"])
        assert result.output.strip() == "1"
    finally:
        runner.invoke(cli, ["--sandbox", "S", "sandbox", "stop"])

"""The commands end to end in a sandbox: its embedded xenstored, a simulated guest with
pciback + pcifront peers, and trees checked with Debian's xenstore-ls -p."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from helpers.cli import Run, script


REPO = Path(__file__).resolve().parents[2]
OPTS = "msitranslate=0,power_mgmt=0,permissive=0,rdm_policy=strict"
BE = "/local/domain/0/backend/pci/5/0"


def run(sandbox: Path, *args: str, check: bool = True) -> Run:
    """This module's shorthand: the CLI in a real process on SANDBOX, checked unless told not to."""
    return script(*args, sandbox=sandbox, env={"NO_COLOR": "1"}, check=check, timeout=120)


def xenstore_ls(sandbox: Path, path: str) -> dict[str, tuple[str, str]]:
    """``xenstore-ls -f -p PATH`` parsed into path -> (value, perms)."""
    env = dict(os.environ, XENSTORED_PATH=str(sandbox / "xenstore" / "socket"))
    out = subprocess.run(["xenstore-ls", "-f", "-p", path], capture_output=True, text=True, env=env,
                         timeout=30)
    if out.returncode != 0:
        return {}
    tree = {}
    for line in out.stdout.splitlines():
        match = re.match(r'^(\S+) = "(.*)"[ .]*\((.*)\)$', line)
        assert match, line
        tree[match[1]] = (match[2], match[3])
    return tree


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    if shutil.which("xenstore-ls") is None:
        pytest.skip("xenstore-utils is not installed")
    s = tmp_path_factory.mktemp("sandbox") / "s"
    run(s, "sandbox", "init", str(s))
    yield s
    run(s, "sandbox", "stop", check=False)


def test_attach_hotplug_detach_in_the_sandbox(sandbox):
    run(sandbox, "sandbox", "domain", "create", "5", "--name", "web")
    out = run(sandbox, "attach", "0000:03:00.0", "--domid", "5", "--seize")
    assert out.out.startswith("0000:03:00.0 attached to domain 5 (backend entry 0)")
    status = json.loads(run(sandbox, "--json", "status", "--domid", "5").out)
    import time

    deadline = time.monotonic() + 60  # the simulated guest connects in the background (slowly under load)
    while status["backend_state_name"] != "Connected" and time.monotonic() < deadline:
        time.sleep(0.1)
        status = json.loads(run(sandbox, "--json", "status", "--domid", "5").out)
    assert status["backend_state_name"] == status["frontend_state_name"] == "Connected"
    rw = "n0,r5"
    assert xenstore_ls(sandbox, BE) == {f"{BE}/{k}": (v, rw) for k, v in {
        "frontend": "/local/domain/5/device/pci/0", "frontend-id": "5", "online": "1",
        "state": "4", "domain": "web", "key-0": "0000:03:00.0", "dev-0": "0000:03:00.0",
        "opts-0": OPTS, "state-0": "3", "num_devs": "1", "vdev-0": "0000:00:00.00",
        "root-0": "0000:00", "root_num": "1"}.items()}
    fe = xenstore_ls(sandbox, "/local/domain/5/device/pci/0")
    assert {k.rsplit("/", 1)[1]: v for k, v in fe.items()} == {
        "backend": (BE, "n5,r0"), "backend-id": ("0", "n5,r0"), "state": ("4", "n5,r0"),
        "pci-op-ref": ("8", "n5,r0"), "event-channel": ("8", "n5,r0"), "magic": ("7", "n5,r0")}
    assert xenstore_ls(sandbox, "/libxl/pci/0000-03-00-0") == {  # --seize recorded driver_path too
        "/libxl/pci/0000-03-00-0/driver_path": ("/sys/bus/pci/drivers/igb", "n0"),
        "/libxl/pci/0000-03-00-0/domid": ("5", "n0")}

    listing = run(sandbox, "--json", "list", "03:00.0").out
    assert [(r["state"], r["domid"], r["guest_address"], r["driver"]) for r in json.loads(listing)] == [
        ("attached", 5, "0000:00:00.0", "pciback")]

    run(sandbox, "hide", "0000:04:10.1")
    out = run(sandbox, "--json", "attach", "0000:04:10.1@4,permissive=1", "--domid", "5", "--timeout", "60")
    data = json.loads(out.out)
    assert data["hotplug"] is True and data["backend_state"] == 4 and data["backend_state_name"] == "Connected"
    assert data["devices"] == [{"bdf": "0000:04:10.1", "index": 1, "vdev": "0000:00:01.1"}]
    assert data["permissive"] == ["0000:04:10.1"]
    assert (sandbox / "sys/bus/pci/drivers/pciback/permissive").read_text().split() == ["0000:04:10.1"]

    out = run(sandbox, "detach", "0000:03:00.0", "--domid", "5", "--timeout", "60")
    assert out.out.strip() == "0000:03:00.0 detached from domain 5"
    assert "reset with" in out.err or "not reset" in out.err
    tree = xenstore_ls(sandbox, BE)
    assert tree[f"{BE}/dev-0"][0] == "0000:04:10.1" and tree[f"{BE}/vdevfn-0"][0] == "20"
    assert tree[f"{BE}/num_devs"][0] == "1" and f"{BE}/dev-1" not in tree
    assert xenstore_ls(sandbox, "/libxl/pci/0000-03-00-0") == {
        "/libxl/pci/0000-03-00-0/driver_path": ("/sys/bus/pci/drivers/igb", "n0")}

    listing = run(sandbox, "status", "--domid", "5").out
    assert "backend 4 (Connected), frontend 4 (Connected), 1 device(s)" in listing

    out = run(sandbox, "--json", "sandbox", "domain", "destroy", "5")
    assert json.loads(out.out)["released_devices"] == ["0000:04:10.1"]
    assert xenstore_ls(sandbox, BE) == {}


@pytest.mark.parametrize(("args", "code", "message"), [
    (("attach", "0000:03:00.0", "--domid", "77"), 2, "unknown domain 77: /local/domain/77 does not exist"),
    (("attach", "03:00.0@zz", "--domid", "6"), 2, "invalid PCI spec '03:00.0@zz': vslot 'zz' is not hex (0-1f)"),
    (("attach", "03:00.0@20", "--domid", "6"), 2, "invalid PCI spec '03:00.0@20': vslot '20' is above 0x1f"),
    (("attach", "03:00.*", "--domid", "6"), 2, "invalid PCI spec '03:00.*': a multi-function spec (BB:DD.*) needs "
     "a vslot (@VSLOT)"),
    (("attach", "03:00.0,permissive=maybe", "--domid", "6"), 2, "invalid PCI spec '03:00.0,permissive=maybe': "
     "permissive='maybe' is not a boolean (use 0/1, yes/no or true/false)"),
    (("attach", "03:00.1", "--domid", "6"), 3, "0000:03:00.1 is not seized (bound to igb): "
     "hide it first, or attach with --seize"),
    (("attach", "03:00.1", "--domid", "6", "--seize"), 3, "refusing to hide 0000:03:00.1: host-usage"),
    (("detach", "0000:03:00.0", "--domid", "77"), 2, "unknown domain 77: /local/domain/77 does not exist"),
    (("status", "--domid", "78"), 2, "unknown domain 78: /local/domain/78 does not exist"),
])
def test_bad_input_is_one_line_with_its_exit_code(sandbox, args, code, message):
    if run(sandbox, "status", "--domid", "6", check=False).code != 0:
        run(sandbox, "sandbox", "domain", "create", "6", "--no-guest")
    proc = run(sandbox, *args, check=False)
    assert proc.code == code
    assert proc.err.startswith(f"xen-pciback: error: {message}") and proc.err.count("\n") == 1
    assert proc.out == ""


def test_status_shows_a_guests_error_node_inertly(sandbox):
    if run(sandbox, "status", "--domid", "6", check=False).code != 0:
        run(sandbox, "sandbox", "domain", "create", "6", "--no-guest")
    env = dict(os.environ, XENSTORED_PATH=str(sandbox / "xenstore" / "socket"))
    subprocess.run(["xenstore-write", "/local/domain/6/error/device/pci/0/error",
                    "22 \x1b[31mred"], env=env, check=True, timeout=30)
    out = run(sandbox, "status", "--domid", "6").out
    assert "frontend error: 22 \\x1b[31mred" in out and "\x1b" not in out


def test_status_wait_returns_once_connected_and_names_the_stall_otherwise(sandbox):
    run(sandbox, "sandbox", "domain", "create", "11")
    run(sandbox, "attach", "0000:04:10.3", "--domid", "11", "--seize")
    out = run(sandbox, "status", "--domid", "11", "--wait", "60")
    assert out.out.startswith("domain 11 (guest11): backend 4 (Connected), frontend 4 (Connected)")

    run(sandbox, "sandbox", "domain", "create", "12", "--no-guest")  # nobody plays the guest
    run(sandbox, "attach", "0000:04:10.1", "--domid", "12", "--seize")
    out = run(sandbox, "status", "--domid", "12", "--wait", "0.5", check=False)
    assert out.code == 1 and out.out == ""
    assert out.err.count("\n") == 1
    assert re.match(r"xen-pciback: error: timed out after 0.5s waiting for domain 12's backend and "
                    r"guest to connect: backend state 1 \(Initialising\)", out.err), out.err
    run(sandbox, "detach", "0000:04:10.3", "--domid", "11")
    run(sandbox, "detach", "0000:04:10.1", "--domid", "12", "--force")
    run(sandbox, "sandbox", "domain", "destroy", "11")
    run(sandbox, "sandbox", "domain", "destroy", "12")

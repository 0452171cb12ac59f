"""The simulated pcifront (`sandbox guest N`) against a backend written from the contract
(tests/helpers/sandbox_backend.py): connect, scan, probe, --json, --record, --stay, timeouts,
stale files and the refusal for domains that have a simulated guest already."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from helpers.cli import PACKAGE_ROOT, invoke, ok
from helpers.sandbox_backend import TestBackend

from xenpciback_cli.pci.address import Bdf
from xenpciback_cli.sandbox.front_transport import FrontChannel, GrantedPage, channel_path
from xenpciback_cli.sandbox.pcifront import FrontendTimeout, PciFront, err_name

NIC = "0000:03:00.0"


@pytest.fixture()
def no_guest(sandbox):
    """Domain 5 without a simulated guest, the NIC attached to it (backend Initialising)."""
    ok("--sandbox", sandbox, "sandbox", "domain", "create", 5, "--no-guest")
    ok("--sandbox", sandbox, "hide", NIC)
    ok("--sandbox", sandbox, "attach", NIC, "--domid", 5)
    return sandbox


@pytest.fixture()
def backend(no_guest):
    be = TestBackend(no_guest, 5).start()
    yield be
    be.stop()


def test_guest_scans_and_probes_through_the_backend(no_guest, backend):
    run = ok("--sandbox", no_guest, "sandbox", "guest", 5, "--timeout", 10)
    lines = run.out.splitlines()
    assert "root buses: 0000:00" in lines[0]
    assert lines[1].startswith("0000:00:00.0 Ethernet controller [0200]:")
    assert "[8086:10c9]" in lines[1]
    assert any("memory decode: ok" in line for line in lines)
    assert any(line.startswith("0000:00:00.0 BAR0: ok - memory 32-bit, size 128K") for line in lines)
    assert any("MSI-X enable: ok - enabled with 3 of 10 vectors: PIRQs 100, 101, 102" in line
               for line in lines)
    assert ("enable_msix", 5, Bdf.parse(NIC), (0, 1, 2)) in backend.interrupts.calls
    assert ("disable_msix", 5, Bdf.parse(NIC)) in backend.interrupts.calls
    # every devfn of the root bus was asked for its vendor id (pcifront_scan_bus)
    assert backend.ops >= 256
    # it went away as the contract says: Closed, grant file and socket removed
    assert not list((no_guest / "xen" / "grant" / "5").iterdir())
    assert not (no_guest / "xen" / "evtchn" / "5-8.front").exists()
    state = ok("--sandbox", no_guest, "xenstore", "read", "/local/domain/5/device/pci/0/state")
    assert state.out.strip() == "6"


def test_guest_json_and_record(no_guest, backend, tmp_path):
    record = tmp_path / "ops.jsonl"
    run = ok("--sandbox", no_guest, "--json", "sandbox", "guest", 5, "--record", record)
    data = run.json()
    assert data["roots"] == ["0000:00"] and data["domid"] == 5
    assert [d["bdf"] for d in data["devices"]] == ["0000:00:00.0"]
    assert data["devices"][0]["class"] == "020000"
    steps = {s["step"]: s for s in data["probe"]}
    assert steps["MSI-X enable"]["ok"] and steps["MSI-X enable"]["ops"][-1]["result"]["vectors"] \
        == [100, 101, 102]
    lines = [json.loads(line) for line in record.read_text().splitlines()]
    assert (lines[0]["kind"], lines[0]["version"], lines[0]["mode"]) == ("header", 1, "vpci")
    ops = [x for x in lines if x["kind"] == "op"]
    assert len(ops) == data["ops"] == backend.ops
    absent = next(x for x in ops if x["guest"] == "0000:00:01.0")
    assert absent["op"] == "conf_read" and absent["err"] == -1 and absent["host"] is None
    states = [x["name"] for x in lines if x["kind"] == "state"]
    assert states == ["Initialised", "Connected", "Closing", "Closed"]
    assert all(x["end"] == "frontend" for x in lines if x["kind"] == "state")


def test_no_backend_times_out_naming_the_state(no_guest):
    start = time.monotonic()
    run = invoke("--sandbox", no_guest, "sandbox", "guest", 5, "--timeout", 0.5)
    assert run.code == 1
    assert time.monotonic() - start < 5
    assert "no backend answered within 0.5s" in run.error
    assert "Initialising (1)" in run.error and "the backend's move" in run.error
    assert len(run.err.strip().splitlines()) == 1


def test_backend_that_never_connects(no_guest):
    """The xenbus side runs but the page is never mapped: the frontend waits in Initialised."""
    be = TestBackend(no_guest, 5)
    be.xenbus._connect = lambda snap: []  # never goes Connected
    be.start()
    try:
        run = invoke("--sandbox", no_guest, "sandbox", "guest", 5, "--timeout", 0.5)
    finally:
        be.stop()
    assert run.code == 1
    assert "waiting for the backend to connect" in run.error
    assert "Initialised (3), the frontend Initialised (3)" in run.error
    assert "has not mapped the page" in run.error


def test_backend_that_never_answers_an_op(no_guest):
    be = TestBackend(no_guest, 5, answer=False).start()
    front = PciFront(no_guest, 5, timeout=0.4)
    try:
        front.connect()
        with pytest.raises(FrontendTimeout, match=r"conf_read on 0000:00:00.0 not answered.*"
                                                  r"Connected \(4\).*did not answer the op"):
            front.conf_read(Bdf(0, 0, 0, 0), 0, 4)
        assert be.notifications >= 1
    finally:
        front.close()
        be.stop()


def test_stale_socket_and_grant_files_are_replaced(no_guest, backend):
    stale = channel_path(no_guest, 5, 8, "front")
    stale.parent.mkdir(parents=True, exist_ok=True)
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    dead.bind(str(stale))
    dead.close()  # the file stays: a frontend that died
    grant = no_guest / "xen" / "grant" / "5" / "8"
    grant.parent.mkdir(parents=True, exist_ok=True)
    grant.write_bytes(b"\xff" * 4096)
    ok("--sandbox", no_guest, "sandbox", "guest", 5, "--timeout", 10)


def test_notify_without_a_backend_is_retried_not_an_error(tmp_path):
    channel = FrontChannel(tmp_path, 3, 9)
    try:
        assert channel.notify() is False  # nobody bound at .back
        back = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        back.bind(str(channel.peer))
        assert channel.notify() is True and back.recv(8) == b"\x01"
        back.sendto(b"x", str(channel.path))
        back.sendto(b"x", str(channel.path))
        assert channel.wait(1) == 2  # coalesced notifications drained at once
        assert channel.wait(0.05) == 0
        back.close()
    finally:
        channel.close()
    assert not channel.path.exists()


def test_grant_file_is_a_private_page(tmp_path):
    page = GrantedPage(tmp_path, 3, 77)
    try:
        info = os.stat(page.path)
        assert info.st_size == 4096 and info.st_mode & 0o777 == 0o600
        page.page[0] = 1
        assert page.path.read_bytes()[0] == 1  # shared mapping: the backend sees it
    finally:
        page.close()
    assert not page.path.exists()


def test_refuses_a_domain_with_a_simulated_guest(sandbox):
    ok("--sandbox", sandbox, "sandbox", "domain", "create", 6)
    run = invoke("--sandbox", sandbox, "sandbox", "guest", 6, "--timeout", 1)
    assert run.code == 3
    assert "has a simulated guest already" in run.error and "--no-guest" in run.error


def test_unknown_domain(sandbox):
    run = invoke("--sandbox", sandbox, "sandbox", "guest", 9)
    assert run.code == 2 and "unknown domain 9" in run.error


def test_err_names_come_from_pciif():
    assert err_name(0) == "success"
    assert err_name(-1) == "dev_not_found" and err_name(-4) == "not_implemented"
    assert err_name(-114) == "-EALREADY" and err_name(-6) == "-ENXIO"
    assert err_name(-99) == "error -99"


def test_stay_holds_until_sigterm(no_guest, backend):
    env = dict(os.environ, PYTHONPATH=PACKAGE_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-m", "xenpciback_cli", "--sandbox", str(no_guest),
                             "sandbox", "guest", "5", "--stay", "--timeout", "10"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            state = invoke("--sandbox", no_guest, "xenstore", "read",
                           "/local/domain/5/device/pci/0/state").out.strip()
            if state == "4" and backend.ops > 256:
                break
            time.sleep(0.1)
        time.sleep(0.3)
        assert proc.poll() is None, proc.communicate()
        assert (no_guest / "xen" / "evtchn" / "5-8.front").exists()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "holding domain 5's connection" in out
    assert not (no_guest / "xen" / "evtchn" / "5-8.front").exists()


def test_a_guest_recording_replays_through_our_engine(no_guest, backend, tmp_path):
    """The guest's trace under the test backend re-runs clean through our engine: device lines
    carry the host's config and settings, ops the host they reached; .gz written as read."""
    record = tmp_path / "guest.jsonl.gz"
    ok("--sandbox", no_guest, "sandbox", "guest", 5, "--record", record)
    out = invoke("--json", "replay", record, "--check")
    data = json.loads(out.out)
    assert data["devices"] == 1 and data["ops"] == backend.ops and data["events"] == 4
    assert out.code == 0 and data["mismatch_count"] == 0, data["mismatches"][:3]


class _PollingBackendChannel:
    """A backend that polls the page: it answers the moment bit 0 is set, before (or without)
    the frontend's notification, and notifies after its answer."""

    def __init__(self, page):
        self.page, self.queued = page, 0

    def _answer_if_posted(self):
        if self.page[0] & 1:
            self.page[0] &= 0xFE
            self.queued += 1

    def drain(self):
        self._answer_if_posted()  # it was quicker than the frontend's drain
        drained, self.queued = self.queued, 0
        return drained

    def notify(self):
        self._answer_if_posted()
        return True

    def wait(self, timeout):
        if self.queued:
            self.queued -= 1
            return True
        time.sleep(min(timeout, 0.01))
        return False


def test_an_answer_given_before_the_notification_is_not_drained_as_stale(no_guest):
    """Found with serve's page polling: the frontend drained stale notifications after setting
    bit 0, so an answer given at once had its notification drained and the op timed out."""
    from types import SimpleNamespace

    from xenpciback_cli.pv.abi import PciOp

    front = PciFront(no_guest, 5, timeout=1.0)
    page = memoryview(bytearray(4096))
    front.grant = SimpleNamespace(page=page)  # type: ignore[assignment]
    front.channel = _PollingBackendChannel(page)  # type: ignore[assignment]
    for _ in range(3):
        result = front.op(PciOp.CONF_READ, Bdf(0, 0, 0, 0), 0, 4)
        assert result.err == 0

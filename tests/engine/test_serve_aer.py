"""The AER relay end to end: ``serve foreground`` and ``sandbox aer`` on a sandbox, with the
simulated pcifront (a handler), the test's minimal frontend (no handler) and one that never
answers (the timeout); docs/backend-core.md's table of outcomes."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time

import pytest

from helpers.cli import invoke, ok
from helpers.pcifront import (
    PACKAGE_ROOT,
    Frontend,
    serve_log,
    start_guest,
    start_serve,
    stop_guest,
    stop_serve,
    wait_out,
)

NIC0, VF = "0000:03:00.0", "0000:04:10.1"
READ = 0


def guest(sandbox, domid, bdf):
    ok("--sandbox", sandbox, "sandbox", "domain", "create", domid, "--no-guest")
    ok("--sandbox", sandbox, "attach", bdf, "--domid", domid, "--seize")


def aer(sandbox, bdf, error):
    return json.loads(ok("--sandbox", sandbox, "--json", "sandbox", "aer", bdf, "--error", error,
                         "--timeout", "10").out)


def aer_state(front):
    return front.read(f"{front.be}/aerState")


def test_with_a_handler_the_guest_recovers_and_lives(sandbox):
    guest(sandbox, 7, NIC0)
    serve = start_serve(sandbox, "--aer-timeout", "5")
    front = start_guest(sandbox, 7)
    try:
        fatal = aer(sandbox, NIC0, "fatal")
        assert [(s["step"], s["result"]) for s in fatal["steps"]] == [
            ("error_detected", "need_reset"), ("slot_reset", "recovered"), ("resume", "none")]
        assert fatal["recovered"] and not fatal["aerfail"] and fatal["domid"] == 7
        nonfatal = aer(sandbox, NIC0, "nonfatal")
        assert [(s["step"], s["result"]) for s in nonfatal["steps"]] == [
            ("error_detected", "can_recover"), ("mmio_enabled", "recovered"), ("resume", "none")]
        out = wait_out(front, "AER resume on 0000:00:00.0: driver answered none", count=2)
        assert "AER error_detected (frozen) on 0000:00:00.0: driver answered need_reset" in out
        assert "AER mmio_enabled on 0000:00:00.0: driver answered recovered" in out
        log = serve_log(serve)
        assert "slot_reset on 0000:03:00.0 (guest 0000:00:00.0): relayed to the guest: recovered" \
            in log
        assert "AER recovery of 0000:03:00.0: recovered" in log and "aerfail" not in log
        text = ok("--sandbox", sandbox, "sandbox", "aer", NIC0, "--error", "corrected").out
        assert "corrected error, logged only" in text
        status = json.loads(ok("--sandbox", sandbox, "--json", "serve", "status").out)
        assert status["guests"][0]["aer_relayed"] == 6
        assert status["guests"][0]["aer_failed"] == 0
        xs = Frontend(sandbox, 7)
        try:
            assert aer_state(xs) is None
        finally:
            xs.close()
    finally:
        stop_guest(front)
        stop_serve(serve)


@pytest.mark.parametrize(("answer", "steps", "line"), [
    # The guest's driver gave up: the host's recovery fails there.
    ("disconnect", [("error_detected", "disconnect", True)],
     "relayed to the guest: disconnect: aerState=aerfail written"),
    # No driver of the guest's own took part (NONE): aerfail is written, and the host's recovery
    # still goes on through the guest, as the kernel's pciback does (the real-Xen tier saw it
    # relay three steps with the guest answering none to each).
    ("none", [("error_detected", "none", True), ("mmio_enabled", "none", True),
              ("resume", "none", False)],
     "AER recovery of 0000:03:00.0: not recovered by the guest"),
])
def test_a_guest_that_gives_up_or_has_no_driver_is_marked_aerfail(sandbox, answer, steps, line):
    guest(sandbox, 7, NIC0)
    serve = start_serve(sandbox, "--aer-timeout", "5")
    front = start_guest(sandbox, 7, "--aer-result", answer)
    try:
        result = aer(sandbox, NIC0, "nonfatal")
        assert [(s["step"], s["result"], s["aerfail"]) for s in result["steps"]] == steps
        assert result["aerfail"] and not result["recovered"]
        assert line in serve_log(serve)
    finally:
        stop_guest(front)
        stop_serve(serve)


@pytest.fixture
def two_raw_guests(sandbox):
    guest(sandbox, 7, NIC0)
    guest(sandbox, 8, VF)
    serve = start_serve(sandbox, "--aer-timeout", "0.6")
    fronts = [Frontend(sandbox, 7), Frontend(sandbox, 8, ref=12, port=6)]
    try:
        for front in fronts:
            front.connect()
        yield sandbox, serve, fronts
    finally:
        for front in fronts:
            front.close()
        stop_serve(serve)


def test_without_a_handler_aerfail_is_written_and_logged(two_raw_guests):
    sandbox, serve, (a, b) = two_raw_guests
    result = aer(sandbox, NIC0, "fatal")
    assert result["aerfail"] and not result["recovered"]
    assert [(s["step"], s["outcome"], s["result"]) for s in result["steps"]] == [
        ("error_detected", "no handler", "can_recover")]             # Linux's default
    assert aer_state(a) == "aerfail" and aer_state(b) is None
    assert "0000:03:00.0: the guest has no AER handler: aerState=aerfail written" in \
        serve_log(serve)
    assert struct.unpack_from("<I", a.page, 0)[0] & 4 == 0              # nothing asked
    assert b.op(READ, 1, 0, 2)[:2] == (0, 0x8086)


def test_a_guest_that_never_answers_times_out_alone(two_raw_guests):
    sandbox, serve, (a, b) = two_raw_guests
    a.page[0:4] = struct.pack("<I", 2)                                 # "I have a handler"
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "xenpciback_cli", "--sandbox", str(sandbox),
                             "--json", "sandbox", "aer", NIC0, "--error", "fatal"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=dict(os.environ, PYTHONPATH=PACKAGE_ROOT))
    try:
        deadline = time.monotonic() + 5
        while not struct.unpack_from("<I", a.page, 0)[0] & 4:          # the request arrives
            assert time.monotonic() < deadline, serve_log(serve)
            time.sleep(0.01)
        cmd, err, domain, bus, devfn = struct.unpack_from("<IiIII", a.page, 552)
        assert (cmd, err, domain, bus, devfn) == (6, 2, 0, 0, 0)        # detected, frozen
        for _ in range(10):                                             # the other guest: served
            assert b.op(READ, 1, 0, 4, timeout=0.5)[0] == 0
        out, err_text = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err_text
    result = json.loads(out)
    assert [(s["step"], s["outcome"]) for s in result["steps"]] == [("error_detected", "timed out")]
    assert 0.5 < time.monotonic() - started < 5
    assert struct.unpack_from("<I", a.page, 0)[0] & 4 == 0             # the bit taken back
    assert aer_state(a) == "aerfail" and aer_state(b) is None
    assert "did not answer within 0.6s: aerState=aerfail written" in serve_log(serve)
    assert b.op(READ, 1, 0, 4)[:2] == (0, 0x10CA8086)


def test_aer_refusals(sandbox):
    serve = start_serve(sandbox)
    try:
        result = aer(sandbox, "0000:03:00.0", "fatal")
        assert result["why"] == "not exported to a served guest" and result["domid"] is None
        assert ok("--sandbox", sandbox, "--json", "serve", "status").out
    finally:
        stop_serve(serve)
    gone = invoke("--sandbox", sandbox, "sandbox", "aer", NIC0)
    assert gone.code == 1 and "is 'xen-pciback serve foreground' running?" in gone.err
    assert invoke("--sandbox", sandbox, "sandbox", "aer", "zz").code == 2

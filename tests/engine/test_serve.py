"""``serve foreground`` as a real process on a sandbox, driven by a frontend written from
docs/sandbox-protocol.md (tests/helpers/pcifront.py): ops, MSI-X, status, isolation, restart."""

from __future__ import annotations

import json
import os
import signal
import struct
import time

import pytest

from helpers.cli import ok
from helpers.pcifront import Frontend, serve_log, start_serve, stop_serve

NIC0, VF = "0000:03:00.0", "0000:04:10.1"
VF_IDS = 0x10CA8086  # at 00:00.1: vpci keeps the function number
READ, WRITE, ENABLE_MSIX = 0, 1, 4


def guest(sandbox, domid, bdf):
    ok("--sandbox", sandbox, "sandbox", "domain", "create", domid, "--no-guest")
    ok("--sandbox", sandbox, "attach", bdf, "--domid", domid, "--seize")


@pytest.fixture
def two_guests(sandbox):
    guest(sandbox, 7, NIC0)
    guest(sandbox, 8, VF)
    proc = start_serve(sandbox)
    fronts = [Frontend(sandbox, 7), Frontend(sandbox, 8, ref=12, port=6)]
    try:
        for front in fronts:
            front.connect()
        yield sandbox, proc, fronts
    finally:
        for front in fronts:
            front.close()
        stop_serve(proc)


def test_ops_msix_and_status_through_serve(two_guests):
    sandbox, proc, (a, _b) = two_guests
    assert a.read(f"{a.be}/vdev-0") and a.read(f"{a.be}/root-0") == "0000:00"
    assert a.op(READ, 0, 0, 4)[:2] == (0, 0x10C98086)
    assert a.op(READ, 0x08, 0, 4)[0] == -1                      # no device at 00:01.0
    assert a.op(WRITE, 0, 0xFC, 4, 0xFFFFFFFF)[0] == 0           # denied, answered 0
    err, value, vectors = a.op(ENABLE_MSIX, 0, 0, 0, 3, entries=(0, 1, 2))
    assert (err, value) == (0, 0) and len(set(vectors[:3])) == 3 and all(vectors[:3])
    config = (sandbox / "sys/bus/pci/devices" / NIC0 / "config").read_bytes()
    assert struct.unpack_from("<H", config, 0x72)[0] & 0x8000     # MSI-X enable, as the kernel
    assert a.op(ENABLE_MSIX, 0, 0, 0, 1, entries=(0,))[0] == -114  # already on (XSA-157)
    status = json.loads(ok("--sandbox", sandbox, "--json", "serve", "status").out)
    by_id = {g["domid"]: g for g in status["guests"]}
    assert by_id[7]["state"] == "connected" and by_id[7]["ops_served"] == 5
    assert by_id[7]["devices"][0]["msix"] and by_id[7]["writes_denied"] >= 1
    assert by_id[8]["devices"][0]["host"] == VF
    text = ok("--sandbox", sandbox, "serve", "status").out
    assert "domain" not in text and NIC0 in text
    mine = json.loads(ok("--sandbox", sandbox, "--json", "status", "--domid", 7).out)["serve"]
    assert (mine["ops_served"], mine["errors"], mine["pid"]) == (5, 0, proc.pid)
    assert mine["writes_denied"] >= 1 and mine["state"] == "connected"
    line = ok("--sandbox", sandbox, "status", "--domid", 8).out
    assert f"serve (pid {proc.pid}): connected, 0 ops served, 0 writes denied, 0 error(s)" in line
    log = serve_log(proc)
    assert "domain 7: guest connected" in log and "MSI-X enabled on 0000:03:00.0 with 3" in log
    assert log.count("write denied") == 1


def test_one_guests_garbage_flood_and_vanishing_do_not_touch_the_other(two_guests):
    _sandbox, proc, (a, b) = two_guests
    a.post(os.urandom(548))                                      # garbage op: answered
    assert a.answer()[0] in (-1, -2, -4, 0)
    assert b.op(READ, 1, 0, 4)[:2] == (0, VF_IDS)
    for _ in range(5000):                                        # XSA-332 flood, no op
        a.notify()
    assert b.op(READ, 1, 0, 2)[:2] == (0, 0x8086)
    a.post(b"\0" * 548)                                          # page rewritten mid-op
    a.page[4:8] = struct.pack("<I", 1)
    b.op(READ, 1, 0, 2)
    a.xs.write(f"{a.fe}/event-channel", "junk")                  # bogus xenstore value
    a.sock.close()                                               # frontend vanishes
    os.unlink(a.channel("front"))
    a.post(struct.pack("<IiIIIiiII", READ, 0, 0, 0, 0, 0, 4, 0, 0) + b"\0" * 512)
    started = time.monotonic()
    for _ in range(20):
        assert b.op(READ, 1, 0, 4)[:2] == (0, VF_IDS)
    assert time.monotonic() - started < 3
    assert proc.poll() is None
    assert "throttled" in serve_log(proc)


def test_restart_mid_stream_answers_the_pending_op(two_guests):
    sandbox, proc, (a, b) = two_guests
    assert a.op(READ, 0, 0, 4)[:2] == (0, 0x10C98086)
    assert stop_serve(proc) == 0                                 # SIGTERM: drained, exit 0
    assert a.read(f"{a.be}/state") == "4"                        # guests stay Connected
    a.post(struct.pack("<IiIIIiiII", READ, 0, 0, 0, 0, 0, 2, 0, 0) + b"\0" * 512)
    second = start_serve(sandbox)
    try:
        assert a.answer(5)[:2] == (0, 0x8086)                    # the pending op, answered
        assert b.op(READ, 1, 0, 4)[:2] == (0, VF_IDS)
        second.send_signal(signal.SIGKILL)                       # mid-stream, no goodbye
        second.wait(5)
        a.post(struct.pack("<IiIIIiiII", READ, 0, 0, 0, 0, 2, 2, 0, 0) + b"\0" * 512)
        third = start_serve(sandbox)
        try:
            assert a.answer(5)[:2] == (0, 0x10C9)
            assert "resuming after a restart" in serve_log(third)
        finally:
            stop_serve(third)
    finally:
        stop_serve(second)


def test_a_vfs_msix_enable_follows_its_pfs_memory_decode(two_guests):
    sandbox, _proc, (_a, b) = two_guests
    pf = sandbox / "sys/bus/pci/devices/0000:03:00.1/config"
    vf = (sandbox / "sys/bus/pci/devices" / VF / "config").read_bytes()
    assert not struct.unpack_from("<H", vf, 0x04)[0] & 0x2          # a VF's own: hardwired 0
    config = bytearray(pf.read_bytes())
    config[0x04] |= 0x2                                              # PF decodes memory
    pf.write_bytes(bytes(config))
    err, _value, vectors = b.op(ENABLE_MSIX, 1, 0, 0, 2, entries=(0, 1))
    assert err == 0 and all(vectors[:2])
    assert b.op(5, 1)[0] == 0                                        # disable_msix
    config[0x04] &= ~0x2                                             # PF's decode off
    pf.write_bytes(bytes(config))
    assert b.op(ENABLE_MSIX, 1, 0, 0, 2, entries=(0, 1))[0] == -6    # -ENXIO, as Linux


def test_sigkill_mid_stream_the_simulated_guest_sees_every_op_answered(sandbox):
    import threading

    from xenpciback_cli.pci.address import Bdf
    from xenpciback_cli.sandbox.pcifront import PciFront

    guest(sandbox, 7, NIC0)
    proc = start_serve(sandbox)
    front = PciFront(sandbox, 7, timeout=8)
    answers: list[tuple[int, int]] = []
    failed: list[BaseException] = []
    first = threading.Event()

    def stream() -> None:
        try:
            while len(answers) < 400:
                result = front.conf_read(Bdf(0, 0, 0, 0), 0, 4)
                answers.append((result.err, result.value))
                first.set()
        except BaseException as exc:  # noqa: BLE001 - reported below
            failed.append(exc)
            first.set()

    second = None
    try:
        front.connect()
        worker = threading.Thread(target=stream, daemon=True)
        worker.start()
        assert first.wait(5)
        proc.send_signal(signal.SIGKILL)                         # mid-stream, no goodbye
        proc.wait(5)
        killed_at = len(answers)
        second = start_serve(sandbox)
        worker.join(20)
        assert not worker.is_alive() and not failed, failed
        assert killed_at < 400 and set(answers) == {(0, 0x10C98086)}  # every op answered right
        assert "resuming after a restart" in serve_log(second)
    finally:
        front.close()
        stop_serve(proc)
        if second is not None:
            stop_serve(second)


DISABLE_MSIX = 5
NIC0_RECORD = "7-0000-03-00-0.json"


def _hypervisor(sandbox):
    path = sandbox / "xen" / "pirqs.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _msix_enable_bit(sandbox) -> int:
    config = (sandbox / "sys/bus/pci/devices" / NIC0 / "config").read_bytes()
    return struct.unpack_from("<H", config, 0x72)[0] & 0x8000


def test_msix_survives_a_sigkill_restart_without_a_second_mapping(two_guests):
    sandbox, proc, (a, _b) = two_guests
    err, _value, vectors = a.op(ENABLE_MSIX, 0, 0, 0, 3, entries=(0, 1, 2))
    assert err == 0 and len(_hypervisor(sandbox)[f"7/{NIC0}"]) == 3
    record = sandbox / "run" / "interrupts" / NIC0_RECORD
    assert os.stat(record).st_mode & 0o777 == 0o600
    assert json.loads(record.read_text())["pirqs"] == list(vectors[:3])
    proc.send_signal(signal.SIGKILL)                             # no goodbye
    proc.wait(5)
    second = start_serve(sandbox)
    try:
        assert a.op(ENABLE_MSIX, 0, 0, 0, 3, entries=(0, 1, 2))[0] == -114  # still on
        assert len(_hypervisor(sandbox)[f"7/{NIC0}"]) == 3       # not mapped twice
        assert a.op(DISABLE_MSIX, 0)[0] == 0
        assert f"7/{NIC0}" not in _hypervisor(sandbox)           # the adopted PIRQs unmapped
        assert not _msix_enable_bit(sandbox) and not record.exists()
        err, _value, again = a.op(ENABLE_MSIX, 0, 0, 0, 3, entries=(0, 1, 2))
        assert err == 0 and again[:3] == vectors[:3]
        assert len(_hypervisor(sandbox)[f"7/{NIC0}"]) == 3
        assert "MSI-X on 0000:03:00.0 taken over after a restart (3 PIRQ(s))" in serve_log(second)
    finally:
        stop_serve(second)


def test_a_record_the_hardware_contradicts_is_dropped_with_one_line(two_guests):
    sandbox, proc, (a, _b) = two_guests
    assert a.op(ENABLE_MSIX, 0, 0, 0, 2, entries=(0, 1))[0] == 0
    proc.send_signal(signal.SIGKILL)
    proc.wait(5)
    path = sandbox / "sys/bus/pci/devices" / NIC0 / "config"
    config = bytearray(path.read_bytes())                        # the device was reset meanwhile
    struct.pack_into("<H", config, 0x72, struct.unpack_from("<H", config, 0x72)[0] & ~0x8000)
    path.write_bytes(bytes(config))
    second = start_serve(sandbox)
    try:
        log = serve_log(second)
        assert log.count("MSI/MSI-X record of 0000:03:00.0 dropped: ") == 1
        assert "enable bit is clear" in log
        assert not (sandbox / "run" / "interrupts" / NIC0_RECORD).exists()
        assert a.op(ENABLE_MSIX, 0, 0, 0, 2, entries=(0, 1))[0] == 0  # the guest may enable
    finally:
        stop_serve(second)


def test_a_record_left_before_a_first_export_is_not_taken_over(sandbox):
    guest(sandbox, 7, NIC0)
    records = sandbox / "run" / "interrupts"                     # an earlier attachment's leftover
    records.mkdir(parents=True, exist_ok=True)
    (records / NIC0_RECORD).write_text(json.dumps({"domid": 7, "host": NIC0, "kind": "msix",
                                                   "entries": [0], "pirqs": [99]}))
    os.chmod(records / NIC0_RECORD, 0o600)
    path = sandbox / "sys/bus/pci/devices" / NIC0 / "config"
    config = bytearray(path.read_bytes())                        # and the enable bit agreeing
    struct.pack_into("<H", config, 0x72, struct.unpack_from("<H", config, 0x72)[0] | 0x8000)
    path.write_bytes(bytes(config))
    proc = start_serve(sandbox)
    front = Frontend(sandbox, 7)
    try:
        front.connect()
        assert not (records / NIC0_RECORD).exists()
        assert "taken over" not in serve_log(proc)
    finally:
        front.close()
        stop_serve(proc)


# -- found on real Xen (tests/realxen) ----------------------------------------------------------------
def test_ops_posted_during_a_handshake_are_answered_between_its_steps(monkeypatch):
    """A real pcifront rescans as soon as the backend says Reconfigured and gives up on an op
    after 2 s; a handshake step re-reads xenstore (seconds in an emulated dom0). So the ops a
    guest posted are answered after each step's actions, before the next re-read."""
    from types import SimpleNamespace

    from xenpciback_cli.engine.serve import Server

    server = Server(SimpleNamespace(), None, None, None)  # type: ignore[arg-type]
    order: list[object] = []
    steps = iter([["export", "state 8"], ["state 4"], []])
    guest = SimpleNamespace(xenbus=SimpleNamespace(step=lambda snap: next(steps)))
    server.guests[5] = guest  # type: ignore[assignment]
    monkeypatch.setattr(server, "_snapshot", lambda domid: SimpleNamespace(backend={"state": "7"}))
    monkeypatch.setattr(server, "_carry_out", lambda g, actions: order.append(tuple(actions)))
    monkeypatch.setattr(server, "_answer_posted_ops", lambda: order.append("ops"))
    server._settle(5)
    assert order == [("export", "state 8"), "ops", ("state 4",), "ops"]
    server.guests.clear()
    server.close()


def test_answer_posted_ops_serves_only_guests_whose_channel_is_ready(monkeypatch):
    import socket

    from xenpciback_cli.engine.serve import Guest, Server

    server = Server(None, None, None, None)  # type: ignore[arg-type]
    ready_r, ready_w = socket.socketpair()
    quiet_r, quiet_w = socket.socketpair()
    ready = Guest(domid=1, xenbus=None, session=None)  # type: ignore[arg-type]
    quiet = Guest(domid=2, xenbus=None, session=None)  # type: ignore[arg-type]
    server.guests.update({1: ready, 2: quiet})
    server.selector.register(ready_r, 1, ready)  # EVENT_READ
    server.selector.register(quiet_r, 1, quiet)
    served: list[int] = []
    monkeypatch.setattr(server, "serve_one", lambda g: served.append(g.domid))
    ready_w.send(b"\0")
    server._answer_posted_ops()
    assert served == [1] and not ready.pending
    for sock in (ready_r, ready_w, quiet_r, quiet_w):
        server.selector.unregister(sock) if sock in (ready_r, quiet_r) else None
        sock.close()
    server.guests.clear()
    server.close()

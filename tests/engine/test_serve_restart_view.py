"""What a guest reads must not change because ``serve`` restarted: the parts of config space the
filter keeps virtual (COMMAND's bits the hardware does not hold for the guest) come back as the
guest left them, also after SIGKILL. Found on real Xen (tests/realxen): after a restart the NIC's
COMMAND gained INTx-disable, which our own MSI-X enable had set in the hardware."""

from __future__ import annotations

import signal

import pytest

from helpers.cli import ok
from helpers.pcifront import Frontend, start_serve, stop_serve

NIC = "0000:03:00.0"
READ, WRITE, ENABLE_MSIX, DISABLE_MSIX = 0, 1, 4, 5
MEMORY, MASTER, INTX_DISABLE = 0x2, 0x4, 0x400


@pytest.fixture
def guest(sandbox):
    ok("--sandbox", sandbox, "sandbox", "domain", "create", 7, "--no-guest")
    ok("--sandbox", sandbox, "attach", NIC, "--domid", 7, "--seize")
    proc = start_serve(sandbox)
    front = Frontend(sandbox, 7)
    front.connect()
    yield sandbox, proc, front
    front.close()


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM])
def test_command_reads_the_same_after_a_restart(guest, how):
    sandbox, proc, front = guest
    assert front.op(WRITE, 0, 0x04, 2, MEMORY | MASTER)[0] == 0   # a driver's probe
    assert front.op(ENABLE_MSIX, 0, 0, 0, 2, entries=(0, 1))[0] == 0
    before = front.op(READ, 0, 0x04, 2)
    assert before[0] == 0 and before[1] & (MEMORY | MASTER) == MEMORY | MASTER
    proc.send_signal(how)
    proc.wait(10)
    second = start_serve(sandbox)
    try:
        after = front.op(READ, 0, 0x04, 2, timeout=10)
        assert after[:2] == before[:2], f"COMMAND {before[1]:#06x} became {after[1]:#06x}"
        assert front.op(DISABLE_MSIX, 0)[0] == 0
        assert front.op(READ, 0, 0x04, 2)[1] & INTX_DISABLE == before[1] & INTX_DISABLE
    finally:
        stop_serve(second)


def test_intx_disable_the_guest_set_survives_a_restart(guest):
    sandbox, proc, front = guest
    assert front.op(WRITE, 0, 0x04, 2, MEMORY | MASTER | INTX_DISABLE)[0] == 0
    before = front.op(READ, 0, 0x04, 2)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    second = start_serve(sandbox)
    try:
        assert front.op(READ, 0, 0x04, 2, timeout=10)[:2] == before[:2]
    finally:
        stop_serve(second)


@pytest.mark.parametrize("garbage", [b"{", b'{"domid": 7, "host": "0000:03:00.0", "command": 70000, '
                                         b'"enabled": true}',
                                     b'{"domid": 8, "host": "0000:03:00.0", "command": 6, "enabled": true}',
                                     b'{"domid": 7, "host": "0000:03:00.0", "command": 6, "enabled": 1}'])
def test_a_bad_view_record_is_dropped_with_one_line(guest, garbage):
    from helpers.pcifront import serve_log

    sandbox, proc, front = guest
    assert front.op(WRITE, 0, 0x04, 2, MEMORY | MASTER)[0] == 0
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    (record,) = (sandbox / "run" / "views").iterdir()
    assert record.stat().st_mode & 0o777 == 0o600
    record.write_bytes(garbage)
    second = start_serve(sandbox)
    try:
        assert front.op(READ, 0, 0, 4, timeout=10)[:2] == (0, 0x10C98086)
        assert "COMMAND view record of 0000:03:00.0 dropped" in serve_log(second)
    finally:
        stop_serve(second)


def test_a_record_left_from_an_earlier_attachment_is_not_taken_back(guest):
    """detach while serve was stopped leaves its record; a fresh attachment of the same device to
    the same domain starts from the hardware, as a first export does, and replaces the record."""
    sandbox, proc, front = guest
    assert front.op(WRITE, 0, 0x04, 2, MEMORY)[0] == 0
    stop_serve(proc)
    front.close()
    ok("--sandbox", sandbox, "detach", NIC, "--domid", 7, "--force")
    ok("--sandbox", sandbox, "attach", NIC, "--domid", 7)
    second = start_serve(sandbox)
    fresh = Frontend(sandbox, 7)
    try:
        fresh.connect(timeout=10)
        config = (sandbox / "sys/bus/pci/devices" / NIC / "config").read_bytes()
        hardware = int.from_bytes(config[4:6], "little")
        assert hardware != MEMORY
        assert fresh.op(READ, 0, 0x04, 2, timeout=10)[:2] == (0, hardware)
    finally:
        fresh.close()
        stop_serve(second)

"""backend/aer.py: the table of outcomes in docs/backend-core.md, on a bytearray page, with the
caller's clock (no I/O, no sleeping)."""

from __future__ import annotations

import struct

import pytest

from xenpciback_cli.backend.aer import AerRelay, AerRequest, AerStep, Outcome, next_step
from xenpciback_cli.pci.address import Bdf
from xenpciback_cli.pv.abi import ChannelState, ErsResult

HOST, GUEST = Bdf.parse("0000:03:00.0"), Bdf.parse("0000:00:02.1")
DETECTED = AerRequest(HOST, AerStep.ERROR_DETECTED, ChannelState.FROZEN)


def relay(timeout=10.0):
    return AerRelay(7, lambda host: GUEST if host == HOST else None, timeout=timeout)


def page(flags=2):
    buf = bytearray(4096)
    struct.pack_into("<I", buf, 0, flags)
    return buf


def flags(buf):
    return struct.unpack_from("<I", buf, 0)[0]


def answer(buf, result):
    struct.pack_into("<i", buf, 556, result)
    struct.pack_into("<I", buf, 0, flags(buf) & ~4)


def test_relayed_request_and_guest_answer():
    r, buf = relay(), page(flags=3)                       # op pending too: bit 0 untouched
    assert r.start(DETECTED, buf, 100.0) is None
    assert struct.unpack_from("<IiIII", buf, 552) == (6, 2, 0, 0, 2 << 3 | 1)
    assert flags(buf) == 7 and r.busy and r.deadline == 110.0
    assert r.poll(buf, 105.0) is None                     # still waiting
    answer(buf, ErsResult.NEED_RESET)
    decision = r.poll(buf, 106.0)
    assert decision is not None and decision.outcome is Outcome.RELAYED
    assert decision.result is ErsResult.NEED_RESET and not decision.aerfail
    assert "relayed to the guest: need_reset" in decision.line and not r.busy
    assert r.start(DETECTED, buf, 0) is None
    with pytest.raises(RuntimeError):                     # one request in aer_op at a time
        r.start(DETECTED, buf, 0)


@pytest.mark.parametrize("step, state, cmd, err", [
    (AerStep.MMIO_ENABLED, ChannelState.NORMAL, 8, 1), (AerStep.SLOT_RESET, ChannelState.FROZEN, 9, 1),
    (AerStep.RESUME, ChannelState.NORMAL, 7, 1), (AerStep.ERROR_DETECTED, ChannelState.NORMAL, 6, 1)])
def test_each_step_is_written_as_linux_does(step, state, cmd, err):
    r, buf = relay(), page()
    r.start(AerRequest(HOST, step, state), buf, 0.0)
    assert struct.unpack_from("<Ii", buf, 552) == (cmd, err)


@pytest.mark.parametrize("step, outcome, result, aerfail", [
    (AerStep.ERROR_DETECTED, Outcome.NO_HANDLER, ErsResult.CAN_RECOVER, True),
    (AerStep.RESUME, Outcome.NO_HANDLER, ErsResult.NONE, True),
    (AerStep.MMIO_ENABLED, Outcome.NO_HANDLER, ErsResult.RECOVERED, False),
    (AerStep.SLOT_RESET, Outcome.NO_HANDLER, ErsResult.RECOVERED, False)])
def test_no_handler(step, outcome, result, aerfail):
    buf = page(flags=0)
    decision = relay().start(AerRequest(HOST, step), buf, 0.0)
    assert decision is not None and (decision.outcome, decision.result, decision.aerfail) == \
        (outcome, result, aerfail)
    assert flags(buf) == 0 and buf[552:572] == bytes(20)   # nothing asked
    assert "no AER handler" in decision.line


def test_not_exported_and_not_connected():
    other = AerRequest(Bdf.parse("0000:05:00.0"), AerStep.ERROR_DETECTED)
    decision = relay().start(other, page(), 0.0)
    assert decision is not None and decision.outcome is Outcome.NOT_EXPORTED
    assert decision.result is ErsResult.CAN_RECOVER and not decision.aerfail
    decision = relay().start(DETECTED, None, 0.0)
    assert decision is not None and decision.outcome is Outcome.NOT_CONNECTED and decision.aerfail


@pytest.mark.parametrize("result", [ErsResult.NONE, ErsResult.DISCONNECT, 99, -4])
def test_guest_giving_up_or_garbage_is_aerfail(result):
    r, buf = relay(), page()
    r.start(DETECTED, buf, 0.0)
    answer(buf, result)
    decision = r.poll(buf, 1.0)
    assert decision is not None and decision.aerfail and decision.outcome is Outcome.RELAYED


def test_timeout_takes_the_bit_back_and_frees_the_relay():
    r, buf = relay(timeout=2.0), page()
    r.start(DETECTED, buf, 10.0)
    assert r.poll(buf, 11.99) is None
    decision = r.poll(buf, 12.0)
    assert decision is not None and decision.outcome is Outcome.TIMED_OUT and decision.aerfail
    assert decision.result is ErsResult.CAN_RECOVER                    # Linux's default
    assert flags(buf) & 4 == 0 and not r.busy and r.deadline is None
    assert "did not answer within 2s: aerState=aerfail" in decision.line
    assert r.start(DETECTED, buf, 13.0) is None                        # usable again


def test_disconnect_while_waiting():
    r, buf = relay(), page()
    r.start(DETECTED, buf, 0.0)
    decision = r.cancel()
    assert decision is not None and decision.outcome is Outcome.NOT_CONNECTED and not r.busy
    assert r.cancel() is None


@pytest.mark.parametrize("step, result, following", [
    (AerStep.ERROR_DETECTED, ErsResult.CAN_RECOVER, AerStep.MMIO_ENABLED),
    (AerStep.ERROR_DETECTED, ErsResult.NONE, AerStep.MMIO_ENABLED),
    (AerStep.ERROR_DETECTED, ErsResult.NEED_RESET, AerStep.SLOT_RESET),
    (AerStep.ERROR_DETECTED, ErsResult.RECOVERED, AerStep.RESUME),
    (AerStep.ERROR_DETECTED, ErsResult.DISCONNECT, None),
    (AerStep.ERROR_DETECTED, ErsResult.NO_AER_DRIVER, None),
    (AerStep.MMIO_ENABLED, ErsResult.NEED_RESET, AerStep.SLOT_RESET),
    (AerStep.MMIO_ENABLED, ErsResult.RECOVERED, AerStep.RESUME),
    (AerStep.SLOT_RESET, ErsResult.RECOVERED, AerStep.RESUME),
    (AerStep.SLOT_RESET, ErsResult.DISCONNECT, None),
    (AerStep.RESUME, ErsResult.NONE, None)])
def test_host_recovery_sequence(step, result, following):
    assert next_step(AerRequest(HOST, step), result) is following

"""The AER relay: a host PCIe error on an exported device, passed to the guest's driver (sans-IO).

Linux's pciback is the host driver of every device it exports, so the host's AER core calls its
error handlers (``error_detected``, ``mmio_enabled``, ``slot_reset``, ``resume``); pciback passes
each to the guest through ``aer_op`` on the shared page (spec ``pciback.md`` §3.8) and returns the
guest driver's answer (``pci_ers_result``) to the host. Here the same decisions, without I/O:

  1. Device not exported to this guest: the host gets Linux's default (CAN_RECOVER for
     error_detected, RECOVERED for mmio_enabled/slot_reset), nothing is written.
  2. No shared page (not connected): ``aerState = aerfail`` (the toolstack destroys the guest).
  3. The frontend did not set ``_XEN_PCIB_AERHANDLER``: error_detected and resume ``aerfail``;
     mmio_enabled and slot_reset are only logged (Linux does the same).
  4. Otherwise relay: write ``aer_op`` {cmd 6/8/9/7, err = channel state (error_detected) or
     io_normal, the guest's domain/bus/devfn}, set ``_XEN_PCIB_active``; the loop notifies the
     guest and calls :meth:`AerRelay.poll` on every wake-up and at :attr:`AerRelay.deadline`.
  5. The guest cleared the bit: its ``aer_op.err`` is the answer. NONE or DISCONNECT to
     error_detected/mmio_enabled/slot_reset, or an answer that is no ``pci_ers_result``:
     ``aerfail``; anything else goes back to the host. The guest recovered its device itself:
     the guest lives, which is better than the seed's "kill the guest" on every error.
  6. Timeout (the bit still set at the deadline): the bit is taken back, ``aerfail``. Unlike
     Linux, the relay is left idle (Linux leaves its private "AER pending" flag set, spec §9.7).

Every :class:`AerDecision` carries the log line saying which of these happened.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from xenpciback_cli.pci.address import Bdf
from xenpciback_cli.pv.abi import XEN_PCIB_ACTIVE, XEN_PCIB_AERHANDLER, ChannelState, ErsResult, PciOp
from xenpciback_cli.pv.codec import AerOp, read_aer_op, read_flags, set_flag_bits, write_aer_op

#: Linux waits 300 s for the frontend (``wait_event_timeout(..., 300*HZ)``).
DEFAULT_TIMEOUT = 300.0
#: The node Linux writes in the backend directory (``kill_domain_by_device``) and its value.
AER_STATE_NODE = "aerState"
AER_FAIL = "aerfail"

Page = bytearray | memoryview


class AerStep(Enum):
    """A host AER callback and the ``aer_op.cmd`` that relays it."""

    ERROR_DETECTED = PciOp.AER_DETECTED
    MMIO_ENABLED = PciOp.AER_MMIO
    SLOT_RESET = PciOp.AER_SLOTRESET
    RESUME = PciOp.AER_RESUME

    @property
    def label(self) -> str:
        return self.name.lower()


class Outcome(Enum):
    """Which rule of the module docstring decided."""

    NOT_EXPORTED = "not exported"
    NOT_CONNECTED = "not connected"
    NO_HANDLER = "no handler"
    RELAYED = "relayed"
    TIMED_OUT = "timed out"


#: Linux's answer to the host when it cannot ask the guest (``xen_pcibk_*`` defaults).
_DEFAULTS = {AerStep.ERROR_DETECTED: ErsResult.CAN_RECOVER,
             AerStep.MMIO_ENABLED: ErsResult.RECOVERED,
             AerStep.SLOT_RESET: ErsResult.RECOVERED,
             AerStep.RESUME: ErsResult.NONE}
#: Guest answers that make Linux write aerfail (the guest's driver gave up or has none).
_GIVE_UP = (ErsResult.NONE, ErsResult.DISCONNECT)


def result_name(value: int) -> str:
    """``recovered``, ``need_reset``... or ``answer N`` for a value no ``pci_ers_result`` has."""
    try:
        return ErsResult(value).name.lower()
    except ValueError:
        return f"answer {value}"


@dataclass(frozen=True)
class AerRequest:
    """One host callback for a device: the step and, for error_detected, the channel state."""

    host: Bdf
    step: AerStep
    state: ChannelState = ChannelState.NORMAL


@dataclass(frozen=True)
class AerDecision:
    """What the host gets back (``result``), whether ``aerState = aerfail`` must be written,
    and the one log line saying which rule decided."""

    request: AerRequest
    outcome: Outcome
    result: ErsResult
    aerfail: bool
    line: str


@dataclass
class _Waiting:
    request: AerRequest
    guest: Bdf
    deadline: float


class AerRelay:
    """One guest's AER relay: at most one request in ``aer_op`` at a time (the page has one).

    ``guest_address(host)`` is where the guest sees ``host`` (``GuestSession.guest_address``).
    Times are the caller's monotonic clock; the relay never reads a clock itself."""

    def __init__(self, domid: int, guest_address: Callable[[Bdf], Bdf | None], *,
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        self.domid = domid
        self.guest_address = guest_address
        self.timeout = timeout
        self._waiting: _Waiting | None = None

    @property
    def busy(self) -> bool:
        return self._waiting is not None

    @property
    def deadline(self) -> float | None:
        """When :meth:`poll` must be called at the latest (None: nothing in flight)."""
        return self._waiting.deadline if self._waiting is not None else None

    def start(self, request: AerRequest, page: Page | None, now: float) -> AerDecision | None:
        """Relay ``request``: a decision at once (rules 1-3), or None when ``aer_op`` was
        written and ``_XEN_PCIB_active`` set - then the caller notifies the guest and polls."""
        if self._waiting is not None:
            raise RuntimeError("an AER request is already in flight for this guest")
        step, host = request.step, request.host
        what = f"domain {self.domid}: AER {step.label}"
        if step is AerStep.ERROR_DETECTED:
            what += f" ({request.state.name.lower()})"
        what += f" on {host}"
        guest = self.guest_address(host)
        if guest is None:
            return AerDecision(request, Outcome.NOT_EXPORTED, _DEFAULTS[step], False,
                               f"{what}: not exported to this guest; the host gets "
                               f"{result_name(_DEFAULTS[step])}")
        if page is None:
            return self._fail(request, Outcome.NOT_CONNECTED,
                              f"{what}: the guest is not connected", _DEFAULTS[step])
        if not read_flags(page) & XEN_PCIB_AERHANDLER:
            if step in (AerStep.MMIO_ENABLED, AerStep.SLOT_RESET):
                return AerDecision(request, Outcome.NO_HANDLER, _DEFAULTS[step], False,
                                   f"{what}: the guest has no AER handler; only logged, "
                                   f"the host gets {result_name(_DEFAULTS[step])}")
            return self._fail(request, Outcome.NO_HANDLER,
                              f"{what}: the guest has no AER handler", _DEFAULTS[step])
        err = int(request.state) if step is AerStep.ERROR_DETECTED else int(ChannelState.NORMAL)
        write_aer_op(page, AerOp(int(step.value), err, guest.domain, guest.bus, guest.devfn))
        set_flag_bits(page, set_mask=XEN_PCIB_ACTIVE)
        self._waiting = _Waiting(request, guest, now + self.timeout)
        return None

    def poll(self, page: Page | None, now: float) -> AerDecision | None:
        """The answer, once the guest cleared ``_XEN_PCIB_active`` (rule 5) or the deadline
        passed (rule 6); None while still waiting or idle."""
        waiting = self._waiting
        if waiting is None:
            return None
        request, step = waiting.request, waiting.request.step
        what = f"domain {self.domid}: AER {step.label}"
        if step is AerStep.ERROR_DETECTED:
            what += f" ({request.state.name.lower()})"
        what += f" on {request.host} (guest {waiting.guest})"
        if page is None:  # the guest went away while we waited
            self._waiting = None
            return self._fail(request, Outcome.NOT_CONNECTED,
                              f"{what}: the guest disconnected before answering",
                              _DEFAULTS[step])
        if read_flags(page) & XEN_PCIB_ACTIVE:
            if now < waiting.deadline:
                return None
            set_flag_bits(page, clear_mask=XEN_PCIB_ACTIVE)
            self._waiting = None
            return self._fail(request, Outcome.TIMED_OUT,
                              f"{what}: the guest did not answer within {self.timeout:g}s",
                              _DEFAULTS[step])
        self._waiting = None
        answer = read_aer_op(page).err
        if step is AerStep.RESUME:  # resume has no result: the guest only acknowledges
            return AerDecision(request, Outcome.RELAYED, ErsResult.NONE, False,
                               f"{what}: relayed to the guest: done")
        try:
            result = ErsResult(answer)
        except ValueError:
            return self._fail(request, Outcome.RELAYED,
                              f"{what}: relayed to the guest: {result_name(answer)} "
                              "(not a pci_ers_result)", ErsResult.DISCONNECT)
        if result in _GIVE_UP:
            return self._fail(request, Outcome.RELAYED,
                              f"{what}: relayed to the guest: {result_name(answer)}", result)
        return AerDecision(request, Outcome.RELAYED, result, False,
                           f"{what}: relayed to the guest: {result_name(answer)}")

    def cancel(self) -> AerDecision | None:
        """The guest is going away: give up the request in flight."""
        if self._waiting is None:
            return None
        return self.poll(None, 0.0)

    def _fail(self, request: AerRequest, outcome: Outcome, what: str,
              result: ErsResult) -> AerDecision:
        return AerDecision(request, outcome, result, True,
                           f"{what}: {AER_STATE_NODE}={AER_FAIL} written "
                           "(the toolstack destroys the guest)")


def next_step(request: AerRequest, result: ErsResult) -> AerStep | None:
    """What the host's AER core calls next for one device (Linux ``pcie_do_recovery``), given
    the answer to ``request``; None when recovery is over (after resume, or failed).

    error_detected: CAN_RECOVER (or NONE) -> mmio_enabled, NEED_RESET -> slot_reset (a frozen
    link is reset first), RECOVERED -> resume; mmio_enabled: NEED_RESET -> slot_reset,
    RECOVERED (or NONE) -> resume; slot_reset: RECOVERED (or NONE) -> resume; anything else
    (DISCONNECT, NO_AER_DRIVER): recovery failed, the host disconnects the device."""
    step = request.step
    if step is AerStep.RESUME:
        return None
    if result is ErsResult.NONE:
        result = _DEFAULTS[step]
    if step is AerStep.ERROR_DETECTED and result is ErsResult.CAN_RECOVER:
        return AerStep.MMIO_ENABLED
    if step in (AerStep.ERROR_DETECTED, AerStep.MMIO_ENABLED) and result is ErsResult.NEED_RESET:
        return AerStep.SLOT_RESET
    if result is ErsResult.RECOVERED:
        return AerStep.RESUME
    return None


#: ``sandbox aer --error``: the AER severity and the channel state error_detected carries.
#: Corrected errors are fixed by the hardware; Linux's AER core only logs them (no driver call).
SEVERITIES = {"fatal": ChannelState.FROZEN, "nonfatal": ChannelState.NORMAL}

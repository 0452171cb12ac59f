"""XenbusState: the numbers both ends of a PV device write to their ``state`` nodes, with names.

The hot-plug handshake of PV PCI is a dance of four parties over two ``state`` nodes (backend and
frontend) plus one ``state-<i>`` per device. When it stalls, the only useful message names the
stuck pair of states and the party whose move it is: :func:`next_move` is that table, written
once, from what Linux's pciback (``drivers/xen/xen-pciback/xenbus.c``) and pcifront
(``drivers/pci/xen-pcifront.c``) do on each other's state changes, and used by attach, detach and
status alike.

Values come from xenstore, which a guest can write: :func:`parse_state` never raises.
"""

from __future__ import annotations

from enum import IntEnum
from xenpciback_cli.untrusted import decimal


class XenbusState(IntEnum):
    """``enum xenbus_state`` (xen/include/public/io/xenbus.h; 7/8 are the PCI reconfigure pair)."""

    UNKNOWN = 0
    INITIALISING = 1
    INIT_WAIT = 2
    INITIALISED = 3
    CONNECTED = 4
    CLOSING = 5
    CLOSED = 6
    RECONFIGURING = 7
    RECONFIGURED = 8

    @property
    def label(self) -> str:
        """The name Xen's headers and logs use (``InitWait``, ``Reconfiguring``...)."""
        return _LABELS[self]

    def describe(self) -> str:
        """``4 (Connected)``: the number as it sits in xenstore, and its name."""
        return f"{int(self)} ({self.label})"


_LABELS = {
    XenbusState.UNKNOWN: "Unknown",
    XenbusState.INITIALISING: "Initialising",
    XenbusState.INIT_WAIT: "InitWait",
    XenbusState.INITIALISED: "Initialised",
    XenbusState.CONNECTED: "Connected",
    XenbusState.CLOSING: "Closing",
    XenbusState.CLOSED: "Closed",
    XenbusState.RECONFIGURING: "Reconfiguring",
    XenbusState.RECONFIGURED: "Reconfigured",
}


def parse_state(raw: bytes | str | None) -> XenbusState | None:
    """A state node's value, or None when absent or not a known state (a guest may write junk)."""
    if raw is None:
        return None
    text = raw.decode("ascii", "replace") if isinstance(raw, bytes) else raw
    text = text.strip()
    value = decimal(text, max_digits=3)
    if value is None:
        return None
    try:
        return XenbusState(value)
    except ValueError:
        return None


def state_label(state: XenbusState | None) -> str:
    return "absent" if state is None else state.describe()


# -- who moves next --------------------------------------------------------------------------
#
# Rules (Linux pciback xenbus.c, pcifront, libxl):
#  1. The toolstack opens a round by writing backend state 7 (with state-i=1 or state-i=5).
#  2. pcifront answers a backend 7 by dropping state-i==5 devices and writing frontend 7.
#  3. pciback answers frontend 7 (its own state 7) by exporting state-i==1 / releasing
#     state-i==5 devices and writing backend 8.
#  4. pcifront answers backend 8 (own state 7) by rescanning its roots and writing frontend 4.
#  5. pciback answers frontend 4 by writing backend 4; the round is over.
# The key is (backend, frontend); the value is (who, what they must do).

BACKEND = "the backend (dom0 pciback)"
FRONTEND = "the guest's pcifront"

_B = XenbusState
_MOVES: dict[tuple[XenbusState | None, XenbusState | None], tuple[str, str]] = {
    (_B.RECONFIGURING, _B.CONNECTED): (FRONTEND, "see backend Reconfiguring and switch to Reconfiguring"),
    (_B.RECONFIGURING, _B.INITIALISED): (FRONTEND, "see backend Reconfiguring and switch to Reconfiguring"),
    (_B.RECONFIGURING, _B.RECONFIGURING): (BACKEND, "export or release the devices and switch to Reconfigured"),
    (_B.RECONFIGURED, _B.RECONFIGURING): (FRONTEND, "rescan its root buses and switch to Connected"),
    (_B.RECONFIGURED, _B.CONNECTED): (BACKEND, "see the frontend Connected and switch back to Connected"),
    (_B.INITIALISING, _B.INITIALISING): (BACKEND, "probe the device and switch to InitWait"),
    (_B.INITIALISING, None): (BACKEND, "probe the device and switch to InitWait"),
    (_B.INIT_WAIT, _B.INITIALISING): (BACKEND, "export the devices and switch to Initialised"),
    (_B.INITIALISED, _B.INITIALISING): (FRONTEND, "publish pci-op-ref, event-channel and magic and switch "
                                                  "to Initialised"),
    (_B.INITIALISED, _B.INITIALISED): (BACKEND, "map the ring, bind the event channel and switch to Connected"),
    (_B.CONNECTED, _B.INITIALISED): (FRONTEND, "scan its root buses and switch to Connected"),
}


def next_move(backend: XenbusState | None, frontend: XenbusState | None) -> tuple[str, str]:
    """Whose move it is in the PV PCI handshake, and what that move is."""
    move = _MOVES.get((backend, frontend))
    if move is not None:
        return move
    if backend in (_B.CLOSING, _B.CLOSED):
        return ("the toolstack", "the backend is being torn down: detach the device (with --force "
                                 "if the guest does not let go)")
    if frontend in (_B.CLOSING, _B.CLOSED):
        return ("the toolstack", "the guest closed its PCI frontend: detach the device, or let "
                                 "the guest reconnect")
    if backend is None:
        return ("the toolstack", "no backend directory: nothing is attached")
    if frontend is None:
        return (FRONTEND, "no frontend directory: the guest has no pcifront device")
    return ("nobody", "no handshake is in progress")


def describe_stall(backend: XenbusState | None, frontend: XenbusState | None) -> str:
    """One sentence for a timeout: the stuck states and who owns the next move."""
    who, what = next_move(backend, frontend)
    return (f"backend state {state_label(backend)}, frontend state {state_label(frontend)}: "
            f"waiting for {who} to {what}")

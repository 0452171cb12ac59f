"""backend/xenbus.py's TRANSITIONS table says what XenbusBackend.step does: each row, driven."""

from __future__ import annotations

import pytest

from xenpciback_cli.backend.xenbus import TRANSITIONS, Snapshot, XenbusBackend
from xenpciback_cli.toolstack.plan import Write
from xenpciback_cli.toolstack.xenbus import XenbusState as S

DEV = {"num_devs": "1", "dev-0": "0000:03:00.0", "state-0": "1"}
FRONT = {"pci-op-ref": "8", "event-channel": "8", "magic": "7"}
#: For each row with a new state: the backend and frontend directories that trigger it.
TRIGGERS = {
    S.INITIALISING: ({"state": "1"}, {}),
    S.INIT_WAIT: ({"state": "2", **DEV}, {}),
    S.INITIALISED: ({"state": "3", **DEV, "vdev-0": "0000:00:00.0", "state-0": "3"},
                    {"state": "3", **FRONT}),
    S.RECONFIGURING: ({"state": "7", **DEV}, {"state": "7", **FRONT}),
    S.RECONFIGURED: ({"state": "8", **DEV}, {"state": "4", **FRONT}),
    (S.CONNECTED, S.CLOSING): ({"state": "4", **DEV}, {"state": "5", **FRONT}),
    (S.CONNECTED, S.CLOSED): ({"state": "4", **DEV}, {"state": "6", **FRONT}),
}


def _key(row):
    own, _, _, after = row
    return (own, after) if own == S.CONNECTED else own


@pytest.mark.parametrize("row", [r for r in TRANSITIONS if r[3] is not None], ids=lambda r: r[2])
def test_each_row_is_what_step_does(row):
    own, _, _, after = row
    backend, frontend = TRIGGERS[_key(row)]
    peer = XenbusBackend(5)
    ops = peer.step(Snapshot(backend, frontend))
    states = [op.value for op in ops if isinstance(op, Write) and op.path.endswith("/5/0/state")]
    assert states == [str(int(after))], (own, ops)
    assert not peer.errors


def test_every_row_starts_from_a_state_the_backend_writes():
    assert {row[0] for row in TRANSITIONS} >= {S.INITIALISING, S.INIT_WAIT, S.INITIALISED,
                                              S.RECONFIGURING, S.RECONFIGURED, S.CONNECTED}


def test_a_reconfiguring_round_exports_the_new_entry_and_closes_the_released_one():
    """xen_pcibk_reconfigure: state-i 1 -> 3 with vdev-i (and an Export), state-i 5 -> 6 after
    the removal (and a Release), then Reconfigured."""
    peer = XenbusBackend(5, local_actions=True)
    setup = {"state": "2", **DEV}
    peer.step(Snapshot(setup, {}))                               # dev-0 at 00:00.0
    backend = {"state": "7", "num_devs": "2", "dev-0": "0000:03:00.0", "state-0": "5",
               "vdev-0": "0000:00:00.00", "dev-1": "0000:04:10.1", "state-1": "1"}
    peer.last_frontend = S.CONNECTED
    ops = peer.step(Snapshot(backend, {"state": "7", **FRONT}))
    writes = {op.path.rsplit("/", 1)[1]: op.value for op in ops if isinstance(op, Write)}
    assert writes["state-0"] == "6" and writes["state-1"] == "3" and writes["state"] == "8"
    assert writes["vdev-1"].startswith("0000:00:")
    kinds = [type(op).__name__ for op in ops if not isinstance(op, Write)]
    assert kinds == ["Release", "Export"]
    assert not peer.errors

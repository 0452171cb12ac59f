"""Whatever a guest (or a broken peer) writes, the parsers and state machines answer without
raising: fuzzed with hypothesis."""

from __future__ import annotations

from hypothesis import example, given, settings
from hypothesis import strategies as st

from xenpciback_cli.toolstack import libxl_layout as L
from xenpciback_cli.backend.xenbus import Snapshot, XenbusBackend
from xenpciback_cli.sandbox.peers import SimFrontend
from xenpciback_cli.toolstack.status import DeviceStatus
from xenpciback_cli.toolstack.xenbus import describe_stall, parse_state

KEYS = st.sampled_from(["state", "num_devs", "dev-0", "vdev-0", "state-0", "dev-1", "state-1",
                        "vdev-1", "vdevfn-0", "opts-0", "root_num", "root-0", "magic",
                        "pci-op-ref", "event-channel"])
VALUES = st.one_of(st.sampled_from(["1", "3", "4", "5", "7", "8", "0000:03:00.0", "7", "2",
                                    "0000:00:00.00", "-1", "99999999999", "ffff:ff:1f.7",
                                    # digits that str.isdigit() or int() accept but C does not
                                    "\u00b2", "\u0663", "1_0", "+4", " 4", "4\n"]),
                   st.text(max_size=20))
DIRS = st.dictionaries(KEYS, VALUES, max_size=12)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(DIRS, DIRS), min_size=1, max_size=6))
@example([({}, {"state": "\u00b2"})])  # a superscript two: isdigit() but not int()
def test_peers_never_raise_on_junk(snapshots):
    backend, frontend = XenbusBackend(5), SimFrontend(5)
    for be, fe in snapshots:
        snap = Snapshot(be, fe)
        for op in backend.step(snap) + frontend.step(snap):
            assert op.path.startswith(("/local/domain/0/backend/pci/5/0/", "/local/domain/5/device/pci/0/",
                                       "/local/domain/0/error/backend/pci/5/0/"))


@settings(max_examples=150, deadline=None)
@given(DIRS, st.binary(max_size=8))
def test_views_and_states_never_raise(values, raw):
    view = L.BackendView(5, values)
    for entry in view.entries:
        entry.state, entry.vdev, entry.vdevfn, entry.opts  # noqa: B018
        _ = DeviceStatus(entry.index, entry.raw.get("dev"), entry.raw.get("state"), None, None, None,
                         None).state_name
    describe_stall(view.state, parse_state(raw))
    L.PciOptions.parse(values.get("opts-0"))


def test_libxl_keys_parse_strictly():
    from xenpciback_cli.pci.address import Bdf

    assert L.parse_libxl_key("0000-03-00-0") == Bdf(0, 3, 0, 0)
    assert L.parse_libxl_key("0000-03-1f-7") == Bdf(0, 3, 0x1F, 7)
    for junk in ("0000-03-00-8", "0000-03-20-0", "+000-03-00-0", "0x00-03-00-0", "0000-03-00",
                 "0000-3-00-0", " 000-03-00-0", "00_0-03-00-0", "0000-03-00-0-1", ""):
        assert L.parse_libxl_key(junk) is None, junk

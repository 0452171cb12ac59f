"""Attach, hot-plug and detach against the embedded daemon, Debian's C xenstored and oxenstored,
with simulated pciback and pcifront peers; trees are compared with libxl's layout written out
here from toolstack-and-peers.md §A1 and the real xl trace (fixtures/xen-traces)."""

from __future__ import annotations

import itertools

import pytest

from xenpciback_cli.errors import InputError, OperationFailed, SafetyRefusal
from xenpciback_cli.pci.address import Bdf
from xenpciback_cli.engine.attach import AttachSpec, attach
from xenpciback_cli.engine.detach import detach
from xenpciback_cli.sandbox.domains import create_domain, destroy_domain
from xenpciback_cli.toolstack.libxl_layout import PciOptions
from xenpciback_cli.toolstack.status import attachments, domain_status
from xenpciback_cli.toolstack.xenbus import XenbusState
from xenpciback_cli.xenstore.client import XenstoreClient

from helpers.toolstack import dump, sim_guest

NIC = Bdf(0, 3, 0, 0)
GPU = Bdf(0, 2, 0, 0)
OPTS = "msitranslate=0,power_mgmt=0,permissive=0,rdm_policy=strict"
_domids = itertools.count(5)


@pytest.fixture
def client(xenstored_socket):
    with XenstoreClient.open_socket(xenstored_socket) as c:
        yield c


@pytest.fixture
def domid(client):
    """A fresh simulated guest per test (the daemon is shared by the module)."""
    d = next(_domids)
    create_domain(client, d, f"guest{d}")
    yield d
    if client.exists(f"/local/domain/{d}"):
        destroy_domain(client, d)


def be(d):
    return f"/local/domain/0/backend/pci/{d}/0"


def fe(d):
    return f"/local/domain/{d}/device/pci/0"


def libxl_connected_layout(d: int, name: str) -> tuple[dict, dict]:
    """Backend and frontend after xl attached NIC and pciback + pcifront connected (the trace's
    'xenstore-ls' after FRONT_CONNECTED, with our domain and device)."""
    b, f, rb, rf = be(d), fe(d), f"n0 r{d}", f"n{d} r0"
    backend = {b: ("", rb)} | {f"{b}/{k}": (v, rb) for k, v in {
        "frontend": f, "frontend-id": str(d), "online": "1", "state": "4", "domain": f"guest{d}",
        "key-0": "0000:03:00.0", "dev-0": "0000:03:00.0", "opts-0": OPTS, "state-0": "3",
        "num_devs": "1", "vdev-0": "0000:00:00.00", "root-0": "0000:00", "root_num": "1"}.items()}
    frontend = {f: ("", rf)} | {f"{f}/{k}": (v, rf) for k, v in {
        "backend": b, "backend-id": "0", "state": "4", "pci-op-ref": "8", "event-channel": "8",
        "magic": "7"}.items()}
    return backend, frontend


def test_cold_attach_hotplug_and_detach_match_libxl(client, domid, xenstored_daemon):
    with sim_guest(xenstored_daemon, domid) as guest:
        result = attach(client, AttachSpec(domid, NIC), timeout=10)
        assert result.first and not result.hotplug
        status = _wait_connected(client, domid)
        backend, frontend = libxl_connected_layout(domid, f"guest{domid}")
        assert dump(client, be(domid)) == backend
        assert dump(client, fe(domid)) == frontend
        assert dump(client, "/libxl/pci/0000-03-00-0") == {
            "/libxl/pci/0000-03-00-0": ("", "n0"), "/libxl/pci/0000-03-00-0/domid": (str(domid), "n0")}
        assert status.devices[0].vdev == "0000:00:00.00"

        # Second device: the backend is Connected, so this is a hot-plug with the full round.
        result = attach(client, AttachSpec(domid, GPU, vslot=4), timeout=10)
        assert result.hotplug and result.backend_state == XenbusState.CONNECTED
        assert result.guest_addresses[GPU] == Bdf(0, 0, 1, 0)
        assert guest.frontend.peer.devices == {Bdf(0, 0, 0, 0), Bdf(0, 0, 1, 0)}
        tree = dump(client, be(domid))
        assert tree[f"{be(domid)}/vdevfn-1"] == ("20", f"n0 r{domid}")
        assert tree[f"{be(domid)}/num_devs"][0] == "2"
        assert attachments(client)[GPU].domid == domid

        # Detach the first: the guest lets go, the GPU's keys move down to index 0.
        out = detach(client, NIC, domid, timeout=10)
        assert out.handshake and not out.forced and not out.destroyed
        assert guest.frontend.peer.devices == {Bdf(0, 0, 1, 0)}
        tree = dump(client, be(domid))
        assert {k.rsplit("/", 1)[1]: v[0] for k, v in tree.items() if k[-2:] in ("-0", "-1") and "root" not in k} == {
            "key-0": "0000:02:00.0", "dev-0": "0000:02:00.0", "opts-0": OPTS, "state-0": "3",
            "vdev-0": "0000:00:01.00", "vdevfn-0": "20"}
        assert tree[f"{be(domid)}/num_devs"][0] == "1"
        assert not client.exists("/libxl/pci/0000-03-00-0/domid")

        # Detach the last: the whole PV device goes, like libxl__device_destroy.
        out = detach(client, GPU, domid, timeout=10)
        assert out.destroyed
        assert not client.exists(be(domid)) and not client.exists(fe(domid))
        assert not client.exists("/libxl/pci/0000-02-00-0/domid")
        assert GPU not in attachments(client)


def _wait_connected(client, d):
    from xenpciback_cli.toolstack.handshake import round_finished, wait_for

    wait_for(client, d, round_finished, timeout=10, what="for the cold plug")
    return domain_status(client, d)


def test_guest_that_never_answers_times_out_naming_the_stuck_state(client, domid, xenstored_daemon):
    with sim_guest(xenstored_daemon, domid) as guest:
        attach(client, AttachSpec(domid, NIC))
        _wait_connected(client, domid)
        guest.stop_frontend()  # the guest hangs: its pcifront never moves again
        before = dump(client, "/")
        with pytest.raises(OperationFailed) as err:
            attach(client, AttachSpec(domid, GPU), timeout=0.6)
        text = str(err.value)
        assert "backend state 7 (Reconfiguring), frontend state 4 (Connected)" in text
        assert "waiting for the guest's pcifront" in text
        assert "attach rolled back, xenstore is as it was" in text
        assert dump(client, "/") == before

        with pytest.raises(OperationFailed, match="detach cancelled, xenstore is as it was"):
            detach(client, NIC, domid, timeout=0.6)
        assert dump(client, "/") == before

        out = detach(client, NIC, domid, timeout=0.3, force=True)
        assert out.forced and out.destroyed
        assert not client.exists(be(domid))


def test_transaction_conflict_is_retried(client, domid, xenstored_socket):
    other = XenstoreClient.open_socket(xenstored_socket)

    def collide(attempt):
        if attempt == 1:  # a concurrent writer touches what our transaction read
            other.write(f"{be(domid)}/num_devs", "0")

    try:
        before = dump(client, "/local/domain/0")
        result = attach(client, AttachSpec(domid, NIC), on_attempt=collide)
    finally:
        other.close()
    assert any("retried 1 time" in n for n in result.notes)
    assert client.read(f"{be(domid)}/dev-0") == b"0000:03:00.0"
    assert client.read(f"{be(domid)}/num_devs") == b"1"
    assert before != dump(client, "/local/domain/0")


def test_bad_requests_leave_xenstore_as_it_was(client, domid):
    attach(client, AttachSpec(domid, NIC, vslot=2))
    other = next(_domids)
    create_domain(client, other)
    try:
        before = dump(client, "/")
        with pytest.raises(InputError, match=r"^unknown domain 999: /local/domain/999 does not exist$"):
            attach(client, AttachSpec(999, GPU))
        with pytest.raises(SafetyRefusal, match=f"0000:03:00.0 is attached to domain {domid}"):
            attach(client, AttachSpec(other, NIC))
        again = attach(client, AttachSpec(domid, NIC))  # idempotent: nothing to do, nothing written
        assert again.changed is False and "already attached" in again.notes[0]
        with pytest.raises(InputError, match="virtual slot 0x20 is out of range"):
            attach(client, AttachSpec(domid, GPU, vslot=0x20))
        with pytest.raises(InputError, match=r"virtual slot 0x02 of domain .* is taken by 0000:03:00\.0"):
            attach(client, AttachSpec(domid, GPU, vslot=2))
        gone = detach(client, GPU, domid)  # not attached: nothing to do
        assert gone.changed is False and "is not attached to domain" in gone.notes[0]
        assert attach(client, AttachSpec(domid, GPU), dry_run=True).changed is True
        assert detach(client, NIC, domid, dry_run=True).changed is True
        with pytest.raises(InputError, match="rdm_policy must be strict or relaxed"):
            attach(client, AttachSpec(domid, GPU, options=PciOptions(rdm_policy="loose")))
        assert dump(client, "/") == before
    finally:
        destroy_domain(client, other)


def test_destroying_a_domain_cleans_up_its_devices(client, xenstored_daemon):
    d = next(_domids)
    client.watch("@introduceDomain", "introduced")
    while client.next_event(0.2) is not None:  # the initial event
        pass
    create_domain(client, d, "doomed")
    assert client.is_domain_introduced(d)
    event = client.next_event(5)
    assert event is not None and event.path == "@introduceDomain"
    client.unwatch("@introduceDomain", "introduced")
    assert dump(client, f"/local/domain/{d}")[f"/local/domain/{d}"] == ("", f"n0 r{d}")
    assert dump(client, f"/local/domain/{d}/data")[f"/local/domain/{d}/data"] == ("", f"n{d}")
    attach(client, AttachSpec(d, NIC))
    attach(client, AttachSpec(d, GPU))  # backend not connected: queued, no round
    token = "released"
    client.watch("@releaseDomain", token)
    while client.next_event(0.2) is not None:  # the initial event
        pass
    result = destroy_domain(client, d)
    assert sorted(result.released_devices) == [GPU, NIC]
    assert not client.exists(f"/local/domain/{d}") and not client.exists(be(d))
    assert not client.exists(f"/libxl/{d}")
    assert not client.exists("/libxl/pci/0000-03-00-0/domid")
    assert not client.is_domain_introduced(d)
    event = client.next_event(5)
    assert event is not None and event.path == "@releaseDomain"
    client.unwatch("@releaseDomain", token)


def test_attach_refuses_a_backend_being_torn_down(client, domid):
    attach(client, AttachSpec(domid, NIC))
    client.write(f"{be(domid)}/state", "5")
    before = dump(client, "/")
    with pytest.raises(OperationFailed, match=r"PCI backend is 5 \(Closing\): .*nothing changed$"):
        attach(client, AttachSpec(domid, GPU))
    assert dump(client, "/") == before


def test_status_names_states_and_errors(client, domid):
    attach(client, AttachSpec(domid, NIC, options=PciOptions(permissive=True)))
    client.write(f"/local/domain/0/error/backend/pci/{domid}/0/error", "14 version mismatch")
    try:
        status = domain_status(client, domid)
    finally:
        client.rm("/local/domain/0/error")
    data = status.to_json()
    assert data["backend_state_name"] == "Initialising" and data["frontend_state_name"] == "Initialising"
    assert data["devices"] == [{"index": 0, "bdf": "0000:03:00.0", "state": 1, "state_text": "1",
                                "state_name": "Initialising", "vdev": None,
                                "opts": "msitranslate=0,power_mgmt=0,permissive=1,rdm_policy=strict",
                                "vdevfn": None, "name": None}]
    assert data["backend_error"] == "14 version mismatch"
    assert data["next_move"].startswith("the backend (dom0 pciback): probe")


def test_endless_conflicts_give_up_cleanly(client, domid, xenstored_socket):
    other = XenstoreClient.open_socket(xenstored_socket)
    before = dump(client, "/")
    try:
        with pytest.raises(OperationFailed, match=r"^attaching to domain \d+: xenstore transaction "
                                                  r"conflicted with other writers 3 times; nothing was changed$"):
            attach(client, AttachSpec(domid, NIC), retries=2,
                   on_attempt=lambda n: other.write(f"{be(domid)}/num_devs", str(n)))
    finally:
        other.close()
    after = dump(client, "/")
    # Discount only what the concurrent writer made: its node and the ancestors its write created
    # (which ancestors existed before depends on which tests ran first on this daemon).
    theirs = f"{be(domid)}/num_devs"
    after.pop(theirs)
    parent = theirs.rsplit("/", 1)[0]
    while parent and parent not in before:
        after.pop(parent, None)
        parent = parent.rsplit("/", 1)[0]
    assert after == before


def test_stale_record_of_a_vanished_domain_is_cleared_with_force(client):
    d = next(_domids)
    client.write("/libxl/pci/0000-04-00-0/domid", str(d))  # a guest that died uncleanly
    dev = Bdf(0, 4, 0, 0)
    other = next(_domids)
    create_domain(client, other)
    try:
        with pytest.raises(SafetyRefusal, match=f"attached to domain {d}, which no longer exists: "
                                                f"run 'detach 0000:04:00.0 --domid {d} --force'"):
            attach(client, AttachSpec(other, dev))
        with pytest.raises(InputError, match="stale record there: use --force"):
            detach(client, dev, d)
        out = detach(client, dev, d, force=True)
        assert out.forced and "stale record" in out.notes[0]
        assert not client.exists("/libxl/pci/0000-04-00-0/domid")
        attach(client, AttachSpec(other, dev))
    finally:
        destroy_domain(client, other)
        client.rm("/libxl/pci/0000-04-00-0")


def test_wildcard_and_named_devices(client, domid, xenstored_daemon):
    from .test_host_side import MemoryHost, dev

    nic1 = Bdf(0, 3, 0, 1)
    host = MemoryHost([dev(NIC, "pciback"), dev(nic1, "pciback"), dev(GPU, "pciback")])
    client.write("/libxl/pci/0000-02-00-0/name", "gpu0")  # pci-assignable-add -n gpu0
    try:
        with sim_guest(xenstored_daemon, domid) as guest:
            result = attach(client, AttachSpec(domid, NIC, all_functions=True, vslot=6), host=host)
            assert result.devices == [NIC, nic1] and result.indices == [0, 1]
            _wait_connected(client, domid)
            values = {k.rsplit("/", 1)[1]: v[0] for k, v in dump(client, be(domid)).items()}
            assert (values["vdevfn-0"], values["vdevfn-1"]) == ("30", "31")
            # pciback keeps the functions of one host slot together in one virtual slot.
            assert (values["vdev-0"], values["vdev-1"]) == ("0000:00:00.00", "0000:00:00.01")
            assert guest.frontend.peer.devices == {Bdf(0, 0, 0, 0), Bdf(0, 0, 0, 1)}

            result = attach(client, AttachSpec(domid, None, name="gpu0"), host=host)
            assert result.hotplug and result.devices == [GPU]
            assert client.read(f"{be(domid)}/name-2") == b"gpu0"
            with pytest.raises(InputError, match="no assignable device is named 'nope'"):
                attach(client, AttachSpec(domid, None, name="nope"), host=host)
    finally:
        destroy_domain(client, domid)
        client.rm("/libxl/pci/0000-02-00-0")

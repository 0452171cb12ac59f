"""The sans-IO core on an in-memory tree: libxl's layout, the renumbering, and both simulated
peers running the whole handshake (cold plug, hot plug, hot unplug) without a daemon."""

from __future__ import annotations

import pytest

from xenpciback_cli.pci.address import Bdf
from xenpciback_cli.toolstack import libxl_layout as L
from xenpciback_cli.backend.xenbus import Snapshot, XenbusBackend
from xenpciback_cli.sandbox.peers import SimFrontend
from xenpciback_cli.toolstack.plan import MemoryTree
from xenpciback_cli.toolstack.xenbus import XenbusState as S
from xenpciback_cli.toolstack.xenbus import describe_stall, parse_state
from xenpciback_cli.toolstack.xsexec import read_backend, read_dir_values

DOMID = 5
NIC = Bdf(0, 3, 0, 0)
NIC1 = Bdf(0, 3, 0, 1)
GPU = Bdf(0, 2, 0, 0)
BE = "/local/domain/0/backend/pci/5/0"
FE = "/local/domain/5/device/pci/0"
OPTS = "msitranslate=0,power_mgmt=0,permissive=0,rdm_policy=strict"


def fresh_tree() -> MemoryTree:
    tree = MemoryTree()
    tree.apply([L.Write("/local/domain/0/name", "Domain-0"), L.Mkdir("/local/domain/5"),
                L.SetPerms("/local/domain/5", ((0, "n"), (5, "r"))),
                L.Write("/local/domain/5/name", "guest5")])
    return tree


def attach(tree: MemoryTree, *bdfs: Bdf, vslot: int | None = None, hotplug: bool = False,
           options: L.PciOptions = L.PciOptions(), name: str | None = None) -> L.AttachPlan:
    devices = tuple(L.DeviceRequest(b, v) for b, v in zip(bdfs, L.vdevfns_for(bdfs, vslot)))
    plan = L.plan_attach(L.AttachRequest(DOMID, devices, options, name), read_backend(tree, DOMID),
                         "guest5", hotplug=hotplug)
    tree.apply(plan.ops)
    return plan


def settle(tree: MemoryTree, *peers: XenbusBackend | SimFrontend) -> None:
    for _ in range(100):
        moved = False
        for peer in peers:
            snap = Snapshot(read_dir_values(tree, BE), read_dir_values(tree, FE))
            ops = peer.step(snap)
            if ops:
                tree.apply(ops)
                moved = True
        if not moved:
            return
    raise AssertionError("peers did not settle")


def test_first_attach_writes_libxls_layout_and_permissions():
    tree = fresh_tree()
    plan = attach(tree, NIC)
    assert plan.first and not plan.hotplug and plan.indices == (0,)
    assert tree.dump(BE) == {
        BE: ("", "n0 r5"),
        f"{BE}/frontend": (FE, "n0 r5"), f"{BE}/frontend-id": ("5", "n0 r5"),
        f"{BE}/online": ("1", "n0 r5"), f"{BE}/state": ("1", "n0 r5"),
        f"{BE}/domain": ("guest5", "n0 r5"), f"{BE}/key-0": ("0000:03:00.0", "n0 r5"),
        f"{BE}/dev-0": ("0000:03:00.0", "n0 r5"), f"{BE}/opts-0": (OPTS, "n0 r5"),
        f"{BE}/state-0": ("1", "n0 r5"), f"{BE}/num_devs": ("1", "n0 r5"),
    }
    assert tree.dump(FE) == {FE: ("", "n5 r0"), f"{FE}/backend": (BE, "n5 r0"),
                             f"{FE}/backend-id": ("0", "n5 r0"), f"{FE}/state": ("1", "n5 r0")}
    assert tree.read("/libxl/pci/0000-03-00-0/domid") == b"5"


def test_op_order_matches_the_xl_trace():
    """The order of the real xl create trace (kernel-pciback-xenstored-trace.log)."""
    plan = L.plan_attach(L.AttachRequest(1, (L.DeviceRequest(Bdf(0, 0, 2, 0)),)),
                         L.BackendView(1), "du1", hotplug=False)
    be, fe = "/local/domain/0/backend/pci/1/0", "/local/domain/1/device/pci/0"
    assert [str(op) for op in plan.ops] == [
        f"rm {be}", f"mkdir {be}", f"chmod {be} n0 r1", f"write {be}/frontend = '{fe}'",
        f"write {be}/frontend-id = '1'", f"write {be}/online = '1'", f"write {be}/state = '1'",
        f"write {be}/domain = 'du1'", f"rm {fe}", f"mkdir {fe}", f"chmod {fe} n1 r0",
        f"write {fe}/backend = '{be}'", f"write {fe}/backend-id = '0'", f"write {fe}/state = '1'",
        f"write {be}/key-0 = '0000:00:02.0'", f"write {be}/dev-0 = '0000:00:02.0'",
        f"write {be}/opts-0 = '{OPTS}'", f"write {be}/state-0 = '1'", f"write {be}/num_devs = '1'",
        "write /libxl/pci/0000-00-02-0/domid = '1'",
    ]


def test_options_vslot_and_name_keys():
    tree = fresh_tree()
    attach(tree, NIC, vslot=0x1f, options=L.PciOptions(msitranslate=True, permissive=True,
                                                       rdm_policy="relaxed"), name="nic")
    assert tree.read(f"{BE}/vdevfn-0") == b"f8"
    assert tree.read(f"{BE}/name-0") == b"nic"
    assert tree.read(f"{BE}/opts-0") == b"msitranslate=1,power_mgmt=0,permissive=1,rdm_policy=relaxed"


def test_wildcard_functions_keep_their_numbers_in_the_vslot():
    assert L.vdevfns_for([NIC, NIC1], 4) == [0x20, 0x21]
    assert L.vdevfns_for([NIC1], 4) == [0x20]  # a lone function goes to function 0
    assert L.vdevfns_for([NIC], None) == [0]


def test_conflicts_already_attached_and_vslot_taken():
    tree = fresh_tree()
    attach(tree, NIC, vslot=3)
    with pytest.raises(L.DeviceAlreadyAttached, match="already attached to domain 5"):
        attach(tree, NIC)
    with pytest.raises(L.VirtualSlotTaken, match=r"virtual slot 0x03 .* taken by 0000:03:00\.0"):
        attach(tree, GPU, vslot=3)


def test_cold_plug_handshake_with_both_peers():
    tree = fresh_tree()
    attach(tree, NIC)
    backend, frontend = XenbusBackend(DOMID), SimFrontend(DOMID)
    settle(tree, backend, frontend)
    assert tree.read(f"{BE}/state") == b"4" and tree.read(f"{FE}/state") == b"4"
    assert tree.read(f"{BE}/vdev-0") == b"0000:00:00.00"
    assert tree.read(f"{BE}/state-0") == b"3"
    assert tree.read(f"{BE}/root-0") == b"0000:00" and tree.read(f"{BE}/root_num") == b"1"
    assert tree.read(f"{FE}/magic") == b"7"
    assert frontend.devices == {Bdf(0, 0, 0, 0)}


def test_hotplug_round_and_unplug_with_renumbering():
    tree = fresh_tree()
    attach(tree, NIC)
    backend, frontend = XenbusBackend(DOMID), SimFrontend(DOMID)
    settle(tree, backend, frontend)
    plan = attach(tree, GPU, hotplug=True)
    assert plan.hotplug and tree.read(f"{BE}/state") == b"7"
    settle(tree, backend, frontend)
    assert parse_state(tree.read(f"{BE}/state")) == S.CONNECTED
    assert tree.read(f"{BE}/vdev-1") == b"0000:00:01.00"
    assert frontend.devices == {Bdf(0, 0, 0, 0), Bdf(0, 0, 1, 0)}
    assert tree.read(f"{BE}/root_num") == b"1"  # the root is published once
    # Unplug the first device: state-0=5 + state=7, the round, then libxl's renumbering.
    tree.apply(L.plan_detach_request(DOMID, 0, reconfigure=True))
    settle(tree, backend, frontend)
    assert parse_state(tree.read(f"{BE}/state")) == S.CONNECTED
    assert frontend.devices == {Bdf(0, 0, 1, 0)}
    assert backend.exported == {GPU: Bdf(0, 0, 1, 0)}
    tree.apply(L.plan_detach_remove(read_backend(tree, DOMID), 0))
    values = read_dir_values(tree, BE)
    assert values["num_devs"] == "1"
    assert values["dev-0"] == values["key-0"] == "0000:02:00.0"
    assert values["vdev-0"] == "0000:00:01.00" and values["state-0"] == "3"
    assert not any(k.endswith("-1") for k in values)


def test_removing_the_last_device_destroys_both_directories_and_empty_parents():
    tree = fresh_tree()
    attach(tree, NIC)
    tree.apply(L.plan_detach_remove(read_backend(tree, DOMID), 0))
    assert not tree.exists(BE) and not tree.exists(FE)
    assert not tree.exists("/local/domain/0/backend")  # emptied: pruned like libxl
    assert not tree.exists("/local/domain/5/device")
    assert tree.exists("/local/domain/5") and tree.exists("/local/domain/0")


def test_attach_rollback_restores_the_tree():
    tree = fresh_tree()
    attach(tree, NIC)
    backend, frontend = XenbusBackend(DOMID), SimFrontend(DOMID)
    settle(tree, backend, frontend)
    before = tree.dump("/")
    plan = attach(tree, GPU, hotplug=True)
    view = read_backend(tree, DOMID)
    assert L.can_roll_back_attach(view, plan, [GPU])
    tree.apply(L.plan_attach_rollback(view, plan, [GPU], S.CONNECTED, [GPU]))
    assert tree.dump("/") == before


def test_backend_refuses_a_frontend_with_the_wrong_magic():
    tree = fresh_tree()
    attach(tree, NIC)
    backend = XenbusBackend(DOMID)
    tree.apply([L.Write(f"{FE}/pci-op-ref", "8"), L.Write(f"{FE}/event-channel", "9"),
                L.Write(f"{FE}/magic", "6"), L.Write(f"{FE}/state", "3")])
    settle(tree, backend)
    assert tree.read(f"{BE}/state") == b"5"
    assert tree.read("/local/domain/0/error/backend/pci/5/0/error").startswith(b"14 version mismatch")


def test_hostile_values_never_raise():
    view = L.BackendView(5, {"num_devs": "99999999", "state": "banana", "dev-0": "zz"})
    assert view.num_devs == 0 and view.state is None
    view = L.BackendView(5, {"num_devs": "1", "dev-0": "1:2:3.4\n", "vdev-0": "ffff:ff:ff.ff"})
    assert view.entries[0].dev == Bdf(1, 2, 3, 4) and view.entries[0].vdev is None
    assert parse_state(b"\xff") is None and parse_state("12") is None


def test_stall_message_names_the_state_and_the_owner():
    text = describe_stall(S.RECONFIGURING, S.CONNECTED)
    assert text == ("backend state 7 (Reconfiguring), frontend state 4 (Connected): waiting for "
                    "the guest's pcifront to see backend Reconfiguring and switch to Reconfiguring")
    assert "the backend (dom0 pciback)" in describe_stall(S.RECONFIGURING, S.RECONFIGURING)


def test_removing_a_middle_entry_moves_later_ones_down_with_their_optional_keys():
    tree = fresh_tree()
    attach(tree, NIC)
    attach(tree, GPU, vslot=2, name="gpu")
    attach(tree, NIC1, options=L.PciOptions(permissive=True))
    tree.apply(L.plan_detach_remove(read_backend(tree, DOMID), 0))
    values = read_dir_values(tree, BE)
    entries = {k: v for k, v in values.items() if k.rsplit("-", 1)[-1].isdigit()}
    assert entries == {
        "key-0": "0000:02:00.0", "dev-0": "0000:02:00.0", "vdevfn-0": "10", "name-0": "gpu",
        "opts-0": OPTS, "state-0": "1",
        "key-1": "0000:03:00.1", "dev-1": "0000:03:00.1", "state-1": "1",
        "opts-1": "msitranslate=0,power_mgmt=0,permissive=1,rdm_policy=strict"}
    assert values["num_devs"] == "2"


def test_a_closed_frontend_and_a_closing_backend_get_different_advice():
    """A guest that closed its pcifront is not a backend being torn down: detach plainly works
    then (the demo showed the old advice, 'detach it with --force', before a plain detach)."""
    from xenpciback_cli.toolstack.xenbus import next_move

    who, what = next_move(S.CONNECTED, S.CLOSED)
    assert who == "the toolstack" and "the guest closed its PCI frontend" in what
    assert "--force" not in what
    who, what = next_move(S.CLOSING, S.CONNECTED)
    assert "backend is being torn down" in what and "--force" in what

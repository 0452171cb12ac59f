"""``serve foreground --mode passthrough`` end to end on a sandbox: the guest sees the host's own
addresses, ``root-K``/``root_num`` name the host buses, ops address devices by host bus/devfn, and
an address that is not exported answers "device not found" - with the simulated pcifront too."""

from __future__ import annotations

import struct

import pytest

from helpers.cli import ok
from helpers.pcifront import OP, Frontend, start_guest, start_serve, stop_guest, stop_serve, wait_out

NIC, VF = "0000:03:00.0", "0000:04:10.1"
NIC_IDS, VF_IDS = 0x10C98086, 0x10CA8086
READ, WRITE = 0, 1
NOT_FOUND = -1  # XEN_PCI_ERR_dev_not_found


def op(front: Frontend, cmd: int, bus: int, devfn: int, offset: int, size: int,
       value: int = 0) -> tuple[int, int]:
    front.post(OP.pack(cmd, 0, 0, bus, devfn, offset, size, value, 0) + b"\0" * 512)
    err, value, _vectors = front.answer()
    return err, value


@pytest.fixture
def passthrough_guest(sandbox):
    ok("--sandbox", sandbox, "sandbox", "domain", "create", 7, "--no-guest")
    ok("--sandbox", sandbox, "attach", NIC, "--domid", 7, "--seize")
    ok("--sandbox", sandbox, "attach", VF, "--domid", 7, "--seize")
    proc = start_serve(sandbox, "--mode", "passthrough")
    yield sandbox, proc
    stop_serve(proc)


def test_guest_sees_host_addresses_and_buses(passthrough_guest):
    sandbox, _proc = passthrough_guest
    front = Frontend(sandbox, 7)
    try:
        front.connect()
        roots = {front.read(f"{front.be}/root-{k}") for k in range(2)}
        assert front.read(f"{front.be}/root_num") == "2"
        assert roots == {"0000:03", "0000:04"}
        # vdev-N names the host address itself (the PV protocol prints the function as %02x)
        vdevs = {front.read(f"{front.be}/vdev-{k}") for k in range(2)}
        assert vdevs == {NIC + "0", VF[:-1] + "01"}
        assert op(front, READ, 0x03, 0x00, 0, 4) == (0, NIC_IDS)
        assert op(front, READ, 0x04, (0x10 << 3) | 1, 0, 4) == (0, VF_IDS)
        # vpci's address of the first device is nothing here; nor is a host device not exported
        assert op(front, READ, 0x00, 0x00, 0, 4)[0] == NOT_FOUND
        assert op(front, READ, 0x04, 0x10 << 3, 0, 4)[0] == NOT_FOUND  # the VF's PF
        # the filter applies in this mode too: a BAR write does not reach the hardware
        config = sandbox / "sys/bus/pci/devices" / NIC / "config"
        bar0 = struct.unpack_from("<I", config.read_bytes(), 0x10)[0]
        assert op(front, WRITE, 0x03, 0x00, 0x10, 4, 0x12345678)[0] == 0
        assert struct.unpack_from("<I", config.read_bytes(), 0x10)[0] == bar0
    finally:
        front.close()


def test_simulated_pcifront_scans_the_host_buses(passthrough_guest):
    sandbox, _proc = passthrough_guest
    data = ok("--sandbox", sandbox, "--json", "sandbox", "guest", 7, "--timeout", 20).json()
    assert sorted(data["roots"]) == ["0000:03", "0000:04"]
    assert sorted(d["bdf"] for d in data["devices"]) == [NIC, VF]


def test_hotplug_on_a_new_bus_publishes_its_root(sandbox):
    """A device hot-plugged on a bus the guest has no root for: the backend publishes
    ``root-1`` and ``root_num`` (as Linux's passthrough mode does), the simulated pcifront
    scans the new root and finds it; unplug removes it again."""
    ok("--sandbox", sandbox, "sandbox", "domain", "create", 7, "--no-guest")
    ok("--sandbox", sandbox, "attach", NIC, "--domid", 7, "--seize")
    serve = start_serve(sandbox, "--mode", "passthrough")
    front = start_guest(sandbox, 7)
    try:
        wait_out(front, "root buses: 0000:03", timeout=20)
        ok("--sandbox", sandbox, "attach", VF, "--domid", 7, "--seize")
        be = "/local/domain/0/backend/pci/7/0"
        wait_out(front, f"hot-plug: {VF} ", timeout=20)
        assert ok("--sandbox", sandbox, "xenstore", "read", f"{be}/root_num").out.strip() == "2"
        assert ok("--sandbox", sandbox, "xenstore", "read", f"{be}/root-1").out.strip() \
            == "0000:04"
        ok("--sandbox", sandbox, "detach", VF, "--domid", 7)
        wait_out(front, f"hot-unplug: {VF} removed", timeout=20)
        assert front.poll() is None and serve.poll() is None
    finally:
        stop_guest(front)
        stop_serve(serve)

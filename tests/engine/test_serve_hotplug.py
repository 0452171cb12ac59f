"""Hot-plug and unplug through ``serve`` with the simulated pcifront connected: the toolstack's
Reconfiguring round (backend 7, frontend 7, backend 8, frontend 4, backend 4) driven by
``attach``/``detach``, the guest rescanning and detaching as Linux's pcifront does."""

from __future__ import annotations

import json
import time

from helpers.cli import ok
from helpers.pcifront import start_guest, start_serve, stop_guest, stop_serve, wait_out

NIC0, VF = "0000:03:00.0", "0000:04:10.1"
VF_IDS = 0x10CA8086


def test_hotplug_and_unplug_while_the_guest_is_connected(sandbox, tmp_path):
    ok("--sandbox", sandbox, "sandbox", "domain", "create", 7, "--no-guest")
    ok("--sandbox", sandbox, "attach", NIC0, "--domid", 7, "--seize")
    record = tmp_path / "ops.jsonl"
    serve = start_serve(sandbox)
    front = start_guest(sandbox, 7, "--record", str(record))
    try:
        started = time.monotonic()
        out = json.loads(ok("--sandbox", sandbox, "--json", "attach", VF, "--domid", 7,
                            "--seize").out)
        assert out["hotplug"] is True
        be = "/local/domain/0/backend/pci/7/0"
        vdev = ok("--sandbox", sandbox, "xenstore", "read", f"{be}/vdev-1").out.strip()
        assert ok("--sandbox", sandbox, "xenstore", "read", f"{be}/state-1").out.strip() == "3"
        guest_bdf = vdev[:-3] + "." + str(int(vdev[-2:], 16))   # 0000:00:01.01 -> ...01.1
        wait_out(front, f"hot-plug: {guest_bdf} ", timeout=5)
        assert "[8086:10ca]" in front.out.split("hot-plug: ")[1]
        reads = [json.loads(line) for line in record.read_text().splitlines()]
        ids = [r for r in reads if r["kind"] == "op" and r["guest"] == guest_bdf
               and r["op"] == "conf_read" and r["offset"] == 0 and r["size"] == 4]
        assert ids[0]["err"] == -1                               # the first scan: nothing there
        assert (ids[-1]["err"], ids[-1]["value_out"], ids[-1]["host"]) == (0, VF_IDS, VF)
        declared = [r["host"] for r in reads if r["kind"] == "device"]
        assert declared == [NIC0, VF]                # the hot-plugged VF declared before its ops
        status = json.loads(ok("--sandbox", sandbox, "--json", "serve", "status").out)
        hosts = [d["host"] for d in status["guests"][0]["devices"]]
        assert sorted(hosts) == [NIC0, VF]

        ok("--sandbox", sandbox, "detach", VF, "--domid", 7)
        wait_out(front, f"hot-unplug: {guest_bdf} removed", timeout=5)
        status = json.loads(ok("--sandbox", sandbox, "--json", "serve", "status").out)
        guest = status["guests"][0]
        assert [d["host"] for d in guest["devices"]] == [NIC0] and guest["state"] == "connected"
        assert guest["errors"] == 0
        assert time.monotonic() - started < 8
        assert front.poll() is None and serve.poll() is None
    finally:
        stop_guest(front)
        stop_serve(serve)
    log = serve.log  # type: ignore[attr-defined]
    assert f"device {VF} exported as" in log and f"device {VF} released" in log

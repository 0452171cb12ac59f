"""What ``serve foreground --record`` writes besides ops: xenbus ``state`` lines, and a VF's
``device`` line carrying its PF's header so ``replay --check`` of an MSI-X enable on a VF reads
the PF's memory decode, as serve did (docs/trace-format.md)."""

from __future__ import annotations

import json

from helpers.cli import ok
from helpers.pcifront import serving, start_serve, stop_serve

VF, PF = "0000:04:10.1", "0000:03:00.1"
READ, WRITE, ENABLE_MSIX, DISABLE_MSIX = 0, 1, 4, 5


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_vf_trace_replays_clean_and_serve_records_its_states(sandbox):
    ok("--sandbox", sandbox, "sandbox", "domain", "create", 7, "--no-guest")
    ok("--sandbox", sandbox, "attach", VF, "--domid", 7, "--seize")
    trace = sandbox.parent / "vf.jsonl"
    with serving(sandbox, 7, "--record", str(trace)) as front:
        vdev = front.read(f"{front.be}/vdev-0")          # 0000:00:SS.FF
        devfn = (int(vdev.split(":")[2][:2], 16) << 3) | int(vdev.rsplit(".", 1)[1], 16)
        assert front.op(READ, devfn, 0, 4)[0] == 0
        assert not front.op(READ, devfn, 0x04, 2)[1] & 0x2  # the VF's own COMMAND: no decode
        enabled = front.op(ENABLE_MSIX, devfn, 0, 0, 2, entries=(0, 1))
        assert enabled[0] == 0, enabled        # the PF decodes memory: the VF's MSI-X is on
        front.op(DISABLE_MSIX, devfn, 0, 0, 0)
    lines = _lines(trace)
    device = next(x for x in lines if x["kind"] == "device")
    assert device["host"] == VF and device["physfn"] == PF
    assert len(bytes.fromhex(device["physfn_config"])) == 64
    states = [(x["state"], x["name"], x["end"]) for x in lines if x["kind"] == "state"]
    assert (2, "InitWait", "backend") in states and (4, "Connected", "backend") in states
    assert [s for s, _, _ in states].index(2) < [s for s, _, _ in states].index(4)
    out = json.loads(ok("--json", "replay", trace, "--check").out)
    assert (out["ops"], out["mismatch_count"]) == (4, 0), out["mismatches"]
    assert out["events"] == len(states)


def test_serve_records_each_aer_step_relayed(sandbox):
    from helpers.pcifront import start_guest, stop_guest, wait_out

    nic = "0000:03:00.0"
    ok("--sandbox", sandbox, "sandbox", "domain", "create", 7, "--no-guest")
    ok("--sandbox", sandbox, "attach", nic, "--domid", 7, "--seize")
    trace = sandbox.parent / "aer.jsonl"
    serve = start_serve(sandbox, "--record", str(trace), "--aer-timeout", "5")
    front = start_guest(sandbox, 7, "--stay")
    try:
        ok("--sandbox", sandbox, "--json", "sandbox", "aer", nic, "--error", "fatal",
           "--timeout", "10")
        wait_out(front, "AER resume on 0000:00:00.0")
    finally:
        stop_guest(front)
        stop_serve(serve)
    aer = [(x["host"], x["step"], x["result"], x["outcome"]) for x in _lines(trace)
           if x["kind"] == "aer"]
    assert aer == [(nic, "error_detected", "need_reset", "relayed"),
                   (nic, "slot_reset", "recovered", "relayed"),
                   (nic, "resume", "none", "relayed")]


def test_the_guests_view_and_the_backends_agree(sandbox):
    """One session recorded from both ends - serve's --record and the simulated guest's - is
    the same ops with the same answers: trace diff says they agree; and the guest's replays
    clean through the engine."""
    nic = "0000:03:00.0"
    ok("--sandbox", sandbox, "sandbox", "domain", "create", 7, "--no-guest")
    ok("--sandbox", sandbox, "attach", nic, "--domid", 7, "--seize")
    served, seen = sandbox.parent / "served.jsonl", sandbox.parent / "seen.jsonl.gz"
    proc = start_serve(sandbox, "--record", str(served))
    try:
        ok("--sandbox", sandbox, "sandbox", "guest", 7, "--record", seen, "--timeout", 20)
    finally:
        stop_serve(proc)
    data = json.loads(ok("--json", "trace", "diff", served, seen).out)
    assert data["differ"] is False and data["ops_a"] == data["ops_b"] > 256
    assert data["notes"] == []          # the same device, settings and config at the start
    assert json.loads(ok("--json", "replay", seen, "--check").out)["mismatch_count"] == 0


def test_passthrough_both_views_replay_clean_and_agree(sandbox):
    """--mode passthrough: the guest addresses are the host's; the guest's recorder says
    passthrough in its header, and both traces replay clean and agree."""
    nic = "0000:03:00.0"
    ok("--sandbox", sandbox, "sandbox", "domain", "create", 7, "--no-guest")
    ok("--sandbox", sandbox, "attach", nic, "--domid", 7, "--seize")
    ok("--sandbox", sandbox, "attach", VF, "--domid", 7, "--seize")
    served, seen = sandbox.parent / "served.jsonl", sandbox.parent / "seen.jsonl"
    proc = start_serve(sandbox, "--mode", "passthrough", "--record", str(served))
    try:
        ok("--sandbox", sandbox, "sandbox", "guest", 7, "--record", seen, "--timeout", 20)
    finally:
        stop_serve(proc)
    header = _lines(seen)[0]
    assert header["mode"] == "passthrough" and _lines(served)[0]["mode"] == "passthrough"
    assert sorted(x["host"] for x in _lines(seen) if x["kind"] == "device") == [nic, VF]
    for path in (served, seen):
        out = json.loads(ok("--json", "replay", path, "--check").out)
        assert out["mismatch_count"] == 0 and out["devices"] == 2, out["mismatches"][:2]
    assert json.loads(ok("--json", "trace", "diff", served, seen).out)["differ"] is False

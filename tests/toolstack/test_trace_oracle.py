"""Our plans against the real thing: the C xenstored trace of xl attaching and detaching a PCI
device to a PV guest (fixtures/xen-traces/kernel-pciback-xenstored-trace.log). The toolstack's
requests inside each transaction must be ours, in the same order, with the same values."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from xenpciback_cli.pci.address import Bdf
from xenpciback_cli.toolstack import libxl_layout as L
from xenpciback_cli.toolstack.plan import Mkdir, Prune, Rm, SetPerms, Write

TRACE = (Path(__file__).resolve().parents[2] / ".." / "shared" / "fixtures" / "xen-traces"
         / "kernel-pciback-xenstored-trace.log")
LINE = re.compile(r"^IN (0x[0-9a-f]+) \S+ \S+ (\w+) \((.*)\)$")
DEV = Bdf(0, 0, 2, 0)


def transactions() -> list[list[tuple[str, str]]]:
    """Every committed transaction of the toolstack's connections: [(TYPE, args)]."""
    if not TRACE.exists():
        pytest.skip(f"{TRACE} is absent")
    open_tx: dict[str, list[tuple[str, str]]] = {}
    done = []
    for line in TRACE.read_text(errors="replace").splitlines():
        match = LINE.match(line)
        if not match:
            continue
        conn, kind, args = match[1], match[2], match[3].strip()
        if kind == "TRANSACTION_START":
            open_tx[conn] = []
        elif kind == "TRANSACTION_END":
            ops = open_tx.pop(conn, None)
            if ops is not None and args == "T":
                done.append(ops)
        elif conn in open_tx and kind in ("WRITE", "RM", "MKDIR", "SET_PERMS"):
            open_tx[conn].append((kind, args))
    return done


def touching(fragment: str) -> list[list[tuple[str, str]]]:
    return [tx for tx in transactions() if any(fragment in args for _, args in tx)]


def as_trace(ops) -> list[tuple[str, str]]:
    out = []
    for op in ops:
        if isinstance(op, Write):
            out.append(("WRITE", f"{op.path} {op.value}"))
        elif isinstance(op, Rm):
            out.append(("RM", op.path))
        elif isinstance(op, Mkdir):
            out.append(("MKDIR", op.path))
        elif isinstance(op, SetPerms):
            out.append(("SET_PERMS", f"{op.path} {' '.join(f'{a}{d}' for d, a in op.perms)}"))
    return out


def test_attach_transaction_is_xls():
    attaches = [tx for tx in touching("/local/domain/0/backend/pci/1/0/dev-0")
                if ("MKDIR", "/local/domain/0/backend/pci/1/0") in tx]
    assert len(attaches) == 2  # xl create, then xl pci-attach after the detach
    plan = L.plan_attach(L.AttachRequest(1, (L.DeviceRequest(DEV),)), L.BackendView(1), "du1",
                         hotplug=False)
    ours = [op for op in as_trace(plan.ops) if "/libxl/pci/" not in op[1]]
    for tx in attaches:
        assert tx == ours


def test_detach_transactions_are_xls():
    marks = [tx for tx in transactions()
             if tx == [("WRITE", "/local/domain/0/backend/pci/1/0/state-0 5"),
                       ("WRITE", "/local/domain/0/backend/pci/1/0/state 7")]]
    assert len(marks) == 2
    assert as_trace(L.plan_detach_request(1, 0, reconfigure=True)) == marks[0]

    removes = [tx for tx in transactions()
               if ("RM", "/local/domain/0/backend/pci/1/0/state-0") in tx]
    assert len(removes) == 2
    view = L.BackendView(1, {"num_devs": "1", "state": "4", "dev-0": "0000:00:02.0",
                             "key-0": "0000:00:02.0", "state-0": "5", "vdev-0": "0000:00:00.00",
                             "opts-0": "x"})
    ours = L.plan_detach_remove(view, 0)
    # libxl commits the key removal, then destroys the device in a second transaction.
    split = next(i for i, op in enumerate(ours) if isinstance(op, Write)) + 1
    assert as_trace(ours[:split]) == removes[0]

    destroys = [tx for tx in transactions() if ("RM", "/local/domain/1/device/pci/0") in tx
                and ("RM", "/local/domain/0/backend/pci/1/0") in tx
                and not any(kind == "MKDIR" for kind, _ in tx)]
    assert len(destroys) == 2
    assert destroys, "no device destroy transaction in the trace"
    rms = [args for kind, args in destroys[0] if kind == "RM"]
    expected = []
    for op in ours[split:]:
        if isinstance(op, Rm):
            expected.append(op.path)
        elif isinstance(op, Prune):  # the parents the trace shows removed, when empty
            expected += [p for p in ("/local/domain/1/device/pci", "/local/domain/0/backend/pci/1",
                                     "/local/domain/0/backend/pci")
                         if p.startswith(op.stop + "/") and op.path.startswith(p + "/")]
    assert rms == expected

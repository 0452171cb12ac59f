"""Differential test: random request sequences, embedded daemon vs Debian's real C xenstored.

The same seeded sequence of raw requests (two connections; writes, reads, mkdir, rm, directory,
permissions, transactions with conflicts, watches) goes to both daemons; every reply and every
watch event must be identical. This finds what hand-written scripts do not think of.
"""

import random

import pytest

import xsdaemons
from helpers.xenstore_conformance import RawConnection
from xenpciback_cli.xenstore import wire
from xenpciback_cli.xenstore.wire import MessageType as T

pytestmark = pytest.mark.realdaemon

NAMES = ["a", "b", "c"]
STEPS = 400


def random_path(rng):
    depth = rng.randint(1, 3)
    return "/d/" + "/".join(rng.choice(NAMES) for _ in range(depth))


def random_request(rng, txs):
    """(op, payload, tx name or None)."""
    kind = rng.choices(
        ["write", "read", "mkdir", "rm", "dir", "getp", "setp", "txs", "txe", "watch", "unwatch",
         "bad", "dom", "dirpart"], weights=[20, 15, 5, 6, 8, 4, 4, 4, 5, 3, 2, 2, 3, 2])[0]
    path = random_path(rng)
    tx = rng.choice(sorted(txs)) if txs and rng.random() < 0.4 else None
    if kind == "write":
        return T.WRITE, wire.write_payload(path, rng.choice([b"", b"v", b"\0\xff", b"x" * 50])), tx
    if kind == "read":
        return T.READ, wire.args(path), tx
    if kind == "mkdir":
        return T.MKDIR, wire.args(path), tx
    if kind == "rm":
        return T.RM, wire.args(path), tx
    if kind == "dir":
        return T.DIRECTORY, wire.args(path), tx
    if kind == "getp":
        return T.GET_PERMS, wire.args(path), tx
    if kind == "setp":
        perms = [f"{rng.choice('nrwb')}{rng.choice([0, 3, 5])}" for _ in range(rng.randint(1, 3))]
        return T.SET_PERMS, wire.args(path, *perms), tx
    if kind == "txs":
        return T.TRANSACTION_START, b"\0", None
    if kind == "txe":
        if not txs:
            return T.READ, wire.args(path), None
        return T.TRANSACTION_END, rng.choice([b"T\0", b"T\0", b"F\0"]), rng.choice(sorted(txs))
    if kind == "watch":
        where = rng.choice(["/d", path, "@introduceDomain", "@releaseDomain"])
        return T.WATCH, wire.args(where, rng.choice(["t1", "t2"])), None
    if kind == "dom":
        domid = str(rng.choice([3, 4]))
        op = rng.choice([T.INTRODUCE, T.RELEASE, T.IS_DOMAIN_INTRODUCED])
        return op, (wire.args(domid, "1", "2") if op == T.INTRODUCE else wire.args(domid)), None
    if kind == "dirpart":
        return T.DIRECTORY_PART, wire.args(path.rsplit("/", 1)[0], rng.choice(["0", "2", "99"])), tx
    if kind == "unwatch":
        return T.UNWATCH, wire.args(rng.choice(["/d", path]), rng.choice(["t1", "t2"])), None
    # Malformed paths (not NUL-less ones: C xenstored reads past such a payload and may crash).
    return T.READ, rng.choice([b"/d//x\0", b"d/bad char\0", b"/d/a/\0"]), None


def run(socket_path, seed):
    rng = random.Random(seed)
    conns = [RawConnection(socket_path), RawConnection(socket_path)]
    txs = [dict(), dict()]  # per connection: name -> id
    log = []
    try:
        for step in range(STEPS):
            who = rng.randrange(2)
            op, payload, txname = random_request(rng, txs[who])
            tx_id = txs[who].get(txname, 0) if txname else 0
            conn = conns[who]
            frames = conn.until_reply(conn.send(op, payload, tx_id))
            reply = frames[-1]
            if op == T.TRANSACTION_START and reply.type != T.ERROR:
                txs[who][f"tx{step}"] = int(reply.payload.rstrip(b"\0"))
            if op == T.TRANSACTION_END and txname:
                txs[who].pop(txname, None)
            events = []
            for i, other in enumerate(conns):
                got = other.until_reply(other.send(T.GET_DOMAIN_PATH, b"0\0"))
                mine = frames[:-1] if i == who else []
                events.append(sorted(m.payload for m in mine + got[:-1]
                                     if m.type == T.WATCH_EVENT))
            body = reply.payload
            if op == T.DIRECTORY_PART and reply.type != T.ERROR:
                body = body.split(b"\0", 1)[1]  # generation numbers are the daemon's own
            log.append((step, who, wire.type_name(op), payload[:60], tx_id != 0,
                        wire.type_name(reply.type), body, events))
    finally:
        for c in conns:
            c.close()
    return log


# Seeds 1, 2, 6, 13, 33 and 35 each once found a difference (duplicate events, transaction
# copies, RM inside a stale transaction, orphans deleted on RELEASE, re-INTRODUCE). Seed 17
# still differs: see docs/xenstore-differences.md, "Known divergence".
@pytest.mark.parametrize("seed", [1, 2, 3, 6, 13, 33, 35])
def test_random_sequences_match_real_cxenstored(seed, tmp_path):
    try:
        shim = xsdaemons.build_shim(tmp_path / "shim")
        real = xsdaemons.start_cxenstored(tmp_path / "c", shim)
    except xsdaemons.Unavailable as exc:
        pytest.skip(str(exc))
    ours = xsdaemons.start_embedded(tmp_path / "e", extra=["--no-state"])
    try:
        want = run(real.socket, seed)
        got = run(ours.socket, seed)
    finally:
        real.stop()
        ours.stop()
    for w, g in zip(want, got):
        assert g == w, f"first difference at step {w[0]}"

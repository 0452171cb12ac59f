"""Detach against what else writes to xenstore at the same time: a hostile guest hammering its own
nodes (``--force`` must still win) and a second detach on the same domain (both must end
consistently). Run against the embedded daemon and, where it runs here, Debian's C xenstored."""

from __future__ import annotations

import itertools
import threading
import time

import pytest

from xenpciback_cli.pci.address import Bdf
from xenpciback_cli.engine.attach import AttachSpec, attach
from xenpciback_cli.engine.detach import detach
from xenpciback_cli.sandbox.domains import create_domain, destroy_domain
from xenpciback_cli.xenstore.client import XenstoreClient, XenstoreError

from helpers.toolstack import guest_socket

NIC = Bdf(0, 3, 0, 0)
GPU = Bdf(0, 2, 0, 0)
_domids = itertools.count(40)


@pytest.fixture(params=["embedded", pytest.param("cxenstored", marks=pytest.mark.realdaemon)])
def daemon(request, tmp_path_factory):
    import xsdaemons  # tools/xsdaemons.py (on pytest's pythonpath, pyproject.toml)

    try:
        started = xsdaemons.start(request.param, tmp_path_factory.mktemp(request.param),
                                  tmp_path_factory.getbasetemp() / "xsshim")
    except xsdaemons.Unavailable as exc:
        pytest.skip(f"{request.param} unavailable: {exc}")
    yield started
    started.stop()


@pytest.fixture
def client(daemon):
    with XenstoreClient.open_socket(daemon.socket) as c:
        yield c


def be(d):
    return f"/local/domain/0/backend/pci/{d}/0"


def fe(d):
    return f"/local/domain/{d}/device/pci/0"


class HostileGuest:
    """Rewrites the guest's own frontend ``state`` every millisecond, as the guest where the
    daemon allows it (the embedded daemon's per-domain socket), else as a plain connection."""

    def __init__(self, daemon, domid: int) -> None:
        path, _ = guest_socket(daemon, domid)
        self.client = XenstoreClient.open_socket(path)
        self.domid = domid
        self.writes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            try:
                self.client.write(f"{fe(self.domid)}/state", str(3 + n % 2))
                self.writes += 1
            except XenstoreError:
                pass  # the node's parent is gone, or the guest lost the right: keep trying
            time.sleep(0.001)

    def __enter__(self) -> HostileGuest:
        self._thread.start()
        deadline = time.monotonic() + 5
        while self.writes < 5 and time.monotonic() < deadline:
            time.sleep(0.002)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.client.close()


def test_force_detach_wins_against_a_guest_rewriting_its_state(daemon, client):
    d = next(_domids)
    create_domain(client, d, f"guest{d}")
    try:
        attach(client, AttachSpec(d, NIC))
        attach(client, AttachSpec(d, GPU))
        with HostileGuest(daemon, d) as guest:
            first = detach(client, NIC, d, force=True, timeout=0.2, reset=False, retries=3)
            last = detach(client, GPU, d, force=True, timeout=0.2, reset=False, retries=3)
            assert guest.writes > 5
        assert not first.destroyed and last.destroyed
        assert not client.exists(be(d))
        assert not client.exists("/libxl/pci/0000-03-00-0/domid")
        assert not client.exists("/libxl/pci/0000-02-00-0/domid")
        # The frontend directory is dom0's to remove too; a guest that keeps writing may
        # recreate its own state node afterwards, but never the PV device's backend link.
        assert not client.exists(f"{fe(d)}/backend")
    finally:
        destroy_domain(client, d)


def test_guest_writes_during_every_removal_attempt_do_not_conflict(daemon, client):
    """Deterministic form of the race above: the guest writes its state inside every attempt."""
    d = next(_domids)
    create_domain(client, d, f"guest{d}")
    path, _ = guest_socket(daemon, d)
    try:
        attach(client, AttachSpec(d, NIC))
        with XenstoreClient.open_socket(path) as guest:
            out = detach(client, NIC, d, force=True, reset=False, retries=2,
                         on_attempt=lambda n: guest.write(f"{fe(d)}/state", str(n)))
        assert out.destroyed
        assert not [n for n in out.notes if "retried" in n or "left behind" in n]
        assert not client.exists(be(d)) and not client.exists(fe(d))
        assert not client.exists("/libxl/pci/0000-03-00-0/domid")
    finally:
        destroy_domain(client, d)


def _race(daemon, domid: int, bdfs, **kwargs):
    """Detach every one of ``bdfs`` from ``domid`` at once, one connection each; the outcomes."""
    barrier = threading.Barrier(len(bdfs))
    outcomes: dict[Bdf, object] = {}

    def one(bdf):
        with XenstoreClient.open_socket(daemon.socket) as c:
            barrier.wait(5)
            try:
                outcomes[bdf] = detach(c, bdf, domid, reset=False, **kwargs)
            except Exception as exc:  # noqa: BLE001 - the test reports it
                outcomes[bdf] = exc

    threads = [threading.Thread(target=one, args=(b,)) for b in bdfs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return outcomes


def test_two_detaches_on_one_domain_end_consistently(daemon, client):
    """Both detaches succeed every round, whichever commits first: EIO from a request that met a
    stale parent (the other detach destroyed the backend) is retried like EAGAIN."""
    d = next(_domids)
    create_domain(client, d, f"guest{d}")
    devices = [NIC, GPU, Bdf(0, 4, 0, 0)]
    try:
        for round_ in range(15):
            for bdf in devices[: 2 + round_ % 2]:
                attach(client, AttachSpec(d, bdf))
            outcomes = _race(daemon, d, devices[: 2 + round_ % 2])
            failures = {str(b): o for b, o in outcomes.items() if isinstance(o, Exception)}
            assert not failures, f"round {round_}: {failures}"
            assert [o.destroyed for o in outcomes.values()].count(True) == 1
            assert not client.exists(be(d)) and not client.exists(fe(d)), f"round {round_}"
            assert not [b for b in devices if client.exists(f"/libxl/pci/{b.xs_key}/domid")]
    finally:
        destroy_domain(client, d)


def test_detach_and_attach_wait_for_the_state_dir_lock(daemon, client, tmp_path):
    """With a state dir, detach and attach run under its lock (as hide and unhide do), so none
    of them decides from a state another is changing."""
    from xenpciback_cli.engine.journal import Journal

    d = next(_domids)
    create_domain(client, d, f"guest{d}")
    done = threading.Event()

    def work():
        with XenstoreClient.open_socket(daemon.socket) as c:
            attach(c, AttachSpec(d, NIC), state_dir=str(tmp_path))
            detach(c, NIC, d, reset=False, state_dir=str(tmp_path))
        done.set()

    try:
        with Journal(tmp_path).locked():
            worker = threading.Thread(target=work)
            worker.start()
            assert not done.wait(0.3)
            assert not client.exists(be(d))  # the attach is still waiting for the lock
        worker.join(10)
        assert done.is_set() and not client.exists(be(d))
    finally:
        destroy_domain(client, d)

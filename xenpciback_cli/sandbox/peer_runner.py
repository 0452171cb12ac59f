"""Drive a simulated peer (:mod:`~xenpciback_cli.sandbox.peers`) over a real xenstore connection.

The backend runs as dom0 on the daemon's main socket; the frontend should run on the embedded
daemon's per-domain socket ``<socket>.d/<domid>``, so it acts as the guest with the guest's
permissions (on the real daemons, which have no such socket without a hypervisor, it runs as
dom0 and only the layout is checked).

The loop: watch both directories, and after every event take a snapshot, ask the peer what to
write, write it in one transaction, repeat until the peer has nothing to say. Every wait is
bounded; :meth:`PeerRunner.stop` ends a thread-run loop within one poll interval.
"""

from __future__ import annotations

import threading
from typing import Any

from xenpciback_cli.toolstack.libxl_layout import backend_path, frontend_path
from xenpciback_cli.backend.xenbus import Snapshot, XenbusBackend, xenstore_ops
from xenpciback_cli.sandbox.peers import SimFrontend
from xenpciback_cli.toolstack.xsexec import apply_ops, read_dir_values

POLL = 0.1
MAX_STEPS = 64  # a peer that keeps writing after this many steps in a row is stuck in a loop


def _readable(node: Any, path: str) -> dict[str, str]:
    """A directory's values; a guest asking about a node that does not exist yet under a parent
    it may not read gets EACCES from the daemons, which for a peer means "not there yet"."""
    try:
        return read_dir_values(node, path)
    except Exception as exc:  # noqa: BLE001
        if getattr(exc, "errno_name", None) == "EACCES":
            return {}
        raise


class PeerRunner:
    """One simulated peer bound to one xenstore client."""

    def __init__(self, client: Any, peer: XenbusBackend | SimFrontend) -> None:
        self.client = client
        self.peer = peer
        self.domid = peer.domid
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.token = f"xen-pciback-sim-{type(peer).__name__}-{self.domid}"
        self.failure: BaseException | None = None

    def snapshot(self) -> Snapshot:
        """Both directories read in one transaction: a consistent view, never half a commit."""
        snapshot: Snapshot = self.client.transact(lambda tx: Snapshot(
            _readable(tx, backend_path(self.domid)), _readable(tx, frontend_path(self.domid))))
        return snapshot

    def settle(self) -> int:
        """Step the peer until it has nothing more to write; returns the number of writes."""
        done = 0
        for _ in range(MAX_STEPS):
            ops = xenstore_ops(self.peer.step(self.snapshot()))  # type: ignore[arg-type]
            if not ops:
                return done
            self.client.transact(lambda tx, ops=ops: apply_ops(tx, ops))
            done += len(ops)
        raise RuntimeError(f"{type(self.peer).__name__} for domain {self.domid} did not settle")

    def watch(self) -> None:
        if isinstance(self.peer, XenbusBackend):
            paths = [backend_path(self.domid), f"{frontend_path(self.domid)}/state"]
        else:
            paths = [frontend_path(self.domid), f"{backend_path(self.domid)}/state"]
        for path in paths:
            self.client.watch(path, self.token)

    def run(self, until: threading.Event | None = None) -> None:
        """Serve until :meth:`stop` (or ``until``) is set."""
        stop = until or self._stop
        try:
            self.watch()
            self.settle()
            while not stop.is_set() and not self._stop.is_set():
                event = self.client.next_event(POLL)
                if event is None:
                    continue
                while self.client.next_event(0) is not None:  # coalesce a burst
                    pass
                self.settle()
        except BaseException as exc:  # noqa: BLE001 - reported to the test/owner, not swallowed
            if not self._stop.is_set():
                self.failure = exc
                raise

    def start(self) -> PeerRunner:
        self._thread = threading.Thread(target=self._run_quietly, daemon=True,
                                        name=self.token)
        self._thread.start()
        return self

    def _run_quietly(self) -> None:
        try:
            self.run()
        except BaseException:  # noqa: BLE001 - kept in self.failure
            pass

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

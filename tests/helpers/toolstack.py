"""Shared pieces of the toolstack tests: tree dumps, simulated guests, daemon connections."""

from __future__ import annotations

import os
from contextlib import contextmanager
from collections.abc import Iterator

from xenpciback_cli.sandbox.peer_runner import PeerRunner
from xenpciback_cli.backend.xenbus import XenbusBackend
from xenpciback_cli.sandbox.peers import SimFrontend
from xenpciback_cli.xenstore.client import XenstoreClient, XenstoreError


def dump(client, path: str) -> dict[str, tuple[str, str]]:
    """``path -> (value, perms)`` for a subtree, perms spelled like ``xenstore-ls -p``."""
    out: dict[str, tuple[str, str]] = {}

    def walk(p: str) -> None:
        try:
            value = client.read(p).decode()
        except XenstoreError as exc:
            if exc.errno_name == "ENOENT":
                return
            raise
        out[p] = (value, " ".join(str(x) for x in client.get_perms(p)))
        for child in client.directory(p):
            walk(f"{p.rstrip('/')}/{child}")

    walk(path)
    return out


def guest_socket(daemon, domid: int) -> tuple[str, bool]:
    """The socket a guest's pcifront should use, and whether it really acts as that domain."""
    per_domain = f"{daemon.socket}.d/{domid}"
    if os.path.exists(per_domain):
        return per_domain, True
    return daemon.socket, False


class SimGuest:
    """pciback (as dom0) and pcifront (as the guest where the daemon allows it), in threads."""

    def __init__(self, daemon, domid: int, *, frontend: bool = True) -> None:
        self.daemon, self.domid = daemon, domid
        self.backend = PeerRunner(XenstoreClient.open_socket(daemon.socket), XenbusBackend(domid))
        self.frontend: PeerRunner | None = None
        if frontend:
            self.start_frontend()
        self.backend.start()

    def start_frontend(self) -> None:
        path, self.as_guest = guest_socket(self.daemon, self.domid)
        self.frontend = PeerRunner(XenstoreClient.open_socket(path), SimFrontend(self.domid)).start()

    def stop_frontend(self) -> None:
        if self.frontend is not None:
            self.frontend.stop()
            self.frontend.client.close()
            self.frontend = None

    def stop(self) -> None:
        self.stop_frontend()
        self.backend.stop()
        self.backend.client.close()
        for runner in (self.backend, self.frontend):
            if runner is not None and runner.failure is not None:
                raise runner.failure


@contextmanager
def sim_guest(daemon, domid: int, **kwargs) -> Iterator[SimGuest]:
    guest = SimGuest(daemon, domid, **kwargs)
    try:
        yield guest
    finally:
        guest.stop()

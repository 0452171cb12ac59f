"""Where a toolstack command gets its xenstore connection and host model from.

``--socket PATH`` wins; with ``--sandbox S`` the sandbox's own xenstored (started on demand)
and simulated host; otherwise the real daemon found the way Xen's library finds it and real
sysfs. Kept out of the click modules so the engine and tests can use it too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from xenpciback_cli.pci.address import Bdf


def open_xenstore(app: Any, socket: str | None = None, *, timeout: float = 10.0) -> Any:
    """The xenstore connection; in a sandbox, also restart the simulated guests that stopped
    with its xenstored (``sandbox stop``), so a hot-plug finds its peers as before."""
    from xenpciback_cli.xenstore.tools import open_client

    client = open_client(socket, app.sandbox_dir, timeout=timeout)
    if socket is None and app.sandbox_dir is not None:
        from xenpciback_cli.toolstack import simguest

        try:
            simguest.revive(app.sandbox_dir, client.path, client)
        except BaseException:
            client.close()
            raise
    return client


def host_of(app: Any) -> Any | None:
    """The application's host model, or None where this build has none to offer."""
    try:
        return app.host
    except ImportError:
        return None


class SeizeStep:
    """``--seize``: hide the functions through the seize engine (pre-flight checks, journal,
    records) before attaching. :meth:`check` runs the pre-flight and its refusals (the host uses
    the device...) and writes nothing; calling the step seizes. The caller holds the state dir's
    lock around both (``attach`` does)."""

    def __init__(self, app: Any, host: Any) -> None:
        self.app, self.host = app, host
        self._seizer: Any = None
        self._checked: dict[Any, Any] = {}

    def seizer(self) -> Any:
        if self._seizer is None:
            from xenpciback_cli.engine.seize import Seizer

            self._seizer = Seizer(self.host, self.app.state_dir, xenstore=self.app.xenstore())
        return self._seizer

    def check(self, bdfs: list[Bdf]) -> None:
        seizer = self.seizer()
        preflights = seizer.preflight(bdfs, "pciback")
        seizer.enforce(preflights, force=False)
        self._checked = {p.bdf: p for p in preflights}

    def __call__(self, bdfs: list[Bdf]) -> list[Bdf]:
        if set(bdfs) - set(self._checked):
            self.check(bdfs)
        seizer = self.seizer()
        return [seizer.hide(self._checked[b], "pciback").bdf for b in bdfs]


def seizer_of(app: Any, host: Any) -> Any:
    return SeizeStep(app, host)


def try_open_xenstore(app: Any) -> Any | None:
    """Like :func:`open_xenstore`, but None when no daemon can be reached (no Xen here).

    In a sandbox the daemon is started only if it has a saved tree to serve: a sandbox that never
    used xenstore has nothing attached, and listing it must not leave a daemon behind.
    """
    from xenpciback_cli.errors import OperationFailed

    if app.sandbox_dir is not None:
        from xenpciback_cli.xenstore import sandbox as xs_sandbox
        from xenpciback_cli.xenstore.client import connect

        sock = xs_sandbox.socket_path(app.sandbox_dir)
        try:
            return connect(sock, timeout=5.0)
        except OperationFailed:
            if not (xs_sandbox.xenstore_dir(app.sandbox_dir) / "state.json").exists():
                return None
    else:
        from xenpciback_cli.xenstore.transport import any_candidate_exists

        if not any_candidate_exists():  # no Xen here: skip loading the client at all
            return None
    try:
        return open_xenstore(app, timeout=5.0)
    except OperationFailed:
        return None

"""What attach and detach borrow from the application: its host model and the seize engine.

The xenstore connection and the host are chosen in ``app.py`` (the one place adapters are
picked); this module only adapts them to the orchestrations' needs. Kept out of the click
modules so the engine and tests can use it too. The engine may not import ``app``, so what it
uses of the application is written down here as protocols (``app.Application`` is both).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from xenpciback_cli.engine.seize import Seizer, XenstoreClient
    from xenpciback_cli.engine.preflight import Preflight
    from xenpciback_cli.host.model import Host
    from xenpciback_cli.pci.address import Bdf


class HostApp(Protocol):
    """An application that offers a host model (reading it may raise ImportError where this
    build has none)."""

    @property
    def host(self) -> Host: ...


class SeizeApp(Protocol):
    """What ``--seize`` uses of the application: its state dir and xenstore client."""

    @property
    def state_dir(self) -> Path: ...

    def xenstore(self) -> XenstoreClient | None: ...


def host_of(app: HostApp) -> Host | None:
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

    def __init__(self, app: SeizeApp, host: Host) -> None:
        self.app, self.host = app, host
        self._seizer: Seizer | None = None
        self._checked: dict[Bdf, Preflight] = {}

    def seizer(self) -> Seizer:
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


def seizer_of(app: SeizeApp, host: Host) -> SeizeStep:
    return SeizeStep(app, host)

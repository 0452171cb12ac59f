"""The application object's adapter choice for ``serve`` on real Xen."""

from __future__ import annotations

from pathlib import Path

import pytest

from xenpciback_cli.app import Application, Settings
from xenpciback_cli.transport import xen_interrupts


def test_real_xen_serve_adapters_warm_up_the_hypervisor_interface(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Found on real Xen (tests/realxen): the first MSI-X enable must not pay for loading
    libxenctrl, or the guest's pcifront gives up after 2 s; serve's adapters open it at start."""
    (tmp_path / "bus" / "pci" / "devices").mkdir(parents=True)
    warmed: list[object] = []
    monkeypatch.setattr(xen_interrupts.XenInterrupts, "warm_up", lambda self: warmed.append(self))
    adapters = Application(Settings(sysfs_root=str(tmp_path))).serve_adapters()
    assert warmed == [adapters.interrupts]
    assert adapters.interrupts.sysfs_root == str(tmp_path)
    if adapters.aer_feed is not None:
        adapters.aer_feed.close()


def test_real_xen_serve_adapters_carry_the_host_aer_feed(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The host's error-recovery uevents feed serve's AER relay (docs/real-xen.md); a socket
    that cannot be opened leaves serve without the feed, not without a backend."""
    from xenpciback_cli.host import uevents

    (tmp_path / "bus" / "pci" / "devices").mkdir(parents=True)
    monkeypatch.setattr(xen_interrupts.XenInterrupts, "warm_up", lambda self: None)
    opened: list[str] = []

    class Feed:
        def __init__(self, root: str) -> None:
            opened.append(root)

    monkeypatch.setattr(uevents, "UeventFeed", Feed)
    adapters = Application(Settings(sysfs_root=str(tmp_path))).serve_adapters()
    assert isinstance(adapters.aer_feed, Feed) and opened == [str(tmp_path)]

    def refuse(root: str) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(uevents, "UeventFeed", refuse)
    assert Application(Settings(sysfs_root=str(tmp_path))).serve_adapters().aer_feed is None

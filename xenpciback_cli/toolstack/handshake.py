"""Waiting for the PV PCI handshake to reach a condition, with a deadline and a useful failure.

Attach and detach both open a Reconfiguring round and then wait for the backend to come back to
Connected. Waiting uses xenstore watches on both ``state`` nodes (no polling loop), bounded by a
timeout; when it expires, :class:`HandshakeTimeout` carries the states it was stuck in, so the
message can say which state is stuck and whose move it is.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from typing import Any

from xenpciback_cli.errors import OperationFailed
from xenpciback_cli.toolstack.libxl_layout import BackendView, backend_path, frontend_path
from xenpciback_cli.toolstack.xenbus import XenbusState, describe_stall, parse_state
from xenpciback_cli.toolstack.xsexec import read_backend, read_or_none

_tokens = itertools.count(1)


class HandshakeTimeout(OperationFailed):
    """The other parties did not finish the round in time."""

    def __init__(self, message: str, backend: XenbusState | None,
                 frontend: XenbusState | None) -> None:
        super().__init__(message)
        self.backend = backend
        self.frontend = frontend


def frontend_state(client: Any, domid: int) -> XenbusState | None:
    return parse_state(read_or_none(client, f"{frontend_path(domid)}/state"))


def wait_for(client: Any, domid: int, done: Callable[[BackendView, XenbusState | None], bool], *,
             timeout: float, what: str) -> BackendView:
    """Wait until ``done(backend_view, frontend_state)``; raise :class:`HandshakeTimeout`.

    The condition is checked once before waiting and after every watch event on either state
    node (the initial event a watch fires at registration covers races with the last write).
    """
    token = f"xen-pciback-wait-{next(_tokens)}"
    paths = (f"{backend_path(domid)}/state", f"{frontend_path(domid)}/state")
    deadline = time.monotonic() + max(0.0, timeout)
    view = read_backend(client, domid)
    fe = frontend_state(client, domid)
    if done(view, fe):
        return view
    for path in paths:
        client.watch(path, token)
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            client.next_event(min(remaining, 0.5))  # any event (or a quiet 0.5 s): look again
            view = read_backend(client, domid)
            fe = frontend_state(client, domid)
            if done(view, fe):
                return view
    finally:
        for path in paths:
            try:
                client.unwatch(path, token)
            except Exception:  # noqa: BLE001 - best effort; the connection ends with the command
                pass
    view = read_backend(client, domid)
    fe = frontend_state(client, domid)
    if done(view, fe):
        return view
    raise HandshakeTimeout(f"timed out after {timeout:g}s {what}: {describe_stall(view.state, fe)}",
                           view.state, fe)


def both_connected(view: BackendView, fe: XenbusState | None) -> bool:
    """The guest is using its PCI bus: both ends of the handshake reached Connected."""
    return view.state == XenbusState.CONNECTED and fe == XenbusState.CONNECTED


def backend_connected(view: BackendView, fe: XenbusState | None) -> bool:
    return view.state == XenbusState.CONNECTED


def round_finished(view: BackendView, fe: XenbusState | None) -> bool:
    """The Reconfiguring round is over when both ends are Connected again."""
    return view.state == XenbusState.CONNECTED and fe in (XenbusState.CONNECTED, None)

"""Where a toolstack command gets its xenstore connection and host model from.

``--socket PATH`` wins; with ``--sandbox S`` the sandbox's own xenstored (started on demand)
and simulated host; otherwise the real daemon found the way Xen's library finds it and real
sysfs. Kept out of the click modules so the engine and tests can use it too.
"""

from __future__ import annotations

from typing import Any


def open_xenstore(app: Any, socket: str | None = None, *, timeout: float = 10.0) -> Any:
    from xenpciback_cli.xenstore.tools import open_client

    return open_client(socket, app.sandbox_dir, timeout=timeout)


def host_of(app: Any) -> Any | None:
    """The application's host model, or None where this build has none to offer."""
    try:
        return app.host
    except ImportError:
        return None


def seizer_of(app: Any, host: Any) -> Any | None:
    """A function seizing a list of functions through the hide engine (``--seize``)."""
    try:
        from xenpciback_cli.engine import seize as seize_engine  # type: ignore[attr-defined]
    except ImportError:
        return None
    hide = getattr(seize_engine, "hide", None)
    if hide is None:
        return None

    def seize(bdfs: list) -> list:
        hide(host, list(bdfs), state_dir=app.state_dir)
        return list(bdfs)

    return seize

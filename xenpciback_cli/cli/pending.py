"""One warning line per interrupted hide/unhide, printed by every command that opens the host."""

from __future__ import annotations

from typing import Any


def warn_pending(app: Any, terminal: Any) -> list[Any]:
    """Print "interrupted operation: ..." for each journal entry; return the entries."""
    from xenpciback_cli.engine.journal import pending_operations

    entries = pending_operations(app.state_dir)
    for entry in entries:
        terminal.warn(entry.describe())
    return entries


def seizer_for(app: Any) -> Any:
    """The engine for this app: its host, state dir, xenstore client and attachments (if any)."""
    from xenpciback_cli.engine.seize import Seizer, install_test_hooks

    host = app.host
    install_test_hooks(host)
    xenstore = app.xenstore() if callable(getattr(app, "xenstore", None)) else None
    attachments = app.attachments() if callable(getattr(app, "attachments", None)) else None
    return Seizer(host, app.state_dir, xenstore=xenstore, attachments=attachments)

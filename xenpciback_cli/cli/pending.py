"""What the seizing commands share: the interrupted-operation warning, the engine, dry-run output."""

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
    return Seizer(host, app.state_dir, xenstore=app.xenstore(), attachments=app.attachments())


def render_planned_writes(terminal: Any, verb: str, bdf: Any, writes: list[dict[str, str]]) -> None:
    """A dry run's plan, as the shell commands that would do it."""
    terminal.line(f"dry run: would {verb} {bdf} with these sysfs writes:")
    for write in writes:
        terminal.line(f"  echo {write['value'].strip() or '(newline)'} > /sys/{write['path']}")

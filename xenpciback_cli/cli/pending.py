"""What the seizing commands share: the interrupted-operation warning, the engine, dry-run output."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from xenpciback_cli.app import Application


def warn_pending(app: Application, terminal: Any) -> list[Any]:
    """Print one line per journal entry ("interrupted operation: ..." or "operation in progress
    (pid N): ...") and per corrupt state file (naming it and the fix); return the entries.

    A corrupt file is a warning here, never a stop: it concerns its own device, and the command
    that acts on that device refuses it then (exit 2)."""
    import os

    if not os.path.lexists(app.state_dir):  # never used here: nothing to read (nor to import)
        return []
    from xenpciback_cli.engine.backend_settings import load_settings
    from xenpciback_cli.engine.journal import pending_operations
    from xenpciback_cli.engine.records import load_records

    corrupt: list[Any] = []  # an unsafe state dir (StateDirUnsafe) stops every command
    entries = pending_operations(app.state_dir, corrupt=corrupt)
    load_records(app.state_dir, corrupt=corrupt)
    load_settings(app.state_dir, corrupt=corrupt)
    for entry in entries:
        terminal.warn(entry.describe())
    for problem in corrupt:
        terminal.warn(str(problem))
    return entries


def seizer_for(app: Application) -> Any:
    """The engine for this app: its host, state dir, xenstore client and attachments (if any)."""
    from xenpciback_cli.engine.seize import Seizer, install_test_hooks

    host = app.host
    install_test_hooks(host)
    return Seizer(host, app.state_dir, xenstore=app.xenstore(), attachments=app.attachments())


def render_planned_writes(terminal: Any, verb: str, bdf: Any, writes: list[dict[str, str]]) -> None:
    """A dry run's plan, as the shell commands that would do it: each line runs as it is in a
    POSIX shell (quoted with shlex.quote; an empty value is ``echo``'s lone newline, which is
    how the kernel's attributes are cleared), under the sysfs root this run really uses."""
    import posixpath
    import shlex

    root = getattr(terminal, "sysfs_root", "/sys") or "/sys"
    terminal.line(f"# dry run: would {verb} {bdf} with these sysfs writes:")
    for write in writes:
        value = write["value"].strip()
        target = shlex.quote(posixpath.join(root, write["path"]))
        terminal.line(f"echo {shlex.quote(value)} > {target}" if value else f"echo > {target}")


def listener_for(terminal: Any, *, as_json: bool, render: Any = None, forced: str = "FORCED: ") -> Any:
    """The engine's :class:`~xenpciback_cli.engine.seize.Listener`, rendering on ``terminal``:
    interrupted operations and FORCED lines always (stderr), checks and results unless --json.
    It keeps the pre-flight results (``.preflights``) for a refusal's JSON."""
    from xenpciback_cli.engine.seize import Listener

    class TerminalListener(Listener):
        preflights: Sequence[Any] = ()  # set by checked()

        def pending(self, entries: list[Any], problems: list[Any]) -> None:
            for entry in entries:
                terminal.warn(entry.describe())
            for problem in problems:
                terminal.warn(str(problem))

        def checked(self, preflights: list[Any]) -> None:
            self.preflights = list(preflights)
            if as_json:
                return
            for result in preflights:
                terminal.line(f"{result.bdf}:")
                for check in result.checks:
                    terminal.line(f"  {check.line()}")

        def forced(self, lines: list[str]) -> None:
            for line in lines:
                terminal.warn(f"{forced}{line}")

        def each(self, items: Any, description: str) -> Any:
            return terminal.progress(items, total=len(items), description=description)

        def done(self, result: Any) -> None:
            if render is not None and not as_json:
                render(result)

    return TerminalListener()


def load_driver(app: Application, terminal: Any, driver: str, *, load: bool, dry_run: bool) -> str | None:
    """Load the module of ``driver`` when it is not loaded (``modprobe``), unless ``load`` is
    off or this is a dry run; one line says what was (or would be) loaded. Returns the module."""
    from xenpciback_cli.pci.drivers import DRIVER_MODULES

    if not load or driver in app.host.loaded_drivers():
        return None
    module = DRIVER_MODULES.get(driver, driver)
    if dry_run:
        terminal.info(f"dry run: would load module {module} (driver {driver} is not loaded)")
        return None
    app.host.load_module(module)
    terminal.info(f"loaded module {module} (driver {driver})")
    return module

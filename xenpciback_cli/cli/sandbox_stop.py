"""``xen-pciback --sandbox S sandbox stop``: stop the sandbox's background daemons."""

from __future__ import annotations

import click


@click.command("stop")
@click.pass_obj
def command(app: object) -> None:
    """Stop the sandbox's background xenstored (its tree is saved and reloaded next start)."""
    from xenpciback_cli.cli.terminal import terminal_for
    from xenpciback_cli.errors import InputError, OperationFailed
    from xenpciback_cli.xenstore.sandbox import SandboxDaemonError, stop

    sandbox = app.sandbox_dir  # type: ignore[attr-defined]
    if sandbox is None:
        raise InputError("'sandbox stop' needs --sandbox DIR (or XEN_PCIBACK_SANDBOX)")
    try:
        pid = stop(sandbox)
    except SandboxDaemonError as exc:
        raise OperationFailed(str(exc)) from None
    term = terminal_for(app)
    if app.settings.json:  # type: ignore[attr-defined]
        term.json({"xenstored": {"stopped": pid is not None, "pid": pid}})
    elif pid is None:
        term.info("xenstored was not running")
    else:
        term.info(f"stopped xenstored (pid {pid})")

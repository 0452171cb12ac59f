"""``xen-pciback --sandbox S sandbox stop``: stop the sandbox's background daemons."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from xenpciback_cli.app import Application


@click.command("stop")
@click.pass_obj
def command(app: Application) -> None:
    """Stop the sandbox's background xenstored and simulated guests (the tree is saved and
    reloaded next start; each domain's simulated guest is restarted by the next command)."""
    from xenpciback_cli.cli.terminal import terminal_for
    from xenpciback_cli.errors import InputError
    from xenpciback_cli.sandbox.host import stop_background

    sandbox = app.sandbox_dir
    if sandbox is None:
        raise InputError("'sandbox stop' needs --sandbox DIR (or XEN_PCIBACK_SANDBOX)")
    stopped = stop_background(sandbox, forget=False)
    pid, guests = stopped["xenstored"], stopped["guests"]
    term = terminal_for(app)
    if app.settings.json:
        term.json({"xenstored": {"stopped": pid is not None, "pid": pid},
                   "simulated_guests": {"stopped": guests}})
        return
    if pid is None:
        term.info("xenstored was not running")
    else:
        term.info(f"stopped xenstored (pid {pid})")
    if guests:
        term.info(f"stopped {len(guests)} simulated guest(s); the next command restarts them")

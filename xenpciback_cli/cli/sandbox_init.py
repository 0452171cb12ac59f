"""``xen-pciback sandbox init DIR``: create a simulated host to try everything without Xen."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from xenpciback_cli.app import Application


@click.command("init")
@click.argument("directory", metavar="DIR", type=click.Path(file_okay=False))
@click.option("--force", "-f", is_flag=True, help="Recreate DIR if it already holds a sandbox.")
@click.pass_obj
def command(app: Application, directory: str, force: bool) -> None:
    """Create a sandbox in DIR: PCI devices from real captures, a simulated kernel, host usage.

    DIR must be empty or absent (or an existing sandbox with --force). Then use
    'xen-pciback --sandbox DIR list' (or set XEN_PCIBACK_SANDBOX=DIR).
    """
    from xenpciback_cli.cli.terminal import terminal_for
    from xenpciback_cli.sandbox.host import create_sandbox

    host = create_sandbox(directory, force=force)
    terminal = terminal_for(app)
    count = len(host.addresses())
    if app.settings.json:
        terminal.json({"sandbox": str(host.directory), "devices": count})
    else:
        terminal.line(f"sandbox created in {host.directory} with {count} PCI devices")
        terminal.line(f"try: xen-pciback --sandbox {directory} list")

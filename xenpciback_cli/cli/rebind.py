"""``xen-pciback rebind DEVICE...``: let the kernel choose the driver, as driverctl's unset-override."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from xenpciback_cli.app import Application


@click.command("rebind")
@click.argument("devices", metavar="DEVICE...", nargs=-1)
@click.option("-d", "--ids", "ids_text", metavar="[VENDOR]:[DEVICE][:CLASS]",
              help="The devices with these ids (hex; an empty part matches any), as lspci -d.")
@click.option("--force", "-f", is_flag=True,
              help="Go ahead even while the host uses it or a guest has it. Loud.")
@click.option("--dry-run", is_flag=True, help="Print every sysfs write, in order, and do none.")
@click.pass_obj
def command(app: Application, devices: tuple[str, ...], ids_text: str | None, force: bool,
            dry_run: bool) -> None:
    """Give DEVICE... (or every device with -d's ids) to whatever driver the kernel's probe
    picks, clearing the override.

    Like 'driverctl unset-override': clear driver_override (and a pciback slot), unbind from
    the current driver, drivers_probe. The escape hatch when a seize record is gone (else
    'unhide --rebind' restores the recorded driver). Journalled like hide; a device the host
    uses is refused (exit 3) unless --force.
    """
    from xenpciback_cli.cli.bind import render_bound
    from xenpciback_cli.cli.pending import listener_for, seizer_for
    from xenpciback_cli.cli.terminal import terminal_for
    from xenpciback_cli.engine.selection import select_patterns

    terminal = terminal_for(app)
    as_json = app.settings.json
    patterns = select_patterns(app.host, app.state_dir, devices, ids_text, verb="rebind", xenstore=app.xenstore)
    seizer = seizer_for(app)
    listener = listener_for(terminal, as_json=as_json, render=lambda r: render_bound(terminal, r),
                            forced="FORCED past a safety refusal: ")
    results = seizer.bind_devices(seizer.select(patterns), None, force=force, dry_run=dry_run,
                                  listener=listener)
    if as_json:
        terminal.json({"dry_run": dry_run, "devices": [r.to_json() for r in results]})

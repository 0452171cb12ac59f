"""``xen-pciback install-units``: write the systemd units so they start this installation."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from xenpciback_cli.app import Application


@click.command("install-units")
@click.option("--dir", "directory", metavar="DIR", default="/etc/systemd/system", show_default=True,
              help="Where to write the units.")
@click.option("--dry-run", is_flag=True, help="Say what would change; write nothing.")
@click.pass_obj
def command(app: Application, directory: str, dry_run: bool) -> None:
    """Write xen-pciback-restore.service (boot: recover, then restore, before networking) and
    xen-pciback-serve.service (the userspace backend, Type=notify) with the absolute command of
    this installation, wherever pip put it.

    Idempotent: a unit already as it should be is left alone (JSON "changed": false). Then run
    'systemctl daemon-reload && systemctl enable xen-pciback-restore', and
    'systemctl enable --now xen-pciback-serve' where this tool's serve is the backend.
    """
    from xenpciback_cli.cli.terminal import terminal_for
    from xenpciback_cli.engine.units import install

    terminal = terminal_for(app)
    results = install(directory, dry_run=dry_run)
    changed = any(r.changed for r in results)
    if app.settings.json:
        terminal.json({"changed": changed, "dry_run": dry_run, "units": [r.to_json() for r in results]})
        return
    for result in results:
        verb = ("would write" if dry_run else "wrote") if result.changed else "unchanged:"
        terminal.line(f"{verb} {result.path} (runs {result.exec_command})")
    if changed and not dry_run:
        terminal.info("next: systemctl daemon-reload && systemctl enable xen-pciback-restore"
                      " (and xen-pciback-serve, where serve is the backend)")

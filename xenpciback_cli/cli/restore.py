"""``xen-pciback restore``: re-seize every persisted device (run at boot by the systemd unit)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from xenpciback_cli.app import Application


@click.command("restore")
@click.option("--config", "config", metavar="PATH", default=None,
              help="Persisted config file [default: /etc/xen-pciback/seized.toml].")
@click.option("--force", "-f", is_flag=True, help="Override safety refusals. Loud.")
@click.option("--dry-run", is_flag=True, help="Print every sysfs write, in order, and do none.")
@click.pass_obj
def command(app: Application, config: str | None, force: bool, dry_run: bool) -> None:
    """Seize everything listed in the persisted config; already-seized devices are left alone.

    Each device is reported; one that is refused or missing does not stop the others (exit 3
    if any was refused, 1 if any failed).
    """
    from xenpciback_cli.cli.pending import listener_for, seizer_for
    from xenpciback_cli.cli.terminal import terminal_for
    from xenpciback_cli.errors import OperationFailed, SafetyRefusal

    terminal = terminal_for(app)
    as_json = app.settings.json
    path = config or str(app.persist_file)
    report = seizer_for(app).restore(path, config_named=config is not None, force=force, dry_run=dry_run,
                                     listener=listener_for(terminal, as_json=as_json))
    if as_json:
        terminal.json({"changed": report.changed, "dry_run": dry_run, "config": path,
                       "devices": report.devices})
    else:
        if not report.listed:
            terminal.line(f"nothing to restore: {path} lists no devices")
        for item in report.devices:
            terminal.line(f"{item['bdf']}: {item['status']} ({item['detail']})")
    if report.refused:
        raise SafetyRefusal(f"restore: {report.refused} device(s) refused (see above)")
    if report.failed:
        raise OperationFailed(f"restore: {report.failed} device(s) failed (see above)")

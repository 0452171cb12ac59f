"""``xen-pciback unhide BDF...``: release seized devices (thin: parse, engine, render)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from xenpciback_cli.app import Application


@click.command("unhide")
@click.argument("devices", metavar="DEVICE...", nargs=-1)
@click.option("-d", "--ids", "ids_text", metavar="[VENDOR]:[DEVICE][:CLASS]",
              help="Release the seized devices with these ids (hex; an empty part matches any), as lspci -d.")
@click.option("--rebind", "-r", is_flag=True, help="Bind the recorded original driver again (or probe).")
@click.option("--force", "-f", is_flag=True, help="Release even while attached to a guest. Dangerous.")
@click.option("--dry-run", is_flag=True, help="Print every sysfs write, in order, and do none.")
@click.option("--config", "config", metavar="PATH", default=None,
              help="Also drop the devices from this persisted config [default: the usual one].")
@click.pass_obj
def command(app: Application, devices: tuple[str, ...], ids_text: str | None, rebind: bool, force: bool,
            dry_run: bool, config: str | None) -> None:
    """Release DEVICE... (a BDF or one of lspci's -s forms: 03:00, 03:; a device name, or a host
    interface or block device), or the seized devices with -d's ids: clear
    driver_override, unbind from the seize driver, drop the pciback slot, and with --rebind
    give the device back to its recorded original driver.

    Refuses (exit 3) while the device is attached to a guest.
    """
    from xenpciback_cli.cli.pending import listener_for, seizer_for
    from xenpciback_cli.cli.terminal import terminal_for
    from xenpciback_cli.engine.selection import select_patterns

    terminal = terminal_for(app)
    as_json = app.settings.json
    patterns = select_patterns(app.host, app.state_dir, devices, ids_text, verb="release",
                               xenstore=app.xenstore, held=True)
    if not patterns:  # -d selected devices, none of them seized
        if as_json:
            terminal.json({"changed": False, "dry_run": dry_run, "devices": [], "unpersisted": False})
        else:
            terminal.line(f"no seized device has ids {ids_text}; nothing to do")
        return
    seizer = seizer_for(app)
    listener = listener_for(terminal, as_json=as_json, render=lambda r: _render(terminal, r, rebind))
    report = seizer.unhide_devices(patterns, rebind=rebind, force=force, dry_run=dry_run,
                                   config=config or str(app.persist_file),
                                   config_named=config is not None,
                                   listener=listener)
    if as_json:
        terminal.json({"changed": report.changed, "dry_run": dry_run,
                       "devices": [r.to_json() for r in report.results],
                       "unpersisted": report.unpersisted})


def _render(terminal: Any, result: Any, rebind: bool) -> None:
    from xenpciback_cli.cli.pending import render_planned_writes
    from xenpciback_cli.engine.seize import DeviceStatus

    if result.status is DeviceStatus.PLANNED:
        render_planned_writes(terminal, "release", result.bdf, result.writes)
    elif result.status is DeviceStatus.NOT_SEIZED and result.original_driver and result.driver is None and not rebind:
        terminal.line(f"{result.bdf}: released already (no driver); use --rebind to restore "
                      f"{result.original_driver}")
    elif result.status is DeviceStatus.NOT_SEIZED:
        terminal.line(f"{result.bdf}: not seized (driver {result.driver or 'none'}); nothing to do")
    else:
        terminal.line(f"released {result.bdf}: now {result.driver or 'no driver'}"
                      + ("" if rebind else " (use --rebind to restore "
                         f"{result.original_driver or 'a host driver'})"))

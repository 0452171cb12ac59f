"""``xen-pciback bind DEVICE DRIVER``: give a device to any driver, as driverctl's set-override."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from xenpciback_cli.app import Application


@click.command("bind")
@click.argument("device", metavar="DEVICE")
@click.argument("driver", metavar="DRIVER")
@click.option("--force", "-f", is_flag=True,
              help="Take the device even while the host uses it or a guest has it. Loud.")
@click.option("--dry-run", is_flag=True, help="Print every sysfs write, in order, and do none.")
@click.option("--no-load", is_flag=True, help="Do not load the driver's module when it is missing.")
@click.pass_obj
def command(app: Application, device: str, driver: str, force: bool, dry_run: bool, no_load: bool) -> None:
    """Bind DEVICE (a BDF, a device name, or a host interface or block device) to DRIVER.

    Like 'driverctl set-override' and 'dpdk-devbind --bind': driver_override, unbind from the
    current driver, drivers_probe; journalled like hide (see 'recover'). Any host driver; a
    seize driver (pciback, pci-stub, vfio-pci) is the same as 'hide --driver DRIVER'. A device
    the host uses is refused (exit 3) unless --force. DRIVER's module is loaded first
    (modprobe) unless --no-load.
    """
    from xenpciback_cli.cli.pending import listener_for, load_driver, seizer_for
    from xenpciback_cli.cli.terminal import terminal_for
    from xenpciback_cli.engine.selection import select_patterns
    from xenpciback_cli.host.model import driver_name
    from xenpciback_cli.pci.drivers import SEIZE_DRIVERS

    terminal = terminal_for(app)
    as_json = app.settings.json
    driver_name(driver)
    patterns = select_patterns(app.host, app.state_dir, [device], verb="bind", xenstore=app.xenstore)
    load_driver(app, terminal, driver, load=not no_load, dry_run=dry_run)
    seizer = seizer_for(app)
    listener = listener_for(terminal, as_json=as_json, render=lambda r: render_bound(terminal, r),
                            forced="FORCED past a safety refusal: ")
    if driver in SEIZE_DRIVERS:
        report = seizer.hide_devices(patterns, driver, force=force, dry_run=dry_run, listener=listener)
        results = report.results
    else:
        results = seizer.bind_devices(seizer.select(patterns), driver, force=force, dry_run=dry_run,
                                      listener=listener)
    if as_json:
        terminal.json({"dry_run": dry_run, "devices": [r.to_json() for r in results]})


def render_bound(terminal: Any, result: Any) -> None:
    from xenpciback_cli.cli.pending import render_planned_writes
    from xenpciback_cli.engine.seize import DeviceStatus

    if result.status is DeviceStatus.PLANNED:
        render_planned_writes(terminal, "bind", result.bdf, result.writes)
    elif result.status in (DeviceStatus.ALREADY_BOUND, DeviceStatus.ALREADY_SEIZED):
        terminal.line(f"{result.bdf}: already with {result.driver or 'no driver'}; nothing to do")
    else:
        terminal.line(f"bound {result.bdf}: {result.original_driver or 'no driver'} -> "
                      f"{result.driver or 'no driver'}")

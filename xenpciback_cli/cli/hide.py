"""``xen-pciback hide BDF...``: seize devices from their host drivers (thin: parse, engine, render)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from xenpciback_cli.pci.drivers import PCIBACK_DRIVER, SEIZE_DRIVERS
if TYPE_CHECKING:
    from xenpciback_cli.app import Application


@click.command("hide")
@click.argument("devices", metavar="DEVICE...", nargs=-1)
@click.option("-d", "--ids", "ids_text", metavar="[VENDOR]:[DEVICE][:CLASS]",
              help="Seize the devices with these ids (hex; an empty part matches any), as lspci -d.")
@click.option("--driver", "target", type=click.Choice(list(SEIZE_DRIVERS)),
              default=PCIBACK_DRIVER, show_default=True, help="Driver that holds the seized device.")
@click.option("--force", "-f", is_flag=True, help="Override safety refusals (host usage, live VFs...). Loud.")
@click.option("--dry-run", is_flag=True, help="Print every sysfs write, in order, and do none.")
@click.option("--persist", is_flag=True, help="Also add the devices to the boot-time config (restore).")
@click.option("--config", "config", metavar="PATH", default=None,
              help="Persisted config file [default: /etc/xen-pciback/seized.toml].")
@click.option("--name", "-n", "name", metavar="NAME", default=None,
              help="Name the device, like 'xl pci-assignable-add -n' (then 'attach name=NAME').")
@click.option("--no-load", is_flag=True, help="Do not load the driver's module when it is missing.")
@click.pass_obj
def command(app: Application, devices: tuple[str, ...], ids_text: str | None, target: str,
            force: bool, dry_run: bool, persist: bool, config: str | None, name: str | None,
            no_load: bool) -> None:
    """Seize DEVICE... for passthrough: a BDF (DDDD:BB:DD.F, BB:DD.F, BB:DD.* for every
    function, or one of lspci's -s forms: 03:00, 03:), a device name, or a host interface or
    block device (eth1, nvme0n1); or every device with -d's ids.

    Runs pre-flight checks first (device exists and is an endpoint, not seized, host not using
    it, siblings, IOMMU group, SR-IOV, target driver loaded); a refusal exits 3 unless --force.
    A missing target driver's module is loaded first (modprobe) unless --no-load.
    """
    from xenpciback_cli.cli.pending import listener_for, load_driver, seizer_for
    from xenpciback_cli.cli.terminal import terminal_for
    from xenpciback_cli.engine.selection import select_patterns
    from xenpciback_cli.errors import SafetyRefusal
    from xenpciback_cli.pci.spec import device_name

    terminal = terminal_for(app)
    as_json = app.settings.json
    if name is not None and (devices or ids_text is not None):
        device_name(name)
    patterns = select_patterns(app.host, app.state_dir, devices, ids_text, verb="seize", xenstore=app.xenstore)
    load_driver(app, terminal, target, load=not no_load, dry_run=dry_run)
    seizer = seizer_for(app)
    listener = listener_for(terminal, as_json=as_json, render=lambda r: _render(terminal, r, target),
                            forced="FORCED past a safety refusal: ")
    try:
        report = seizer.hide_devices(patterns, target, force=force, persist=persist, dry_run=dry_run,
                                     config=config or str(app.persist_file),
                                     config_named=config is not None,
                                     listener=listener, name=name)
    except SafetyRefusal:
        if as_json:
            terminal.json({"changed": False, "dry_run": dry_run, "refused": True,
                           "devices": [{"bdf": str(p.bdf), "checks": [c.to_json() for c in p.checks]}
                                       for p in listener.preflights]})
        raise
    if name is not None and not dry_run and not as_json:
        terminal.line(f"named {report.results[0].bdf} {name!r}")
    if report.persisted and not as_json:
        terminal.line(f"persisted in {report.persisted} ({', '.join(str(p) for p in patterns)})")
    if as_json:
        terminal.json({"changed": report.changed, "dry_run": dry_run, "refused": False,
                       "devices": [r.to_json() for r in report.results],
                       "persisted": report.persisted})


def _render(terminal: Any, result: Any, target: str) -> None:
    from xenpciback_cli.cli.pending import render_planned_writes
    from xenpciback_cli.engine.seize import DeviceStatus

    if result.status is DeviceStatus.PLANNED:
        render_planned_writes(terminal, "seize", result.bdf, result.writes)
    elif result.status is DeviceStatus.ALREADY_SEIZED:
        terminal.line(f"{result.bdf}: already held by {target}")
    else:
        terminal.line(f"seized {result.bdf}: {result.original_driver or 'no driver'} -> {result.driver}")

"""``xen-pciback hide BDF...``: seize devices from their host drivers (thin: parse, engine, render)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from xenpciback_cli.pci.drivers import PCIBACK_DRIVER, SEIZE_DRIVERS
if TYPE_CHECKING:
    from xenpciback_cli.app import Application


@click.command("hide")
@click.argument("devices", metavar="BDF...", nargs=-1, required=True)
@click.option("--driver", "target", type=click.Choice(list(SEIZE_DRIVERS)),
              default=PCIBACK_DRIVER, show_default=True, help="Driver that holds the seized device.")
@click.option("--force", is_flag=True, help="Override safety refusals (host usage, live VFs...). Loud.")
@click.option("--dry-run", is_flag=True, help="Print every sysfs write, in order, and do none.")
@click.option("--persist", is_flag=True, help="Also add the devices to the boot-time config (restore).")
@click.option("--config", "config", metavar="PATH", default=None,
              help="Persisted config file [default: /etc/xen-pciback/seized.toml].")
@click.pass_obj
def command(app: Application, devices: tuple[str, ...], target: str, force: bool, dry_run: bool,
            persist: bool, config: str | None) -> None:
    """Seize BDF... (DDDD:BB:DD.F, BB:DD.F, or BB:DD.* for every function) for passthrough.

    Runs pre-flight checks first (device exists and is an endpoint, not seized, host not using
    it, siblings, IOMMU group, SR-IOV, target driver loaded); a refusal exits 3 unless --force.
    """
    from xenpciback_cli.cli.pending import listener_for, seizer_for
    from xenpciback_cli.cli.terminal import terminal_for
    from xenpciback_cli.errors import SafetyRefusal
    from xenpciback_cli.pci.spec import parse_device_patterns

    terminal = terminal_for(app)
    as_json = app.settings.json
    patterns = parse_device_patterns(devices)
    seizer = seizer_for(app)
    listener = listener_for(terminal, as_json=as_json, render=lambda r: _render(terminal, r, target),
                            forced="FORCED past a safety refusal: ")
    try:
        report = seizer.hide_devices(patterns, target, force=force, persist=persist, dry_run=dry_run,
                                     config=config or str(app.persist_file),
                                     config_named=config is not None,
                                     listener=listener)
    except SafetyRefusal:
        if as_json:
            terminal.json({"changed": False, "dry_run": dry_run, "refused": True,
                           "devices": [{"bdf": str(p.bdf), "checks": [c.to_json() for c in p.checks]}
                                       for p in listener.preflights]})
        raise
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

"""``xen-pciback hide BDF...``: seize devices from their host drivers (thin: parse, engine, render)."""

from __future__ import annotations

from typing import Any

import click


@click.command("hide")
@click.argument("devices", metavar="BDF...", nargs=-1, required=True)
@click.option("--driver", "target", type=click.Choice(["pciback", "pci-stub", "vfio-pci"]),
              default="pciback", show_default=True, help="Driver that holds the seized device.")
@click.option("--force", is_flag=True, help="Override safety refusals (host usage, live VFs...). Loud.")
@click.option("--dry-run", is_flag=True, help="Print every sysfs write, in order, and do none.")
@click.option("--persist", is_flag=True, help="Also add the devices to the boot-time config (restore).")
@click.option("--config", "config", metavar="PATH", default=None,
              help="Persisted config file [default: /etc/xen-pciback/seized.toml].")
@click.pass_obj
def command(app: object, devices: tuple[str, ...], target: str, force: bool, dry_run: bool,
            persist: bool, config: str | None) -> None:
    """Seize BDF... (DDDD:BB:DD.F, BB:DD.F, or BB:DD.* for every function) for passthrough.

    Runs pre-flight checks first (device exists, not seized, host not using it, siblings, IOMMU
    group, SR-IOV, target driver loaded); a refusal exits 3 unless --force.
    """
    from xenpciback_cli.cli.pending import seizer_for, warn_pending
    from xenpciback_cli.cli.terminal import terminal_for
    from xenpciback_cli.engine import persist as persisted
    from xenpciback_cli.errors import SafetyRefusal
    from xenpciback_cli.pci.spec import parse_device_patterns

    terminal = terminal_for(app)
    as_json = app.settings.json  # type: ignore[attr-defined]
    patterns = parse_device_patterns(devices)
    warn_pending(app, terminal)
    seizer = seizer_for(app)
    bdfs = seizer.select(patterns)

    preflights = seizer.preflight(bdfs, target)
    if not as_json:
        for result in preflights:
            terminal.line(f"{result.bdf}:")
            for check in result.checks:
                terminal.line(f"  {check.line()}")
    try:
        forced = seizer.enforce(preflights, force=force)
    except SafetyRefusal:
        if as_json:
            terminal.json({"dry_run": dry_run, "refused": True,
                           "devices": [{"bdf": str(p.bdf), "checks": [c.to_json() for c in p.checks]}
                                       for p in preflights]})
        raise
    for line in forced:
        terminal.warn(f"FORCED past a safety refusal: {line}")

    results = []
    import contextlib

    # A dry run writes nothing, not even the state dir: it works without root.
    with contextlib.nullcontext() if dry_run else seizer.journal.locked():
        for preflight in terminal.progress(preflights, total=len(preflights), description="seizing"):
            result = seizer.hide(preflight, target, persist=persist, dry_run=dry_run)
            result.forced = [f for f in forced if f.startswith(str(result.bdf))]
            results.append(result)
            if not as_json:
                _render(terminal, result, target)
        config_path = config or str(app.persist_file)  # type: ignore[attr-defined]
        if persist and not dry_run:
            persisted.add(config_path, patterns, target, create_parent=config is None)
            if not as_json:
                terminal.line(f"persisted in {config_path} ({', '.join(str(p) for p in patterns)})")
    if as_json:
        terminal.json({"dry_run": dry_run, "refused": False, "devices": [r.to_json() for r in results],
                       "persisted": config_path if persist and not dry_run else None})


def _render(terminal: Any, result: Any, target: str) -> None:
    from xenpciback_cli.cli.pending import render_planned_writes

    if result.status == "planned":
        render_planned_writes(terminal, "seize", result.bdf, result.writes)
    elif result.status == "already-seized":
        terminal.line(f"{result.bdf}: already held by {target}")
    else:
        terminal.line(f"seized {result.bdf}: {result.original_driver or 'no driver'} -> {result.driver}")

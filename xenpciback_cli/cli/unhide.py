"""``xen-pciback unhide BDF...``: release seized devices (thin: parse, engine, render)."""

from __future__ import annotations

import click


@click.command("unhide")
@click.argument("devices", metavar="BDF...", nargs=-1, required=True)
@click.option("--rebind", is_flag=True, help="Bind the recorded original driver again (or probe).")
@click.option("--force", is_flag=True, help="Release even while attached to a guest. Dangerous.")
@click.option("--dry-run", is_flag=True, help="Print every sysfs write, in order, and do none.")
@click.option("--config", "config", metavar="PATH", default=None,
              help="Also drop the devices from this persisted config [default: the usual one].")
@click.pass_obj
def command(app: object, devices: tuple[str, ...], rebind: bool, force: bool, dry_run: bool,
            config: str | None) -> None:
    """Release BDF...: clear driver_override, unbind from the seize driver, drop the pciback slot,
    and with --rebind give the device back to its recorded original driver.

    Refuses (exit 3) while the device is attached to a guest.
    """
    from xenpciback_cli.cli.pending import render_planned_writes, seizer_for, warn_pending
    from xenpciback_cli.cli.terminal import terminal_for
    from xenpciback_cli.engine import persist as persisted
    from xenpciback_cli.pci.spec import parse_device_patterns

    terminal = terminal_for(app)
    as_json = app.settings.json  # type: ignore[attr-defined]
    patterns = parse_device_patterns(devices)
    warn_pending(app, terminal)
    seizer = seizer_for(app)
    bdfs = seizer.select(patterns)
    if force:
        for bdf in bdfs:
            if bdf in seizer.attachments:
                terminal.warn(f"FORCED: releasing {bdf} while attached to domain {seizer.attachments[bdf]}")
    results = []
    import contextlib

    # A dry run writes nothing, not even the state dir: it works without root.
    with contextlib.nullcontext() if dry_run else seizer.journal.locked():
        for bdf in terminal.progress(bdfs, total=len(bdfs), description="releasing"):
            result = seizer.unhide(bdf, rebind=rebind, force=force, dry_run=dry_run)
            results.append(result)
            if as_json:
                continue
            if result.status == "planned":
                render_planned_writes(terminal, "release", bdf, result.writes)
            elif result.status == "not-seized":
                terminal.line(f"{bdf}: not seized (driver {result.driver or 'none'}); nothing to do")
            else:
                terminal.line(f"released {bdf}: now {result.driver or 'no driver'}"
                              + ("" if rebind else " (use --rebind to restore "
                                 f"{result.original_driver or 'a host driver'})"))
        dropped = False
        if not dry_run:
            dropped = persisted.remove(config or str(app.persist_file), patterns,  # type: ignore[attr-defined]
                                       must_exist=config is not None)
    if as_json:
        terminal.json({"dry_run": dry_run, "devices": [r.to_json() for r in results],
                       "unpersisted": dropped})

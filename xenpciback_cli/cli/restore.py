"""``xen-pciback restore``: re-seize every persisted device (run at boot by the systemd unit)."""

from __future__ import annotations

import click


@click.command("restore")
@click.option("--config", "config", metavar="PATH", default=None,
              help="Persisted config file [default: /etc/xen-pciback/seized.toml].")
@click.option("--force", is_flag=True, help="Override safety refusals. Loud.")
@click.pass_obj
def command(app: object, config: str | None, force: bool) -> None:
    """Seize everything listed in the persisted config; already-seized devices are left alone.

    Each device is reported; one that is refused or missing does not stop the others (exit 3
    if any was refused, 1 if any failed).
    """
    from xenpciback_cli.cli.pending import seizer_for, warn_pending
    from xenpciback_cli.cli.terminal import terminal_for
    from xenpciback_cli.engine import persist as persisted
    from xenpciback_cli.errors import OperationFailed, SafetyRefusal, XenPcibackError

    terminal = terminal_for(app)
    path = config or str(app.persist_file)  # type: ignore[attr-defined]
    devices = persisted.load(path, must_exist=config is not None)
    warn_pending(app, terminal)
    seizer = seizer_for(app)
    present = seizer.host.addresses()
    report: list[dict[str, object]] = []
    refused = failed = 0
    with seizer.journal.locked():
        for entry in devices:
            selected = entry.pattern.select(present)
            if not selected:
                failed += 1
                report.append({"bdf": str(entry.pattern), "status": "missing", "detail": "no such device"})
                continue
            for bdf in selected:
                try:
                    [pre] = seizer.preflight([bdf], entry.driver)
                    seizer.enforce([pre], force=force)
                    result = seizer.hide(pre, entry.driver, persist=True)
                    report.append({"bdf": str(bdf), "status": result.status,
                                   "detail": f"{result.original_driver or 'no driver'} -> {result.driver}"})
                except SafetyRefusal as exc:
                    refused += 1
                    report.append({"bdf": str(bdf), "status": "refused", "detail": str(exc)})
                except XenPcibackError as exc:
                    failed += 1
                    report.append({"bdf": str(bdf), "status": "failed", "detail": str(exc)})
    if app.settings.json:  # type: ignore[attr-defined]
        terminal.json({"config": path, "devices": report})
    else:
        if not devices:
            terminal.line(f"nothing to restore: {path} lists no devices")
        for item in report:
            terminal.line(f"{item['bdf']}: {item['status']} ({item['detail']})")
    if refused:
        raise SafetyRefusal(f"restore: {refused} device(s) refused (see above)")
    if failed:
        raise OperationFailed(f"restore: {failed} device(s) failed (see above)")

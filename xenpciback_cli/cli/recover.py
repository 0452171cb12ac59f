"""``xen-pciback recover``: finish or roll back hides/unhides interrupted by a crash."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from xenpciback_cli.app import Application


@click.command("recover")
@click.option("--dry-run", is_flag=True,
              help="Say what recover would do per operation and print its sysfs writes; do none.")
@click.pass_obj
def command(app: Application, dry_run: bool) -> None:
    """Complete or roll back every interrupted operation in the journal.

    The decision is per operation, from the device's actual state: a hide that already took the
    device from its host driver is completed, one that had not is rolled back; an unhide that
    already released the device is completed, one that had not is rolled back. Before any write
    the device at the address must still be the one journalled and unused by the host; otherwise
    recover refuses (exit 3) and says what differs. --dry-run makes the same decisions and
    prints them with the sysfs writes each would make (as shell lines); it writes nothing, not
    even the state dir. Hypervisor grants a dead attach or detach left are revoked; one Xen
    refuses again stays recorded for the next recover (exit 1).
    """
    from xenpciback_cli.cli.pending import render_planned_writes, seizer_for
    from xenpciback_cli.cli.terminal import terminal_for

    from xenpciback_cli.errors import SafetyRefusal, StateFileCorrupt

    terminal = terminal_for(app)
    outcomes = seizer_for(app).recover(dry_run=dry_run)
    outcomes += _grant_outcomes(app, dry_run)
    refused = [o for o in outcomes if o["action"] == "refused"]
    corrupt = [o for o in outcomes if o.get("corrupt")]
    for outcome in outcomes:  # finished (completed, rolled back, dropped...): written
        outcome["changed"] = outcome["action"] not in ("skipped", "refused")
    if app.settings.json:
        terminal.json({"changed": any(o["changed"] for o in outcomes), "dry_run": dry_run,
                       "operations": outcomes})
    else:
        if not outcomes:
            terminal.line("nothing to recover: no interrupted operations")
        for outcome in outcomes:
            if outcome["action"] == "skipped":
                if not outcome.get("corrupt"):  # a corrupt entry is the error line below
                    terminal.line(f"skipped {outcome['op']} {outcome['bdf']}: {outcome['reason']}")
            elif outcome["action"] != "refused" and dry_run:
                terminal.line(f"# dry run: would end {outcome['op']} {outcome['bdf']} {outcome['action']}: "
                              f"{outcome['reason']} (driver then {outcome.get('driver') or 'none'})")
                if outcome.get("writes"):
                    render_planned_writes(terminal, f"{_VERBS.get(str(outcome['action']), 'recover')} "
                                          f"{outcome['op']} of", outcome["bdf"], outcome["writes"])
            elif outcome["op"] == "grants":
                verb = "failed to revoke" if outcome["action"] == "failed" else outcome["action"]
                terminal.line(f"{'# dry run: ' if dry_run else ''}{verb} the grants of domain "
                              f"{outcome['domid']} for {outcome['bdf']}: {outcome['reason']}")
            elif outcome["action"] != "refused":
                terminal.line(f"{outcome['action']} {outcome['op']} {outcome['bdf']}: {outcome['reason']} "
                              f"(driver now {outcome.get('driver') or 'none'})")
    failed = [o for o in outcomes if o["action"] == "failed"]
    if failed and not refused and not corrupt:  # still recorded: a later recover retries (exit 1)
        from xenpciback_cli.errors import OperationFailed
        raise OperationFailed("; ".join(f"could not finish {o['op']} {o['bdf']}: {o['reason']}"
                                        for o in failed))
    if corrupt and not refused:  # the others were recovered; these need a person (exit 2)
        raise StateFileCorrupt("; ".join(str(o["reason"]) for o in corrupt))
    if refused:
        raise SafetyRefusal("; ".join(f"refusing to recover {o['op']} {o['bdf']}: {o['reason']}"
                                      for o in refused), [str(o["reason"]) for o in refused])


_VERBS = {"completed": "complete", "rolled back": "roll back", "dropped": "drop"}


def _grant_outcomes(app: Application, dry_run: bool) -> list[dict[str, object]]:
    """The hypervisor grants a dead attach or detach left (``engine.grants.recover_grants``)."""
    from xenpciback_cli.engine.grants import recover_grants

    client = app.xenstore()
    holders = app.attachments() if client is not None else None
    return [o.to_json() for o in recover_grants(app.state_dir, app.domain_grants(), holders,
                                                dry_run=dry_run)]

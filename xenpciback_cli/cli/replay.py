"""``xen-pciback replay TRACE``: re-run a recorded trace through the engine and compare."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from xenpciback_cli.app import Application


@click.command("replay")
@click.argument("trace", type=click.Path(dir_okay=False))
@click.option("--check", is_flag=True, help="Compare every answer with the recorded one; "
              "exit 1 when any differs.")
@click.option("--until", type=click.IntRange(min=0), default=None, metavar="N",
              help="Replay only the first N ops.")
@click.option("--only", "only", default=None, metavar="KINDS",
              help="Check only these op kinds (comma-separated: conf_read, conf_write, "
                   "enable_msi, disable_msi, enable_msix, disable_msix); all ops still run.")
@click.pass_obj
def command(app: Application, trace: str, check: bool, until: int | None,
            only: str | None) -> None:
    """Replay TRACE (written by 'serve foreground --record', docs/trace-format.md) against
    devices rebuilt from its snapshots; with --check, list every answer that differs.

    A bad trace (truncated, not JSON, another format version, an op for an undeclared
    device) is one line naming the line number, exit 2.
    """
    from xenpciback_cli.cli.terminal import terminal_for
    from xenpciback_cli.engine.replay import parse_kinds, replay
    from xenpciback_cli.errors import OperationFailed

    result = replay(trace, check=check, until=until, only=parse_kinds(only))
    term = terminal_for(app)
    if app.settings.json:
        term.json(result.as_dict())
    else:
        term.line(f"{result.ops} op(s) replayed on {result.devices} device(s)"
                  + (f", {result.checked} checked, {result.mismatch_count} mismatch(es)"
                     if check else ""))
        rows = [(m.index, m.domid, m.host or "-", m.op, m.register, m.size,
                 f"{m.recorded[0]} {m.recorded[1]:#x}", f"{m.replayed[0]} {m.replayed[1]:#x}")
                for m in result.mismatches]
        if rows:
            term.table(["op", "domid", "host", "kind", "register", "size", "recorded",
                        "replayed"], rows)
    if check and result.mismatch_count:
        raise OperationFailed(f"{result.mismatch_count} op(s) answered differently on replay")

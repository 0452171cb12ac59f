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
@click.option("--against", "against", default=None, metavar="BDF|sandbox",
              help="Replay on a live device instead of the trace's snapshot: BDF (the host's, "
                   "or the sandbox's with --sandbox), or 'sandbox' (each device on its own "
                   "address in the --sandbox DIR). Read-only unless --allow-writes.")
@click.option("--allow-writes", is_flag=True,
              help="With --against: let the writes the filter passes reach the device "
                   "(never more than a guest could).")
@click.pass_obj
def command(app: Application, trace: str, check: bool, until: int | None,
            only: str | None, against: str | None, allow_writes: bool) -> None:
    """Replay TRACE (written by 'serve foreground --record' or 'sandbox guest --record',
    docs/trace-format.md) against devices rebuilt from its snapshots, or live ones
    (--against); with --check, list every answer that differs.

    With --against the device is only read: what the filter would write goes to a shadow
    the later reads see, unless --allow-writes, and even then every write goes through the
    config-space filter as the guest's did. .gz traces are read as they are, .zst ones with
    the 'zstandard' package. A progress bar on stderr for a long trace, on a terminal.

    A bad trace (truncated, not JSON, another format version, an op for an undeclared
    device) is one line naming the line number, exit 2.
    """
    import os

    from xenpciback_cli.cli.terminal import terminal_for
    from xenpciback_cli.engine.replay import parse_against, parse_kinds, replay
    from xenpciback_cli.errors import InputError, OperationFailed

    if allow_writes and against is None:
        raise InputError("--allow-writes goes with --against (a snapshot has nothing to spare)")
    live = None
    if against is not None:
        live = parse_against(against, app.config_source(writable=allow_writes),
                             app.sandbox_dir is not None)
    term = terminal_for(app)
    try:
        size = os.path.getsize(trace)
    except OSError:
        size = 0
    with term.bar("replaying", total=size) as progress:
        result = replay(trace, check=check, until=until, only=parse_kinds(only), against=live,
                        allow_writes=allow_writes, progress=progress)
    if app.settings.json:
        term.json(result.as_dict())
    else:
        term.line(f"{result.ops} op(s) replayed on {result.devices} device(s)"
                  + (f", {result.checked} checked, {result.mismatch_count} mismatch(es)"
                     if check else ""))
        for host, where in result.against.items():
            term.line(f"{host} replayed on {where}"
                      + ("" if allow_writes else f" (read-only: {result.writes_withheld} "
                         "write(s) kept from it)"))
        for note in result.notes:
            term.line(f"note: {note}")
        rows = [(m.index, m.domid, m.host or "-", m.op, m.register, m.size,
                 f"{m.recorded[0]} {m.recorded[1]:#x}", f"{m.replayed[0]} {m.replayed[1]:#x}")
                for m in result.mismatches]
        if rows:
            term.table(["op", "domid", "host", "kind", "register", "size", "recorded",
                        "replayed"], rows)
    if check and result.mismatch_count:
        raise OperationFailed(f"{result.mismatch_count} op(s) answered differently on replay")

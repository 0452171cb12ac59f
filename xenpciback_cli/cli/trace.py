"""``xen-pciback trace show|stats|diff``: read recorded traces (engine: ``engine/trace_view.py``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from xenpciback_cli.cli import LazyGroup

if TYPE_CHECKING:
    from xenpciback_cli.app import Application


@click.group("trace", cls=LazyGroup, lazy={})
def group() -> None:
    """Read traces written by 'serve foreground --record' or 'sandbox guest --record'
    (docs/trace-format.md): as named registers, as a summary, or beside another trace.

    A bad trace (truncated, not JSON, another format version, an op for an undeclared
    device) is one line naming the line number, exit 2.
    """


@group.command("show")
@click.argument("trace", type=click.Path(dir_okay=False))
@click.option("--device", metavar="BDF", default=None,
              help="Only this device (its host or guest address).")
@click.option("--kind", "kinds", metavar="KINDS", default=None,
              help="Only these kinds, comma-separated: op names (conf_read, conf_write, "
                   "enable_msi, disable_msi, enable_msix, disable_msix) and device, state, aer.")
@click.option("--offset", "offsets", metavar="RANGE", default=None,
              help="Only config ops touching these bytes: 0x10-0x24, 0x04, or 0x70+12.")
@click.option("--errors", is_flag=True, help="Only ops answered with an error.")
@click.option("--denied", is_flag=True, help="Only writes the filter dropped.")
@click.pass_obj
def show(app: Application, trace: str, device: str | None, kinds: str | None,
         offsets: str | None, errors: bool, denied: bool) -> None:
    """Show TRACE line by line with its registers named.

    \b
    Each op: its index, seconds since the first line, the domain, the guest address,
    then what was asked and answered, e.g.
          12    0.001375 d7    0000:00:00.0 conf_write 0x10 BAR0 sizing [4] <- 0xffffffff: ok
          40    0.004125 d7    0000:00:00.0 conf_read 0x72 MSI-X+0x2 Message Control [2] -> 0x0009: ok
    Registers come from the device's config snapshot in the trace; "denied by the filter"
    marks a write the overlay dropped (found by re-running the ops through the engine).
    --json prints one JSON object per line (JSON Lines, streamed; docs/json.md).
    """
    from xenpciback_cli.cli.terminal import terminal_for
    from xenpciback_cli.engine.trace_view import parse_filter, show as show_trace

    wanted = parse_filter(device, kinds, offsets, errors, denied)
    shown = show_trace(trace, wanted)
    term = terminal_for(app)
    if app.settings.json:
        import json

        for event in shown:
            term.line(json.dumps(event.as_dict(), separators=(",", ":")))
        return
    for event in shown:
        term.line(event.text(shown.start))


@group.command("stats")
@click.argument("trace", type=click.Path(dir_okay=False))
@click.option("--device", metavar="BDF", default=None,
              help="Only this device (its host or guest address).")
@click.pass_obj
def stats(app: Application, trace: str, device: str | None) -> None:
    """Sum up TRACE: ops per kind, writes and denied writes, errors, the busiest registers,
    and the timeline of xenbus states and AER events."""
    from xenpciback_cli.cli.terminal import terminal_for
    from xenpciback_cli.engine.trace_view import stats as trace_stats

    result = trace_stats(trace, device)
    term = terminal_for(app)
    if app.settings.json:
        term.json(result.as_dict())
        return
    duration = f" over {result.duration:.3f} s" if result.duration is not None else ""
    term.line(f"{result.ops} op(s){duration}; {result.writes} write(s), {result.denied} "
              f"denied; {result.errors} error(s)")
    for line in result.devices:
        term.line(f"device {line}")
    if result.by_kind:
        term.line("")
        term.table(["kind", "ops"], result.by_kind.most_common())
    if result.by_error:
        term.line("")
        term.table(["error", "ops"], result.by_error.most_common())
    if result.registers:
        term.line("")
        term.table(["busiest register", "ops"], result.busiest())
    if result.denied_registers:
        term.line("")
        term.table(["denied register", "writes"], result.denied_registers.most_common(10))
    summary = result.as_dict()
    timeline = sorted(summary["states"] + summary["aer"],  # type: ignore[operator]
                      key=lambda x: (x["t"] is None, x["t"] or 0))
    if timeline:
        term.line("")
        term.table(["t", "domid", "state or AER event"],
                   [(f"{x['t']:.6f}" if x["t"] is not None else None, x["domid"],
                     x.get("state") or x.get("event")) for x in timeline], empty="-")


@group.command("diff")
@click.argument("a", metavar="A", type=click.Path(dir_okay=False))
@click.argument("b", metavar="B", type=click.Path(dir_okay=False))
@click.option("--device", metavar="BDF", default=None,
              help="Only this device of each trace (its host or guest address).")
@click.pass_obj
def diff(app: Application, a: str, b: str, device: str | None) -> None:
    """Line up the ops of traces A and B of the same device (one guest under two backends,
    or two runs) and show where they part: the first difference, then a summary.

    Ops are compared in order: the request (op, guest address, offset, size, value, MSI-X
    entries) and the answer (error, value, vectors); times, domain ids and host addresses
    are not. Exit 0 when they agree, 1 when they differ (as diff does), 2 for a bad trace.
    """
    from xenpciback_cli.cli.terminal import terminal_for
    from xenpciback_cli.engine.trace_view import diff as trace_diff
    from xenpciback_cli.errors import OperationFailed

    result = trace_diff(a, b, device)
    term = terminal_for(app)
    if app.settings.json:
        term.json(result.as_dict())
    else:
        term.line(f"A: {result.ops_a} op(s), B: {result.ops_b} op(s); {result.same} alike, "
                  f"{result.answers_differ} answered differently, {result.requests_differ} "
                  f"asked differently")
        first = result.first
        if first is None:
            term.line("the traces agree")
        else:
            term.line(f"they part at op {first.index} (after {result.common} alike): "
                      f"{first.why}")
            term.line(f"  A line {first.line_a or '-'}: {first.a}")
            term.line(f"  B line {first.line_b or '-'}: {first.b}")
            if result.differences:
                term.line("")
                term.table(["op", "A line", "B line", "why", "A", "B"],
                           [(d.index, d.line_a, d.line_b, d.why, d.a, d.b)
                            for d in result.differences], empty="-", names=("A", "B"))
        for note in result.notes:
            term.line(f"note: {note}")
    if result.differ:
        raise OperationFailed(f"{a} and {b} differ (first at op {result.first.index})"
                              if result.first is not None else f"{a} and {b} differ")

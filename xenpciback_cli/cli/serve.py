"""``xen-pciback serve foreground`` / ``serve status``: the userspace pciback and its state."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from xenpciback_cli.cli import LazyGroup, Seconds

if TYPE_CHECKING:
    from xenpciback_cli.app import Application


@click.group("serve", cls=LazyGroup, lazy={})
def group() -> None:
    """Run the userspace PCI backend (pciback) for guests, or ask the running one.

    'serve foreground' serves every guest with a backend directory under this domain's
    backend/pci that no other backend serves (systemd runs it so: Type=notify).
    """


@group.command("foreground")
@click.option("--mode", type=click.Choice(["vpci", "passthrough"]), default="vpci",
              show_default=True, help="Where the guest sees its devices.")
@click.option("--domid", "domids", type=int, multiple=True, metavar="N",
              help="Serve only these domains (repeatable); default: every unserved one.")
@click.option("--record", "record", type=click.Path(dir_okay=False, writable=True),
              default=None, metavar="FILE", help="Write a trace (docs/trace-format.md): a header, then each device "
                   "and op as one JSON line (FILE.gz: compressed).")
@click.option("--record-max-size", "max_size", default=None, metavar="SIZE",
              help="Rotate the --record file when it reaches SIZE (bytes, or 64K, 100M, 1G): "
                   "FILE becomes FILE.1 (FILE.gz: FILE.1.gz) and a new FILE starts.")
@click.option("--record-keep", "keep", type=click.IntRange(min=1, max=1000), default=None,
              metavar="N", help="Rotated files kept (FILE.1 to FILE.N; 5 unless given).")
@click.option("--aer-timeout", type=Seconds(minimum=0.1), default=300.0, show_default=True,
              metavar="SECONDS",
              help="How long a guest may take to answer an AER request before aerState=aerfail "
                   "(at least 0.1).")
@click.option("--busy-poll", default="auto", show_default=True, metavar="auto|USEC",
              help="Watch a guest's page after an answer for its next op, as long as that pays "
                   "(adaptive), for at most USEC microseconds (0: never) or, auto, the time "
                   "8 answers take on this host.")
@click.pass_obj
def foreground(app: Application, mode: str, domids: tuple[int, ...], record: str | None,
               max_size: str | None, keep: int | None, aer_timeout: float, busy_poll: str) -> None:
    """Serve guests in the foreground until SIGTERM or SIGINT (the op in progress finishes)."""
    import signal
    import sys

    from xenpciback_cli.backend.topology import Mode
    from xenpciback_cli.engine.busypoll import parse_busy_poll
    from xenpciback_cli.engine.serve import Server, notify_ready
    from xenpciback_cli.engine.statestore import StateStore
    from xenpciback_cli.engine.trace import TraceWriter, rotation_options
    from xenpciback_cli.errors import InputError

    # The person's input first: a bad option is one line, before any device or library is opened.
    size, kept = rotation_options(record, max_size, keep)
    poll_limit = parse_busy_poll(busy_poll)
    adapters = app.serve_adapters()
    run_dir = app.serve_run_dir()
    out: TraceWriter | None = None
    if record:
        from xenpciback_cli import __version__
        try:
            out = TraceWriter(record, tool_version=__version__, mode=mode, max_size=size,
                              keep=kept)
        except OSError as exc:
            raise InputError(f"cannot write --record file {record}: "
                             f"{exc.strerror or exc}") from None

    def log(line: str) -> None:
        sys.stderr.write(f"serve: {line}\n")
        sys.stderr.flush()

    client = app.open_xenstore(timeout=10.0)
    server = Server(client, adapters.transport, adapters.interrupts, adapters.devices,
                    mode=Mode(mode), domids=domids, settings=app.serve_settings,
                    others_serve=adapters.others_serve,
                    trace=out, log=log,
                    control=str(run_dir / "serve.sock"), aer_timeout=aer_timeout,
                    interrupt_records=StateStore(run_dir / "interrupts"),
                    view_records=StateStore(run_dir / "views"),
                    busy_poll=poll_limit,
                    aer_feed=adapters.aer_feed)
    signal.set_wakeup_fd(server.wakeup_fd(), warn_on_full_buffer=False)
    signal.signal(signal.SIGTERM, lambda *_: server.stop())
    signal.signal(signal.SIGINT, lambda *_: server.stop())

    def ready() -> None:
        notify_ready()
        log(f"ready ({mode} mode, {len(server.guests)} guest(s), control {run_dir}/serve.sock)")

    try:
        server.run(ready)
    finally:
        client.close()
        if out is not None:
            out.close()
    log("stopped")


@group.command("status")
@click.pass_obj
def status(app: Application) -> None:
    """Show the running backend's guests, devices, ops served, writes denied and errors."""
    from xenpciback_cli.cli.terminal import terminal_for
    from xenpciback_cli.engine.serve import read_status
    from xenpciback_cli.errors import OperationFailed

    path = app.serve_run_dir() / "serve.sock"
    try:
        data = read_status(str(path))
    except (OSError, ValueError) as exc:
        raise OperationFailed(f"serve is not running (no answer on {path}: "
                              f"{getattr(exc, 'strerror', None) or exc})") from None
    term = terminal_for(app)
    if app.settings.json:
        term.json(data)
        return
    term.line(f"serve pid {data['pid']}, {data['mode']} mode, up {data['uptime']} s, "
              f"{len(data['guests'])} guest(s)")
    rows = []
    for guest in data["guests"]:
        devices = " ".join(f"{d['host']}->{d['guest']}" for d in guest["devices"]) or "-"
        rows.append((guest["domid"], guest["state"], devices, guest["ops_served"],
                     guest["writes_denied"], guest["errors"]))
    if rows:
        term.table(["domid", "state", "devices", "ops", "denied", "errors"], rows)

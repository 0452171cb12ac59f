"""``xen-pciback --sandbox S sandbox guest N``: a simulated pcifront for domain N (engine:
``sandbox/pcifront.py``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from xenpciback_cli.cli import Seconds

if TYPE_CHECKING:
    from xenpciback_cli.app import Application


@click.command("guest")
@click.argument("domid", type=int)
@click.option("--stay", is_flag=True, help="Keep the connection after the probe, until SIGTERM or Ctrl-C.")
@click.option("--record", "record", metavar="FILE", type=click.Path(dir_okay=False),
              help="Write the guest's side as a trace (docs/trace-format.md, version 1; "
                   "FILE.gz compressed): the exported devices, each op and its answer.")
@click.option("--record-max-size", "max_size", default=None, metavar="SIZE",
              help="Rotate the --record file at SIZE (as 'serve foreground' does).")
@click.option("--record-keep", "keep", type=click.IntRange(min=1, max=1000), default=None,
              metavar="N", help="Rotated files kept (FILE.1 to FILE.N; 5 unless given).")
@click.option("--timeout", type=Seconds(minimum=0.1), default=10.0, show_default=True, metavar="SECONDS",
              help="Seconds to wait for the backend at each step (at least 0.1).")
@click.option("--aer-result", type=click.Choice(["driver", "recovered", "can_recover", "need_reset",
                                                "disconnect", "none", "no-handler", "ignore"]),
              default="driver", show_default=True,
              help="How the guest's driver answers AER requests: 'driver' as a typical driver "
                   "(NEED_RESET when frozen, else CAN_RECOVER, then RECOVERED); a fixed answer; "
                   "'no-handler' (no AER handler advertised); 'ignore' (never answers).")
@click.pass_obj
def command(app: Application, domid: int, stay: bool, record: str | None,
            max_size: str | None, keep: int | None, timeout: float, aer_result: str) -> None:
    """Play domain DOMID's pcifront over the sandbox transport.

    Publishes the shared page and event channel (docs/sandbox-protocol.md), waits for the
    backend (xen-pciback serve foreground) to connect, scans every devfn of every root bus,
    prints the guest's lspci-like view, then probes each device as a driver would: header,
    memory decode on, BAR sizes, MSI-X on with a few vectors and off again. For domains made
    with 'sandbox domain create N --no-guest'.

    \b
    With --stay, each AER request from the backend is answered and printed as one line
    ("AER error_detected (frozen) on 0000:00:00.0: driver answered need_reset"), and the
    guest follows hot-plug and unplug as Linux's pcifront does, one line per device
    ("hot-plug: 0000:00:01.0 Ethernet controller [0200]: ... [8086:10c9]",
    "hot-unplug: 0000:00:01.0 removed").

    \b
    --json prints one object:
      {"domid": N, "roots": ["0000:00"],
       "devices": [{"bdf", "vendor", "device", "class", "class_name", "revision",
                    "header_type", "multifunction", "subsystem", "vendor_name", "device_name"}],
       "probe": [{"bdf", "step", "ok", "detail", "ops": [OP...]}], "ops": COUNT}
    OP:
      {"op": "conf_read", "cmd": 0, "bdf", "offset", "size", "value", ["entries": [...]],
       "result": {"err", "err_name", "value", "vectors": [...]}}
    --record FILE writes a trace that 'replay' and 'trace show|stats|diff' read: a device line
    per function the backend exported (its config space as the host has it before the guest's
    first op, its overlay settings), then the guest's ops and answers and its xenbus states.
    If no backend answers within --timeout: one line naming the backend's state and whose move
    it is, exit 1.
    """
    import signal
    import threading

    from xenpciback_cli.cli.terminal import terminal_for
    from xenpciback_cli.errors import InputError
    from xenpciback_cli.sandbox import pcifront

    sandbox = app.sandbox_dir
    if sandbox is None:
        raise InputError("'sandbox guest' needs --sandbox DIR (or XEN_PCIBACK_SANDBOX)")
    with app.open_xenstore() as client:
        pcifront.check_domain(sandbox, client, domid)
    stream = recorder = None
    from xenpciback_cli.engine.trace import rotation_options

    size, kept = rotation_options(record, max_size, keep)
    if record is not None:
        from xenpciback_cli import __version__
        from xenpciback_cli.engine.trace import TraceWriter, snapshot_from

        try:
            stream = TraceWriter(record, tool_version=__version__, mode=None, max_size=size,
                                 keep=kept)
        except OSError as exc:
            raise InputError(f"cannot write --record file {record}: {exc.strerror}") from None
        source = app.serve_adapters().devices
        recorder = pcifront.Recorder(stream, domid, lambda host, guest: snapshot_from(
            source, app.serve_settings, domid, host, guest))
    term = terminal_for(app)

    def aer_line(line: str) -> None:
        if not app.settings.json:
            term.line(line)
            term.stdout.flush()

    front = pcifront.PciFront(sandbox, domid, timeout=timeout,
                              recorder=recorder,
                              aer_policy=aer_result, on_aer=aer_line,
                              on_change=aer_line)
    try:
        run = pcifront.run_guest(front)
        if app.settings.json:
            term.json(run.to_json())
        else:
            for line in pcifront.format_view(run):
                term.line(line)
        if stay:
            stop = threading.Event()
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: stop.set())
            if not app.settings.json:
                term.line(f"holding domain {domid}'s connection (SIGTERM or Ctrl-C to leave)")
            term.stdout.flush()
            front.stay(stop)
    finally:
        front.close()
        if stream is not None:
            stream.close()

"""``xen-pciback status --domid N``: the PV PCI handshake of one guest, as xenstore shows it."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from xenpciback_cli.cli import Seconds

if TYPE_CHECKING:
    from xenpciback_cli.app import Application
    from xenpciback_cli.toolstack.xenbus import XenbusState


@click.command("status")
@click.option("--domid", "-d", type=int, required=True, help="Guest domain id.")
@click.option("--socket", "socket_path", metavar="PATH", default=None, help="xenstored socket.")
@click.option("--wait", "wait_seconds", type=Seconds(), default=None, metavar="SECONDS",
              help="First wait until backend and guest are both Connected; on timeout fail (exit 1) "
                   "naming the stuck state and whose move it is.")
@click.pass_obj
def command(app: Application, domid: int, socket_path: str | None, wait_seconds: float | None) -> None:
    """Show each device's state-N and vdev-N, both ends' states by name, and errors."""
    from xenpciback_cli.cli.terminal import terminal_for
    from xenpciback_cli.pci.address import guest_address
    from xenpciback_cli.toolstack.handshake import both_connected, wait_for
    from xenpciback_cli.toolstack.status import domain_status

    term = terminal_for(app)
    with app.open_xenstore(socket_path) as client:
        if wait_seconds is not None:
            wait_for(client, domid, both_connected, timeout=wait_seconds,
                     what=f"waiting for domain {domid}'s backend and guest to connect")
        status = domain_status(client, domid)
    from xenpciback_cli.engine.serve import served_guest

    served = served_guest(str(app.serve_run_dir() / "serve.sock"), domid)
    if app.settings.json:
        term.json(dict(status.to_json(), serve=served))
        return

    def safe(text: object) -> str:
        """Guests write some of these nodes: show control characters as \\xNN, never raw."""
        if text is None:
            return ""
        return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in str(text))

    def named(state: XenbusState | None) -> str:
        return state.describe() if state is not None else "absent"

    title = f"domain {domid}" + (f" ({safe(status.name)})" if status.name else "")
    term.line(f"{title}: backend {named(status.backend_state)}, "
              f"frontend {named(status.frontend_state)}, {status.num_devs} device(s)")
    if status.devices:
        rows = [(d.index, safe(d.bdf),
                 f"{d.state} ({d.state_name})" if d.state_name else safe(d.state),
                 safe(guest_address(d.vdev)), safe(d.opts)) for d in status.devices]
        term.table(["#", "device", "state-N", "vdev-N", "opts"], rows, names=("opts",))
    if served is not None:
        term.line(f"serve (pid {served.get('pid')}): {served.get('state')}, "
                  f"{served.get('ops_served')} ops served, {served.get('writes_denied')} writes "
                  f"denied, {served.get('errors')} error(s)")
    if status.next_move:
        term.line(f"next move: {status.next_move}")
    for label, text in (("backend error", status.backend_error),
                        ("frontend error", status.frontend_error),
                        ("AER", status.aer_state)):
        if text:
            term.line(f"{label}: {safe(text)}")

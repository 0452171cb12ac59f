"""``xen-pciback detach BDF --domid N``: take a device back from a guest, safely, then reset it."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from xenpciback_cli.app import Application


@click.command("detach")
@click.argument("bdf")
@click.option("--domid", "-d", type=int, required=True, help="Guest domain id.")
@click.option("--force", "-f", is_flag=True,
              help="Remove the device even if the guest does not answer.")
@click.option("--timeout", type=float, default=10.0, show_default=True,
              help="Seconds to wait for the guest to let go.")
@click.option("--no-reset", is_flag=True, help="Do not reset the device afterwards.")
@click.option("--socket", "socket_path", metavar="PATH", default=None, help="xenstored socket.")
@click.option("--dry-run", is_flag=True, help="Say whether it would change anything; write nothing.")
@click.pass_obj
def command(app: Application, bdf: str, domid: int, force: bool, timeout: float, no_reset: bool,
            socket_path: str | None, dry_run: bool) -> None:
    """Detach BDF from guest --domid N.

    The guest is asked to let go (state-i=5 and a Reconfiguring round) and waited for; then the
    keys are removed and renumbered as libxl does, and the device is reset through sysfs where
    the kernel offers a method. A guest that does not answer within --timeout leaves
    everything as it was, unless --force. A device the guest does not hold is nothing to do
    (exit 0; JSON "changed": false).
    """
    from xenpciback_cli.cli.terminal import terminal_for
    from xenpciback_cli.pci.address import Bdf
    from xenpciback_cli.engine.detach import detach
    from xenpciback_cli.engine.session import host_of

    address = Bdf.parse(bdf)
    term = terminal_for(app)
    with app.open_xenstore(socket_path) as client:
        result = detach(client, address, domid, host=host_of(app), force=force, timeout=timeout,
                        reset=not no_reset, state_dir=str(app.state_dir), dry_run=dry_run)
    if app.settings.json:
        term.json(result.to_json())
        return
    if dry_run or not result.changed:
        for note in result.notes:
            term.line(note)
        return
    term.line(f"{address} detached from domain {domid}"
              + (" (backend removed: it was the last device)" if result.destroyed else ""))
    for note in result.notes:
        term.warn(note) if result.forced else term.info(note)
    if result.reset is not None:
        if result.reset.done:
            term.info(result.reset.reason)
        else:
            term.warn(f"{address} not reset: {result.reset.reason}")

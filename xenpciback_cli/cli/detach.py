"""``xen-pciback detach BDF --domid N``: take a device back from a guest, safely, then reset it."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from xenpciback_cli.cli import Seconds

if TYPE_CHECKING:
    from xenpciback_cli.app import Application


@click.command("detach")
@click.argument("words", metavar="[DOMAIN] SPEC", nargs=-1)
@click.option("--domid", "-d", metavar="DOMAIN", default=None,
              help="Guest domain id or name (or give DOMAIN first, as 'xl pci-detach').")
@click.option("--force", "-f", is_flag=True,
              help="Remove the device even if the guest does not answer.")
@click.option("--timeout", type=Seconds(), default=10.0, show_default=True,
              help="Seconds to wait for the guest to let go.")
@click.option("--no-reset", is_flag=True, help="Do not reset the device afterwards.")
@click.option("--socket", "socket_path", metavar="PATH", default=None, help="xenstored socket.")
@click.option("--dry-run", is_flag=True, help="Say whether it would change anything; write nothing.")
@click.pass_obj
def command(app: Application, words: tuple[str, ...], domid: str | None, force: bool, timeout: float, no_reset: bool,
            socket_path: str | None, dry_run: bool) -> None:
    """Detach SPEC from guest DOMAIN (an id or a name), as 'xl pci-detach DOMAIN SPEC'.

    SPEC is what attach accepts: a PCI address or xl's PCI_SPEC_STRING (its options are
    ignored here, as xl does), or name=NAME.

    The guest is asked to let go (state-i=5 and a Reconfiguring round) and waited for; then the
    keys are removed and renumbered as libxl does, and the device is reset through sysfs where
    the kernel offers a method. A guest that does not answer within --timeout leaves
    everything as it was, unless --force. A device the guest does not hold is nothing to do
    (exit 0; JSON "changed": false).
    """
    from xenpciback_cli.cli.attach import domain_and_spec
    from xenpciback_cli.cli.terminal import terminal_for
    from xenpciback_cli.engine.attach import domain_id, lookup_name
    from xenpciback_cli.engine.detach import detach
    from xenpciback_cli.engine.session import host_of
    from xenpciback_cli.errors import InputError
    from xenpciback_cli.pci.spec import parse_pci_spec

    domain, spec = domain_and_spec(words, domid)
    if not spec:
        raise InputError("give the device: DOMAIN SPEC (a PCI address or name=NAME)")
    parsed = parse_pci_spec(spec)
    target = parsed.target
    if target is not None and target.function is None:
        raise InputError(f"detach takes one function at a time, not {spec!r}")
    term = terminal_for(app)
    with app.open_xenstore(socket_path) as client:
        address = parsed.bdf
        if address is None:
            assert parsed.name is not None
            address = lookup_name(client, parsed.name, str(app.state_dir))
        number = domain_id(client, domain)
        result = detach(client, address, number, host=host_of(app), force=force, timeout=timeout,
                        reset=not no_reset, state_dir=str(app.state_dir), dry_run=dry_run,
                        grants=app.domain_grants())
    if app.settings.json:
        term.json(result.to_json())
        return
    if dry_run or not result.changed:
        for note in result.notes:
            term.line(note)
        return
    term.line(f"{address} detached from domain {number}"
              + (" (backend removed: it was the last device)" if result.destroyed else ""))
    if result.revoked:
        term.info(f"{address}: domain {number}'s grants revoked ({', '.join(g.describe() for g in result.revoked)})")
    for note in result.notes:
        term.warn(note) if result.forced else term.info(note)
    if result.reset is not None:
        if result.reset.done:
            term.info(result.reset.reason)
        else:
            term.warn(f"{address} not reset: {result.reset.reason}")

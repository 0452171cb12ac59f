"""``xen-pciback --sandbox S sandbox domain create|destroy N``: simulated guest domains."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from pathlib import Path

    from xenpciback_cli.app import Application


@click.group("domain")
def group() -> None:
    """Create and destroy simulated guest domains in the sandbox's xenstore."""


def _sandbox(app: Application) -> Path:
    from xenpciback_cli.errors import InputError

    sandbox = app.sandbox_dir
    if sandbox is None:
        raise InputError("'sandbox domain' needs --sandbox DIR (or XEN_PCIBACK_SANDBOX)")
    return sandbox


@group.command("create")
@click.argument("domid", type=int)
@click.option("--name", default=None, help="Domain name [guestN].")
@click.option("--guest/--no-guest", default=True, show_default=True,
              help="Run a simulated kernel pciback and pcifront for it (the hot-plug peers).")
@click.pass_obj
def create(app: Application, domid: int, name: str | None, guest: bool) -> None:
    """Make domain DOMID exist as xl would (nodes, permissions, @introduceDomain)."""
    from xenpciback_cli.cli.terminal import terminal_for
    from xenpciback_cli.sandbox import guest as simguest
    from xenpciback_cli.sandbox.domains import create_domain

    sandbox = _sandbox(app)
    with app.open_xenstore() as client:
        result = create_domain(client, domid, name)
        socket = client.path
    pid = simguest.start(sandbox, socket, domid) if guest else None
    term = terminal_for(app)
    if app.settings.json:
        term.json(result.to_json() | {"simulated_guest_pid": pid})
        return
    term.line(f"domain {domid} ({result.name}) created"
              + (f"; simulated pciback + pcifront running (pid {pid})" if pid else ""))


@group.command("destroy")
@click.argument("domid", type=int)
@click.pass_obj
def destroy(app: Application, domid: int) -> None:
    """Destroy domain DOMID: release its devices as libxl would, @releaseDomain."""
    from xenpciback_cli.cli.terminal import terminal_for
    from xenpciback_cli.sandbox import guest as simguest
    from xenpciback_cli.sandbox.domains import destroy_domain
    from xenpciback_cli.engine.session import host_of

    sandbox = _sandbox(app)
    simguest.stop(sandbox, domid)
    with app.open_xenstore() as client:
        result = destroy_domain(client, domid, host=host_of(app), grants=app.domain_grants(),
                                state_dir=str(app.state_dir))
    term = terminal_for(app)
    if app.settings.json:
        term.json(result.to_json())
        return
    term.line(f"domain {domid} destroyed")
    for bdf in result.released_devices:
        reset = result.resets.get(bdf)
        term.line(f"released {bdf}" + (f"; {reset.reason}" if reset else ""))

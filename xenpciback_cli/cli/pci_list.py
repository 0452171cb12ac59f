"""``xen-pciback pci-list DOMAIN``: one domain's PCI devices, as ``xl pci-list`` prints them."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from xenpciback_cli.app import Application


@click.command("pci-list")
@click.argument("domain", metavar="DOMAIN")
@click.option("--socket", "socket_path", metavar="PATH", default=None, help="xenstored socket.")
@click.pass_obj
def command(app: Application, domain: str, socket_path: str | None) -> None:
    """List the PCI devices of DOMAIN (an id or a name) as 'xl pci-list': Vdev and Device.

    Vdev is the guest's slot.function (what pciback exported, vdev-N; '-' until the guest's
    backend has answered); 'status --domid N' shows the handshake behind it.
    """
    from xenpciback_cli.cli.terminal import terminal_for
    from xenpciback_cli.engine.attach import domain_id, require_domain
    from xenpciback_cli.toolstack.status import domain_status

    term = terminal_for(app)
    with app.open_xenstore(socket_path) as client:
        number = domain_id(client, domain)
        require_domain(client, number)
        status = domain_status(client, number)
    rows = [(_vdev(d.vdev, d.vdevfn), d.bdf or "-") for d in status.devices]
    if app.settings.json:
        term.json({"domid": number, "devices": [{"vdev": v if v != "-" else None, "bdf": b}
                                                for v, b in rows]})
        return
    term.line("Vdev Device")
    for vdev, bdf in rows:
        term.line(f"{vdev} {''.join(c if c.isprintable() else '?' for c in bdf)}")


def _vdev(vdev: str | None, vdevfn: str | None) -> str:
    """``SS.F`` from pciback's ``vdev-N`` (DDDD:BB:SS.F), else libxl's ``vdevfn-N`` (hex devfn)."""
    import re

    # pciback writes "%04x:%02x:%02x.%02x" (drivers/xen/xen-pciback/xenbus.c): two function digits.
    match = re.fullmatch(r"[0-9a-f]{4}:[0-9a-f]{2}:([0-9a-f]{2})\.([0-9a-f]{1,2})", (vdev or "").strip())
    if match and int(match[1], 16) < 32 and int(match[2], 16) < 8:
        return f"{int(match[1], 16):02x}.{int(match[2], 16):x}"
    if vdevfn:
        try:
            devfn = int(vdevfn.strip(), 16)
            return f"{(devfn >> 3) & 0x1f:02x}.{devfn & 7:x}"
        except ValueError:
            pass
    return "-"

"""``xen-pciback list``: every PCI device with its driver, passthrough state and IOMMU group."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from xenpciback_cli.app import Application
    from xenpciback_cli.pci.address import Bdf

FORMATS = ("rich", "plain", "simple", "github", "csv")
HEADERS = ("BDF", "ID", "DEVICE", "CLASS", "DRIVER", "STATE", "DOMID", "ORIGINAL", "GROUP")


@click.command("list")
@click.argument("patterns", nargs=-1, metavar="[PATTERN]...")
@click.option("--seized", "seized_only", is_flag=True, help="Only seized or attached devices.")
@click.option("--class", "class_text", metavar="CLASS",
              help="Filter by class: hex (02, 0x0200, 0x020000) or a name (network, storage, "
                   "display, usb, bridge, serial, multimedia...).")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default=None,
              help="Table format [default: rich on a terminal, plain otherwise].")
@click.pass_obj
def command(app: Application, patterns: tuple[str, ...], seized_only: bool, class_text: str | None,
            fmt: str | None) -> None:
    """List PCI devices: BDF, ids and names, class, driver, state (host/seized/attached), domid,
    original driver and IOMMU group.

    PATTERN is a BDF, optionally with wildcards: 03:00.0, 0000:03:00.*, 03:*.*.
    With the global --json, prints a JSON list of objects.
    """
    from xenpciback_cli.cli.pending import warn_pending
    from xenpciback_cli.cli.terminal import terminal_for
    from xenpciback_cli.engine.inventory import ClassFilter, inventory
    from xenpciback_cli.pci.spec import parse_device_patterns

    parsed = parse_device_patterns(patterns)
    class_filter = ClassFilter.parse(class_text) if class_text is not None else None
    settings = app.settings
    terminal = terminal_for(app)
    warn_pending(app, terminal)  # interrupted hide/unhide: one line each
    attached = app.attachment_details()
    rows = inventory(app.host, state_dir=app.state_dir, patterns=parsed,
                     class_filter=class_filter, seized_only=seized_only,
                     attachments={bdf: a.domid for bdf, a in attached.items()},
                     brief=not settings.json)  # the table shows no other attribute

    def guest_address(bdf: Bdf) -> str | None:
        a = attached.get(bdf)
        return None if a is None or a.vdev is None else str(a.vdev)

    if settings.json:
        terminal.json([row.as_json() | {"guest_address": guest_address(row.bdf)} for row in rows])
        return
    table = []
    for row in rows:
        d = row.device
        name = " ".join(part for part in (d.vendor_name, d.device_name) if part) or None
        vdev = guest_address(row.bdf)
        domain = None if row.domid is None else f"{row.domid} ({vdev})" if vdev else row.domid
        table.append((str(d.bdf), f"{d.vendor_id:04x}:{d.device_id:04x}", name,
                      d.class_name or f"{d.class_code:06x}", d.driver, row.state, domain,
                      row.original_driver, d.iommu_group))
    terminal.table(HEADERS, table, fmt=fmt, empty="-")  # CSV leaves empty cells empty

"""``xen-pciback list``: every PCI device with its driver, passthrough state and IOMMU group.

The default table fits an 80-column console: BDF, ID, DRIVER, STATE and GROUP are never cut or
folded; the DEVICE name and the USED column (what the host has on the device) shrink first.
``--wide`` adds the columns that do not fit there; ``--json`` has everything.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from xenpciback_cli.app import Application

FORMATS = ("rich", "plain", "simple", "github", "csv")
HEADERS = ("BDF", "ID", "DEVICE", "DRIVER", "STATE", "DOMID", "GROUP", "USED")
WIDE_HEADERS = ("BDF", "ID", "DEVICE", "CLASS", "DRIVER", "OVERRIDE", "STATE", "DOMID", "VDEV",
                "NAME", "ORIGINAL", "GROUP", "USED")
#: Columns of names and free text: the only ones shortened to fit, and the first to go.
NAME_COLUMNS = ("DEVICE", "CLASS", "USED")
#: Columns left out of a narrow terminal's table when no row has anything in them.
OPTIONAL_COLUMNS = ("DOMID", "VDEV", "NAME", "OVERRIDE", "ORIGINAL", "USED")


@click.command("list")
@click.argument("patterns", nargs=-1, metavar="[SELECTOR]...")
@click.option("-d", "--ids", "ids_text", metavar="[VENDOR]:[DEVICE][:CLASS]",
              help="Only devices with these ids (hex; an empty part matches any), as lspci -d.")
@click.option("--seized", "seized_only", is_flag=True, help="Only seized or attached devices.")
@click.option("--assignable", is_flag=True,
              help="Only devices held by pciback and attached to no guest, like "
                   "'xl pci-assignable-list' (with --format xl: its plain lines).")
@click.option("--class", "class_text", metavar="CLASS",
              help="Filter by class: hex (02, 0x0200, 0x020000) or a name (network, storage, "
                   "display, usb, bridge, serial, multimedia...).")
@click.option("-w", "--wide", is_flag=True,
              help="Every column: class, driver_override, guest address, xl name, original driver "
                   "(CSV always has them).")
@click.option("--format", "fmt", type=click.Choice([*FORMATS, "xl"]), default=None,
              help="Table format [default: rich on a terminal, plain otherwise]; xl: one BDF a "
                   "line, as xl pci-assignable-list prints.")
@click.option("-n", "--names", "show_names", is_flag=True,
              help="With --format xl: each BDF followed by its name, as 'xl pci-assignable-list -n'.")
@click.pass_obj
def command(app: Application, patterns: tuple[str, ...], ids_text: str | None, seized_only: bool,
            assignable: bool, class_text: str | None, wide: bool, fmt: str | None, show_names: bool) -> None:
    """List PCI devices: BDF, ids, name, driver, state (host/seized/attached), domid, IOMMU
    group and what the host uses the device for (USED: interfaces, mounted block devices).

    SELECTOR is an address as lspci -s takes it, with wildcards: 03:00.0, 0000:03:00.*,
    03:*.*, 03:00 (every function), 03: (the whole bus), :00.0 (any bus).
    With the global --json, prints a JSON list of objects (docs/json.md).
    """
    from xenpciback_cli.cli.pending import warn_pending
    from xenpciback_cli.cli.terminal import terminal_for
    from xenpciback_cli.engine.inventory import ClassFilter, DeviceState, inventory
    from xenpciback_cli.errors import InputError
    from xenpciback_cli.pci.address import guest_address

    if fmt == "xl" and not assignable:
        raise InputError("--format xl is the form of 'xl pci-assignable-list': give --assignable")
    parsed: list[Any] = []
    ids = None
    if patterns or ids_text is not None:  # pci.spec only when something is selected
        from xenpciback_cli.pci.spec import IdSelector, parse_device_patterns

        parsed = list(parse_device_patterns(patterns))
        ids = IdSelector.parse(ids_text) if ids_text is not None else None
    class_filter = ClassFilter.parse(class_text) if class_text is not None else None
    settings = app.settings
    terminal = terminal_for(app)
    warn_pending(app, terminal)  # interrupted hide/unhide: one line each
    attached = app.attachment_details()
    rows = inventory(app.host, state_dir=app.state_dir, patterns=parsed, ids=ids,
                     class_filter=class_filter, seized_only=seized_only or assignable,
                     attachments={bdf: a.domid for bdf, a in attached.items()},
                     brief=not settings.json,  # the table shows no other attribute
                     override=wide or fmt == "csv")  # only the wide table has OVERRIDE
    if assignable:
        rows = [r for r in rows if r.state is DeviceState.SEIZED and r.attachable]
    if fmt == "xl" and not settings.json:
        xl_names = _xl_names(app) if show_names else {}
        for row in rows:  # xl prints DDDD:BB:DD.F, one a line; with -n, a space and the name
            name = xl_names.get(row.bdf)
            terminal.line(f"{row.bdf} {name}" if name else str(row.bdf))
        return
    names = _xl_names(app)
    usage = _usage(app, rows)

    def vdev(row: Any) -> str | None:
        a = attached.get(row.bdf)
        return None if a is None else guest_address(a.vdev)

    if settings.json:
        from xenpciback_cli.engine.grants import grants_view

        granted = grants_view(app.state_dir)  # what the hypervisor gave a guest (attach)
        terminal.json([row.as_json() | {"guest_address": vdev(row), "name": names.get(row.bdf),
                                        "used": list(usage.get(row.bdf, ())),
                                        "grants": granted.get(row.bdf)} for row in rows])
        return
    wide = wide or fmt == "csv"  # a program reading CSV gets every column, whatever the width
    table = []
    for row in rows:
        d = row.device
        values = {
            "BDF": str(d.bdf), "ID": f"{d.vendor_id:04x}:{d.device_id:04x}",
            "DEVICE": " ".join(part for part in (d.vendor_name, d.device_name) if part) or None,
            "CLASS": d.class_name or f"{d.class_code:06x}", "DRIVER": d.driver,
            "OVERRIDE": d.driver_override, "STATE": row.state, "DOMID": row.domid,
            "VDEV": vdev(row), "NAME": names.get(row.bdf), "ORIGINAL": row.original_driver,
            "GROUP": d.iommu_group, "USED": ", ".join(usage.get(row.bdf, ())) or None,
        }
        table.append(tuple(values[h] for h in (WIDE_HEADERS if wide else HEADERS)))
    terminal.table(WIDE_HEADERS if wide else HEADERS, table, fmt=fmt, empty="-",
                   names=NAME_COLUMNS, optional=OPTIONAL_COLUMNS)  # CSV leaves empty cells empty


def _xl_names(app: Application) -> dict[Any, str]:
    """The names ``hide --name`` (our records) and xl (xenstore, where one answers) gave devices."""
    import os

    client = app.xenstore()
    if client is None and not os.path.lexists(app.state_dir):
        return {}
    from xenpciback_cli.engine.names import device_names

    return device_names(app.state_dir, client)


def _usage(app: Application, rows: list[Any]) -> dict[Any, tuple[str, ...]]:
    """What the host has on each listed device, asked only of the devices that have a network
    interface, block device or framebuffer (one pass over those classes) and of the boot VGA
    device: on a host of hundreds of functions that is a handful of calls, not hundreds."""
    from xenpciback_cli.errors import XenPcibackError

    host = app.host
    candidates = host.usage_candidates()
    out = {}
    for row in rows:
        bdf = row.bdf
        if candidates is not None and bdf not in candidates and not row.device.boot_vga:
            continue
        try:
            labels = host.usage(bdf).labels
        except (XenPcibackError, OSError):  # a device gone meanwhile: nothing to show
            continue
        if labels:
            out[bdf] = labels
    return out

"""``xen-pciback inspect``: decoded config space and the guest's filtered view of it."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from xenpciback_cli.app import Application


@click.command("inspect")
@click.argument("bdfs", metavar="[SELECTOR]...", nargs=-1)
@click.option("-d", "--ids", "ids_text", metavar="[VENDOR]:[DEVICE][:CLASS]",
              help="The devices with these ids (hex; an empty part matches any), as lspci -d.")
@click.option("-x", "--hex", "hexdump", is_flag=True,
              help="Also print the config space as hex, marking bytes the guest sees differently.")
@click.option("--from-dump", "dump_file", metavar="FILE", type=click.Path(dir_okay=False),
              help="Read devices from lspci -x/-xxx/-xxxx output instead of the host.")
@click.option("--from-binary", "binary_file", metavar="FILE", type=click.Path(dir_okay=False),
              help="Read one device from a raw config-space image (e.g. a copy of sysfs config).")
@click.option("--guest", is_flag=True, help="Show the values a guest would read.")
@click.option("--diff", is_flag=True, help="Show only where guest and hardware differ.")
@click.option("--permissive", is_flag=True, help="Show the overlay as for a permissive device.")
@click.option("--write", "writes", metavar="OFF:SIZE:VALUE", multiple=True,
              help="Simulate a guest config write (hex; repeatable) on a copy and show its "
                   "answer and what would reach the device, e.g. --write 0x04:2:0.")
@click.pass_obj
def command(app: Application, bdfs: tuple[str, ...], ids_text: str | None, hexdump: bool,
            dump_file: str | None, binary_file: str | None, guest: bool, diff: bool,
            permissive: bool, writes: tuple[str, ...]) -> None:
    """Decode config space (header, BARs, capabilities) and show the overlay a guest gets.

    SELECTOR names devices of the host (or of the sandbox with --sandbox) as lspci -s does:
    03:00.0, 03:00 (every function), 03:*.*. With --from-dump every device of the file is shown
    unless selected; with --from-binary the BDF is a label, taken from the file's path when it
    is a sysfs one (.../0000:03:00.0/config). Nothing is written to any device.
    """
    from xenpciback_cli.cli.inspect_view import render
    from xenpciback_cli.cli.terminal import terminal_for
    from xenpciback_cli.config.report import build_report, parse_guest_write
    from xenpciback_cli.engine.inspect_sources import collect_sources

    from xenpciback_cli.pci.spec import IdSelector

    guest_writes = [parse_guest_write(text) for text in writes]
    ids = IdSelector.parse(ids_text) if ids_text is not None else None
    sources = collect_sources(app, bdfs, dump_file=dump_file, binary_file=binary_file, ids=ids)
    reports = [build_report(src, permissive=permissive, writes=guest_writes) for src in sources]
    if dump_file is None and binary_file is None:  # the host's own devices: what a guest was granted
        from xenpciback_cli.engine.grants import grants_view

        granted = {str(b): r for b, r in grants_view(app.state_dir).items()}
        for rep in reports:
            rep["grants"] = granted.get(str(rep["bdf"]))
    term = terminal_for(app)
    if app.settings.json:
        term.json(reports)
        return
    render(term, reports, guest=guest, diff=diff, hexdump=hexdump or guest)

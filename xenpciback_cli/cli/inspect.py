"""``xen-pciback inspect``: decoded config space and the guest's filtered view of it."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from xenpciback_cli.app import Application


@click.command("inspect")
@click.argument("bdfs", metavar="[BDF]...", nargs=-1)
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
def command(app: Application, bdfs: tuple[str, ...], dump_file: str | None, binary_file: str | None,
            guest: bool, diff: bool, permissive: bool, writes: tuple[str, ...]) -> None:
    """Decode config space (header, BARs, capabilities) and show the overlay a guest gets.

    BDF names a device of the host (or of the sandbox with --sandbox). With --from-dump every
    device of the file is shown unless BDFs are given; with --from-binary the BDF is a label.
    Nothing is written to any device.
    """
    from xenpciback_cli.cli.inspect_view import render
    from xenpciback_cli.cli.terminal import terminal_for
    from xenpciback_cli.config.report import build_report, parse_guest_write
    from xenpciback_cli.engine.inspect_sources import collect_sources

    guest_writes = [parse_guest_write(text) for text in writes]
    sources = collect_sources(app, bdfs, dump_file=dump_file, binary_file=binary_file)
    reports = [build_report(src, permissive=permissive, writes=guest_writes) for src in sources]
    term = terminal_for(app)
    if app.settings.json:
        term.json(reports)
        return
    render(term, reports, guest=guest, diff=diff)

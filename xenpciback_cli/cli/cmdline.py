"""``xen-pciback cmdline``: the boot parameter that hides the persisted devices from dom0."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from xenpciback_cli.app import Application


@click.command("cmdline")
@click.option("--config", "config", metavar="PATH", default=None,
              help="Persisted config file [default: /etc/xen-pciback/seized.toml].")
@click.option("--modprobe", is_flag=True,
              help="Print the modprobe.d form (options xen-pciback hide=...) for a modular pciback.")
@click.pass_obj
def command(app: Application, config: str | None, modprobe: bool) -> None:
    """Print xen-pciback.hide=(DDDD:BB:DD.F)... for the persisted pciback devices."""
    from xenpciback_cli.cli.terminal import terminal_for
    from xenpciback_cli.engine import persist as persisted
    from xenpciback_cli.errors import OperationFailed

    terminal = terminal_for(app)
    path = config or str(app.persist_file)
    devices = persisted.load(path, must_exist=config is not None)
    pciback = [d for d in devices if d.driver == "pciback"]
    if not pciback:
        raise OperationFailed(f"no pciback devices persisted in {path} (use 'hide --persist')")
    text = persisted.hide_parameter(devices, modprobe=modprobe)
    if app.settings.json:
        terminal.json({"config": path, "parameter": text,
                       "devices": [str(d.pattern) for d in pciback]})
    else:
        terminal.line(text)

"""``xen-pciback sandbox ...``: create and drive the simulated host.

Each subcommand lives in its own module (``sandbox_<name>.py``) so that separate pieces of work
(the host simulation, the embedded xenstored, simulated domains) never edit the same file.
"""

from __future__ import annotations

import click

from xenpciback_cli.cli import LazyGroup

SANDBOX_COMMANDS: dict[str, tuple[str, str, str]] = {
    "init": ("sandbox_init", "command", "Create a sandbox: a simulated host in DIR."),
    "xenstored": ("sandbox_xenstored", "command", "Run the embedded xenstored in the foreground."),
    "stop": ("sandbox_stop", "command", "Stop the sandbox's background daemons."),
    "domain": ("sandbox_domain", "group", "Create and destroy simulated guest domains."),
    "guest": ("sandbox_guest", "command", "Play a domain's pcifront: connect, scan, probe its devices."),
    "aer": ("sandbox_aer", "command", "Raise a PCIe AER error on a device served by 'serve'."),
}


@click.group(cls=LazyGroup, lazy=SANDBOX_COMMANDS)
def group() -> None:
    """Create and drive a simulated host (no Xen needed).

    A sandbox is a directory holding a simulated host: PCI devices built from real config-space
    captures, a simulated kernel that binds drivers, and an embedded xenstored. Select it with
    the global option --sandbox DIR (or XEN_PCIBACK_SANDBOX).
    """

"""The application object every command receives: settings, and the host model built from them.

This is where the choice of adapter is made, once: ``--sandbox DIR`` gives the simulated host,
otherwise the real sysfs under ``--sysfs-root``. Commands never pick an adapter themselves.
Nothing here imports click or rich.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from xenpciback_cli.host.model import Host
    from xenpciback_cli.pci.address import Bdf
    from xenpciback_cli.toolstack.status import Attachment
    from xenpciback_cli.xenstore.client import XenstoreClient

DEFAULT_STATE_DIR = "/var/lib/xen-pciback"
DEFAULT_PERSIST_FILE = "/etc/xen-pciback/seized.toml"


@dataclass(frozen=True)
class Settings:
    """Global options as given on the command line or in the environment."""

    sandbox: str | None = None
    sysfs_root: str = "/sys"
    state_dir: str | None = None
    json: bool = False
    verbose: int = 0
    color: bool = True


class Application:
    """What a command needs: settings, the host, and where state lives."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @property
    def sandbox_dir(self) -> Path | None:
        return Path(self.settings.sandbox) if self.settings.sandbox else None

    @property
    def state_dir(self) -> Path:
        """Journal and bookkeeping; inside the sandbox unless given explicitly."""
        if self.settings.state_dir:
            return Path(self.settings.state_dir)
        if self.sandbox_dir is not None:
            return self.sandbox_dir / "state"
        return Path(DEFAULT_STATE_DIR)

    @property
    def persist_file(self) -> Path:
        """The persisted seize list (``hide --persist``); inside the sandbox when there is one."""
        env = os.environ.get("XEN_PCIBACK_CONFIG")
        if env:
            return Path(env)
        if self.sandbox_dir is not None:
            return self.sandbox_dir / "etc" / "xen-pciback" / "seized.toml"
        return Path(DEFAULT_PERSIST_FILE)

    @cached_property
    def host(self) -> Host:
        """The host model: the sandbox when one is selected, else real sysfs under the root."""
        if self.sandbox_dir is not None:
            from xenpciback_cli.host.sandbox import open_sandbox

            return open_sandbox(self.sandbox_dir)
        from xenpciback_cli.host.sysfs import SysfsHost

        root = self.settings.sysfs_root
        # Checked here, not when the option is parsed: commands that never touch the host
        # (--help, sandbox init, inspect --from-dump, cmdline, xenstore) work under any root.
        if not os.path.isdir(os.path.join(root, "bus", "pci", "devices")):
            from xenpciback_cli.errors import InputError

            raise InputError(f"sysfs root {root} has no bus/pci/devices: not a sysfs mount "
                             "(check --sysfs-root or XEN_PCIBACK_SYSFS_ROOT)")
        return SysfsHost(root)

    # -- xenstore (toolstack): who holds which device -------------------------------------------
    def xenstore(self) -> XenstoreClient | None:
        """A xenstore client: the sandbox's daemon (started on demand) or the host's; None when
        no xenstored answers (a host without Xen), so seizing works without one."""
        if "_xenstore" not in self.__dict__:
            from xenpciback_cli.toolstack.session import try_open_xenstore

            self.__dict__["_xenstore"] = try_open_xenstore(self)
        client: XenstoreClient | None = self.__dict__["_xenstore"]
        return client

    def attachment_details(self) -> dict[Bdf, Attachment]:
        """Bdf -> toolstack.status.Attachment (domid, guest address) from xenstore."""
        if "_attachments" not in self.__dict__:
            client = self.xenstore()
            if client is None:  # no Xen here: nothing attached, and no toolstack code to import
                self.__dict__["_attachments"] = {}
            else:
                from xenpciback_cli.toolstack.status import attachments

                self.__dict__["_attachments"] = attachments(client)
        details: dict[Bdf, Attachment] = self.__dict__["_attachments"]
        return details

    def attachments(self) -> dict[Bdf, int]:
        """Bdf -> domid of every device a guest holds (what unhide refuses and list shows)."""
        return {bdf: a.domid for bdf, a in self.attachment_details().items()}

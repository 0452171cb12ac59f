"""The application object every command receives: settings, and the host model built from them.

This is where the choice of adapter is made, once: ``--sandbox DIR`` gives the simulated host and
the sandbox's own xenstored, otherwise the real sysfs under ``--sysfs-root`` and the host's
xenstored. Commands and the engine never pick an adapter themselves.
Nothing here imports click or rich.
"""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from xenpciback_cli.host.model import Host
    from xenpciback_cli.host.platform import Platform
    from xenpciback_cli.pci.address import Bdf
    from xenpciback_cli.toolstack.status import Attachment
    from xenpciback_cli.xenstore.client import XenstoreClient

DEFAULT_STATE_DIR = "/var/lib/xen-pciback"
DEFAULT_PERSIST_FILE = "/etc/xen-pciback/seized.toml"


class Settings(NamedTuple):
    """Global options as given on the command line or in the environment (a named tuple, not
    a dataclass: every command imports this module, and ``dataclasses`` costs ~2 ms to import)."""

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
            from xenpciback_cli.sandbox.host import open_sandbox

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

    @cached_property
    def platform(self) -> Platform:
        """Xen, IOMMU and pciback facts (``doctor``): under the sandbox's roots or the host's."""
        from xenpciback_cli.host.platform import Platform

        if self.sandbox_dir is not None:
            return Platform(str(self.sandbox_dir / "sys"), str(self.sandbox_dir / "proc"),
                            allow_commands=False)
        root = self.settings.sysfs_root
        proc = "/proc" if os.path.realpath(root) == "/sys" else os.path.join(os.path.dirname(
            os.path.abspath(root)), "proc")
        return Platform(root, proc)

    def probe_xenstore(self, *, timeout: float = 2.0) -> XenstoreClient | None:
        """A client of the xenstored that is already there (none is started, not even a sandbox's);
        None when there is none to ask. OperationFailed when one is there and does not answer."""
        from xenpciback_cli.errors import OperationFailed
        from xenpciback_cli.xenstore.client import connect

        if self.sandbox_dir is not None:
            from xenpciback_cli.sandbox import xenstored

            path = xenstored.socket_path(self.sandbox_dir)
            if not os.path.exists(path):
                return None
            try:
                return connect(path, timeout=timeout)
            except OperationFailed:
                return None  # a socket left by a stopped daemon: it starts again on demand
        from xenpciback_cli.xenstore.transport import any_candidate_exists

        if not any_candidate_exists():
            return None
        return connect(timeout=timeout)

    # -- xenstore: which daemon answers, chosen here like the host ---------------------------------
    def connect_xenstore(self, socket: str | None = None, *, timeout: float = 10.0) -> XenstoreClient:
        """A xenstore client: ``--socket PATH`` wins; in a sandbox its own xenstored (started on
        demand); otherwise the real daemon, found the way Xen's library finds it."""
        from xenpciback_cli.xenstore.client import connect

        if socket:
            return connect(socket, timeout=timeout)
        if self.sandbox_dir is not None:
            from xenpciback_cli.errors import OperationFailed
            from xenpciback_cli.sandbox.xenstored import SandboxDaemonError, ensure_running

            try:
                return connect(ensure_running(self.sandbox_dir), timeout=timeout)
            except SandboxDaemonError as exc:
                raise OperationFailed(str(exc)) from None
        return connect(timeout=timeout)

    def open_xenstore(self, socket: str | None = None, *, timeout: float = 10.0) -> XenstoreClient:
        """The toolstack's xenstore connection; in a sandbox, also restart the simulated guests
        that stopped with its xenstored (``sandbox stop``), so a hot-plug finds its peers."""
        client = self.connect_xenstore(socket, timeout=timeout)
        if socket is None and self.sandbox_dir is not None:
            from xenpciback_cli.sandbox import guest

            try:
                guest.revive(self.sandbox_dir, client.path, client)
            except BaseException:
                client.close()
                raise
        return client

    def xenstore(self) -> XenstoreClient | None:
        """The xenstore client ``list``/``hide`` consult: the sandbox's daemon or the host's; None
        when no xenstored answers (a host without Xen), so seizing works without one.

        In a sandbox the daemon is started only if it has a saved tree to serve: a sandbox that
        never used xenstore has nothing attached, and listing it must not leave a daemon behind.
        """
        if "_xenstore" not in self.__dict__:
            self.__dict__["_xenstore"] = self._try_open_xenstore()
        client: XenstoreClient | None = self.__dict__["_xenstore"]
        return client

    def _try_open_xenstore(self) -> XenstoreClient | None:
        from xenpciback_cli.errors import OperationFailed

        if self.sandbox_dir is not None:
            from xenpciback_cli.sandbox import xenstored
            from xenpciback_cli.xenstore.client import connect

            try:
                return connect(xenstored.socket_path(self.sandbox_dir), timeout=5.0)
            except OperationFailed:
                if not (xenstored.xenstore_dir(self.sandbox_dir) / "state.json").exists():
                    return None
        else:
            from xenpciback_cli.xenstore.transport import any_candidate_exists

            if not any_candidate_exists():  # no Xen here: skip loading the client at all
                return None
        try:
            # As patient as attach/detach: on an emulated dom0 right after a domain's
            # destruction xenstored took over 5 s to answer, and hide/unhide failed.
            return self.open_xenstore(timeout=10.0)
        except OperationFailed:
            return None

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

    # -- the hypervisor's grants (attach, detach, recover), chosen here ----------------------------
    def domain_grants(self) -> Any | None:
        """The :class:`~xenpciback_cli.engine.grants.DomainGrants` for this host: the sandbox's
        simulated hypervisor; real Xen's libxenctrl on the real /sys under Xen (not in a guest); None anywhere else
        (a ``--sysfs-root`` tree, a host without Xen): then attach and detach write xenstore only."""
        if self.sandbox_dir is not None:
            from xenpciback_cli.sandbox.hypervisor import SandboxDomainGrants

            return SandboxDomainGrants(self.sandbox_dir)
        if os.path.realpath(self.settings.sysfs_root) != "/sys":
            return None
        platform = self.platform
        # Unknown whether this is dom0 (no xenfs, no start_flags): use Xen all the same - a guest's
        # hypercall fails loudly, where skipping the grants would attach a device no guest can use.
        if platform.hypervisor_type() != "xen" or platform.initial_domain()[0] is False:
            return None
        from xenpciback_cli.transport.xen_grants import XenDomainGrants

        return XenDomainGrants()

    # -- serve: the backend process's adapters, chosen here ---------------------------------------
    def serve_run_dir(self) -> Path:
        """Where ``serve`` keeps its control socket: ``S/run`` in a sandbox, else
        ``/run/xen-pciback``."""
        if self.sandbox_dir is not None:
            return self.sandbox_dir / "run"
        return Path(os.environ.get("XEN_PCIBACK_RUN_DIR", "/run/xen-pciback"))

    def serve_adapters(self) -> ServeAdapters:
        """The transport, interrupt control, device source and 'who else serves' predicate for
        ``serve``: the sandbox's files and sockets, or real Xen's gntdev/evtchn and libxenctrl
        (``transport/xen.py``; not yet run on real Xen, see docs/real-xen.md)."""
        if self.sandbox_dir is None:
            return self._real_xen_serve_adapters()
        from xenpciback_cli.sandbox import guest as simguest
        from xenpciback_cli.transport.sandbox import (
            SandboxDevices,
            SandboxInterrupts,
            SandboxTransport,
        )

        root = self.sandbox_dir
        host = self.host
        devices = SandboxDevices(root)

        class Source:
            def config(self, bdf: Bdf) -> Any:
                return devices.config(bdf)

            def device(self, bdf: Bdf) -> Any:
                try:
                    return host.device(bdf)
                except Exception:  # noqa: BLE001 - then the overlay works without resources
                    return None

        return ServeAdapters(SandboxTransport(root), SandboxInterrupts(devices), Source(),
                             lambda domid: simguest.is_running(root, domid))

    def _real_xen_serve_adapters(self) -> ServeAdapters:
        """Real Xen: the kernel's config file of each device (written through the overlay
        only), and the kernel's own pciback, when loaded, serves every backend itself."""
        from xenpciback_cli.host.configfile import FileConfigAccessor
        from xenpciback_cli.transport.xen import real_xen_adapters

        root = self.settings.sysfs_root
        host = self.host
        transport, interrupts = real_xen_adapters(root)
        interrupts.warm_up()  # a real pcifront gives up on an op after 2 s: no dlopen then
        kernel_backend = os.path.isdir(os.path.join(root, "bus", "xen-backend", "drivers", "pci"))

        class Source:
            def config(self, bdf: Bdf) -> Any:
                return FileConfigAccessor(os.path.join(root, "bus", "pci", "devices", str(bdf), "config"),
                                          writable=True)

            def device(self, bdf: Bdf) -> Any:
                try:
                    return host.device(bdf)
                except Exception:  # noqa: BLE001 - then the overlay works without resources
                    return None

        return ServeAdapters(transport, interrupts, Source(), lambda domid: kernel_backend,
                             self._host_aer_feed(root))

    @staticmethod
    def _host_aer_feed(root: str) -> Any:
        """The kernel's PCI error-recovery uevents (``host/uevents.py``); None when the netlink
        socket cannot be opened (then no host error reaches ``serve``'s guests)."""
        from xenpciback_cli.host.uevents import UeventFeed

        try:
            return UeventFeed(root)
        except OSError:
            return None

    def config_source(self, *, writable: bool = False) -> Any:
        """Config space by address for ``replay --against``: the sandbox's devices, or the
        host's sysfs ``config`` files, opened read-only unless ``writable``."""
        if self.sandbox_dir is not None:
            from xenpciback_cli.transport.sandbox import SandboxDevices

            return SandboxDevices(self.sandbox_dir)
        from xenpciback_cli.host.configfile import FileConfigAccessor

        root = self.settings.sysfs_root

        class Source:
            def config(self, bdf: Bdf) -> Any:
                return FileConfigAccessor(os.path.join(root, "bus", "pci", "devices", str(bdf),
                                                       "config"), writable=writable)
        return Source()

    def serve_settings(self, bdf: Bdf) -> dict[str, object]:
        """The overlay options ``serve`` exports ``bdf`` with (``engine.backend_settings``)."""
        from xenpciback_cli.engine.backend_settings import load_device_settings

        settings = load_device_settings(self.state_dir, bdf)
        return settings.overlay_options() if settings is not None else {}


class ServeAdapters(NamedTuple):
    transport: Any
    interrupts: Any
    devices: Any
    others_serve: Any
    aer_feed: Any = None

"""What shell completion offers for a command's values: devices by state, domains, device names.

Completion runs on every TAB, so this reads as little as it can: devices from one ``listdir`` of
``bus/pci/devices`` and one ``readlink`` of each device's ``driver`` (not the ``list`` inventory,
which reads config space, IOMMU groups and host usage); domains, names and attachments from a
xenstored only when one is already there (a sandbox's is never started for a TAB, and a host
without Xen is not asked at all). Nothing here imports rich, tabulate or pyudev, and any failure
means "no candidates", never an error in the middle of a person's command line.

Imported only while completing (see :mod:`xenpciback_cli.cli.completion`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from xenpciback_cli.pci.drivers import PCIBACK_DRIVER, SEIZE_DRIVERS

if TYPE_CHECKING:
    import click

#: Seconds a completion waits for a xenstored that is there but slow.
XENSTORE_TIMEOUT = 0.5


def _root_params(ctx: click.Context) -> dict[str, Any]:
    return dict(ctx.find_root().params)


def sysfs_root(ctx: click.Context) -> str:
    """The sysfs the command line would act on: the sandbox's, --sysfs-root's, or /sys."""
    params = _root_params(ctx)
    sandbox = params.get("sandbox") or os.environ.get("XEN_PCIBACK_SANDBOX")
    if sandbox:
        return os.path.join(sandbox, "sys")
    return str(params.get("sysfs_root") or os.environ.get("XEN_PCIBACK_SYSFS_ROOT") or "/sys")


def devices(ctx: click.Context) -> list[tuple[str, str | None]]:
    """(address, driver or None) of every PCI function, sorted: one listdir, one readlink each."""
    base = os.path.join(sysfs_root(ctx), "bus", "pci", "devices")
    try:
        names = sorted(os.listdir(base))
    except OSError:
        return []
    out = []
    for name in names:
        try:
            driver: str | None = os.path.basename(os.readlink(os.path.join(base, name, "driver")))
        except OSError:
            driver = None
        out.append((name, driver))
    return out


def xenstore_client(ctx: click.Context) -> Any:
    """A client of the xenstored already running for this command line, or None."""
    params = _root_params(ctx)
    sandbox = params.get("sandbox") or os.environ.get("XEN_PCIBACK_SANDBOX")
    socket = ctx.params.get("socket_path")
    try:
        from xenpciback_cli.xenstore.client import connect

        if socket:
            return connect(str(socket), timeout=XENSTORE_TIMEOUT)
        if sandbox:
            path = os.path.join(os.path.abspath(sandbox), "xenstore", "socket")
            return connect(path, timeout=XENSTORE_TIMEOUT) if os.path.exists(path) else None
        from xenpciback_cli.xenstore.transport import any_candidate_exists

        return connect(timeout=XENSTORE_TIMEOUT) if any_candidate_exists() else None
    except Exception:  # noqa: BLE001  nothing to offer is the answer to any failure here
        return None


def _text(client: Any, path: str) -> str | None:
    try:
        return bytes(client.read(path)).decode("utf-8", "replace")
    except Exception:  # noqa: BLE001
        return None


def _children(client: Any, path: str) -> list[str]:
    try:
        return list(client.directory(path))
    except Exception:  # noqa: BLE001
        return []


def domains(ctx: click.Context) -> list[tuple[str, str | None]]:
    """(domid, name) of every guest domain xenstore knows (dom0 left out)."""
    client = xenstore_client(ctx)
    if client is None:
        return []
    with client:
        ids = sorted((c for c in _children(client, "/local/domain") if c.isdigit() and c != "0"), key=int)
        return [(domid, _text(client, f"/local/domain/{domid}/name")) for domid in ids]


def names(ctx: click.Context) -> list[tuple[str, str | None]]:
    """(name, address) of every device given a name at assignable-add (``/libxl/pci/*/name``)."""
    client = xenstore_client(ctx)
    if client is None:
        return []
    out = []
    with client:
        for key in _children(client, "/libxl/pci"):
            name = _text(client, f"/libxl/pci/{key}/name")
            if name:
                parts = key.split("-")
                address = f"{parts[0]}:{parts[1]}:{parts[2]}.{parts[3]}" if len(parts) == 4 else key
                out.append((name, address))
    return sorted(out)


def attached(ctx: click.Context) -> dict[str, int]:
    """Address -> domid of every function a guest holds, per the backend directories."""
    client = xenstore_client(ctx)
    if client is None:
        return {}
    with client:
        from xenpciback_cli.toolstack.status import attachments

        try:
            return {str(bdf): a.domid for bdf, a in attachments(client).items()}
        except Exception:  # noqa: BLE001
            return {}


# -- the candidates of each kind, as (value, help) ------------------------------------------------

Candidates = Callable[["click.Context"], Iterator[tuple[str, str | None]]]


def all_devices(ctx: click.Context) -> Iterator[tuple[str, str | None]]:
    for bdf, driver in devices(ctx):
        yield bdf, driver or "no driver"


def host_devices(ctx: click.Context) -> Iterator[tuple[str, str | None]]:
    """What ``hide`` takes: devices the host still has (not held by a seize driver)."""
    for bdf, driver in devices(ctx):
        if driver not in SEIZE_DRIVERS:
            yield bdf, driver or "no driver"


def seized_devices(ctx: click.Context) -> Iterator[tuple[str, str | None]]:
    """What ``unhide`` takes: devices held by pciback, pci-stub or vfio-pci (and their names)."""
    for bdf, driver in devices(ctx):
        if driver in SEIZE_DRIVERS:
            yield bdf, driver
    yield from names(ctx)


def attachable_devices(ctx: click.Context) -> Iterator[tuple[str, str | None]]:
    """What ``attach`` takes: devices a serving driver holds (pciback; pci-stub too without the
    kernel's pciback: ``serving_drivers``) that no guest has."""
    from xenpciback_cli.pci.drivers import serving_drivers

    loaded = {PCIBACK_DRIVER} if os.path.isdir(os.path.join(sysfs_root(ctx), "bus", "pci", "drivers",
                                                            PCIBACK_DRIVER)) else set()
    serving = serving_drivers(loaded)
    held = [(bdf, driver) for bdf, driver in devices(ctx) if driver in serving]
    if not held:
        return
    busy = attached(ctx)
    for bdf, driver in held:
        if bdf not in busy:
            yield bdf, driver
    for name, address in names(ctx):
        if address not in busy:
            yield f"name={name}", address


def attached_devices(ctx: click.Context) -> Iterator[tuple[str, str | None]]:
    """What ``detach`` takes: devices a guest holds (of the --domid given, when one is)."""
    want = ctx.params.get("domid")
    for bdf, domid in sorted(attached(ctx).items()):
        if want is None or str(want) == str(domid):
            yield bdf, f"domain {domid}"


def domain_ids(ctx: click.Context) -> Iterator[tuple[str, str | None]]:
    yield from domains(ctx)


def device_names(ctx: click.Context) -> Iterator[tuple[str, str | None]]:
    yield from names(ctx)


def matching(candidates: Iterator[tuple[str, str | None]], incomplete: str) -> list[tuple[str, str | None]]:
    """The candidates ``incomplete`` starts; a full address also matches its short form
    (``03:00.0`` for ``0000:03:00.0``), which is then what is offered."""
    out = []
    for value, help_text in candidates:
        if value.startswith(incomplete):
            out.append((value, help_text))
        elif value.startswith("0000:") and value[5:].startswith(incomplete):
            out.append((value[5:], help_text))
    return out

"""Where ``inspect`` gets config bytes from: the host model (real sysfs or sandbox), an lspci dump,
or a raw image. Errors a person can cause become InputError / DeviceNotFound here. The files are
read here; what their bytes mean is decided by ``config/dumpfile.py``, which does no I/O."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from xenpciback_cli.config.dumpfile import DumpedDevice, config_image, devices_in_dump
from xenpciback_cli.config.report import DeviceSource
from xenpciback_cli.errors import DeviceNotFound, InputError, XenPcibackError, from_oserror
from xenpciback_cli.engine.inventory import select_devices
from xenpciback_cli.host.model import Host
from xenpciback_cli.pci.address import Bdf
from xenpciback_cli.pci.spec import IdSelector, parse_device_patterns


class InspectApp(Protocol):
    """What ``inspect`` reads of the application (``app.Application`` is one): the host model,
    and whether it is a sandbox's (said in each device's source)."""

    @property
    def host(self) -> Host: ...

    @property
    def sandbox_dir(self) -> Path | None: ...


def read_dump_file(path: str | Path) -> list[DumpedDevice]:
    """Parse a dump file; a missing or unreadable file is the person's error (exit 2)."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise InputError(f"cannot read dump file {str(path)!r}: {exc.strerror or exc}") from None
    return devices_in_dump(text, source=str(path))


def read_binary_file(path: str | Path) -> bytes:
    """A raw config-space image (sysfs ``config`` copied to a file): 64 to 4096 bytes."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read binary file {str(path)!r}: {exc.strerror or exc}") from None
    return config_image(data, source=str(path))


def _ids_of(data: bytes) -> tuple[int, int, int]:
    """Vendor, device and 24-bit class from a config header (for ``-d`` on a dump)."""
    return (int.from_bytes(data[0:2], "little"), int.from_bytes(data[2:4], "little"),
            int.from_bytes(data[9:12], "little"))


def binary_label(path: str | Path) -> str | None:
    """The BDF a sysfs path names (``/sys/bus/pci/devices/0000:03:00.0/config``, or a copy kept
    under the same name), else None."""
    parent = Path(path).parent.name
    try:
        return str(Bdf.parse(parent)) if parent.count(":") == 2 else None
    except InputError:
        return None


def collect_sources(app: InspectApp, bdfs: Sequence[str], *, dump_file: str | None = None,
                    binary_file: str | None = None, ids: IdSelector | None = None) -> list[DeviceSource]:
    if dump_file and binary_file:
        raise InputError("give either --from-dump or --from-binary, not both")
    if dump_file:
        patterns = parse_device_patterns(bdfs)
        devices = read_dump_file(dump_file)
        if patterns:
            missing = [str(p) for p in patterns if not any(p.matches(d.bdf) for d in devices)]
            if missing:
                raise DeviceNotFound(f"{', '.join(missing)} not in dump file {dump_file}")
            devices = [d for d in devices if any(p.matches(d.bdf) for p in patterns)]
        if ids is not None:
            devices = [d for d in devices if len(d.data) >= 12 and ids.matches(*_ids_of(d.data))]
            if not devices:
                raise DeviceNotFound(f"no device with ids {ids} in dump file {dump_file}")
        out = []
        for device in devices:
            if len(device.data) < 0x40:
                raise InputError(f"{dump_file}: {device.bdf} has only {len(device.data)} bytes "
                                 "of config space (need at least 64: lspci -x)")
            out.append(DeviceSource(str(device.bdf), device.data, f"dump {dump_file}",
                                    title=device.title))
        return out
    if binary_file:
        if len(bdfs) > 1:
            raise InputError("--from-binary holds one device: give at most one BDF as its label")
        label = str(Bdf.parse(bdfs[0])) if bdfs else binary_label(binary_file) or "0000:00:00.0"
        return [DeviceSource(label, read_binary_file(binary_file), f"binary {binary_file}")]
    if not bdfs and ids is None:
        raise InputError("name a device (BDF), or use --from-dump FILE or --from-binary FILE")
    host = app.host
    patterns = parse_device_patterns(bdfs)
    exact = [p.as_bdf() for p in patterns]
    if ids is None and all(exact):
        wanted = [b for b in exact if b is not None]  # in the order given; a missing one fails
    else:
        wanted = [d.bdf for d in select_devices(host, patterns, ids)]
    if not wanted:
        what = " ".join([*bdfs, *([f"-d {ids}"] if ids else [])])
        raise DeviceNotFound(f"no PCI device matches {what} on this host")
    source = "sandbox" if app.sandbox_dir is not None else "sysfs"
    out = []
    for bdf in wanted:
        found = host.device(bdf)
        try:
            data = host.read_config(bdf)
        except XenPcibackError:
            raise
        except OSError as exc:
            raise from_oserror(exc, "read config space", bdf=bdf) from None
        if len(data) < 0x40:
            raise DeviceNotFound(f"{bdf}: config space unreadable ({len(data)} bytes)", bdf=bdf)
        title = " ".join(x for x in (found.vendor_name, found.device_name) if x)
        out.append(DeviceSource(str(bdf), data, source, resources=found.resources,
                                irq=found.irq, title=title, vendor_id=found.vendor_id,
                                device_id=found.device_id))
    return out

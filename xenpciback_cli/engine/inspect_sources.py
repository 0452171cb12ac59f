"""Where ``inspect`` gets config bytes from: the host model (real sysfs or sandbox), an lspci dump,
or a raw image. Errors a person can cause become InputError / DeviceNotFound here. The files are
read here; what their bytes mean is decided by ``config/dumpfile.py``, which does no I/O."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from xenpciback_cli.config.dumpfile import DumpedDevice, config_image, devices_in_dump
from xenpciback_cli.config.report import DeviceSource
from xenpciback_cli.errors import DeviceNotFound, InputError, XenPcibackError, from_oserror
from xenpciback_cli.pci.address import Bdf


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


def collect_sources(app: Any, bdfs: Sequence[str], *, dump_file: str | None = None,
                    binary_file: str | None = None) -> list[DeviceSource]:
    if dump_file and binary_file:
        raise InputError("give either --from-dump or --from-binary, not both")
    wanted = [Bdf.parse(text) for text in bdfs]
    if dump_file:
        devices = read_dump_file(dump_file)
        if wanted:
            missing = [str(b) for b in wanted if b not in {d.bdf for d in devices}]
            if missing:
                raise DeviceNotFound(f"{', '.join(missing)} not in dump file {dump_file}")
            devices = [d for d in devices if d.bdf in wanted]
        out = []
        for device in devices:
            if len(device.data) < 0x40:
                raise InputError(f"{dump_file}: {device.bdf} has only {len(device.data)} bytes "
                                 "of config space (need at least 64: lspci -x)")
            out.append(DeviceSource(str(device.bdf), device.data, f"dump {dump_file}",
                                    title=device.title))
        return out
    if binary_file:
        if len(wanted) > 1:
            raise InputError("--from-binary holds one device: give at most one BDF as its label")
        label = str(wanted[0]) if wanted else "0000:00:00.0"
        return [DeviceSource(label, read_binary_file(binary_file), f"binary {binary_file}")]
    if not wanted:
        raise InputError("name a device (BDF), or use --from-dump FILE or --from-binary FILE")
    host = app.host
    source = "sandbox" if getattr(app, "sandbox_dir", None) is not None else "sysfs"
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

"""The one adapter between the overlay and a real device: positioned reads and writes on a sysfs
``config`` file (or any file laid out the same way, e.g. the sandbox's).

Kept apart from the sans-IO overlay (``config/overlay.py``) so that the overlay never does I/O
itself. Only the tests use it today; ``serve`` (not written yet) will open one per exported
device. An I/O error becomes :class:`ConfigAccessError` carrying the wire
code the guest gets (``XEN_PCI_ERR_op_failed``), so a vanished device answers an error instead of
killing the backend.
"""

from __future__ import annotations

import os

from xenpciback_cli.config.fields import ConfigAccessError
from xenpciback_cli.config.registers import XenPciErr


class FileConfigAccessor:
    """Config space through a file descriptor (``pread``/``pwrite``, one access per call)."""

    def __init__(self, path: str, *, writable: bool = False) -> None:
        self.path = path
        self._fd = os.open(path, os.O_RDWR if writable else os.O_RDONLY)
        self.writable = writable

    def read(self, offset: int, size: int) -> int:
        try:
            data = os.pread(self._fd, size, offset)
        except OSError:
            raise ConfigAccessError(XenPciErr.OP_FAILED) from None
        if len(data) != size:  # beyond what this reader may see (64 bytes without root)
            raise ConfigAccessError(XenPciErr.OP_FAILED)
        return int.from_bytes(data, "little")

    def write(self, offset: int, size: int, value: int) -> None:
        if not self.writable:
            raise ConfigAccessError(XenPciErr.ACCESS_DENIED)
        try:
            written = os.pwrite(self._fd, value.to_bytes(size, "little"), offset)
        except OSError:
            raise ConfigAccessError(XenPciErr.OP_FAILED) from None
        if written != size:
            raise ConfigAccessError(XenPciErr.OP_FAILED)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> FileConfigAccessor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

"""The one error hierarchy of xen-pciback, and the exit codes it maps to.

Rules:

* Every error a person can cause or meet on a host derives from :class:`XenPcibackError`. The CLI
  catches that one base at a single boundary and prints ``xen-pciback: error: <message>`` on one
  line, exiting with ``exit_code``. Anything else escaping is a bug: it gets a traceback only with
  ``-v``.
* Host errors keep the device address and the path they were about (like pyudev's not-found
  errors keep their inputs), so the message can name both.
* errno values from the kernel are turned into typed errors in exactly one place,
  :func:`from_oserror`, so EBUSY means "device busy" everywhere and ENODEV "device gone".

Guest protocol errors (the wire ``XEN_PCI_ERR_*`` codes) are not exceptions of this family: a
hostile guest's bad op is an answer, not a failure of the tool.
"""

from __future__ import annotations

import errno
from enum import IntEnum


class ExitCode(IntEnum):
    """Documented process exit codes (``--help`` and README list them)."""

    OK = 0
    FAILED = 1  # the operation was attempted and failed
    USAGE = 2  # bad usage or bad input from a person
    REFUSED = 3  # refused for safety (override with --force where offered)


class XenPcibackError(Exception):
    """Base of every expected error; ``str(err)`` is the one line shown to a person."""

    exit_code: ExitCode = ExitCode.FAILED

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class InputError(XenPcibackError):
    """A person typed something we cannot accept (bad BDF, bad option value...)."""

    exit_code = ExitCode.USAGE


class SafetyRefusal(XenPcibackError):
    """We will not do this because it could break the host; ``--force`` may override."""

    exit_code = ExitCode.REFUSED

    def __init__(self, message: str, reasons: list[str] | None = None) -> None:
        super().__init__(message)
        self.reasons = list(reasons or [])


class OperationFailed(XenPcibackError):
    """The operation was attempted and did not complete."""

    exit_code = ExitCode.FAILED


class HostError(OperationFailed):
    """An error from the host (sysfs, procfs, a device file), keeping the device and the path."""

    def __init__(self, message: str, *, bdf: object = None, path: str | None = None,
                 errno_value: int | None = None) -> None:
        parts = [message]
        if bdf is not None and str(bdf) not in message:
            parts.append(f"device {bdf}")
        if path is not None and path not in message:
            parts.append(f"path {path}")
        super().__init__(": ".join(parts) if len(parts) == 1 else f"{parts[0]} ({', '.join(parts[1:])})")
        self.bdf = bdf
        self.path = path
        self.errno = errno_value


class DeviceNotFound(HostError):
    """No such PCI device on this host (or it vanished: ENODEV)."""

    exit_code = ExitCode.FAILED


class DeviceBusy(HostError):
    """The kernel said EBUSY for this device."""


class PermissionDenied(HostError):
    """EACCES/EPERM: usually 'run as root'."""


class NotSupported(HostError):
    """The kernel or the host does not offer this (ENOSYS, EOPNOTSUPP, missing sysfs file)."""


_ERRNO_CLASSES: dict[int, type[HostError]] = {
    errno.ENODEV: DeviceNotFound,
    errno.ENOENT: DeviceNotFound,
    errno.ENXIO: DeviceNotFound,
    errno.EBUSY: DeviceBusy,
    errno.EACCES: PermissionDenied,
    errno.EPERM: PermissionDenied,
    errno.EROFS: PermissionDenied,
    errno.ENOSYS: NotSupported,
    errno.EOPNOTSUPP: NotSupported,
}

_ERRNO_WORDS: dict[int, str] = {
    errno.ENODEV: "device gone",
    errno.ENOENT: "no such file",
    errno.ENXIO: "no such device",
    errno.EBUSY: "device busy",
    errno.EACCES: "permission denied (are you root?)",
    errno.EPERM: "operation not permitted (are you root?)",
    errno.EROFS: "read-only file system",
    errno.EINVAL: "invalid argument",
    errno.ENOSYS: "not supported by this kernel",
    errno.EOPNOTSUPP: "not supported by this kernel",
}


def from_oserror(exc: OSError, action: str, *, bdf: object = None, path: str | None = None) -> HostError:
    """Turn an ``OSError`` from a host operation into the typed error for its errno.

    ``action`` says what we were doing ("unbind from e1000e", "read config space").
    """
    code = exc.errno or 0
    cls = _ERRNO_CLASSES.get(code, HostError)
    words = _ERRNO_WORDS.get(code) or (exc.strerror or "").lower() or type(exc).__name__
    return cls(f"{action} failed: {words}", bdf=bdf, path=path or exc.filename, errno_value=code)


class StateFileCorrupt(InputError):
    """A file in the state dir (or the persisted config) cannot be trusted: unreadable, not valid
    JSON/TOML, a field out of its schema, or a symlink where a file belongs. The message names
    the file and the fix; ``bdf`` is the device the file is about, when its name says so."""

    def __init__(self, message: str, *, path: object = None, bdf: object = None) -> None:
        super().__init__(message)
        self.path = path
        self.bdf = bdf


class StateDirUnsafe(InputError):
    """The state dir could be written by someone other than root (or is a symlink): refuse it."""

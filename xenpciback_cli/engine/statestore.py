"""The state dir, opened so that it cannot be turned against root.

Rules, for every file of the journal, the seize records and the backend settings:

* The dir is created 0700 whatever the umask. An existing one must be owned by root (by the
  effective uid when we are not root) and not group- or world-writable, else every command
  refuses it (exit 2) naming the dir and the fix: a local user who can write there could plant
  a journal entry that ``recover`` (run by the boot unit) would carry out.
* No symlink is ever followed. The dir is opened once per access with ``O_DIRECTORY|O_NOFOLLOW``
  and every open, rename and unlink is relative to that descriptor with ``O_NOFOLLOW``; a
  symlink, FIFO or other non-regular file where a state file belongs is refused, never read.
* Writes are crash-safe: an exclusively created temporary file with an unpredictable name, mode
  0600, fsync, rename over the old name, fsync the dir. After a crash a file is old or new.
* Reads are bounded (1 MiB) so a planted huge file cannot exhaust memory.

:func:`atomic_write` offers the same write for a file outside the state dir (the persisted
config), which must not be a symlink either.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import secrets
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from xenpciback_cli.errors import (
    InputError,
    OperationFailed,
    StateDirUnsafe,
    StateFileCorrupt,
)
from xenpciback_cli.pci.address import Bdf
from xenpciback_cli.pci.drivers import SEIZE_DRIVERS

DIR_MODE = 0o700
FILE_MODE = 0o600
MAX_FILE_SIZE = 1 << 20
LOCK_FILE = ".lock"
LOCK_TIMEOUT = 30.0
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _expected_owner() -> int:
    euid = os.geteuid()
    return 0 if euid == 0 else euid


def _check_dir(fd: int, path: Path) -> None:
    info = os.fstat(fd)
    owner = _expected_owner()
    if info.st_uid != owner:
        raise StateDirUnsafe(f"state dir {path} is owned by uid {info.st_uid}, not "
                             f"{'root' if owner == 0 else f'uid {owner}'}; fix: chown {owner} {path}")
    if info.st_mode & 0o022:
        raise StateDirUnsafe(f"state dir {path} is group- or world-writable (mode "
                             f"{stat.S_IMODE(info.st_mode):04o}); fix: chmod 0700 {path}")


def _open_dir(path: Path, *, create: bool, parent_fd: int | None = None) -> int | None:
    """Open (and with ``create`` make, 0700) one directory without following a symlink."""
    name: str | Path = path.name if parent_fd is not None else path
    for _attempt in range(2):
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
        except FileNotFoundError:
            if not create:
                return None
            try:
                if parent_fd is None:
                    path.parent.mkdir(parents=True, exist_ok=True)
                os.mkdir(name, DIR_MODE, dir_fd=parent_fd)
            except FileExistsError:
                continue
            except OSError as exc:
                raise OperationFailed(f"cannot create the state dir {path}: {exc.strerror}") from None
            fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
            os.fchmod(fd, DIR_MODE)  # whatever the umask
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise StateDirUnsafe(f"state dir {path} is a symlink or not a directory; "
                                     f"fix: remove it (rm {path}) and run the command again") from None
            raise OperationFailed(f"cannot open the state dir {path}: {exc.strerror}") from None
        try:
            _check_dir(fd, path)
        except BaseException:
            os.close(fd)
            raise
        return fd
    raise OperationFailed(f"cannot create the state dir {path}: it keeps changing")


class StateStore:
    """Reads and writes the files of one state dir; names are ``file`` or ``subdir/file``."""

    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self.root = Path(state_dir)

    # -- directories --------------------------------------------------------------------------
    @contextlib.contextmanager
    def _dir(self, subdir: str | None, *, create: bool) -> Iterator[int | None]:
        root = _open_dir(self.root, create=create)
        if root is None:
            yield None
            return
        fd: int | None = root
        try:
            if subdir:
                fd = _open_dir(self.root / subdir, create=create, parent_fd=root)
            try:
                yield fd
            finally:
                if fd is not None and fd != root:
                    os.close(fd)
        finally:
            os.close(root)

    @staticmethod
    def _split(name: str) -> tuple[str | None, str]:
        subdir, _, base = name.rpartition("/")
        if not base or base in (".", "..") or "/" in subdir or subdir in (".", ".."):
            raise ValueError(f"bad state file name {name!r}")
        return subdir or None, base

    def path(self, name: str) -> Path:
        return self.root / name

    def check(self) -> None:
        """Refuse an unsafe state dir now (a no-op when it does not exist yet)."""
        with self._dir(None, create=False):
            pass

    # -- files --------------------------------------------------------------------------------
    def read(self, name: str) -> bytes | None:
        """The bytes of a state file, or None when it (or the dir) does not exist."""
        subdir, base = self._split(name)
        with self._dir(subdir, create=False) as fd:
            if fd is None:
                return None
            try:
                handle = os.open(base, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                                 dir_fd=fd)
            except FileNotFoundError:
                return None
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise StateFileCorrupt(f"{self.path(name)} is a symbolic link, which is never "
                                           "followed; fix: remove it", path=self.path(name)) from None
                raise OperationFailed(f"cannot read {self.path(name)}: {exc.strerror}") from None
            try:
                info = os.fstat(handle)
                if not stat.S_ISREG(info.st_mode):
                    raise StateFileCorrupt(f"{self.path(name)} is not a regular file; fix: remove it",
                                           path=self.path(name))
                if info.st_size > MAX_FILE_SIZE:
                    raise StateFileCorrupt(f"{self.path(name)} is too large ({info.st_size} bytes) to "
                                           "be a state file; fix: move it aside", path=self.path(name))
                chunks, total = [], 0
                while chunk := os.read(handle, 65536):
                    chunks.append(chunk)
                    total += len(chunk)
                    if total > MAX_FILE_SIZE:
                        raise StateFileCorrupt(f"{self.path(name)} is too large to be a state file; "
                                               "fix: move it aside", path=self.path(name))
                return b"".join(chunks)
            except OSError as exc:
                raise OperationFailed(f"cannot read {self.path(name)}: {exc.strerror}") from None
            finally:
                os.close(handle)

    def read_for(self, name: str, device: Bdf | None) -> bytes | None:
        """:meth:`read`, a refused file naming the device it is about."""
        try:
            return self.read(name)
        except StateFileCorrupt as exc:
            exc.bdf = exc.bdf or device
            raise

    def write(self, name: str, data: bytes) -> None:
        """Replace ``name`` atomically (creating the dir and subdir 0700 as needed)."""
        subdir, base = self._split(name)
        with self._dir(subdir, create=True) as fd:
            assert fd is not None
            _replace(fd, base, data, FILE_MODE, self.path(name))

    def remove(self, name: str) -> bool:
        """Unlink ``name`` (a symlink there is removed, never followed); True if it existed."""
        subdir, base = self._split(name)
        with self._dir(subdir, create=False) as fd:
            if fd is None:
                return False
            try:
                os.unlink(base, dir_fd=fd)
            except FileNotFoundError:
                return False
            except OSError as exc:
                raise OperationFailed(f"cannot remove {self.path(name)}: {exc.strerror}") from None
            os.fsync(fd)
            return True

    def list(self, subdir: str | None = None) -> list[str]:
        """The names in ``subdir`` (or the dir), without our dot files; [] when absent."""
        with self._dir(subdir, create=False) as fd:
            if fd is None:
                return []
            try:
                return sorted(n for n in os.listdir(fd) if not n.startswith("."))
            except OSError as exc:
                raise OperationFailed(f"cannot list {self.root / (subdir or '')}: {exc.strerror}") from None

    # -- lock ---------------------------------------------------------------------------------
    @contextlib.contextmanager
    def locked(self, timeout: float = LOCK_TIMEOUT) -> Iterator[None]:
        """Exclusive use of the state dir (flock on ``.lock``, 0600, never through a symlink)."""
        import fcntl

        with self._dir(None, create=True) as fd:
            assert fd is not None
            try:
                handle = os.open(LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
                                 | os.O_NONBLOCK, FILE_MODE, dir_fd=fd)
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise StateFileCorrupt(f"{self.path(LOCK_FILE)} is a symbolic link, which is never "
                                           "followed; fix: remove it", path=self.path(LOCK_FILE)) from None
                raise OperationFailed(f"cannot open the state dir lock {self.path(LOCK_FILE)}: "
                                      f"{exc.strerror}") from None
        try:
            if not stat.S_ISREG(os.fstat(handle).st_mode):
                raise StateFileCorrupt(f"{self.path(LOCK_FILE)} is not a regular file; fix: remove it",
                                       path=self.path(LOCK_FILE))
            os.fchmod(handle, FILE_MODE)
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise OperationFailed(f"another xen-pciback holds {self.path(LOCK_FILE)} for "
                                              f"more than {timeout:g} s") from None
                    time.sleep(0.02)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
        finally:
            os.close(handle)


def _replace(dir_fd: int, base: str, data: bytes, mode: int, shown: Path) -> None:
    """Temp (exclusive, unpredictable name, ``mode``), fsync, rename over ``base``, fsync the dir."""
    try:
        existing = os.stat(base, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        existing = None
    except OSError as exc:
        raise OperationFailed(f"cannot write {shown}: {exc.strerror}") from None
    if existing is not None and not stat.S_ISREG(existing.st_mode):
        raise StateFileCorrupt(f"{shown} is a symbolic link or not a regular file, which is never "
                               "followed or replaced; fix: remove it", path=shown)
    temporary = f".{base}.{secrets.token_hex(8)}.tmp"
    try:
        handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                         mode, dir_fd=dir_fd)
    except OSError as exc:
        raise OperationFailed(f"cannot write {shown}: {exc.strerror}") from None
    try:
        try:
            os.fchmod(handle, mode)  # whatever the umask
            view = memoryview(data)
            while view:
                view = view[os.write(handle, view):]
            os.fsync(handle)
        finally:
            os.close(handle)
        os.replace(temporary, base, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        os.fsync(dir_fd)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(temporary, dir_fd=dir_fd)
        raise OperationFailed(f"cannot write {shown}: {exc.strerror or exc}") from None


def atomic_write(path: str | os.PathLike[str], text: str, *, mode: int = 0o644,
                 create_parent: bool = False) -> None:
    """Replace a file outside the state dir (the persisted config) crash-safely.

    The parent dir must exist unless ``create_parent`` (then it is made 0755); the file itself
    must not be a symlink.
    """
    target = Path(path)
    parent = target.parent
    if create_parent:
        try:
            parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        except OSError as exc:
            raise OperationFailed(f"cannot create {parent}: {exc.strerror}") from None
    try:
        fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise InputError(f"cannot write {target}: the directory {parent} does not exist "
                         "(create it first, or choose another path)") from None
    except OSError as exc:
        raise OperationFailed(f"cannot write {target}: {exc.strerror}") from None
    try:
        _replace(fd, target.name, text.encode("utf-8"), mode, target)
    finally:
        os.close(fd)


# -- validation of what is read ----------------------------------------------------------------
DRIVER_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_BDF = re.compile(r"^[0-9a-f]{4,8}:[0-9a-f]{2}:[0-1][0-9a-f]\.[0-7]$")
_KEY = re.compile(r"^[0-9a-f]{4,8}-[0-9a-f]{2}-[0-1][0-9a-f]-[0-7]$")


class Invalid(ValueError):
    """A field outside its schema; the loader turns it into one StateFileCorrupt line."""


def parse_json(data: bytes) -> object:
    """JSON from a state file: UTF-8, no NaN, no nesting deep enough to blow the stack."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise Invalid("not valid UTF-8") from None
    try:
        return json.loads(text, parse_constant=_no_constant)
    except RecursionError:
        raise Invalid("nested too deeply") from None
    except ValueError as exc:
        raise Invalid(f"not valid JSON ({str(exc).splitlines()[0][:80]})") from None


def _no_constant(name: str) -> object:
    raise Invalid(f"not valid JSON ({name})")


def obj(value: object, what: str, *, required: set[str],
        optional: set[str] | frozenset[str] = frozenset()) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise Invalid(f"{what} is not a JSON object")
    missing = required - set(value)
    unknown = set(value) - required - optional
    if missing:
        raise Invalid(f"{what} lacks {', '.join(sorted(missing))}")
    if unknown:
        raise Invalid(f"{what} has unknown field(s) {', '.join(sorted(repr(k)[:40] for k in unknown))}")
    return value


def integer(value: object, what: str, low: int, high: int) -> int:
    if type(value) is not int or not low <= value <= high:
        raise Invalid(f"{what} must be an integer {low}..{high}")
    return value


def number(value: object, what: str) -> float:
    if not (type(value) is int or type(value) is float) or not math.isfinite(value) or value < 0:
        raise Invalid(f"{what} must be a non-negative number")
    return float(value)


def boolean(value: object, what: str) -> bool:
    if type(value) is not bool:
        raise Invalid(f"{what} must be true or false")
    return value


def text(value: object, what: str, *, limit: int = 200) -> str:
    if not isinstance(value, str) or len(value) > limit or any(ord(c) < 0x20 or ord(c) == 0x7F
                                                               for c in value.replace("\n", "")):
        raise Invalid(f"{what} must be a short printable string")
    return value


def driver_name(value: object, what: str, *, optional: bool = False) -> str | None:
    """A kernel driver name, never a path: ``[A-Za-z0-9_.-]{1,64}``, not "." or ".."."""
    if value is None and optional:
        return None
    if not isinstance(value, str) or not DRIVER_NAME.match(value) or value in (".", ".."):
        raise Invalid(f"{what} {str(value)[:40]!r} is not a driver name")
    return value


def seize_driver(value: object, what: str) -> str:
    if not isinstance(value, str) or value not in SEIZE_DRIVERS:
        raise Invalid(f"{what} {str(value)[:40]!r} is not pciback, pci-stub or vfio-pci")
    return value


def bdf(value: object, what: str) -> Bdf:
    """A canonical ``DDDD:BB:DD.F`` (as this tool writes it), nothing looser."""
    if not isinstance(value, str) or not _BDF.match(value):
        raise Invalid(f"{what} {str(value)[:40]!r} is not an address like 0000:03:00.0")
    return Bdf.parse(value)


def bdf_from_key(key: str) -> Bdf | None:
    """The device a per-device file name (``DDDD-BB-DD-F``) is about, or None."""
    if not _KEY.match(key):
        return None
    domain, bus, slot, function = key.split("-")
    return Bdf(int(domain, 16), int(bus, 16), int(slot, 16), int(function))


def corrupt(path: Path, problem: str, fix: str, *, device: Bdf | None = None) -> StateFileCorrupt:
    return StateFileCorrupt(f"{path} is corrupt: {problem}; fix: {fix}", path=path, bdf=device)


T = TypeVar("T")


def load_per_device(store: StateStore, subdir: str, kind: str, legacy: Callable[[], dict[Bdf, T]],
                    parse: Callable[[str, Bdf], T | None],
                    found_corrupt: list[StateFileCorrupt] | None) -> dict[Bdf, T]:
    """Every device's entry: the old single file's (``legacy()``), then one file per device in
    ``subdir`` named ``DDDD-BB-DD-F.json`` (``parse(name, device)``; None when it vanished).

    A corrupt file raises, unless ``found_corrupt`` is given: then it is appended there and the
    other devices' entries are returned."""
    entries: dict[Bdf, T] = {}
    try:
        entries.update(legacy())
    except StateFileCorrupt as exc:
        if found_corrupt is None:
            raise
        found_corrupt.append(exc)
    for name in store.list(subdir):
        try:
            device = bdf_from_key(name[:-5]) if name.endswith(".json") else None
            if device is None:
                raise corrupt(store.path(f"{subdir}/{name}"),
                              f"not a {kind} file name (DDDD-BB-DD-F.json)", "move the file aside")
            entry = parse(f"{subdir}/{name}", device)
            if entry is not None:
                entries[device] = entry
        except StateFileCorrupt as exc:
            if found_corrupt is None:
                raise
            found_corrupt.append(exc)
    return entries


def migrate_legacy(store: StateStore, legacy_name: str, legacy: Callable[[bytes], dict[Bdf, T]],
                   name_of: Callable[[Bdf], str], write: Callable[[Bdf, T], None]) -> None:
    """Move an older single file's entries into one file per device, then remove it (the first
    write after an upgrade does this). ``legacy`` parses the old file's bytes (raising
    :class:`StateFileCorrupt`, which stops the move with nothing written); a device that has a
    file of its own already keeps it (``name_of``); ``write`` stores one entry."""
    data = store.read(legacy_name)
    if data is None:
        return
    for device, entry in legacy(data).items():
        if store.read(name_of(device)) is None:
            write(device, entry)
    store.remove(legacy_name)

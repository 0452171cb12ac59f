"""Xenstore operations as data: what a plan is made of, and how a tree snapshot looks.

The layout code decides *what* to write without doing any I/O; an adapter
(:mod:`xenpciback_cli.toolstack.xsexec`) replays the operations inside one xenstore transaction.
Keeping the plan as data means the same plan is unit-tested against an in-memory tree
(:class:`MemoryTree`), run against the embedded daemon and the real C and OCaml xenstoreds, and
printed by ``--dry-run``.

Permissions are ``(domid, access)`` pairs, ``access`` one of ``n r w b``; the first pair is the
owner and the default for every other domain, exactly as XS_SET_PERMS takes them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import NamedTuple

PermSpec = tuple[tuple[int, str], ...]


class Write(NamedTuple):
    path: str
    value: str

    def __str__(self) -> str:
        return f"write {self.path} = {self.value!r}"


class Mkdir(NamedTuple):
    path: str

    def __str__(self) -> str:
        return f"mkdir {self.path}"


class Rm(NamedTuple):
    """Remove a node and its children; a missing node is not an error (libxl ignores ENOENT)."""

    path: str

    def __str__(self) -> str:
        return f"rm {self.path}"


class SetPerms(NamedTuple):
    path: str
    perms: PermSpec

    def __str__(self) -> str:
        return f"chmod {self.path} {' '.join(f'{a}{d}' for d, a in self.perms)}"


class Prune(NamedTuple):
    """Remove the empty ancestors of ``path`` (no value, no children), stopping above ``stop``.

    libxl's ``libxl__xs_path_cleanup``: after destroying ``.../backend/pci/5/0`` it also removes
    ``backend/pci/5`` and ``backend/pci`` when nothing else lives there. ``stop`` (a domain's home,
    ``/local/domain/N``) is never removed.
    """

    path: str
    stop: str

    def __str__(self) -> str:
        return f"prune empty parents of {self.path} up to {self.stop}"


Op = Write | Mkdir | Rm | SetPerms | Prune


def prune_targets(path: str, stop: str) -> list[str]:
    """The ancestors of ``path`` strictly below ``stop``, nearest first."""
    out = []
    up = parent(path)
    while up.startswith(stop.rstrip("/") + "/") and up != stop:
        out.append(up)
        up = parent(up)
    return out


def format_perms(perms: Iterable[tuple[int, str]]) -> str:
    """``n0 r5``: the spelling of ``xenstore-ls -p`` and the daemons' traces."""
    return " ".join(f"{access}{domid}" for domid, access in perms)


def parent(path: str) -> str:
    return path.rsplit("/", 1)[0] or "/"


class MemoryTree:
    """A tiny in-memory xenstore tree for testing plans: values and permissions, no daemon.

    It follows the daemon rules plans rely on: writing or mkdir'ing a node creates missing
    parents that inherit the parent's permissions; rm removes the subtree and succeeds on a
    missing node whose parent exists.
    """

    def __init__(self) -> None:
        self.values: dict[str, str] = {"/": ""}
        self.perms: dict[str, PermSpec] = {"/": ((0, "n"),)}

    def _create(self, path: str) -> None:
        if path in self.values:
            return
        up = parent(path)
        self._create(up)
        self.values[path] = ""
        self.perms[path] = self.perms[up]

    def apply(self, ops: Sequence[Op]) -> None:
        for op in ops:
            if isinstance(op, Write):
                self._create(op.path)
                self.values[op.path] = op.value
            elif isinstance(op, Mkdir):
                self._create(op.path)
            elif isinstance(op, Rm):
                for key in [k for k in self.values if k == op.path or k.startswith(op.path + "/")]:
                    del self.values[key]
                    del self.perms[key]
            elif isinstance(op, Prune):
                for up in prune_targets(op.path, op.stop):
                    if up not in self.values or self.values[up] or self.directory(up):
                        break
                    del self.values[up]
                    del self.perms[up]
            elif isinstance(op, SetPerms):
                if op.path not in self.values:
                    raise KeyError(op.path)
                self.perms[op.path] = tuple(op.perms)
            else:  # pragma: no cover - a new op kind without a case here is a bug
                raise TypeError(op)

    # The read side of the client API, enough for snapshots.
    def read(self, path: str) -> bytes:
        if path not in self.values:
            raise KeyError(path)
        return self.values[path].encode()

    def exists(self, path: str) -> bool:
        return path in self.values

    def directory(self, path: str) -> list[str]:
        if path not in self.values:
            raise KeyError(path)
        prefix = path.rstrip("/") + "/"
        return sorted({k[len(prefix):].split("/", 1)[0] for k in self.values
                       if k.startswith(prefix) and k != path})

    def dump(self, under: str) -> dict[str, tuple[str, str]]:
        """``path -> (value, perms)`` for a subtree, the shape tests compare trees in."""
        return {k: (v, format_perms(self.perms[k])) for k, v in sorted(self.values.items())
                if k == under or k.startswith(under.rstrip("/") + "/")}

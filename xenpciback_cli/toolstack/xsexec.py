"""The adapter between plans and a xenstore connection: snapshots in, operations out.

Reads and writes go through anything with the client's node API (a
:class:`~xenpciback_cli.xenstore.client.Transaction`, the client itself, or a
:class:`~xenpciback_cli.toolstack.plan.MemoryTree` in tests), so the planning code never sees
a socket.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from xenpciback_cli.toolstack.libxl_layout import BackendView, backend_path
from xenpciback_cli.toolstack.plan import Mkdir, Op, Prune, Rm, SetPerms, Write, prune_targets


class NodeApi(Protocol):  # the subset of Transaction/XenstoreClient used here
    def read(self, path: str) -> bytes: ...
    def write(self, path: str, value: bytes | str) -> None: ...
    def mkdir(self, path: str) -> None: ...
    def rm(self, path: str) -> None: ...
    def directory(self, path: str) -> list[str]: ...
    def set_perms(self, path: str, perms: Any) -> None: ...


def _missing(exc: Exception) -> bool:
    return getattr(exc, "errno_name", None) == "ENOENT" or isinstance(exc, KeyError)


def read_or_none(node: Any, path: str) -> str | None:
    """A node's value as text, or None when it does not exist."""
    try:
        value: bytes = node.read(path)
        return value.decode("utf-8", "replace")
    except Exception as exc:  # noqa: BLE001 - ENOENT only; everything else propagates
        if _missing(exc):
            return None
        raise


def list_or_empty(node: Any, path: str) -> list[str]:
    try:
        return list(node.directory(path))
    except Exception as exc:  # noqa: BLE001
        if _missing(exc):
            return []
        raise


def read_dir_values(node: Any, path: str) -> dict[str, str]:
    """``child -> value`` for the direct children of ``path`` (empty when absent)."""
    out = {}
    for child in list_or_empty(node, path):
        value = read_or_none(node, f"{path}/{child}")
        if value is not None:
            out[child] = value
    return out


def read_backend(node: Any, domid: int) -> BackendView:
    return BackendView(domid, read_dir_values(node, backend_path(domid)))


def apply_ops(node: Any, ops: Sequence[Op]) -> None:
    """Replay a plan on ``node`` (normally inside a transaction).

    ``Rm`` of a missing node is not an error (libxl ignores it too); ``Prune`` walks up from
    the path removing ancestors with no value and no children.
    """
    from xenpciback_cli.xenstore.client import Perm

    for op in ops:
        if isinstance(op, Write):
            node.write(op.path, op.value)
        elif isinstance(op, Mkdir):
            node.mkdir(op.path)
        elif isinstance(op, Rm):
            try:
                node.rm(op.path)
            except Exception as exc:  # noqa: BLE001
                if not _missing(exc):
                    raise
        elif isinstance(op, SetPerms):
            node.set_perms(op.path, [Perm(domid, access) for domid, access in op.perms])
        elif isinstance(op, Prune):
            for up in prune_targets(op.path, op.stop):
                value = read_or_none(node, up)
                if value is None:
                    continue
                if value or list_or_empty(node, up):
                    break
                node.rm(up)
        else:  # pragma: no cover
            raise TypeError(op)


#: Errors a transaction attempt may fail with that mean "the tree moved under us; try again":
#: EAGAIN at commit, and EIO from C xenstored (and ours) when a request inside the transaction
#: meets its stale copy of a parent another writer changed (two detaches on one domain).
RETRYABLE = ("EAGAIN", "EIO")


def transact(client: Any, fn: Any, *, retries: int, what: str) -> Any:
    """Run ``fn(tx)`` in a fresh transaction until it commits, at most ``retries + 1`` times.

    Conflicts (:data:`RETRYABLE`) are retried with a short randomised back-off, so that two
    tools racing on one domain do not retry in lock-step; a lost connection is never retried.
    When conflicts never stop, the error says so and that nothing was changed.
    """
    import random
    import time

    from xenpciback_cli.errors import OperationFailed
    from xenpciback_cli.xenstore.client import XenstoreConnectionLost

    attempt = 0
    while True:
        try:
            return client.transact(fn, retries=0)
        except XenstoreConnectionLost:
            raise
        except OperationFailed as exc:
            name = getattr(exc, "errno_name", None)
            if name not in RETRYABLE:
                raise
            if attempt >= retries:
                raise OperationFailed(f"{what}: xenstore transaction conflicted with other writers "
                                      f"{retries + 1} times; nothing was changed") from None
        attempt += 1
        time.sleep(random.uniform(0.5, 1.0) * min(0.001 * (2 ** attempt), 0.05))

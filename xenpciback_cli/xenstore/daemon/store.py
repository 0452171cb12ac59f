"""The node tree, its permissions and transaction views: no I/O, no connections.

Rules (the ones C xenstored follows, which is what clients are written against):

1. Access for domain D to a node: dom0 and the node's owner (first permission entry) have both
   read and write; otherwise the entry naming D, else the first entry's default. Letters n/r/w/b.
2. A missing node is ENOENT, unless the nearest existing ancestor is unreadable: then EACCES,
   so that a guest cannot probe for what it may not see.
3. Creating a node needs write access to the nearest existing ancestor; missing intermediate
   nodes are created with the parent's permissions; an unprivileged creator becomes the owner.
4. Every change gives the node a new generation number. A transaction remembers the
   generation of every node it touched (or that it was absent) and fails with EAGAIN at commit
   if any of them changed in the meantime.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from xenpciback_cli.xenstore.wire import ABS_PATH_MAX, REL_PATH_MAX, Perm

ROOT_PERMS = (Perm(0, "n"),)
_VALID = re.compile(r"[A-Za-z0-9\-/_@]*\Z")
_DOMAIN_HOME = re.compile(r"/local/domain/[0-9]{1,5}/")


class StoreError(Exception):
    """An operation fails with a wire error name (``ENOENT``, ``EACCES``...)."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


@dataclass(frozen=True, slots=True)
class Node:
    """One node. Immutable: a change makes a new Node, so transactions can share the rest."""

    value: bytes
    perms: tuple[Perm, ...]
    children: tuple[str, ...] = ()
    gen: int = 0


def parent_of(path: str) -> str:
    return path.rsplit("/", 1)[0] or "/"


def basename(path: str) -> str:
    return path.rsplit("/", 1)[1]


def is_under(path: str, top: str) -> bool:
    """``path`` is ``top`` or inside it."""
    if path == top or top == "/":
        return True
    return path.startswith(top) and path[len(top)] == "/"


def canonical(domid: int, path: str) -> str:
    """Absolute, validated node path for a request from ``domid`` (EINVAL if malformed).

    Length as C xenstored counts it: at most REL_PATH_MAX (2048) bytes after a leading
    ``/local/domain/N/``, or in all for any other path (and never over ABS_PATH_MAX)."""
    if not path:
        raise StoreError("EINVAL")
    if path[0] != "/":
        if len(path) > REL_PATH_MAX:
            raise StoreError("EINVAL")
        path = f"/local/domain/{domid}/{path}"
    if len(path) > REL_PATH_MAX:
        home = _DOMAIN_HOME.match(path)
        if len(path) > (home.end() if home else 0) + REL_PATH_MAX or len(path) > ABS_PATH_MAX:
            raise StoreError("EINVAL")
    if (not _VALID.match(path) or "//" in path
            or (path.endswith("/") and path != "/") or "@" in path):
        raise StoreError("EINVAL")
    return path


def access(domid: int, perms: tuple[Perm, ...]) -> str:
    """What ``domid`` may do with a node: 'b', 'r', 'w' or 'n' (rule 1)."""
    if domid == 0 or perms[0].domid == domid:
        return "b"
    for p in perms[1:]:
        if p.domid == domid:
            return p.access
    return perms[0].access


def can_read(domid: int, perms: tuple[Perm, ...]) -> bool:
    return access(domid, perms) in "rb"


def can_write(domid: int, perms: tuple[Perm, ...]) -> bool:
    return access(domid, perms) in "wb"


class Store:
    """The committed tree: ``path -> Node``, a generation counter, and how many nodes each
    domain owns (kept up to date on every change, so a quota check never scans the tree)."""

    def __init__(self) -> None:
        self.nodes: dict[str, Node] = {"/": Node(b"", ROOT_PERMS)}
        self.generation = 0
        self.owned: dict[int, int] = {0: 1}

    def replace(self, nodes: dict[str, Node]) -> None:
        """Take a whole tree (a loaded state file) and count its owners once."""
        self.nodes = nodes
        self.recount()

    def recount(self) -> None:
        owned: dict[int, int] = {}
        for node in self.nodes.values():
            owner = node.perms[0].domid
            owned[owner] = owned.get(owner, 0) + 1
        self.owned = owned

    def get(self, path: str) -> Node | None:
        return self.nodes.get(path)

    def put(self, path: str, node: Node) -> None:
        self.generation += 1
        old = self.nodes.get(path)
        owner = node.perms[0].domid
        if old is None or old.perms[0].domid != owner:
            owned = self.owned
            owned[owner] = owned.get(owner, 0) + 1
            if old is not None:
                owned[old.perms[0].domid] -= 1
        self.nodes[path] = Node(node.value, node.perms, node.children, self.generation)

    def delete(self, path: str) -> None:
        old = self.nodes.pop(path, None)
        if old is not None:
            self.owned[old.perms[0].domid] -= 1

    def owned_by(self, domid: int) -> int:
        return self.owned.get(domid, 0)


class TxView:
    """A transaction: changes kept aside, every node it touched remembered (rule 4).

    Like C xenstored, the first access to a node copies it into the transaction: later reads
    in the transaction see that copy (a child added outside does not appear in its DIRECTORY),
    while nodes not touched yet are read fresh from the store.

    ``delta`` is how many nodes each domain would gain (or lose) if it committed now, so quota
    checks count what a transaction has pending. ``limit`` bounds how many nodes it may touch
    (C xenstored's ``quota_trans_nodes``; None for dom0): ENOSPC before any change is made.
    """

    def __init__(self, store: Store, limit: int | None = None) -> None:
        self.store = store
        self.limit = limit
        self.changes: dict[str, Node | None] = {}
        self.seen: dict[str, tuple[int | None, Node | None]] = {}  # path -> (gen, copy)
        self.events: list[tuple[str, bool]] = []  # (path, exact) fired at commit
        self.delta: dict[int, int] = {}

    def _remember(self, path: str) -> Node | None:
        got = self.seen.get(path)
        if got is None:
            if self.limit is not None and len(self.seen) >= self.limit:
                raise StoreError("ENOSPC")
            node = self.store.nodes.get(path)
            self.seen[path] = (node.gen if node is not None else None, node)
            return node
        return got[1]

    def get(self, path: str) -> Node | None:
        if path in self.changes:
            return self.changes[path]
        return self._remember(path)

    def _count(self, old: Node | None, new: Node | None) -> None:
        before = old.perms[0].domid if old is not None else None
        after = new.perms[0].domid if new is not None else None
        if before != after:
            delta = self.delta
            if after is not None:
                delta[after] = delta.get(after, 0) + 1
            if before is not None:
                delta[before] = delta.get(before, 0) - 1

    def put(self, path: str, node: Node) -> None:
        self._count(self.get(path), node)
        self.changes[path] = node

    def delete(self, path: str) -> None:
        self._count(self.get(path), None)
        self.changes[path] = None

    def conflicts(self) -> bool:
        nodes = self.store.nodes
        for path, (gen, _) in self.seen.items():
            node = nodes.get(path)
            if (node.gen if node is not None else None) != gen:
                return True
        return False

    def apply(self) -> None:
        for path, node in self.changes.items():
            if node is None:
                self.store.delete(path)
            else:
                self.store.put(path, node)


View = Store | TxView


class Tree:
    """The operations on a view, as one domain (rules 1-3). Returns what watches must see."""

    def __init__(self, view: View, domid: int, budget: int | None = None) -> None:
        self.view = view
        self.domid = domid
        self.budget = budget  # nodes this request may still create (None: no quota)

    def _missing(self, path: str) -> StoreError:
        """ENOENT, or EACCES when the nearest existing ancestor is unreadable (rule 2)."""
        p = path
        while p != "/":
            p = parent_of(p)
            node = self.view.get(p)
            if node is not None:
                return StoreError("ENOENT" if can_read(self.domid, node.perms) else "EACCES")
        return StoreError("ENOENT")

    def node(self, path: str, want: str) -> Node:
        node = self.view.get(path)
        if node is None:
            raise self._missing(path)
        if want == "r" and not can_read(self.domid, node.perms):
            raise StoreError("EACCES")
        if want == "w" and not can_write(self.domid, node.perms):
            raise StoreError("EACCES")
        return node

    def read(self, path: str) -> bytes:
        return self.node(path, "r").value

    def children(self, path: str) -> Node:
        return self.node(path, "r")

    def get_perms(self, path: str) -> tuple[Perm, ...]:
        return self.node(path, "r").perms

    def write(self, path: str, value: bytes) -> int:
        """Set a value, creating the node (and parents) if needed; returns nodes created."""
        node = self.view.get(path)
        if node is not None:
            if not can_write(self.domid, node.perms):
                raise StoreError("EACCES")
            self.view.put(path, Node(value, node.perms, node.children, node.gen))
            return 0
        return self._create(path, value)

    def mkdir(self, path: str) -> int:
        node = self.view.get(path)
        if node is not None:
            if not can_read(self.domid, node.perms):
                raise StoreError("EACCES")
            return -1  # exists: no change, no event
        return self._create(path, b"")

    def _create(self, path: str, value: bytes) -> int:
        missing = [path]
        p = path
        while True:
            p = parent_of(p)
            anchor = self.view.get(p)
            if anchor is not None:
                break
            missing.append(p)
        if not can_write(self.domid, anchor.perms):
            raise StoreError("EACCES")
        if self.budget is not None and len(missing) > self.budget:
            raise StoreError("ENOSPC")
        perms = anchor.perms
        if self.domid != 0:
            perms = (Perm(self.domid, perms[0].access),) + tuple(perms[1:])
        parent_path, parent = p, anchor
        for new in reversed(missing):
            self.view.put(parent_path, Node(parent.value, parent.perms,
                                            parent.children + (basename(new),), parent.gen))
            child = Node(value if new == path else b"", perms)
            self.view.put(new, child)
            parent_path, parent = new, child
        return len(missing)

    def rm(self, path: str) -> list[str] | None:
        """Remove a subtree; returns the removed paths (deepest first), None if nothing to do."""
        if path == "/":
            raise StoreError("EINVAL")
        node = self.view.get(path)
        if node is None:
            parent = self.view.get(parent_of(path))
            if parent is not None:
                if not can_read(self.domid, parent.perms):
                    raise StoreError("EACCES")
                return None  # a missing leaf whose parent exists: OK (both real daemons)
            raise self._missing(path)
        if not can_write(self.domid, node.perms):
            raise StoreError("EACCES")
        removed = self.subtree(path, node)
        parent_path = parent_of(path)
        parent = self.view.get(parent_path)
        name = basename(path)
        if parent is None:
            raise StoreError("EINVAL")  # C: the parent cannot be read (stale transaction copy)
        if name not in parent.children:
            # A transaction's copy of the parent predates the child: C xenstored fails the
            # request with EIO after having removed the subtree in the transaction; so do we.
            for p in removed:
                self.view.delete(p)
            raise StoreError("EIO")
        for p in removed:
            self.view.delete(p)
        self.view.put(parent_path, Node(parent.value, parent.perms,
                                        tuple(c for c in parent.children if c != name),
                                        parent.gen))
        return removed

    def subtree(self, path: str, node: Node) -> list[str]:
        """Every path of the subtree at ``path``, deepest first (children before their parent),
        without recursion: a guest may build a tree deeper than Python's stack."""
        out: list[str] = []
        stack: list[tuple[str, Node, bool]] = [(path, node, False)]
        view = self.view
        while stack:
            p, n, expanded = stack.pop()
            if expanded or not n.children:
                out.append(p)
                continue
            stack.append((p, n, True))
            prefix = p + "/" if p != "/" else "/"
            for child in reversed(n.children):
                cpath = prefix + child
                cnode = view.get(cpath)
                if cnode is None:
                    # Only a transaction's stale copy can list a child that is gone; C
                    # xenstored answers EIO then (the commit would fail with EAGAIN anyway).
                    raise StoreError("EIO")
                stack.append((cpath, cnode, False))
        return out

    def set_perms(self, path: str, perms: tuple[Perm, ...]) -> None:
        node = self.node(path, "w")
        if self.domid != 0 and node.perms[0].domid != self.domid:
            raise StoreError("EACCES")  # C: XS_PERM_OWNER, which only the owner has
        if self.domid != 0 and perms[0].domid != node.perms[0].domid:
            raise StoreError("EPERM")  # unprivileged domains may not give a node away
        self.view.put(path, Node(node.value, perms, node.children, node.gen))

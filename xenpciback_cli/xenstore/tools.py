"""What the ``xen-pciback xenstore`` commands do, without click: walk the tree, render values."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from xenpciback_cli.xenstore.client import Perm, XenstoreClient, XenstoreError


def escape(value: bytes) -> str:
    """Printable ASCII as is, everything else as \\xNN (like xenstore-ls), backslash doubled."""
    out = []
    for b in value:
        if b == 0x5C:
            out.append("\\\\")
        elif 0x20 <= b < 0x7F:
            out.append(chr(b))
        else:
            out.append(f"\\x{b:02x}")
    return "".join(out)


def unescape(text: str) -> bytes:
    """The inverse of :func:`escape` for values given on a command line (\\xNN, \\\\)."""
    out = bytearray()
    i = 0
    raw = text.encode("utf-8", "surrogateescape")
    while i < len(raw):
        c = raw[i]
        if c == 0x5C and i + 1 < len(raw):
            nxt = raw[i + 1]
            if nxt == 0x5C:
                out.append(0x5C)
                i += 2
                continue
            if nxt == ord("x") and i + 4 <= len(raw):
                try:
                    out.append(int(raw[i + 2:i + 4], 16))
                    i += 4
                    continue
                except ValueError:
                    pass
        out.append(c)
        i += 1
    return bytes(out)


@dataclass
class Entry:
    path: str
    depth: int
    value: bytes | None  # None: not readable
    perms: list[Perm] | None
    error: str | None = None


def walk(client: XenstoreClient, top: str, *, perms: bool = False) -> Iterator[Entry]:
    """Every node below ``top`` (not ``top`` itself): a node, then its subtree, then siblings."""
    def join(parent: str, child: str) -> str:
        return f"/{child}" if parent == "/" else f"{parent}/{child}"

    stack: list[tuple[str, int]] = [(top, -1)]
    while stack:
        path, depth = stack.pop()
        if depth >= 0:
            entry = Entry(path, depth, None, None)
            try:
                entry.value = client.read(path)
                if perms:
                    entry.perms = client.get_perms(path)
            except XenstoreError as exc:
                if exc.errno_name == "ENOENT":
                    continue  # removed while we walked
                if exc.errno_name != "EACCES":
                    raise
                entry.error = exc.errno_name
            yield entry
        try:
            children = client.directory(path)
        except XenstoreError as exc:
            if depth < 0 or exc.errno_name not in ("ENOENT", "EACCES"):
                raise
            continue
        stack.extend((join(path, c), depth + 1) for c in reversed(children))

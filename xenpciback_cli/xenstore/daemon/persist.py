"""Save the tree on a clean shutdown and load it at start, so a sandbox survives restarts.

JSON, written to a temporary file that is flushed to disk (fsync), renamed into place, and the
directory flushed too: a crash or power cut mid-save leaves the previous state or the new one
whole, never an empty file. Values are base64 (they may be binary).
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

from xenpciback_cli.xenstore.daemon.core import Core, Domain
from xenpciback_cli.xenstore.daemon.store import Node
from xenpciback_cli.xenstore.wire import Perm

FORMAT = 1


def save(core: Core, path: str | os.PathLike[str]) -> None:
    nodes = {p: [base64.b64encode(n.value).decode(), [str(x) for x in n.perms], list(n.children)]
             for p, n in core.store.nodes.items()}
    data = {"format": FORMAT, "nodes": nodes,
            "domains": [[d.domid, d.mfn, d.port] for d in core.domains.values() if d.domid]}
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(json.dumps(data))
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    dfd = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def load(core: Core, path: str | os.PathLike[str]) -> bool:
    """Replace the core's tree with the saved one; False if there is none. ValueError if bad."""
    target = Path(path)
    if not target.exists():
        return False
    try:
        data = json.loads(target.read_text())
        if data.get("format") != FORMAT:
            raise ValueError(f"unknown format {data.get('format')!r}")
        nodes = {}
        for p, (value, perms, children) in data["nodes"].items():
            nodes[p] = Node(base64.b64decode(value), tuple(Perm.parse(x) for x in perms),
                            tuple(children), 0)
        if "/" not in nodes:
            raise ValueError("no root node")
        domains = [Domain(int(d), int(m), int(pt)) for d, m, pt in data.get("domains", [])]
    except (KeyError, TypeError, ValueError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot load xenstore state from {target}: {exc}") from None
    core.store.replace(nodes)
    for d in domains:
        core.domains[d.domid] = d
        core.actions.append(("introduced", d.domid))
    return True

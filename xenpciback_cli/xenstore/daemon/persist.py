"""Save the tree on a clean shutdown and load it at start, so a sandbox survives restarts.

JSON, written to a temporary file and renamed into place: a crash mid-save leaves the previous
state whole. Values are base64 (they may be binary).
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
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, target)


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
    core.store.nodes = nodes
    for d in domains:
        core.domains[d.domid] = d
        core.actions.append(("introduced", d.domid))
    return True

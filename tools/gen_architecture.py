#!/usr/bin/env python3
"""Write the generated parts of docs/architecture.md from the code's own tables.

Usage: python tools/gen_architecture.py [--check]   (--check exits 1 if the committed doc is stale)

Each generated block sits between ``<!-- BEGIN GENERATED: name -->`` and ``<!-- END GENERATED:
name -->``; everything else in the doc is written by hand. The blocks are drawn from:

* ``layers``    - the import-linter layers contract in pyproject.toml ([tool.importlinter]);
* ``lifecycle`` - ``engine/lifecycle.py``'s TRANSITIONS (host -> seized -> attached);
* ``xenbus``    - ``toolstack/xenbus.py``'s states and its who-moves-next table;
* ``backend``   - ``backend/xenbus.py``'s TRANSITIONS (pciback's side of the handshake).
"""

from __future__ import annotations

import itertools
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from xenpciback_cli.backend import xenbus as backend_xenbus  # noqa: E402
from xenpciback_cli.engine import lifecycle  # noqa: E402
from xenpciback_cli.toolstack import xenbus  # noqa: E402

DOC = ROOT / "docs" / "architecture.md"


def _short(module: str) -> str:
    return module.removeprefix("xenpciback_cli.")


def layers() -> str:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    contract = next(c for c in config["contracts"] if c["type"] == "layers")
    rows = ["| layer (top to bottom) | packages |", "|---|---|"]
    for n, layer in enumerate(contract["layers"], 1):
        names = [f"`{_short(m.strip())}`" for m in layer.split("|")]
        rows.append(f"| {n} | {' / '.join(names)} |")
    chart = ["```mermaid", "flowchart TD"]
    ids = []
    for n, layer in enumerate(contract["layers"], 1):
        label = " / ".join(_short(m.strip()) for m in layer.split("|"))
        ids.append(f"L{n}")
        chart.append(f'    L{n}["{label}"]')
    chart += [f"    {a} --> {b}" for a, b in itertools.pairwise(ids)]
    chart.append("```")
    return "\n".join(rows + [""] + chart)


def lifecycle_block() -> str:
    rows = ["| from | to | command | engine |", "|---|---|---|---|"]
    chart = ["```mermaid", "stateDiagram-v2"]
    for before, after, command, function in lifecycle.TRANSITIONS:
        rows.append(f"| {before.value} | {after.value} | `{command}` | `{function}` |")
        chart.append(f"    {before.value} --> {after.value}: {command}")
    chart.append("```")
    return "\n".join(rows + [""] + chart)


def xenbus_block() -> str:
    rows = ["| value | state |", "|---|---|"]
    rows += [f"| {int(s)} | {s.label} |" for s in xenbus.XenbusState]
    moves = ["", "Who moves next, by (backend, frontend) state (`toolstack/xenbus.py`, used by "
             "attach, detach and status):", "", "| backend | frontend | whose move | what |",
             "|---|---|---|---|"]
    for (be, fe), (who, what) in xenbus._MOVES.items():
        moves.append(f"| {be.label if be else 'absent'} | {fe.label if fe else 'absent'} | {who} "
                     f"| {what} |")
    return "\n".join(rows + moves)


def backend_block() -> str:
    rows = ["| backend state | waits for | does | then |", "|---|---|---|---|"]
    chart = ["```mermaid", "stateDiagram-v2"]
    for own, trigger, action, after in backend_xenbus.TRANSITIONS:
        rows.append(f"| {own.label} | {trigger} | {action} | {after.label if after else '(same)'} |")
        if after is not None:
            chart.append(f"    {own.label} --> {after.label}: {trigger}")
    chart.append("```")
    return "\n".join(rows + [""] + chart)


BLOCKS = {"layers": layers, "lifecycle": lifecycle_block, "xenbus": xenbus_block,
          "backend": backend_block}


def render(text: str) -> str:
    for name, make in BLOCKS.items():
        pattern = re.compile(rf"(<!-- BEGIN GENERATED: {name} -->\n).*?(<!-- END GENERATED: {name} -->)",
                             re.S)
        if not pattern.search(text):
            raise SystemExit(f"{DOC}: no markers for generated block {name!r}")
        text = pattern.sub(lambda m, make=make: m.group(1) + make() + "\n" + m.group(2), text)
    return text


def main(argv: list[str]) -> int:
    current = DOC.read_text()
    wanted = render(current)
    if "--check" in argv:
        if wanted != current:
            print(f"{DOC.relative_to(ROOT)} is stale: run python tools/gen_architecture.py",
                  file=sys.stderr)
            return 1
        return 0
    DOC.write_text(wanted)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

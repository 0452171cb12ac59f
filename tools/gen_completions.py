#!/usr/bin/env python3
"""Write completions/xen-pciback.{bash,zsh,fish}: the scripts in xenpciback_cli/cli/completion.py.

Usage: python tools/gen_completions.py [--check]   (--check exits 1 if a committed script is stale)

The scripts and the reply format they read are ours, not click's, so they do not change with the
click release installed (click only works out the candidates).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from xenpciback_cli.cli.completion import SCRIPTS  # noqa: E402

OUT = ROOT / "completions"


def main() -> int:
    stale = []
    for shell, text in SCRIPTS.items():
        path = OUT / f"xen-pciback.{shell}"
        if "--check" in sys.argv:
            if not path.exists() or path.read_text() != text:
                stale.append(path)
        else:
            OUT.mkdir(exist_ok=True)
            path.write_text(text)
            print(f"wrote {path}")
    for path in stale:
        print(f"{path} is stale: run python tools/gen_completions.py", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    raise SystemExit(main())

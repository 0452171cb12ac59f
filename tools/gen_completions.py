#!/usr/bin/env python3
"""Write completions/: the scripts in xenpciback_cli/cli/completion.py (`xen-pciback completion SHELL`
prints the same text), each under the name its shell looks for, as the wheel installs them.

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
#: shell -> path under completions/ (and under share/ once installed: bash-completion/completions/,
#: zsh/site-functions/, fish/vendor_completions.d/; pyproject.toml's data-files).
PATHS = {"bash": "bash/xen-pciback", "zsh": "zsh/_xen-pciback", "fish": "fish/xen-pciback.fish"}


def main() -> int:
    stale = []
    for shell, text in SCRIPTS.items():
        path = OUT / PATHS[shell]
        if "--check" in sys.argv:
            if not path.exists() or path.read_text() != text:
                stale.append(path)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path}")
    for path in stale:
        print(f"{path} is stale: run python tools/gen_completions.py", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    raise SystemExit(main())

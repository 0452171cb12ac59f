"""The layering is checked, and docs/architecture.md is drawn from the code's own tables."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LINT = shutil.which("lint-imports")
needs_linter = pytest.mark.skipif(LINT is None, reason="import-linter is not installed (pip install '.[test]')")


def _lint(*args: str, cwd: Path, pythonpath: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(pythonpath))
    return subprocess.run([LINT, "--no-cache", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


def test_architecture_doc_is_fresh():
    run = subprocess.run([sys.executable, str(REPO / "tools" / "gen_architecture.py"), "--check"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr


@needs_linter
def test_import_contracts_are_kept():
    run = _lint(cwd=REPO, pythonpath=REPO)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "0 broken" in run.stdout


@needs_linter
def test_a_lazy_upward_import_breaks_the_layers(tmp_path):
    """What the contracts rely on: an import inside a function counts, one under TYPE_CHECKING
    does not (the same settings as pyproject.toml's)."""
    pkg = tmp_path / "layered"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "top.py").write_text("")
    (pkg / "bottom.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    import layered.top as typed_only\n"
        "def later():\n    import layered.top\n")
    (tmp_path / "pyproject.toml").write_text(
        '[tool.importlinter]\nroot_package = "layered"\nexclude_type_checking_imports = true\n'
        '[[tool.importlinter.contracts]]\nname = "layers"\ntype = "layers"\n'
        'layers = ["layered.top", "layered.bottom"]\n')
    run = _lint(cwd=tmp_path, pythonpath=tmp_path)
    assert run.returncode == 1
    assert "layered.bottom -> layered.top (l.5)" in run.stdout
    assert "(l.3)" not in run.stdout

"""The slow real-Xen tier stays out of the fast suite, and ``-m realxen`` selects it.

Collection only (no QEMU): a regression here would either make every plain ``pytest`` boot
Xen, or make CI's ``pytest -m realxen`` silently run nothing.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _collected(*args: str) -> list[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
         "tests/realxen", *args],
        cwd=REPO, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.returncode in (0, 5), proc.stdout + proc.stderr
    return [line for line in proc.stdout.splitlines() if "::" in line]


def test_default_run_deselects_the_tier() -> None:
    assert _collected() == []


def test_marker_selects_every_scenario() -> None:
    items = _collected("-m", "realxen")
    assert any("test_check[ours-enumerate]" in item for item in items)
    assert any("test_check[kernel-enumerate]" in item for item in items)
    assert any("test_side_by_side_has_no_unexplained_difference" in item for item in items)
    assert len(items) >= 20


def test_negated_marker_deselects_the_tier() -> None:
    assert _collected("-m", "not realxen") == []

"""The slow tiers (real kernel, real Xen; both under QEMU) stay out of the fast suite, and
``-m TIER`` selects each one.

Collection only (no QEMU): a regression here would either make every plain ``pytest`` boot a
kernel or Xen, or make CI's ``pytest -m TIER`` silently run nothing.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

#: tier -> (its directory, test ids it must collect, at least how many tests)
TIERS = {
    "realkernel": ("tests/realkernel", ("test_scenario[hide-nic-pci-stub]",
                                        "test_scenario[killed-hide-recovered]"), 10),
    "realxen": ("tests/realxen", ("test_check[ours-enumerate]", "test_check[kernel-enumerate]",
                                  "test_side_by_side_has_no_unexplained_difference"), 20),
}


def _collected(directory: str, *args: str) -> list[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
         directory, *args],
        cwd=REPO, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.returncode in (0, 5), proc.stdout + proc.stderr
    return [line for line in proc.stdout.splitlines() if "::" in line]


@pytest.mark.parametrize("tier", TIERS)
def test_default_run_deselects_the_tier(tier: str) -> None:
    assert _collected(TIERS[tier][0]) == []


@pytest.mark.parametrize("tier", TIERS)
def test_marker_selects_every_test_of_the_tier(tier: str) -> None:
    directory, expected, at_least = TIERS[tier]
    items = _collected(directory, "-m", tier)
    for name in expected:
        assert any(name in item for item in items), name
    assert len(items) >= at_least


@pytest.mark.parametrize("tier", TIERS)
def test_negated_marker_deselects_the_tier(tier: str) -> None:
    assert _collected(TIERS[tier][0], "-m", f"not {tier}") == []

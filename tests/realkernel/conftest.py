"""The real-kernel tier runs only when asked for (``pytest -m realkernel``).

Why a hook and not ``addopts = -m "not realkernel"``: a marker expression in addopts would be
replaced by any ``-m`` given on the command line, silently re-enabling this slow tier in other
selections; here the tier is deselected unless the expression names it.
"""

from __future__ import annotations

import pytest

_RUNS: list = []  # the one RunResult of this session, for the summary


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if "realkernel" in (config.getoption("markexpr") or ""):
        return
    keep, drop = [], []
    for item in items:
        (drop if item.get_closest_marker("realkernel") else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # noqa: ANN001
    for result in _RUNS:
        terminalreporter.section("real-kernel tier: timings")
        for line in result.timing_lines():
            terminalreporter.write_line(line)
        for name, record in result.checks.items():
            verdict = "ok" if record.get("ok") else "FAIL"
            detail = str(record.get("detail", "")).splitlines()
            terminalreporter.write_line(f"  check {name:<34} {verdict:<4} "
                                        f"{record.get('seconds', 0):6.2f} s  "
                                        f"{detail[0][:110] if detail else ''}")

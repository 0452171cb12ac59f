"""The real-Xen tier runs only when asked for (``pytest -m realxen``), like the real-kernel tier
(see ``tests/realkernel/conftest.py`` for why a hook and not ``addopts``)."""

from __future__ import annotations

import pytest

_RUNS: list = []  # the one RunResult of this session, for the summary


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if "realxen" in (config.getoption("markexpr") or ""):
        return
    keep, drop = [], []
    for item in items:
        (drop if item.get_closest_marker("realxen") else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # noqa: ANN001
    for result in _RUNS:
        terminalreporter.section("real-Xen tier: timings")
        for line in result.timing_lines():
            terminalreporter.write_line(line)
        for name, record in result.checks.items():
            verdict = "ok" if record.get("ok") else "FAIL"
            detail = str(record.get("detail", "")).splitlines()
            terminalreporter.write_line(f"  check {name:<22} {verdict:<4} "
                                        f"{record.get('seconds', 0):7.2f} s  "
                                        f"{detail[0][:110] if detail else ''}")
        latency = result.report.get("latency", {})
        if latency.get("ratio_ours_to_kernel"):
            terminalreporter.write_line(
                f"  config read latency in the guest: kernel {latency['kernel_us_per_read']:.1f} us, "
                f"ours {latency['ours_us_per_read']:.1f} us (ratio {latency['ratio_ours_to_kernel']:.2f})")
        terminalreporter.write_line(f"  artefacts (side-by-side.txt/.json, serial log): {result.report_dir}")

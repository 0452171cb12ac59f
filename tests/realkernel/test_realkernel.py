"""Assert, one test per scenario, what the guest found against the real Linux kernel.

The guest boots once per session (see harness.py) and runs every check; each test here reports
one of them, so a failure names the exact scenario with the commands it ran and their output.
"""

from __future__ import annotations

import importlib.util
import json

import pytest

from . import conftest
from .harness import SCENARIOS, RunResult, StageFailed, run, selected_checks


def _check_names() -> list[str]:
    spec = importlib.util.spec_from_file_location("xpb_scenarios", SCENARIOS / "run_scenarios.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return [name for name, _ in module.CHECKS]


CHECK_NAMES = _check_names()

pytestmark = pytest.mark.realkernel


@pytest.fixture(scope="session")
def guest_run() -> RunResult | StageFailed:
    try:
        result = run(log=lambda message: print(message, flush=True))
    except StageFailed as exc:
        return exc
    conftest._RUNS.append(result)
    return result


def _explain(record: dict) -> str:
    lines = [f"check {record['name']} failed after {record.get('seconds')} s:", record["detail"],
             "--- commands it ran (last 12) ---"]
    for entry in record.get("commands", []):
        lines.append(f"$ {' '.join(entry['argv'])}  -> exit {entry['rc']} ({entry['seconds']} s)")
        for stream in ("stdout", "stderr"):
            text = str(entry.get(stream, "")).strip()
            if text:
                lines.append(f"  [{stream}] " + text[-1200:].replace("\n", "\n  "))
    return "\n".join(lines)


@pytest.mark.parametrize("name", CHECK_NAMES)
def test_scenario(guest_run: RunResult | StageFailed, name: str) -> None:
    if selected_checks() and name not in selected_checks():
        pytest.skip("not in XEN_PCIBACK_REALKERNEL_CHECKS")
    if isinstance(guest_run, StageFailed):
        pytest.fail(str(guest_run), pytrace=False)
    record = guest_run.checks.get(name)
    if record is None:
        pytest.fail(f"check {name} did not report (the guest stopped early?)\n"
                    f"--- scenario output ---\n{guest_run.scenario_output[-2000:]}\n"
                    f"--- serial log (tail) ---\n{guest_run.serial_log[-3000:]}", pytrace=False)
    if not record["ok"]:
        pytest.fail(_explain(record), pytrace=False)


def test_every_check_reported_once(guest_run: RunResult | StageFailed) -> None:
    """The guest ran exactly the checks this file knows, and said so on the serial console."""
    if isinstance(guest_run, StageFailed):
        pytest.fail(str(guest_run), pytrace=False)
    expected = sorted(selected_checks() or CHECK_NAMES)
    assert sorted(guest_run.checks) == expected, json.dumps(sorted(guest_run.checks))
    for name in expected:
        assert f"XPB-CHECK {name} " in guest_run.serial_log

"""Assert what dom0 and the guest found on real Xen: one test per scenario check, then the
side-by-side of the kernel's xen-pciback and ours.

The stack boots once per session (harness.py); dom0 runs every check in order and the host builds
the report. A failed stage fails every test with the stage, the serial log's tail and the
xenstore tree.
"""

from __future__ import annotations

import importlib.util
import json

import pytest

from . import conftest
from .harness import SCENARIOS, RunResult, StageFailed, run


def _scenario():  # noqa: ANN202 -- the module dom0 runs, loaded from its file
    spec = importlib.util.spec_from_file_location("xpb_run_xen", SCENARIOS / "run_xen.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_SCENARIO = _scenario()
CHECK_NAMES = list(_SCENARIO.CHECK_NAMES)
#: vendor:device of every function the scenario passes through (the report is keyed by them).
DEVICE_IDS = set(_SCENARIO.IDS.values())

pytestmark = pytest.mark.realxen


@pytest.fixture(scope="session")
def xen_run() -> RunResult | StageFailed:
    try:
        result = run(log=lambda message: print(message, flush=True))
    except StageFailed as exc:
        return exc
    conftest._RUNS.append(result)
    return result


def _result(xen_run: RunResult | StageFailed) -> RunResult:
    if isinstance(xen_run, StageFailed):
        pytest.fail(str(xen_run), pytrace=False)
    return xen_run


@pytest.mark.parametrize("name", CHECK_NAMES)
def test_check(xen_run: RunResult | StageFailed, name: str) -> None:
    result = _result(xen_run)
    record = result.checks.get(name)
    if record is None:
        pytest.fail(f"check {name} did not report (dom0 stopped early?)\n"
                    f"--- scenario output ---\n{result.scenario_output[-3000:]}\n"
                    f"--- serial log (tail) ---\n{result.serial_log[-3000:]}", pytrace=False)
    if not record["ok"]:
        pytest.fail(f"check {name} failed after {record.get('seconds')} s:\n{record['detail']}\n"
                    f"--- scenario output (tail) ---\n{result.scenario_output[-2500:]}",
                    pytrace=False)


def test_every_check_reported_once(xen_run: RunResult | StageFailed) -> None:
    result = _result(xen_run)
    assert sorted(result.checks) == sorted(CHECK_NAMES), json.dumps(sorted(result.checks))


def test_side_by_side_has_no_unexplained_difference(xen_run: RunResult | StageFailed) -> None:
    """The guest-visible config space of each device and the write/read-back sweep agree between
    the kernel's backend and ours, except where a listed reason explains it."""
    result = _result(xen_run)
    report = result.report
    assert report.get("devices"), "no side-by-side data (a phase failed before its probe)"
    assert set(report["devices"]) == DEVICE_IDS, f"the report covers {sorted(report['devices'])}"
    for side in ("kernel", "ours"):  # the enumerate checks found one slot, function numbers kept
        assert report["multifunction"][side], f"no multi-function slot recorded for {side}"
    for ids, device in report["devices"].items():
        assert device["config_size"]["kernel"] and device["config_size"]["ours"], ids
        assert device["sweep_accesses"]["kernel"] == device["sweep_accesses"]["ours"] > 0, ids
    unexplained = [(ids, d) for ids, dev in report["devices"].items()
                   for d in dev["config_differences"] + dev["sweep_differences"] if not d["explained"]]
    assert not unexplained, (f"see {result.report_dir}/side-by-side.txt\n"
                             + "\n".join(f"{ids}: {d}" for ids, d in unexplained[:40]))


def test_latency_measured_through_both_backends(xen_run: RunResult | StageFailed) -> None:
    """Both backends answered the same number of timed reads (the ratio is reported, not
    asserted: speed belongs to bench/, not to a pass/fail test on a shared machine)."""
    result = _result(xen_run)
    latency = result.report.get("latency", {})
    assert latency.get("kernel_us_per_read") and latency.get("ours_us_per_read"), latency
    assert (result.report_dir / "side-by-side.txt").is_file()

#!/usr/bin/env python3
"""Startup, completion and ``list`` speed, each against a baseline measured in the same run.

Builds two temporary sysfs trees shaped like the kernel's (default 512 and 2048 devices), then
times whole processes, each command paired run by run with its baseline (A B A B...) so a machine
whose speed drifts still gives a fair ratio (the median of the pairs' ratios):

* ``xen-pciback --help`` and a completion request (TAB after ``hide``, on the small tree) against
  ``python -c "import click"``, the floor no click tool goes under. Target: <= 1.2x.
* ``xen-pciback list --format plain`` and ``lspci -nnk`` on both trees, with the floor, each once
  per round in turn. Per extra device: (t_big - t_small) / (n_big - n_small), ours against
  lspci's; target: ours <= lspci's. Fixed cost: t_small - n_small x per-device, against the
  click floor; target: <= floor + 15 ms. Both are computed within each round (the five runs of a
  round meet the same load) and their medians over the rounds are given: the slope between two
  trees timed minutes apart would take a change of load for a change of cost.

Every figure is given twice: wall clock (what a person waits) and CPU time (user + system of the
process, from the kernel's accounting of the child). On a quiet machine the two agree; on a busy
one (other jobs on the same cores) wall clock includes the time spent waiting for a core, and
the CPU figures are the ones to compare.

Usage: PYTHONPATH=.:tools python bench/bench_cli.py [--devices 512 2048] [--runs 15]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import NamedTuple

REPO = Path(__file__).resolve().parents[1]

from sysfs_tree import build_many  # noqa: E402  from tools/ (shared with the tests)


class Time(NamedTuple):
    """One run, or the median of several: wall clock and CPU time (user + system), in seconds."""

    wall: float
    cpu: float


def run_once(command: list[str], env: dict[str, str]) -> Time:
    """Wall and CPU time of one run. A blocking wait() (bounded by a watchdog timer), because
    subprocess's wait(timeout=...) polls with sleeps of up to 50 ms and would quantise the figures;
    the CPU time is what the children's accounting grew by when the run was reaped."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    watchdog = threading.Timer(120, process.kill)
    watchdog.start()
    try:
        code = process.wait()
    finally:
        watchdog.cancel()
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if code != 0:
        raise SystemExit(f"{command} failed with {code}")
    return Time(elapsed, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)


def paired(a: tuple[list[str], dict[str, str]], b: tuple[list[str], dict[str, str]],
           runs: int) -> tuple[Time, Time, Time]:
    """(median of A, median of B, median of the pairs' A/B) over ``runs`` alternating pairs."""
    run_once(*a)
    run_once(*b)  # warm the page cache
    times_a, times_b = [], []
    for _ in range(runs):
        times_a.append(run_once(*a))
        times_b.append(run_once(*b))
    median = statistics.median
    return (Time(median([t.wall for t in times_a]), median([t.cpu for t in times_a])),
            Time(median([t.wall for t in times_b]), median([t.cpu for t in times_b])),
            Time(median([x.wall / y.wall for x, y in zip(times_a, times_b)]),
                 median([x.cpu / y.cpu for x, y in zip(times_a, times_b)])))


def rounds(commands: dict[str, tuple[list[str], dict[str, str]]], runs: int) -> dict[str, list[Time]]:
    """Every command once per round, in turn, for ``runs`` rounds (after one round to warm the
    page cache): the times of one round were taken under the same load."""
    for command in commands.values():
        run_once(*command)
    times: dict[str, list[Time]] = {name: [] for name in commands}
    for _ in range(runs):
        for name, command in commands.items():
            times[name].append(run_once(*command))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, nargs=2, default=[512, 2048], metavar=("SMALL", "BIG"))
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("XEN_PCIBACK_SANDBOX", None)
    script = shutil.which("xen-pciback")
    tool = [script] if script else [sys.executable, "-m", "xenpciback_cli"]
    # An installed package has byte-compiled modules (pip compiles at install time); make the
    # working tree the same even when PYTHONDONTWRITEBYTECODE is set, so we time running, not compiling.
    import compileall

    compileall.compile_dir(str(REPO / "xenpciback_cli"), quiet=1)
    floor = ([sys.executable, "-c", "import click"], env)
    lspci = shutil.which("lspci")
    rows: list[tuple[str, Time, Time, Time, str]] = []
    with tempfile.TemporaryDirectory(prefix="xpb-bench-") as temporary:
        trees = [build_many(Path(temporary) / f"t{n}", n) for n in args.devices]
        counts = [len(os.listdir(tree.pci / "devices")) for tree in trees]
        for tree, count in zip(trees, counts):
            listed = subprocess.run(tool + ["--sysfs-root", str(tree.sys), "list", "--format", "plain"],
                                    capture_output=True, text=True, env=env, timeout=120)
            assert listed.returncode == 0 and len(listed.stdout.splitlines()) == count + 1, listed.stderr

        help_a, help_b, help_ratio = paired((tool + ["--help"], env), floor, args.runs)
        rows.append(("xen-pciback --help", help_a, help_b, help_ratio, "import click"))
        words = f"xen-pciback --sysfs-root {trees[0].sys} hide "
        complete_env = dict(env, COMP_WORDS=words, COMP_CWORD="4", _XEN_PCIBACK_COMPLETE="bash_complete")
        comp_a, comp_b, comp_ratio = paired((tool, complete_env), floor, args.runs)
        rows.append((f"TAB after hide ({counts[0]} devices)", comp_a, comp_b, comp_ratio, "import click"))

        listing = {f"ours {n}": (tool + ["--sysfs-root", str(t.sys), "list", "--format", "plain"], env)
                   for n, t in zip(counts, trees)}
        if lspci:
            listing |= {f"lspci {n}": ([lspci, "-nnk", "-A", "linux-sysfs", "-O", f"sysfs.path={t.sys}/bus/pci"],
                                       env) for n, t in zip(counts, trees)}
        listing["floor"] = floor
        times = rounds(listing, args.runs)
        baseline_name = "lspci -nnk" if lspci else "import click"
        for count in counts:
            ours = times[f"ours {count}"]
            theirs = times[f"lspci {count}"] if lspci else times["floor"]
            rows.append((f"list ({count} devices)", median_time(ours), median_time(theirs),
                         median_time([Time(a.wall / b.wall, a.cpu / b.cpu) for a, b in zip(ours, theirs)]),
                         baseline_name))

    print(f"{'command':32} {'median ms':>16} {'baseline ms':>16}  {'paired ratio':>14}")
    print(f"{'':32} {'wall':>8}{'cpu':>8} {'wall':>8}{'cpu':>8}  {'wall':>7}{'cpu':>7}")
    for name, a, b, ratio, baseline_name in rows:
        print(f"{name:32} {a.wall * 1e3:8.1f}{a.cpu * 1e3:8.1f} {b.wall * 1e3:8.1f}{b.cpu * 1e3:8.1f}  "
              f"{ratio.wall:6.2f}x{ratio.cpu:6.2f}x {baseline_name}")
    print()
    verdict = {True: "OK", False: "MISSED"}
    extra = counts[1] - counts[0]
    for clock in Time._fields:  # the same verdicts by the wall clock, then by CPU time
        def of(t: Time) -> float:
            return float(getattr(t, clock))  # noqa: B023  used within this iteration only

        def per_device(tool_name: str) -> list[float]:
            """Seconds per extra device, one figure per round."""
            return [(of(b) - of(a)) / extra for a, b in zip(times[f"{tool_name} {counts[0]}"],
                                                             times[f"{tool_name} {counts[1]}"])]

        print(f"{clock}:")
        for what, ratio in (("--help", help_ratio), ("completion", comp_ratio)):
            print(f"  {what + ':':12} {of(ratio):.2f}x python -c 'import click' (target <= 1.2x) "
                  f"{verdict[of(ratio) <= 1.2]}")
        ours_slope = per_device("ours")
        per_ours = statistics.median(ours_slope) * 1e6
        print(f"  list, per extra device: {per_ours:.1f} us", end="")
        if lspci:
            per_lspci = statistics.median(per_device("lspci")) * 1e6
            print(f"; lspci -nnk {per_lspci:.1f} us: {per_ours / per_lspci:.2f}x (target <= 1.0x) "
                  f"{verdict[per_ours <= per_lspci]}")
        else:
            print(" (no lspci to compare with)")
        floor_ms = statistics.median([of(t) for t in times["floor"]]) * 1000
        over = statistics.median([of(t) - counts[0] * slope - of(f) for t, slope, f in
                                  zip(times[f"ours {counts[0]}"], ours_slope, times["floor"])]) * 1000
        print(f"  list, fixed cost: click floor {floor_ms:.1f} ms {over:+.1f} ms (target <= +15 ms) "
              f"{verdict[over <= 15]}")


def median_time(times: list[Time]) -> Time:
    return Time(statistics.median([t.wall for t in times]), statistics.median([t.cpu for t in times]))


if __name__ == "__main__":
    main()

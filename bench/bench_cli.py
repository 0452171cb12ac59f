#!/usr/bin/env python3
"""Startup, completion and ``list`` speed, each against a baseline measured in the same run.

Builds two temporary sysfs trees shaped like the kernel's (default 512 and 2048 devices), then
times whole processes (wall clock), each command paired run by run with its baseline (A B A B...)
so a machine whose speed drifts still gives a fair ratio (the median of the pairs' ratios):

* ``xen-pciback --help`` and a completion request (TAB after ``hide``, on the small tree) against
  ``python -c "import click"``, the floor no click tool goes under. Target: <= 1.2x.
* ``xen-pciback list --format plain`` and ``lspci -nnk`` on both trees. Per extra device:
  (t_big - t_small) / (n_big - n_small), ours against lspci's; target: ours <= lspci's. Fixed
  cost: t_small - n_small x per-device, against the click floor; target: <= floor + 15 ms.

Usage: PYTHONPATH=.:tools python bench/bench_cli.py [--devices 512 2048] [--runs 15]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

from sysfs_tree import build_many  # noqa: E402  from tools/ (shared with the tests)


def run_once(command: list[str], env: dict[str, str]) -> float:
    """Wall time of one run. A blocking wait() (bounded by a watchdog timer), because
    subprocess's wait(timeout=...) polls with sleeps of up to 50 ms and would quantise the figures."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    watchdog = threading.Timer(120, process.kill)
    watchdog.start()
    try:
        code = process.wait()
    finally:
        watchdog.cancel()
    elapsed = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"{command} failed with {code}")
    return elapsed


def paired(a: tuple[list[str], dict[str, str]], b: tuple[list[str], dict[str, str]],
           runs: int) -> tuple[float, float, float]:
    """(median of A, median of B, median of the pairs' A/B) over ``runs`` alternating pairs."""
    run_once(*a)
    run_once(*b)  # warm the page cache
    times_a, times_b = [], []
    for _ in range(runs):
        times_a.append(run_once(*a))
        times_b.append(run_once(*b))
    ratios = [x / y for x, y in zip(times_a, times_b)]
    return statistics.median(times_a), statistics.median(times_b), statistics.median(ratios)


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
    rows: list[tuple[str, float, float, str]] = []
    with tempfile.TemporaryDirectory(prefix="xpb-bench-") as temporary:
        trees = [build_many(Path(temporary) / f"t{n}", n) for n in args.devices]
        counts = [len(os.listdir(tree.pci / "devices")) for tree in trees]
        for tree, count in zip(trees, counts):
            listed = subprocess.run(tool + ["--sysfs-root", str(tree.sys), "list", "--format", "plain"],
                                    capture_output=True, text=True, env=env, timeout=120)
            assert listed.returncode == 0 and len(listed.stdout.splitlines()) == count + 1, listed.stderr

        help_a, help_b, help_ratio = paired((tool + ["--help"], env), floor, args.runs)
        rows.append(("xen-pciback --help", help_a, help_b, f"{help_ratio:.2f}x import click"))
        words = f"xen-pciback --sysfs-root {trees[0].sys} hide "
        complete_env = dict(env, COMP_WORDS=words, COMP_CWORD="4", _XEN_PCIBACK_COMPLETE="bash_complete")
        comp_a, comp_b, comp_ratio = paired((tool, complete_env), floor, args.runs)
        rows.append((f"TAB after hide ({counts[0]} devices)", comp_a, comp_b, f"{comp_ratio:.2f}x import click"))

        lists, lspcis = [], []
        for tree, count in zip(trees, counts):
            ours = (tool + ["--sysfs-root", str(tree.sys), "list", "--format", "plain"], env)
            if lspci:
                theirs = ([lspci, "-nnk", "-A", "linux-sysfs", "-O", f"sysfs.path={tree.sys}/bus/pci"], env)
                a, b, ratio = paired(ours, theirs, args.runs)
                lspcis.append(b)
                rows.append((f"list ({count} devices)", a, b, f"{ratio:.2f}x lspci -nnk"))
            else:
                a, b, ratio = paired(ours, floor, args.runs)
                rows.append((f"list ({count} devices)", a, b, f"{ratio:.2f}x import click"))
            lists.append(a)
        floor_ms = statistics.median([comp_b, help_b]) * 1000

    print(f"{'command':34} {'median ms':>10} {'baseline ms':>12}  paired ratio")
    for name, a, b, ratio in rows:
        print(f"{name:34} {a * 1000:10.1f} {b * 1000:12.1f}  {ratio}")
    print()
    verdict = {True: "OK", False: "MISSED"}
    print(f"--help:      {help_ratio:.2f}x python -c 'import click' (target <= 1.2x) {verdict[help_ratio <= 1.2]}")
    print(f"completion:  {comp_ratio:.2f}x python -c 'import click' (target <= 1.2x) {verdict[comp_ratio <= 1.2]}")
    extra = counts[1] - counts[0]
    per_ours = (lists[1] - lists[0]) / extra * 1e6
    fixed_ours = lists[0] * 1000 - counts[0] * per_ours / 1000
    print(f"list, per extra device: {per_ours:.1f} us", end="")
    if lspcis:
        per_lspci = (lspcis[1] - lspcis[0]) / extra * 1e6
        print(f"; lspci -nnk {per_lspci:.1f} us: {per_ours / per_lspci:.2f}x (target <= 1.0x) "
              f"{verdict[per_ours <= per_lspci]}")
    else:
        print(" (no lspci to compare with)")
    print(f"list, fixed cost: {fixed_ours:.1f} ms; click floor {floor_ms:.1f} ms + 15 = {floor_ms + 15:.1f} ms "
          f"{verdict[fixed_ours <= floor_ms + 15]}")


if __name__ == "__main__":
    main()

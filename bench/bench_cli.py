#!/usr/bin/env python3
"""Startup and ``list`` speed, each against a baseline measured in the same run.

Builds a temporary sysfs tree with N PCI devices (default 512, shaped like the kernel's), then times
(best and median of R runs, wall clock):

* ``python -c pass``                       - the interpreter's own floor
* ``xen-pciback --help``                    - target: <= 3.5x python -c pass
* ``xen-pciback --sysfs-root T list --format plain``
* ``lspci -nnk -A linux-sysfs -O sysfs.path=T/bus/pci`` - target: list no slower than this

Usage: PYTHONPATH=$PWD:$PWD/tools python bench/bench_cli.py [--devices 512] [--runs 15]
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


def timed(command: list[str], runs: int, env: dict[str, str]) -> tuple[float, float]:
    run_once(command, env)  # warm the page cache
    samples = [run_once(command, env) for _ in range(runs)]
    return min(samples), statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=512)
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
    with tempfile.TemporaryDirectory(prefix="xpb-bench-") as temporary:
        tree = build_many(Path(temporary), args.devices)
        count = len(os.listdir(tree.pci / "devices"))
        listed = subprocess.run(tool + ["--sysfs-root", str(tree.sys), "list", "--format", "plain"],
                                capture_output=True, text=True, env=env, timeout=120)
        assert listed.returncode == 0 and len(listed.stdout.splitlines()) == count + 1, listed.stderr
        results = {
            "python -c pass": timed([sys.executable, "-c", "pass"], args.runs, env),
            "xen-pciback --help": timed(tool + ["--help"], args.runs, env),
            f"xen-pciback list ({count} devices)": timed(
                tool + ["--sysfs-root", str(tree.sys), "list", "--format", "plain"], args.runs, env),
        }
        lspci = shutil.which("lspci")
        if lspci:
            results[f"lspci -nnk ({count} devices)"] = timed(
                [lspci, "-nnk", "-A", "linux-sysfs", "-O", f"sysfs.path={tree.sys}/bus/pci"], args.runs, env)
    print(f"{'command':42} {'best ms':>9} {'median ms':>10}")
    for name, (best, median) in results.items():
        print(f"{name:42} {best * 1000:9.1f} {median * 1000:10.1f}")
    def ratio(a: str, b: str) -> str:
        return (f"best {results[a][0] / results[b][0]:.2f}x, "
                f"median {results[a][1] / results[b][1]:.2f}x")

    list_key = next(k for k in results if k.startswith("xen-pciback list"))
    lspci_key = next((k for k in results if k.startswith("lspci")), None)
    help_ok = results["xen-pciback --help"][1] / results["python -c pass"][1] <= 3.5
    print(f"\n--help / python -c pass: {ratio('xen-pciback --help', 'python -c pass')} "
          f"(target <= 3.5x) {'OK' if help_ok else 'MISSED'}")
    print(f"list / python -c pass:   {ratio(list_key, 'python -c pass')}")
    if lspci_key:
        list_ok = results[list_key][1] <= results[lspci_key][1]
        print(f"list / lspci -nnk:       {ratio(list_key, lspci_key)} (target <= 1.0x) "
              f"{'OK' if list_ok else 'MISSED'}")

if __name__ == "__main__":
    main()

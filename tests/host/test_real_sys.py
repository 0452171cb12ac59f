"""Read-only: ``list`` on this machine's real /sys agrees with ``lspci -k -D``. Never writes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.skipif(not os.path.isdir("/sys/bus/pci/devices") or not os.listdir("/sys/bus/pci/devices"),
                       reason="no PCI bus in /sys"),
    pytest.mark.skipif(shutil.which("lspci") is None, reason="lspci (pciutils) not installed"),
]


def lspci_devices() -> dict[str, dict[str, str | None]]:
    out = subprocess.run(["lspci", "-k", "-D", "-n"], capture_output=True, text=True, timeout=60,
                         check=True).stdout
    devices: dict[str, dict[str, str | None]] = {}
    current = None
    for line in out.splitlines():
        if line and not line[0].isspace():
            fields = line.split()
            current = fields[0]
            klass = fields[1].rstrip(":")
            devices[current] = {"ids": fields[2], "class": klass, "driver": None}
        elif current and "Kernel driver in use:" in line:
            devices[current]["driver"] = line.split(":", 1)[1].strip()
    return devices


def our_list() -> list[dict]:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("XEN_PCIBACK_SANDBOX", None)
    result = subprocess.run([sys.executable, "-m", "xenpciback_cli", "--sysfs-root", "/sys", "--json",
                             "list"],
                            capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_list_matches_lspci_on_real_sys():
    theirs = lspci_devices()
    ours = {row["bdf"]: row for row in our_list()}
    assert set(ours) == set(theirs)
    for bdf, row in ours.items():
        assert f"{row['vendor_id'][2:]}:{row['device_id'][2:]}" == theirs[bdf]["ids"]
        assert row["class"][2:6] == theirs[bdf]["class"]
        assert row["driver"] == theirs[bdf]["driver"], bdf
        assert row["state"] in ("host", "seized", "attached")


def test_listing_real_sys_does_not_write(tmp_path):
    """The real /sys is only read: modification times of driver_override stay as they were."""
    paths = sorted(Path("/sys/bus/pci/devices").glob("*/driver_override"))
    before = [p.stat().st_mtime_ns for p in paths]
    our_list()
    assert [p.stat().st_mtime_ns for p in paths] == before

#!/usr/bin/env python3
"""Extract the sandbox's config-space captures from real ``lspci -vvv -xxxx`` dumps.

Input: pciutils' test dumps (real hardware, ``../shared/fixtures/pciutils-tests``). Output, committed
as package data: ``xenpciback_cli/sandbox/captures/<name>.bin`` (the raw config bytes, 256 or
4096 as dumped) and ``index.json`` (where each came from, the driver the dump shows, and the BAR and
ROM sizes lspci decoded, which config bytes alone cannot tell). Run it again only to change the set:

    python tools/extract_captures.py [FIXTURES_DIR]
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "xenpciback_cli" / "sandbox" / "captures"
DEFAULT_FIXTURES = ROOT / ".." / "shared" / "fixtures" / "pciutils-tests"

#: name -> (dump file, address in that dump, driver a Linux host binds)
WANTED = {
    "host-bridge-intel-6f00": ("cap-atomicops", "00:00.0", None),
    "root-port-ich7-1": ("cap-vc-and-rcl", "00:1c.0", "pcieport"),
    "root-port-ich7-2": ("cap-vc-and-rcl", "00:1c.1", "pcieport"),
    "root-port-ich7-3": ("cap-vc-and-rcl", "00:1c.2", "pcieport"),
    "xhci-ti-tusb73x0": ("tree-fsl-p2020", "0002:01:00.0", "xhci_hcd"),
    "nvme-samsung-pm174x": ("cap-phy32", "2e:00.0", "nvme"),
    "gpu-amd-fiji": ("cap-rebar", "09:00.0", "amdgpu"),
    "hda-intel-ich7": ("cap-vc-and-rcl", "00:1b.0", "snd_hda_intel"),
    "nic-intel-82576-sriov": ("cap-pcie-2", "01:00.0", "igb"),
}

_HEADER = re.compile(r"^(?:[0-9a-f]{4}:)?[0-9a-f]{2}:[0-9a-f]{2}\.[0-7] ")
_HEX_LINE = re.compile(r"^([0-9a-f]{2,3}): ((?:[0-9a-f]{2} ?){16})$")
_REGION = re.compile(r"^(?:\t| {8})Region (\d): .*?\[size=(\d+)([KMG]?)\]")
_ROM = re.compile(r"^(?:\t| {8})Expansion ROM at .*\[size=(\d+)([KMG]?)\]")
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def device_block(lines: list[str], address: str) -> list[str]:
    """The lines of one device: its header line up to the next device's header."""
    start = next(i for i, line in enumerate(lines) if line.startswith(address + " "))
    end = next((i for i in range(start + 1, len(lines)) if _HEADER.match(lines[i])), len(lines))
    return lines[start:end]


def extract(block: list[str]) -> tuple[bytes, dict[str, object]]:
    data = bytearray()
    bars: dict[str, int] = {}
    rom = None
    for line in block[1:]:
        hex_match = _HEX_LINE.match(line.rstrip())
        if hex_match:
            if int(hex_match[1], 16) != len(data):
                raise ValueError(f"dump line {line!r} out of order")
            data += bytes.fromhex(hex_match[2])
            continue
        region = _REGION.match(line)
        if region:
            bars[region[1]] = int(region[2]) * _UNITS[region[3]]
        rom_match = _ROM.match(line)
        if rom_match:
            rom = int(rom_match[1]) * _UNITS[rom_match[2]]
    if len(data) not in (64, 256, 4096):
        raise ValueError(f"unexpected dump length {len(data)}")
    return bytes(data), {"title": block[0].split(" ", 1)[1], "bar_sizes": bars, "rom_size": rom}


def main() -> None:
    fixtures = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_FIXTURES
    OUT.mkdir(parents=True, exist_ok=True)
    index = {}
    for name, (dump, address, driver) in WANTED.items():
        lines = (fixtures / dump).read_text(errors="replace").splitlines()
        data, meta = extract(device_block(lines, address))
        (OUT / f"{name}.bin").write_bytes(data)
        index[name] = {"source": f"pciutils/pciutils tests/{dump} ({address})", "driver": driver, **meta}
        print(f"{name}: {len(data)} bytes from {dump} {address}")
    (OUT / "index.json").write_text(json.dumps(index, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()

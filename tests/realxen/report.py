"""The side-by-side report: what the guest saw through the kernel's xen-pciback and through ours.

Input: ``data.json`` as dom0's scenario wrote it (per backend: the guest's config bytes of each
device, the write/read-back sweep, ``lspci -xxxx``, the BAR0 read, the latency run, interrupts).
Output: ``side-by-side.json`` and ``side-by-side.txt`` in the artefact directory, and the same
dict returned for the tests. Every difference is listed; each is either *explained* (a reason
naming docs/linux-differences.md or the register's nature) or *unexplained* -- the test fails on
an unexplained one.
"""

from __future__ import annotations

import json
from pathlib import Path

#: Registers whose value is the host's run-time state, not the backend's doing: the same bytes
#: can differ between two guests of one device (offsets within the standard header).
STATUS_RW1C = {0x06: "STATUS (hardware event bits)", 0x07: "STATUS (hardware event bits)"}


def _config_bytes(hexstr: str) -> bytes:
    try:
        return bytes.fromhex(hexstr)
    except ValueError:
        return b""


def _capabilities(config: bytes) -> dict[int, tuple[int, int]]:
    """offset -> (capability id, length guess) of the standard list, for naming differences."""
    caps: dict[int, tuple[int, int]] = {}
    if len(config) < 0x40 or not config[0x06] & 0x10:
        return caps
    pointer, seen = config[0x34] & 0xFC, set()
    while pointer >= 0x40 and pointer not in seen and pointer + 1 < len(config):
        seen.add(pointer)
        caps[pointer] = (config[pointer], 0)
        pointer = config[pointer + 1] & 0xFC
    return caps


def _aer_offset(config: bytes) -> int:
    """Offset of the AER extended capability (id 1); 0 when absent or unreadable."""
    offset, seen = 0x100, set()
    while 0x100 <= offset <= len(config) - 4 and offset not in seen:
        seen.add(offset)
        header = int.from_bytes(config[offset:offset + 4], "little")
        if header & 0xFFFF == 1:
            return offset
        offset = (header >> 20) & 0xFFC
    return 0


def _cap_of(offset: int, caps: dict[int, tuple[int, int]]) -> tuple[int, int] | None:
    """(capability offset, id) containing ``offset``: the nearest capability at or below it."""
    starts = [c for c in caps if c <= offset]
    if not starts or offset >= 0x100:
        return None
    start = max(starts)
    return start, caps[start][0]


#: CACHE_LINE_SIZE: Linux's pciback calls pci_set_mwi when a guest sets MWI in COMMAND (the
#: sweep's all-ones write does), which programs the host's cache line size; ours never programs
#: it and drops MWI while it is 0 (docs/linux-differences.md #13).
CACHE_LINE_SIZE = 0x0C
CLS_REASON = ("CACHE_LINE_SIZE: Linux's pci_set_mwi programmed it when the guest set MWI; ours "
              "does not (docs/linux-differences.md #13)")


def explain(offset: int, config: bytes, kernel: int | None = None, ours: int | None = None) -> str | None:
    """Why the byte at ``offset`` may legitimately differ between two guests; None if it may not.
    ``kernel``/``ours`` are the two values, where a reason depends on them."""
    if offset == CACHE_LINE_SIZE and ours == 0 and kernel:
        return CLS_REASON
    if offset in STATUS_RW1C:
        return STATUS_RW1C[offset]
    aer = _aer_offset(config)
    if aer and aer + 4 <= offset < aer + 0x2C and not aer + 8 <= offset < aer + 0x0C \
            and not aer + 0x14 <= offset < aer + 0x18:
        # AER status, first-error pointer and header log: what errors the device has seen
        # (the tier injects one through QEMU's monitor); the masks are configuration.
        return "AER status/first-error pointer/header log: hardware error events"
    cap = _cap_of(offset, _capabilities(config))
    if cap is not None:
        start, cap_id = cap
        rel = offset - start
        if cap_id == 0x05 and rel >= 4:  # MSI address/data/mask/pending: Xen programs them
            return "MSI address/data: programmed by Xen for the PIRQ it chose (differs per mapping)"
        if cap_id == 0x05 and rel in (2, 3):
            return "MSI message control: enable bit as the last driver left it"
        if cap_id == 0x11 and rel in (2, 3):
            return "MSI-X message control: enable/mask as the last driver left it"
        if cap_id == 0x10 and 8 <= rel < 12:  # PCIe device status/control: error bits
            return "PCIe device control/status: error status bits are hardware events"
    return None


AFTER_AER = ("device state after the kernel phase's injected AER error: the kernel's backend "
             "read the same value right after it (QEMU's e1000e)")


def compare_bytes(kernel: bytes, ours: bytes, kernel_after_aer: bytes = b"") -> list[dict]:
    """Byte by byte. ``kernel_after_aer``: the device as the kernel's backend showed it right
    after the kernel phase injected an AER error (our phase probes a device with that past)."""
    diffs = []
    for offset in range(max(len(kernel), len(ours))):
        a = kernel[offset] if offset < len(kernel) else None
        b = ours[offset] if offset < len(ours) else None
        if a != b:
            reason = explain(offset, kernel or ours, a, b)
            if reason is None and offset < len(kernel_after_aer) and kernel_after_aer[offset] == b:
                reason = AFTER_AER
            diffs.append({"offset": offset, "kernel": a, "ours": b, "explained": reason})
    return diffs


def _behaviour(row: list[str]) -> tuple[str, ...]:
    """What the backend did with one access, apart from the register's value: the write's and
    the restore's return codes, the read errors, and whether the all-ones write stuck (the value
    read back as such when it changed, "kept" when the register kept its original value)."""
    orig, wrc, after, rrc, errs = row[2:7]
    return wrc, rrc, errs, "kept" if after == orig else after


def compare_sweep(kernel: list[list[str]], ours: list[list[str]], config: bytes,
                  kernel_after_aer: bytes = b"") -> list[dict]:
    """Each access: (offset, size, original, write rc, after all-ones, restore rc, read errors).
    Equal unless the register's original value is host state that differed."""
    diffs = []
    by_key = {(int(r[0]), int(r[1])): r for r in ours}
    for row in kernel:
        key = (int(row[0]), int(row[1]))
        other = by_key.pop(key, None)
        if other is None or other[2:] != row[2:]:
            offset, size = key
            reason = None
            if other is not None and _behaviour(other) == _behaviour(row):  # only the value differs
                kval, oval = int(row[2], 16), int(other[2], 16)
                reasons = set()
                for i in range(size):
                    kbyte, obyte = (kval >> 8 * i) & 0xFF, (oval >> 8 * i) & 0xFF
                    if kbyte != obyte:
                        reason_i = explain(offset + i, config, kbyte, obyte)
                        if reason_i is None and offset + i < len(kernel_after_aer) \
                                and kernel_after_aer[offset + i] == obyte:
                            reason_i = AFTER_AER
                        reasons.add(reason_i)
                reason = None if None in reasons or not reasons else "; ".join(sorted(reasons))
            diffs.append({"offset": offset, "size": size, "kernel": row[2:],
                          "ours": other[2:] if other else None, "explained": reason})
    for key, other in sorted(by_key.items()):
        diffs.append({"offset": key[0], "size": key[1], "kernel": None, "ours": other[2:],
                      "explained": None})
    return diffs


def build(data: dict) -> dict:
    kernel, ours = data.get("kernel", {}), data.get("ours", {})
    devices: dict[str, dict] = {}
    for ids in sorted(set(kernel.get("config", {})) | set(ours.get("config", {}))):
        kconf = _config_bytes(kernel.get("config", {}).get(ids, ""))
        oconf = _config_bytes(ours.get("config", {}).get(ids, ""))
        after_aer = _config_bytes(kernel.get("aer", {}).get("guest_config", "")) \
            if kernel.get("aer", {}).get("ids") == ids else b""
        config_diffs = compare_bytes(kconf, oconf, after_aer)
        sweep_diffs = compare_sweep(kernel.get("sweep", {}).get(ids, []),
                                    ours.get("sweep", {}).get(ids, []), kconf, after_aer)
        devices[ids] = {
            "config_size": {"kernel": len(kconf), "ours": len(oconf)},
            "config_differences": config_diffs,
            "sweep_accesses": {"kernel": len(kernel.get("sweep", {}).get(ids, [])),
                               "ours": len(ours.get("sweep", {}).get(ids, []))},
            "sweep_differences": sweep_diffs,
            "unexplained": sum(1 for d in config_diffs + sweep_diffs if not d["explained"]),
        }
    klat, olat = kernel.get("latency", {}), ours.get("latency", {})
    latency = {"kernel_us_per_read": klat.get("us_per_read"), "ours_us_per_read": olat.get("us_per_read"),
               "reads": klat.get("reads")}
    if klat.get("us_per_read") and olat.get("us_per_read"):
        latency["ratio_ours_to_kernel"] = olat["us_per_read"] / klat["us_per_read"]
    return {
        "devices": devices,
        "lspci_xxxx_identical": kernel.get("lspci_xxxx") == ours.get("lspci_xxxx"),
        "latency": latency,
        "bar0": {"kernel": kernel.get("bar0"), "ours": ours.get("bar0")},
        "interrupts": {side: {mode: {"lines": v.get("lines"), "counts": v.get("counts")}
                              for mode, v in d.get("interrupts", {}).items()}
                       for side, d in (("kernel", kernel), ("ours", ours))},
        "hotplug": {"kernel": kernel.get("hotplug"), "ours": ours.get("hotplug")},
        # Where each function sits in the guest, and the multi-function device's slot (its
        # functions together, their numbers kept, function 0's header type); the slot number
        # itself is each backend's pick (pcifront lists the order the devices were exported in).
        "guest_addresses": {"kernel": kernel.get("guest_bdfs"), "ours": ours.get("guest_bdfs")},
        "multifunction": {"kernel": kernel.get("multifunction"), "ours": ours.get("multifunction")},
        # AER (issue 13, item 5): what each backend relayed to the guest, and where it stopped.
        "aer": {"kernel": aer_side(kernel.get("aer", {})), "ours": aer_side(ours.get("aer", {}))},
        "unexplained": sum(d["unexplained"] for d in devices.values()),
    }


def _line(text: str) -> str:
    """A kernel log line without its timestamp."""
    return text.split("] ", 1)[-1].strip()


def aer_side(aer: dict) -> dict | None:
    """How far the injected errors went with one backend (``run_xen.aer_guest``'s facts):
    where each stopped, dom0's AER core, the uevents, what the guest's kernel logged, aerState."""
    if not aer or "port" not in aer:
        return None
    port, device, cor = aer["port"], aer.get("device", {}), aer.get("correctable", {})
    return {
        "dom0_driver": aer.get("dom0_driver"),
        "e1000e_error": {"uncor_status_dom0": aer.get("dom0_uncor_status"),
                         "uncor_status_guest": aer.get("guest_uncor_status"),
                         "devctl_after_write_0xf": aer.get("devctl_after_write_0xf"),
                         "reached_dom0_aer_core": device.get("verdict_s", -1) >= 0},
        "root_port_error": {
            "reached_dom0_aer_core": port.get("verdict_s", -1) >= 0,
            "dom0": [_line(x) for x in port.get("dom0_log", [])
                     if "AER" in x or "recover" in x or "pciback" in x],
            "uevents": [f"{e.get('PCI_SLOT_NAME')} {e.get('ERROR_EVENT')} (driver {e.get('DRIVER')})"
                        for e in port.get("uevents", []) if e.get("ERROR_EVENT")],
            "guest": [_line(x) for x in port.get("guest_log", [])
                      if "pcifront" in x or "AER" in x or "aer" in x],
            "aerState": port.get("aerState"),
            "serve": port.get("serve_log", []),
        },
        "correctable_reached_dom0": cor.get("verdict_s", -1) >= 0,
        "outcome": aer.get("outcome"),
    }


def _fmt(value: object) -> str:
    return "-" if value is None else (f"{value:02x}" if isinstance(value, int) else str(value))


def text(report: dict) -> str:
    lines = ["Side by side: the guest's view through the kernel's xen-pciback vs ours", ""]
    for ids, dev in report["devices"].items():
        lines.append(f"device {ids}: config size kernel {dev['config_size']['kernel']} / ours "
                     f"{dev['config_size']['ours']}; sweep accesses {dev['sweep_accesses']['kernel']} / "
                     f"{dev['sweep_accesses']['ours']}; unexplained differences: {dev['unexplained']}")
        for d in dev["config_differences"]:
            lines.append(f"  config {d['offset']:#05x}: kernel {_fmt(d['kernel'])} ours "
                         f"{_fmt(d['ours'])}  -- {d['explained'] or 'UNEXPLAINED'}")
        for d in dev["sweep_differences"]:
            lines.append(f"  sweep {d['offset']:#05x}/{d['size']}: kernel {d['kernel']} ours "
                         f"{d['ours']}  -- {d['explained'] or 'UNEXPLAINED'}")
    lat = report["latency"]
    lines += ["", f"latency per config read (guest-side, {lat.get('reads')} reads): kernel "
              f"{_fmt(round(lat['kernel_us_per_read'], 1) if lat.get('kernel_us_per_read') else None)} us, "
              f"ours {_fmt(round(lat['ours_us_per_read'], 1) if lat.get('ours_us_per_read') else None)} us, "
              f"ratio {_fmt(round(lat['ratio_ours_to_kernel'], 2) if lat.get('ratio_ours_to_kernel') else None)}",
              f"lspci -xxxx identical: {report['lspci_xxxx_identical']}",
              f"BAR0: {json.dumps(report['bar0'])}",
              f"interrupts: {json.dumps(report['interrupts'])}",
              f"hot-plug: {json.dumps(report['hotplug'])}",
              f"guest addresses: {json.dumps(report.get('guest_addresses'))}",
              f"multi-function device: {json.dumps(report.get('multifunction'))}",
              ""]
    for side in ("kernel", "ours"):
        aer = report.get("aer", {}).get(side)
        if not aer:
            lines.append(f"AER, {side}'s backend: no data")
            continue
        rp = aer["root_port_error"]
        lines += [f"AER, {side}'s backend (e1000e held by {aer['dom0_driver']} in dom0):",
                  f"  e1000e COMP_TIME: status {_fmt(aer['e1000e_error']['uncor_status_dom0'])} in dom0, "
                  f"{_fmt(aer['e1000e_error']['uncor_status_guest'])} in the guest; reached dom0's AER core: "
                  f"{aer['e1000e_error']['reached_dom0_aer_core']} (QEMU's e1000e: Device Control "
                  f"error-reporting bits read-only 0, {_fmt(aer['e1000e_error']['devctl_after_write_0xf'])} "
                  "after dom0 wrote 0xf)",
                  f"  root port COMP_TIME: reached dom0's AER core: {rp['reached_dom0_aer_core']}",
                  *[f"    dom0: {x}" for x in rp["dom0"]],
                  *[f"    uevent: {x}" for x in rp["uevents"]],
                  *[f"    serve: {x.removeprefix('serve: ')}" for x in rp["serve"]],
                  *[f"    guest: {x}" for x in rp["guest"] or ["(nothing relayed)"]],
                  f"    backend aerState: {rp['aerState']}",
                  f"  root port RCVR (correctable): reached dom0: {aer['correctable_reached_dom0']} "
                  "(QEMU 7.2 forwards no correctable message)"]
    lines.append(f"unexplained differences in all: {report['unexplained']}")
    return "\n".join(lines) + "\n"


def write(data: dict, directory: Path) -> dict:
    report = build(data)
    (directory / "side-by-side.json").write_text(json.dumps(report, indent=1, sort_keys=True))
    (directory / "side-by-side.txt").write_text(text(report))
    return report

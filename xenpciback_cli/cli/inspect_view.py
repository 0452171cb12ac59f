"""Rendering ``inspect`` reports for a person: readable on a terminal, plain when piped."""

from __future__ import annotations

from typing import Any

from xenpciback_cli.cli.terminal import Terminal


def _size(value: int | None) -> str:
    if value is None:
        return "size unknown"
    size = int(value)
    if size == 0:
        return "unassigned"
    for unit, shift in (("G", 30), ("M", 20), ("K", 10)):
        if size >= 1 << shift and size % (1 << shift) == 0:
            return f"size {size >> shift}{unit}"
    return f"size {size}"


def _hexdump(term: Terminal, hw: bytes, guest: bytes, *, show_guest: bool, diff: bool) -> None:
    data = guest if show_guest else hw
    for offset in range(0, len(data), 16):
        row = data[offset:offset + 16]
        other = (hw if show_guest else guest)[offset:offset + 16]
        if diff and row == other:
            continue
        cells = []
        for i, b in enumerate(row):
            mark = "*" if i < len(other) and other[i] != b else " "
            cells.append(f"{b:02x}{mark}")
        term.line(f"    {offset:03x}: " + " ".join(cells).rstrip())


def render(term: Terminal, reports: list[dict[str, Any]], *, guest: bool, diff: bool,
           hexdump: bool = False) -> None:
    for number, rep in enumerate(reports):
        if number:
            term.line()
        head = rep["header"]
        title = f"  {rep['title']}" if rep["title"] else ""
        term.line(f"{rep['bdf']} [{rep['vendor_id'][2:]}:{rep['device_id'][2:]}] class "
                  f"{rep['class'][2:]} header type {rep['header_type']}{title}")
        term.line(f"  source: {rep['source']}, {rep['config_bytes']} of {rep['config_size']} "
                  "bytes readable")
        for note in rep["notes"]:
            term.line(f"  note: {note}")
        if rep.get("grants"):
            from xenpciback_cli.engine.grants import Grant

            record = rep["grants"]
            term.line(f"  granted to domain {record['domid']} ({record['phase']}): "
                      + ", ".join(Grant.from_json(g, "grant").describe() for g in record["grants"]))
        if not diff:
            term.line(f"  command {head['command']}  status {head['status']}  revision "
                      f"{head['revision']}  irq line {head['interrupt_line']} pin "
                      f"{head['interrupt_pin']}")
            if "bridge" in head:
                br = head["bridge"]
                term.line(f"  bus: primary {br['primary_bus']:02x} secondary "
                          f"{br['secondary_bus']:02x} subordinate {br['subordinate_bus']:02x}")
            term.line("  BARs:" if rep["bars"] else "  BARs: none")
            for bar in rep["bars"]:
                kind = "I/O" if bar["type"] == "io" else (
                    ("64-bit " if bar["64bit"] else "32-bit ")
                    + ("prefetchable " if bar["prefetchable"] else "") + "memory")
                term.line(f"    BAR{bar['index']} [{bar['offset']:02x}] {kind} at {bar['address']}"
                          f" ({_size(bar['size'])})")
            if rep["rom"]:
                rom = rep["rom"]
                term.line(f"    ROM [{rom['offset']:02x}] at {rom['address']} "
                          f"({'enabled' if rom['enabled'] else 'disabled'}, {_size(rom['size'])})")
            term.line("  Capabilities:" if rep["capabilities"] else "  Capabilities: none")
            for cap in rep["capabilities"]:
                detail = f" {cap['detail']}" if cap.get("detail") else ""
                term.line(f"    [{cap['offset']:02x}] {cap['name']}{detail} (id {cap['id']})")
            if rep["extended_capabilities"]:
                term.line("  Extended capabilities:")
            for cap in rep["extended_capabilities"]:
                term.line(f"    [{cap['offset']:03x} v{cap['version']}] {cap['name']} "
                          f"(id {cap['id']})")
            for problem in rep["problems"]:
                term.line(f"  problem: {problem}")
        fields = [f for f in rep["fields"] if f["differs"]] if diff else rep["fields"]
        term.line("  Guest view (overlay)" + (": fields where guest and hardware differ"
                                               if diff else "") + ":")
        rows = [[f"{f['offset']:03x}", f["size"], f["name"], f["read"], f["hardware_value"] or "?",
                 f["guest_value"] or "?", f["write_effect"]] for f in fields]
        if rows:
            term.table(["off", "size", "field", "read", "hardware", "guest", "guest write"], rows,
                       empty="-", names=("field", "guest write"))
        else:
            term.line("    (none)")
        term.line(f"  other registers: {rep['other_registers']}")
        for write in rep.get("guest_writes", []):
            changes = ", ".join(f"{c['offset']:03x}: {c['before']}->{c['after']}"
                                for c in write["hardware_changes"]) or "nothing"
            back = write["guest_reads_back"]
            if back is None:
                back = f"nothing (err {write['read_err']} {write['read_err_name']})"
            term.line(f"  guest write {write['size']} bytes {write['value']} at "
                      f"{write['offset']:#x}: err {write['err']} {write['err_name']}, reached "
                      f"hardware: {changes}; guest reads back {back}")
        if not hexdump:
            continue
        hw = bytes.fromhex(rep["config"])
        guest_bytes = bytes.fromhex(rep["guest_config"])
        which = "guest view" if guest else "hardware"
        term.line(f"  Config space ({which}; * = differs from the "
                  f"{'hardware' if guest else 'guest view'}):")
        if diff and hw[:len(guest_bytes)] == guest_bytes:
            term.line("    (identical)")
        _hexdump(term, hw[:len(guest_bytes)], guest_bytes, show_guest=guest, diff=diff)

"""Traces made in-process (no sandbox): a device from a sandbox capture exported to a
GuestSession, ops run through it and written as docs/trace-format.md says, so their recorded
answers are the engine's own. For replay, trace show|stats|diff tests and bench_replay."""

from __future__ import annotations

import json
import random
from collections.abc import Iterable
from pathlib import Path

from xenpciback_cli.backend.session import GuestSession
from xenpciback_cli.config.fields import MemoryAccessor
from xenpciback_cli.pci.address import Bdf
from xenpciback_cli.pci.device import PciDevice
from xenpciback_cli.pv.codec import decode_op, encode_op
from xenpciback_cli.pv.trace import DeviceSnapshot, TraceRecord, header_dict, op_dict

CAPTURES = Path(__file__).resolve().parents[2] / "xenpciback_cli" / "sandbox" / "captures"
HOST, GUEST = "0000:03:00.0", "0000:00:00.0"
READ, WRITE, ENABLE_MSIX, DISABLE_MSIX = 0, 1, 4, 5
#: What a driver touches: the header, BARs, capabilities of the 82576 capture (PM at 0x40,
#: MSI at 0x50, MSI-X at 0x70, Express at 0xa0), and the extended space (AER at 0x100).
REGISTERS = [(0x00, 4), (0x04, 2), (0x06, 2), (0x08, 4), (0x0C, 4), (0x10, 4), (0x14, 4),
             (0x18, 4), (0x2C, 4), (0x34, 1), (0x3C, 1), (0x40, 4), (0x44, 2), (0x50, 4),
             (0x70, 4), (0x72, 2), (0xA0, 4), (0xA8, 2), (0x100, 4), (0x104, 4)]


class _Control:
    """Interrupt control of a test hypervisor: PIRQs 50 (MSI), 100+ (MSI-X), 11 (INTx)."""

    def enable_msi(self, domid, host):
        return 50

    def disable_msi(self, domid, host):
        return None

    def enable_msix(self, domid, host, entries):
        return [100 + i for i in range(len(entries))]

    def disable_msix(self, domid, host):
        return None

    def legacy_pirq(self, domid, host):
        return 11

    def adopt(self, domid, host, kind, entries, pirqs):
        return None


def config() -> bytes:
    data = (CAPTURES / "nic-intel-82576-sriov.bin").read_bytes()
    return data + bytes(4096 - len(data))


class TraceMaker:
    """A trace being written: ``op(cmd, offset, size, value)`` runs it and writes its line."""

    def __init__(self, path: Path, *, permissive: bool = False, domid: int = 7,
                 quirks: tuple[str, ...] = ()) -> None:
        self.out = open(path, "w", encoding="utf-8")  # noqa: SIM115 - closed by close()
        self.domid = domid
        data = config()
        host = Bdf.parse(HOST)
        self.session = GuestSession(domid, _Control())
        self.session.export(host, MemoryAccessor(data), device=PciDevice(
            host, 0x8086, 0x10C9, 0, 0, irq=11), permissive=permissive,
                            guest=Bdf.parse(GUEST))
        snap = DeviceSnapshot(domid, HOST, GUEST, 0x8086, 0x10C9, 11, (), data, permissive,
                              quirks)
        self.time = 1_700_000_000.0
        self._write(header_dict("test", "vpci", (snap,)))

    def _write(self, data: dict) -> None:
        self.out.write(json.dumps(data, separators=(",", ":")) + "\n")

    def op(self, cmd: int, offset: int = 0, size: int = 4, value: int = 0,
           entries: tuple[int, ...] = (), devfn: int = 0) -> tuple:
        op = decode_op(encode_op(cmd, 0, 0, devfn, offset, size, value,
                                 msix_entries=tuple((0, e) for e in entries)))
        result = self.session.handle(op)
        record = TraceRecord.of(self.domid, op.raw, result)
        self.time += 0.000125
        host = HOST if (0, 0, devfn) in self.session.devices else None
        self._write(op_dict(record, self.time, host))
        return result

    def line(self, data: dict) -> None:
        self._write(data)

    def close(self) -> None:
        self.out.close()


def driver_session(path: Path, ops: int, *, seed: int = 1, permissive: bool = False,
                   unique: bool = False) -> Path:
    """``ops`` ops as a driver's probe and runtime would send them: mostly reads, one in five a
    write (BAR sizing, COMMAND, a scratch value); ``unique``: every write a new value, so no
    two lines are alike (the replay's worst case)."""
    rnd = random.Random(seed)
    maker = TraceMaker(path, permissive=permissive)
    for i in range(ops):
        offset, size = rnd.choice(REGISTERS)
        if rnd.random() < 0.2:
            value = (i * 2654435761 if unique else
                     rnd.choice([0xFFFFFFFF, 0x0006, 0, 0x12345678]))
            maker.op(WRITE, offset, size, value & ((1 << (8 * size)) - 1))
        else:
            maker.op(READ, offset, size)
    maker.close()
    return path


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def write_lines(path: Path, items: Iterable[dict]) -> Path:
    path.write_text("".join(json.dumps(x, separators=(",", ":")) + "\n" for x in items))
    return path

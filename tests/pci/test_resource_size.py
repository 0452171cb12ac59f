"""The size of a sysfs ``resource`` line: one rule, used by the host model, the decoder and the
overlay alike (they used to disagree on lines whose end is not above their start)."""

from __future__ import annotations

import pytest

from xenpciback_cli.config import decode
from xenpciback_cli.config.fields import MemoryAccessor
from xenpciback_cli.config.overlay import OverlayDevice
from xenpciback_cli.pci.device import Resource
from xenpciback_cli.pci import ioresource

IO = ioresource.IO | 0x1  # what the kernel shows for an I/O BAR (the BAR's low bits included)


@pytest.mark.parametrize(("start", "end", "size"), [
    pytest.param(0, 0, 0, id="unset-slot-0x0-0x0"),
    pytest.param(0xE000, 0xE000, 1, id="one-byte-start-equals-end"),
    pytest.param(0xE000, 0xE0FF, 0x100, id="ordinary"),
    pytest.param(0, 0xFFFF, 0x10000, id="unset-bar-keeps-its-size-at-zero"),
    pytest.param(0xE0FF, 0xE000, 0, id="end-below-start"),
    pytest.param(0xE000, 0, 0, id="end-zero"),
])
def test_resource_size_edge_cases(start, end, size):
    assert Resource(0, start, end, IO).size == size


def _io_bar_config(address: int) -> bytes:
    data = bytearray(256)
    data[0:4] = (0x10C98086).to_bytes(4, "little")
    data[0x10:0x14] = (address | 1).to_bytes(4, "little")
    return bytes(data)


@pytest.mark.parametrize(("start", "end", "size"), [(0xE000, 0xE000, 1), (0xE0FF, 0xE000, 0)])
def test_decoder_and_overlay_agree_with_the_model(start, end, size):
    resources = [Resource(0, start, end, IO)]
    data = _io_bar_config(start)
    (bar,) = decode.decode_bars(data, resources)
    assert bar.size == size
    overlay = OverlayDevice(MemoryAccessor(data), resources=resources)
    field = overlay.field_at(0x10)
    assert field is not None and field.bar_len == (((-size) & 0xFFFFFFFF) | 1 if size else 0)

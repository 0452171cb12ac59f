"""Little-endian reads of config-space bytes (config space is little-endian), named once.

Precompiled ``struct.Struct`` readers: an offset that runs past ``data`` raises ``struct.error``,
so callers check bounds first (a short read is never silently a smaller number).
"""

from __future__ import annotations

import struct

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")


def u16(data: bytes | bytearray, offset: int) -> int:
    value: int = _U16.unpack_from(data, offset)[0]
    return value


def u32(data: bytes | bytearray, offset: int) -> int:
    value: int = _U32.unpack_from(data, offset)[0]
    return value

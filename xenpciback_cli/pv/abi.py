"""Xen's ``io/pciif.h``: the constants and layouts of the page a PV PCI frontend shares.

Numbers from Xen's ``xen/include/public/io/pciif.h`` and its Linux copy
``include/xen/interface/io/pciif.h`` (spec: ``pciback.md`` §1). Every struct is little-endian with
natural alignment and no padding; the layouts are precompiled ``struct.Struct`` objects so the
per-op path does no format parsing. Only names and numbers here, no behaviour.
"""

from __future__ import annotations

import struct
from enum import IntEnum

#: ``XEN_PCI_MAGIC``: the frontend's ``magic`` node (bumped if the page layout ever changes).
XEN_PCI_MAGIC = "7"
#: One granted page holds ``struct xen_pci_sharedinfo`` at offset 0.
PAGE_SIZE = 4096
#: ``SH_INFO_MAX_VEC``: size of ``msix_entries[]`` (the header says it must not exceed 128).
SH_INFO_MAX_VEC = 128


class PciOp(IntEnum):
    """``XEN_PCI_OP_*``: ``xen_pci_op.cmd`` (0-5, 10) and ``xen_pcie_aer_op.cmd`` (6-9)."""

    CONF_READ = 0
    CONF_WRITE = 1
    ENABLE_MSI = 2
    DISABLE_MSI = 3
    ENABLE_MSIX = 4
    DISABLE_MSIX = 5
    AER_DETECTED = 6
    AER_RESUME = 7
    AER_MMIO = 8
    AER_SLOTRESET = 9
    #: Only in Xen's copy of the header (the "classic" pcifront); Linux's pciback answers -4.
    ENABLE_MULTI_MSI = 10


class XenPciErr(IntEnum):
    """``XEN_PCI_ERR_*``: the ``err`` field of a ``xen_pci_op`` (negative errno values may also
    appear, :class:`Errno`)."""

    SUCCESS = 0
    DEV_NOT_FOUND = -1
    INVALID_OFFSET = -2
    ACCESS_DENIED = -3
    NOT_IMPLEMENTED = -4
    OP_FAILED = -5


class Errno(IntEnum):
    """The raw negative Linux errno values the MSI-X op puts in ``err`` (x86 numbers, §3.5)."""

    ENXIO = -6
    ENOMEM = -12
    EINVAL = -22
    ENOSPC = -28
    EALREADY = -114


class FlagBit(IntEnum):
    """Bit numbers in ``xen_pci_sharedinfo.flags`` (``_XEN_PCIF_active`` and friends)."""

    #: ``_XEN_PCIF_active``: the frontend set it, an op waits; the backend clears it when done.
    PCIF_ACTIVE = 0
    #: ``_XEN_PCIB_AERHANDLER``: the frontend has a PV AER handler.
    PCIB_AERHANDLER = 1
    #: ``_XEN_PCIB_active``: the backend set it, an AER request waits in ``aer_op``.
    PCIB_ACTIVE = 2


#: The masks (``XEN_PCIF_active`` = 1 << ``_XEN_PCIF_active``, ...).
XEN_PCIF_ACTIVE = 1 << FlagBit.PCIF_ACTIVE
XEN_PCIB_AERHANDLER = 1 << FlagBit.PCIB_AERHANDLER
XEN_PCIB_ACTIVE = 1 << FlagBit.PCIB_ACTIVE


class ErsResult(IntEnum):
    """``pci_ers_result``: what a frontend writes to ``aer_op.err`` as its answer."""

    NONE = 1
    CAN_RECOVER = 2
    NEED_RESET = 3
    DISCONNECT = 4
    RECOVERED = 5
    NO_AER_DRIVER = 6


class ChannelState(IntEnum):
    """``pci_channel_state``: what the backend puts in ``aer_op.err`` for ``aer_detected``."""

    NORMAL = 1
    FROZEN = 2
    PERM_FAILURE = 3


# -- layouts --------------------------------------------------------------------------------
#: ``struct xen_pci_op``'s header: cmd, err, domain, bus, devfn, offset, size, value, info.
OP_HEADER = struct.Struct("<IiIIIiiII")
#: ``struct xen_msix_entry``: vector (OUT: pirq), entry (IN: MSI-X table index).
MSIX_ENTRY = struct.Struct("<HH")
#: ``msix_entries[SH_INFO_MAX_VEC]`` as a flat run of (vector, entry) pairs.
MSIX_ENTRIES = struct.Struct(f"<{2 * SH_INFO_MAX_VEC}H")
#: ``struct xen_pci_op``: the header, then the MSI-X entries (548 bytes).
PCI_OP = struct.Struct(OP_HEADER.format + f"{2 * SH_INFO_MAX_VEC}H")
#: ``struct xen_pcie_aer_op``: cmd, err, domain, bus, devfn (20 bytes).
AER_OP = struct.Struct("<IiIII")
#: ``struct xen_pci_sharedinfo``: flags, op, aer_op (572 bytes).
SHARED_INFO = struct.Struct("<I" + PCI_OP.format[1:] + AER_OP.format[1:])
FLAGS = struct.Struct("<I")
ERR = struct.Struct("<i")
VALUE = struct.Struct("<I")
VECTOR = struct.Struct("<H")

# -- byte offsets in the page (pciif.h; checked against gcc's layout, spec §1.3) ------------
FLAGS_OFFSET = 0
OP_OFFSET = 4
OP_SIZE = PCI_OP.size                 # 548
OP_END = OP_OFFSET + OP_SIZE          # 552
#: Field offsets inside ``xen_pci_op`` (add ``OP_OFFSET`` for the page).
OP_FIELD_OFFSETS = {"cmd": 0, "err": 4, "domain": 8, "bus": 12, "devfn": 16, "offset": 20,
                    "size": 24, "value": 28, "info": 32, "msix_entries": 36}
ERR_OFFSET = OP_OFFSET + OP_FIELD_OFFSETS["err"]              # 8
VALUE_OFFSET = OP_OFFSET + OP_FIELD_OFFSETS["value"]          # 32
MSIX_OFFSET = OP_OFFSET + OP_FIELD_OFFSETS["msix_entries"]    # 40
AER_OP_OFFSET = OP_END                                         # 552
SHARED_INFO_SIZE = SHARED_INFO.size                            # 572

assert OP_HEADER.size == 36 and MSIX_ENTRY.size == 4 and PCI_OP.size == 548
assert AER_OP.size == 20 and SHARED_INFO_SIZE == 572 and MSIX_OFFSET + MSIX_ENTRIES.size == OP_END

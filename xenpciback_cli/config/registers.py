"""Config-space register offsets, bits and wire codes, named once so the rest reads like the spec.

Values are the PCI Local Bus / PCI Express specification numbers (also in Linux's pci_regs.h) and
the Xen PV protocol's ``XEN_PCI_ERR_*`` codes; only names and numbers, no behaviour.
"""

from __future__ import annotations

from enum import IntEnum, IntFlag

# The wire error codes are the PV ABI's (pv/abi.py); named here too, where the overlay uses them.
from xenpciback_cli.pv.abi import XenPciErr as XenPciErr

#: Conventional config space size and the PCI Express / PCI-X 2.0 extended size.
CONFIG_SIZE = 256
EXT_CONFIG_SIZE = 4096


class Reg(IntEnum):
    """Standard header registers (type 0 unless the name says BRIDGE)."""

    VENDOR_ID = 0x00
    DEVICE_ID = 0x02
    COMMAND = 0x04
    STATUS = 0x06
    REVISION_ID = 0x08
    CLASS_PROG = 0x09
    CLASS_DEVICE = 0x0A
    CACHE_LINE_SIZE = 0x0C
    LATENCY_TIMER = 0x0D
    HEADER_TYPE = 0x0E
    BIST = 0x0F
    BAR0 = 0x10
    CARDBUS_CIS = 0x28
    SUBSYSTEM_VENDOR_ID = 0x2C
    SUBSYSTEM_ID = 0x2E
    ROM_ADDRESS = 0x30
    CAPABILITY_LIST = 0x34
    INTERRUPT_LINE = 0x3C
    INTERRUPT_PIN = 0x3D
    MIN_GNT = 0x3E
    MAX_LAT = 0x3F
    # type 1 (PCI-to-PCI bridge)
    BRIDGE_PRIMARY_BUS = 0x18
    BRIDGE_SECONDARY_BUS = 0x19
    BRIDGE_SUBORDINATE_BUS = 0x1A
    BRIDGE_SEC_LATENCY = 0x1B
    BRIDGE_IO_BASE = 0x1C
    BRIDGE_IO_LIMIT = 0x1D
    BRIDGE_SEC_STATUS = 0x1E
    BRIDGE_MEMORY_BASE = 0x20
    BRIDGE_MEMORY_LIMIT = 0x22
    BRIDGE_PREF_MEMORY_BASE = 0x24
    BRIDGE_PREF_MEMORY_LIMIT = 0x26
    BRIDGE_PREF_BASE_UPPER32 = 0x28
    BRIDGE_PREF_LIMIT_UPPER32 = 0x2C
    BRIDGE_IO_BASE_UPPER16 = 0x30
    BRIDGE_IO_LIMIT_UPPER16 = 0x32
    BRIDGE_ROM_ADDRESS = 0x38
    BRIDGE_CONTROL = 0x3E
    # type 2 (CardBus bridge): the capability pointer lives elsewhere
    CARDBUS_CAPABILITY_LIST = 0x14


class HeaderType(IntEnum):
    NORMAL = 0
    BRIDGE = 1
    CARDBUS = 2


class Command(IntFlag):
    IO = 0x001
    MEMORY = 0x002
    MASTER = 0x004
    SPECIAL = 0x008
    INVALIDATE = 0x010
    VGA_PALETTE = 0x020
    PARITY = 0x040
    WAIT = 0x080
    SERR = 0x100
    FAST_BACK = 0x200
    INTX_DISABLE = 0x400


#: COMMAND bits whose hardware value the guest sees and (through the PCI core or permissive mode)
#: may influence; everything else in COMMAND is virtual (XSA-120).
COMMAND_GUEST_BITS = (Command.MASTER | Command.SPECIAL | Command.INVALIDATE | Command.VGA_PALETTE
                      | Command.WAIT | Command.FAST_BACK)  # 0x02BC

STATUS_CAP_LIST = 0x0010
HEADER_TYPE_MASK = 0x7F
HEADER_MULTIFUNCTION = 0x80
BIST_START = 0x40

BAR_SPACE_IO = 0x01
BAR_MEM_TYPE_MASK = 0x06
BAR_MEM_TYPE_32 = 0x00
BAR_MEM_TYPE_1M = 0x02
BAR_MEM_TYPE_64 = 0x04
BAR_MEM_PREFETCH = 0x08
BAR_IO_ADDR_MASK = ~0x03 & 0xFFFFFFFF
BAR_MEM_ADDR_MASK = ~0x0F & 0xFFFFFFFF
ROM_ENABLE = 0x01
ROM_ADDR_MASK = ~0x7FF & 0xFFFFFFFF

#: Resource index of the expansion ROM in sysfs ``resource`` (after the six BARs).
ROM_RESOURCE_INDEX = 6


class CapId(IntEnum):
    """Standard capability ids (list starting at the pointer in 0x34)."""

    NULL = 0x00
    PM = 0x01
    AGP = 0x02
    VPD = 0x03
    SLOTID = 0x04
    MSI = 0x05
    CHSWP = 0x06
    PCIX = 0x07
    HT = 0x08
    VNDR = 0x09
    DBG = 0x0A
    CCRC = 0x0B
    SHPC = 0x0C
    SSVID = 0x0D
    AGP3 = 0x0E
    SECDEV = 0x0F
    EXP = 0x10
    MSIX = 0x11
    SATA = 0x12
    AF = 0x13
    EA = 0x14
    FPB = 0x15


class ExtCapId(IntEnum):
    """PCI Express extended capability ids (list starting at 0x100)."""

    NULL = 0x00
    ERR = 0x01
    VC = 0x02
    DSN = 0x03
    PWR = 0x04
    RCLINK = 0x05
    RCILINK = 0x06
    RCEC = 0x07
    MFVC = 0x08
    VC9 = 0x09
    RCRB = 0x0A
    VNDR = 0x0B
    CAC = 0x0C
    ACS = 0x0D
    ARI = 0x0E
    ATS = 0x0F
    SRIOV = 0x10
    MRIOV = 0x11
    MCAST = 0x12
    PRI = 0x13
    AMD_XXX = 0x14
    REBAR = 0x15
    DPA = 0x16
    TPH = 0x17
    LTR = 0x18
    SECPCI = 0x19
    PMUX = 0x1A
    PASID = 0x1B
    LNR = 0x1C
    DPC = 0x1D
    L1SS = 0x1E
    PTM = 0x1F
    MPCIE = 0x20
    FRS = 0x21
    RTR = 0x22
    DVSEC = 0x23
    VF_REBAR = 0x24
    DLF = 0x25
    PL_16GT = 0x26
    LMR = 0x27
    HIER_ID = 0x28
    NPEM = 0x29
    PL_32GT = 0x2A
    ALT_PROTO = 0x2B
    SFI = 0x2C
    SHADOW = 0x2D
    DOE = 0x2E
    DEV3 = 0x2F
    IDE = 0x30
    PL_64GT = 0x31
    FLIT_LOG = 0x32
    FLIT_PERF = 0x33
    FLIT_ERR_INJ = 0x34


# Capability-relative registers used by the overlay.
PM_PMC = 2
PM_CTRL = 4
PM_PPB_EXTENSIONS = 6
PM_DATA = 7
PM_CAP_PME_MASK = 0xF800
PM_CAP_D1 = 0x0200
PM_CAP_D2 = 0x0400
PM_CTRL_STATE_MASK = 0x0003
PM_CTRL_PME_ENABLE = 0x0100
PM_CTRL_DATA_SEL_MASK = 0x1E00
PM_CTRL_PME_STATUS = 0x8000

VPD_ADDR = 2
VPD_DATA = 4
VPD_ADDR_F = 0x8000

MSI_FLAGS = 2
MSI_FLAGS_ENABLE = 0x0001
MSI_FLAGS_64BIT = 0x0080
MSI_FLAGS_MASKBIT = 0x0100
MSIX_FLAGS = 2
MSIX_FLAGS_ENABLE = 0x8000
MSIX_FLAGS_MASKALL = 0x4000

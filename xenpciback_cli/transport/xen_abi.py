"""The binary interfaces real Xen's adapters speak, as data: Linux's ``/dev/xen/gntdev`` and
``/dev/xen/evtchn`` ioctls (numbers and struct layouts), the physdev hypercall numbers, and the C
prototypes of the libxenctrl/libxencall functions called through ctypes.

Nothing here opens anything, so tests can compare every number and layout with the installed C
headers (``tests/transport/test_xen_abi.py`` compiles a small program with gcc and compares, and
re-declares each prototype after including the header: a mismatch is a compile error).

Ioctl numbers follow ``asm-generic/ioctl.h`` (x86 and arm64, the architectures Xen's dom0 runs
on): ``dir << 30 | size << 16 | type << 8 | nr``. All of these use ``_IOC_NONE`` (0): the
kernel copies the struct in (and out) itself whatever the direction bits say.
"""

from __future__ import annotations

import struct

PAGE_SIZE = 4096

_IOC_NONE = 0
_IOC_NRSHIFT = 0
_IOC_TYPESHIFT = 8
_IOC_SIZESHIFT = 16
_IOC_DIRSHIFT = 30


def ioc(direction: int, kind: str, nr: int, size: int) -> int:
    """Linux's ``_IOC(dir, type, nr, size)``."""
    return (direction << _IOC_DIRSHIFT) | (ord(kind) << _IOC_TYPESHIFT) \
        | (nr << _IOC_NRSHIFT) | (size << _IOC_SIZESHIFT)


# -- /dev/xen/gntdev (xen/sys/gntdev.h) ------------------------------------------------------------
#: struct ioctl_gntdev_grant_ref { uint32_t domid; uint32_t ref; }
GNTDEV_GRANT_REF = struct.Struct("=II")
#: struct ioctl_gntdev_map_grant_ref { uint32_t count; uint32_t pad; uint64_t index;
#: struct ioctl_gntdev_grant_ref refs[1]; } -- one ref: the 24 bytes the ioctl number encodes
GNTDEV_MAP_GRANT_REF = struct.Struct("=IIQII")
#: struct ioctl_gntdev_unmap_grant_ref { uint64_t index; uint32_t count; uint32_t pad; }
GNTDEV_UNMAP_GRANT_REF = struct.Struct("=QII")

IOCTL_GNTDEV_MAP_GRANT_REF = ioc(_IOC_NONE, "G", 0, GNTDEV_MAP_GRANT_REF.size)
IOCTL_GNTDEV_UNMAP_GRANT_REF = ioc(_IOC_NONE, "G", 1, GNTDEV_UNMAP_GRANT_REF.size)

# -- /dev/xen/evtchn (xen/sys/evtchn.h) ------------------------------------------------------------
#: struct ioctl_evtchn_bind_interdomain { unsigned int remote_domain, remote_port; }
EVTCHN_BIND_INTERDOMAIN = struct.Struct("=II")
#: struct ioctl_evtchn_unbind / ioctl_evtchn_notify { unsigned int port; }
EVTCHN_PORT = struct.Struct("=I")

IOCTL_EVTCHN_BIND_INTERDOMAIN = ioc(_IOC_NONE, "E", 1, EVTCHN_BIND_INTERDOMAIN.size)
IOCTL_EVTCHN_UNBIND = ioc(_IOC_NONE, "E", 3, EVTCHN_PORT.size)
IOCTL_EVTCHN_NOTIFY = ioc(_IOC_NONE, "E", 4, EVTCHN_PORT.size)
IOCTL_EVTCHN_RESET = ioc(_IOC_NONE, "E", 5, 0)

# -- the physdev hypercall (xen/xen.h, xen/physdev.h) ----------------------------------------------
HYPERVISOR_PHYSDEV_OP = 33
PHYSDEVOP_PREPARE_MSIX = 30
PHYSDEVOP_RELEASE_MSIX = 31
#: struct physdev_pci_device { uint16_t seg; uint8_t bus; uint8_t devfn; }
PHYSDEV_PCI_DEVICE = struct.Struct("=HBB")
DOMID_IO = 0x7FF1

# -- device assignment (xen/domctl.h) --------------------------------------------------------------
#: ``xc_assign_device``'s flag: reserved device memory conflicts are warnings, not refusals.
XEN_DOMCTL_DEV_RDM_RELAXED = 1


def machine_sbdf(segment: int, bus: int, devfn: int) -> int:
    """libxl's ``pci_encode_bdf``: the ``machine_sbdf`` argument of (de)assign."""
    return (segment & 0xFFFF) << 16 | (bus & 0xFF) << 8 | (devfn & 0xFF)

# -- the library functions called through ctypes ---------------------------------------------------
#: name -> (C return type, C parameter types), exactly as spelt in the headers (xenctrl.h,
#: xencall.h). The ctypes prototypes are derived from these; the test re-declares them in C.
XENCTRL_FUNCTIONS: dict[str, tuple[str, tuple[str, ...]]] = {
    "xc_interface_open": ("xc_interface *", ("xentoollog_logger *", "xentoollog_logger *",
                                             "unsigned")),
    "xc_interface_close": ("int", ("xc_interface *",)),
    "xc_physdev_map_pirq_msi": ("int", ("xc_interface *", "uint32_t", "int", "int *", "int", "int",
                                        "int", "uint64_t")),
    "xc_physdev_unmap_pirq": ("int", ("xc_interface *", "uint32_t", "int")),
    # the domain's grants (transport/xen_grants.py): libxl's calls for a PV guest's device
    "xc_domain_iomem_permission": ("int", ("xc_interface *", "uint32_t", "unsigned long",
                                           "unsigned long", "uint8_t")),
    "xc_domain_ioport_permission": ("int", ("xc_interface *", "uint32_t", "uint32_t", "uint32_t",
                                            "uint32_t")),
    "xc_physdev_map_pirq": ("int", ("xc_interface *", "uint32_t", "int", "int *")),
    "xc_domain_irq_permission": ("int", ("xc_interface *", "uint32_t", "uint32_t", "bool")),
    "xc_assign_device": ("int", ("xc_interface *", "uint32_t", "uint32_t", "uint32_t")),
    "xc_deassign_device": ("int", ("xc_interface *", "uint32_t", "uint32_t")),
}
XENCALL_FUNCTIONS: dict[str, tuple[str, tuple[str, ...]]] = {
    "xencall_open": ("xencall_handle *", ("struct xentoollog_logger *", "unsigned")),
    "xencall_close": ("int", ("xencall_handle *",)),
    "xencall2": ("int", ("xencall_handle *", "unsigned int", "uint64_t", "uint64_t")),
    "xencall_alloc_buffer": ("void *", ("xencall_handle *", "size_t")),
    "xencall_free_buffer": ("void", ("xencall_handle *", "void *")),
}
#: The shared objects, most specific first (production dom0s have only the versioned name).
XENCTRL_LIBRARIES = ("libxenctrl.so.4.17", "libxenctrl.so")
XENCALL_LIBRARIES = ("libxencall.so.1", "libxencall.so")

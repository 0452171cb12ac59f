"""The Linux PCI drivers that can hold a device for a guest ("seize" drivers), named once.

Every layer that asks "is this device seized?", offers ``--driver``, validates a state file or
simulates a kernel takes the names from here.
"""

#: The kernel backend's PCI driver name (module ``xen-pciback`` registers driver ``pciback``).
PCIBACK_DRIVER = "pciback"
#: Drivers that merely hold a device for a guest or a userspace backend, ``pciback`` first.
SEIZE_DRIVERS = (PCIBACK_DRIVER, "pci-stub", "vfio-pci")
#: The module each comes from, for the "not loaded" message.
DRIVER_MODULES = {PCIBACK_DRIVER: "xen-pciback", "pci-stub": "pci-stub", "vfio-pci": "vfio-pci"}

#: Seize drivers that hold a device for someone other than a Xen PV backend, and for whom.
OTHER_CONSUMERS = {
    "vfio-pci": "VFIO users (QEMU/KVM, DPDK), not a Xen guest",
    "pci-stub": "a non-Xen consumer (KVM's legacy device assignment): with the kernel's pciback "
                "loaded, Xen guests are served only devices bound to pciback",
}


def serving_drivers(loaded_drivers: frozenset[str] | set[str]) -> frozenset[str]:
    """The drivers a device must be bound to for a Xen guest to be given it (the one rule
    ``attach``, ``list``, ``hide`` and ``doctor`` share).

    With the kernel's backend loaded (driver ``pciback``), only its devices: it serves every
    guest, and a device on pci-stub is someone else's. Without it, the userspace backend
    (``serve``) serves the guests, and a device held by pci-stub (the plain holder that needs no
    Xen module) is theirs too. vfio-pci's devices are never a Xen guest's."""
    if PCIBACK_DRIVER in loaded_drivers:
        return frozenset({PCIBACK_DRIVER})
    return frozenset({PCIBACK_DRIVER, "pci-stub"})


def default_seize_driver(loaded_drivers: frozenset[str] | set[str]) -> str:
    """What ``hide`` (and ``attach --seize``) binds a device to when no driver is named:
    pciback when the kernel backend is loaded, else pci-stub (for the userspace backend)."""
    return PCIBACK_DRIVER if PCIBACK_DRIVER in loaded_drivers else "pci-stub"

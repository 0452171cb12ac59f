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

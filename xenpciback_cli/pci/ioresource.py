"""Linux's ``IORESOURCE_*`` flag bits: the third column of a sysfs ``resource`` line.

The values are the kernel's (``include/linux/ioport.h``); every reader and writer of ``resource``
lines (the host model, the overlay, the simulated host) takes them from here.
"""

IO = 0x00000100
MEM = 0x00000200
PREFETCH = 0x00002000
READONLY = 0x00004000
SIZEALIGN = 0x00040000
MEM_64 = 0x00100000
DISABLED = 0x10000000
UNSET = 0x20000000

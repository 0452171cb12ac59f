"""The sandbox: a simulated host and its peers, kept in one directory.

Nothing here runs on a real Xen host. It plays the parts the real world plays - the kernel's
sysfs and pciback driver, xenstored, the toolstack's domains, the guest's pcifront - so every
command can be exercised end to end without root, without Xen and without hardware.
See docs/architecture.md.
"""

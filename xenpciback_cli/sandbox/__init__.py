"""The sandbox: a simulated host and its peers, kept in one directory.

Nothing here runs on a real Xen host. It plays the parts the real world plays - the kernel's
sysfs and pciback driver, xenstored, the toolstack's domains, the guest's pcifront - so every
command can be exercised end to end without root, without Xen and without hardware.

Layer 3, just below ``app.py``, the only module that picks it: may import every layer below
(``engine``, ``backend``, ``toolstack``, ``host``, ``config``, ``xenstore``, ``pci``, ``errors``,
``untrusted``) but not click or rich. See docs/architecture.md.
"""

"""The host: the ``Host`` interface (``model``) and its adapters over files.

``model`` declares what callers use (devices, drivers, sysfs writes that carry their BDF, usage
checks); ``sysfs`` implements it over real sysfs and procfs under a root (the sandbox's
``SandboxHost`` is the same reader over a simulated tree); ``configfile`` reads and writes one
device's config-space file. This is where sysfs I/O lives; which adapter runs is chosen in
``app.py`` alone.

Layer 6: may import ``config``, ``xenstore``, ``pci``, ``errors`` and ``untrusted``; nothing above,
and no click or rich.
"""

"""PCI knowledge shared by every layer: addresses, the spec strings administrators type, the
device data types, driver names, IORESOURCE flags, quirks and device names.

All of it is sans-IO except ``names`` (which reads the pci.ids database once); ``address``,
``spec`` and ``device`` are held to it by a contract in ``pyproject.toml``.

Layer 8: may import ``errors`` and ``untrusted`` only.
"""

"""PCI config space: decoding (header, capability lists, BARs), lspci dump parsing, and the overlay
engine that decides, field by field, what a guest sees and what reaches the device.

Everything here is sans-IO (a contract in ``pyproject.toml``): it works on ``bytes`` snapshots or
on a small hardware accessor (``read(offset, size) -> int``, ``write(offset, size, value)``); the
file adapter is ``host/configfile.py`` and reading a dump file is ``engine/inspect_sources.py``'s.

Layer 7, beside ``xenstore/``: may import ``pci``, ``errors`` and ``untrusted`` only.
"""

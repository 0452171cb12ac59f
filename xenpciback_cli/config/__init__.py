"""PCI config space: decoding (header, capability lists, BARs), lspci dump parsing, and the overlay
engine that decides, field by field, what a guest sees and what reaches the device.

Everything here is sans-IO: it works on ``bytes`` snapshots or on a small hardware accessor
(``read(offset, size) -> int``, ``write(offset, size, value)``). Nothing imports click or rich.
"""

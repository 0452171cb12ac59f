"""The PV PCI shared page: its ABI, its codec and trace records (sans-IO).

``abi.py`` names every constant and layout of Xen's ``io/pciif.h``; ``codec.py`` reads an op out
of a page (copied once, XSA-155) and writes a result back (``err``, ``value`` and the MSI-X
vectors only); ``trace.py`` is the record of one op, what went in and what came out. Nothing
here maps pages or touches event channels: callers hand in bytes-like pages.
"""

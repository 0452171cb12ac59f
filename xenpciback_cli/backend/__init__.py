"""The backend: pciback's side of the PV PCI protocol, as sans-IO cores.

``xenbus.py`` is pciback's xenbus state machine (what Linux's ``xen-pciback/xenbus.c`` does),
fed snapshots of the backend and frontend directories and answering with xenstore operations.
The sandbox's simulated kernel pciback runs it today; ``serve`` will run the same core.
"""

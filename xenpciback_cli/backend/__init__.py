"""The backend: pciback's side of the PV PCI protocol, as sans-IO cores.

``xenbus.py`` is pciback's xenbus state machine (what Linux's ``drivers/xen/xen-pciback/xenbus.c``
does), fed snapshots of the backend and frontend directories and answering with xenstore
operations. The sandbox's simulated kernel pciback runs it today; ``serve`` (not written yet) will
run the same core.

Layer 4, beside ``engine/``: may import ``toolstack``, ``host``'s interface, ``config``,
``xenstore``, ``pci``, ``errors`` and ``untrusted``; never ``host.sysfs``, the sandbox, pyudev, click
or rich. Sans-IO (a contract in ``pyproject.toml``): no files, sockets, processes or threads.
"""

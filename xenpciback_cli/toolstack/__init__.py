"""libxl's and xenbus's knowledge of PCI passthrough, as the toolstack writes it to xenstore.

Sans-IO at the core: ``xenbus`` (the state numbers and whose move it is), ``libxl_layout`` (the
keys, values and permissions libxl writes, as plans of operations) and ``plan`` (the operations).
At the edge, over a xenstore client it is handed: ``xsexec`` (run a plan in a transaction, retried
on conflicts), ``handshake`` (wait for a Reconfiguring round) and ``status`` (read both ends' states).
Attach and detach themselves are orchestrations and live in ``engine/``.

Layer 5: may import ``host``'s interface, ``config``, ``xenstore``, ``pci``, ``errors`` and
``untrusted``; never ``engine``, ``backend``, ``host.sysfs``, the sandbox, pyudev, click or rich.
"""

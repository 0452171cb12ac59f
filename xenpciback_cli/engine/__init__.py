"""Orchestrations on the host model: seize and release as journalled plans of sysfs writes,
pre-flight checks, recovery, persistence, the ``list`` inventory, attach and detach, the device
lifecycle table, and what ``inspect`` reads. Each operation returns a result object the CLI renders.

Layer 4, beside ``backend/``: may import ``toolstack``, ``host``'s interface (``host.model``),
``config``, ``xenstore``, ``pci``, ``errors`` and ``untrusted``. It never imports click or rich, nor
``host.sysfs``, the sandbox or pyudev: it is handed a ``Host`` and a xenstore client by ``app.py``.
Its own I/O is the state files under the state dir and the files a person names.
"""

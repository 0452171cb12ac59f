"""Adapters between the backend core and the world: how a backend maps a guest's page, binds its
event channel, reaches a device's config space and its interrupts (``sandbox.py``: the sandbox's
files and sockets, ``docs/sandbox-protocol.md``; ``xen.py`` and ``xen_interrupts.py``: real
Xen's gntdev, evtchn and libxenctrl, ``docs/real-xen.md``). They implement the protocols of
``backend/ports.py``; ``app.py`` is the one place that picks them."""

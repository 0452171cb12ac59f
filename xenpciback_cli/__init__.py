"""xen-pciback: host-side (dom0) administration for Xen PCI passthrough, and the cores of the
userspace backend to come (``serve`` is not written yet).

Layout, so a newcomer finds things in one look (top layer first; each imports only from below it,
see docs/architecture.md, checked by ``lint-imports``):

* ``cli/``       - thin click commands: parse, call the engine, render. Nothing else.
* ``app.py``     - the application object; the one place adapters (real host or sandbox) are chosen.
* ``sandbox/``   - the simulated host and its peers: kernel sysfs, xenstored, guests, domains.
* ``engine/``    - orchestrations: seize, release, attach, detach, recovery, persistence, ``list``.
* ``backend/``   - pciback's side of the PV protocol as sans-IO cores (its xenbus state machine).
* ``toolstack/`` - libxl's xenstore layout as plans, xenbus states, applying plans, reading status.
* ``host/``      - the ``Host`` interface and its adapters (real sysfs, config-space files).
* ``config/``    - sans-IO config space: decoding, capabilities, dump parsing, the guest overlay.
* ``xenstore/``  - the wire codec, the client, the embedded daemon.
* ``pci/``       - addresses, spec strings, quirks, driver names, the device data types.
* ``errors.py``, ``untrusted.py`` - error classes with their exit codes; parsers for untrusted values.

``data/`` holds files shipped with the package (the systemd unit), outside the layers.
The engine never imports click or rich; the CLI imports heavy modules only inside commands.
"""

__version__ = "0.1.0"

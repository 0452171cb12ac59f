"""xen-pciback: host-side (dom0) administration and userspace backend for Xen PCI passthrough.

Layout, so a newcomer finds things in one look:

* ``pci/``      - sans-IO PCI knowledge: addresses and the spec strings people type.
* ``host/``     - the host model: one interface (``host.model``), adapters for real sysfs and
                  for the simulated sandbox host.
* ``engine/``   - operations built on the host model (seize, release, recover, persist).
* ``cli/``      - thin click commands: parse, call the engine, render. Nothing else.

The engine never imports click or rich; the CLI imports heavy modules only inside commands.
"""

__version__ = "0.1.0"

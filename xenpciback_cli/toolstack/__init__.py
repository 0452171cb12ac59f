"""The toolstack side of PCI passthrough: attaching seized devices to guests through xenstore.

Sans-IO at the core: ``xenbus`` (states and who moves next), ``libxl_layout`` (the keys, values
and permissions libxl writes, as plans of operations), ``peers`` (simulated pciback and pcifront
state machines). Adapters at the edge: ``xsexec`` (run a plan in a xenstore transaction),
``attach``/``detach`` (the engine commands call), ``status``, ``domains`` (simulated guests).
Nothing here imports click or rich.
"""

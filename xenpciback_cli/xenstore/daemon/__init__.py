"""The embedded xenstored: a sans-IO core (``core.py``, ``store.py``: the tree, transactions,
watches, domains) and its edge, which does the I/O: one select loop (``server.py``) that moves
bytes between sockets and the core, and the saved tree (``persist.py``)."""

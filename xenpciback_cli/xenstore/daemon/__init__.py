"""The embedded xenstored: a sans-IO core (store, transactions, watches, domains) and one
select loop at the edge (``server.py``) that moves bytes between sockets and the core."""

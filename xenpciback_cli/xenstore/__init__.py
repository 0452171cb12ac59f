"""xenstore: a sans-IO wire codec, a client, and an embedded xenstored for the sandbox.

The public client API lives in :mod:`xenpciback_cli.xenstore.client`.
"""

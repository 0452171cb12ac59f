"""xenstore: a sans-IO wire codec, a client, and an embedded xenstored.

``wire`` is the codec (bytes in, messages out); ``client`` and ``transport`` talk to a daemon over
a Unix socket or ``/dev/xen/xenbus``; ``daemon/`` is the embedded xenstored (a sans-IO core, a
socket server) that the sandbox launches and ``sandbox xenstored`` serves; ``tools`` is what the
``xenstore`` commands do, without click. The public client API lives in
:mod:`xenpciback_cli.xenstore.client`.

Layer 7, beside ``config/``: may import ``pci``, ``errors`` and ``untrusted`` only.
"""

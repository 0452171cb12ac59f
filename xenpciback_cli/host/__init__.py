"""The host model (``model``) and its adapters: real sysfs (``sysfs``) and the sandbox (``sandbox``)."""

"""Run the xen-pciback CLI and SIGKILL it right after its first sysfs write whose path ends in SUFFIX.

Usage (inside the guest): python3 kill_after_write.py /unbind hide --driver pci-stub 0000:00:02.0

Why this shape: the kill must land at a precise point of a real hide -- after the kernel has
unbound the device, before anything else -- and be a real SIGKILL (no finally blocks, no atexit),
like a power cut or the OOM killer. Every mutation goes through ``Host.write_attribute`` (the host
model's single write path), so wrapping it is enough, whatever the engine does around it.
"""

import os
import signal
import sys

from xenpciback_cli.host import model


def main() -> None:
    suffix, args = sys.argv[1], sys.argv[2:]
    original = model.Host.write_attribute

    def write_then_die(self, path, value, bdf=None):  # noqa: ANN001 - mirrors Host.write_attribute
        original(self, path, value, bdf)
        if path.endswith(suffix):
            os.kill(os.getpid(), signal.SIGKILL)

    model.Host.write_attribute = write_then_die
    from xenpciback_cli.cli import main as cli_main

    cli_main(args)


if __name__ == "__main__":
    main()

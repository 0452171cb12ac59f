"""The systemd units, installed so they start *this* installation of xen-pciback.

pip puts the console script wherever its scheme says (/usr/local/bin, a venv's bin, ~/.local/bin,
a --prefix), and a unit run at boot gets systemd's short PATH, not a person's: ``/usr/bin/env
xen-pciback`` finds a venv's script only by luck. So the shipped unit names the program as
``@XEN_PCIBACK@``, and :func:`install` writes it with the absolute command of the running
installation: the console script that is running, or else this interpreter with ``-m
xenpciback_cli``; a package found through PYTHONPATH (a --prefix install) gets it in the unit too.
Writing the same text again changes nothing (``changed`` is False), so it is safe to repeat.
"""

from __future__ import annotations

import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from xenpciback_cli.errors import InputError, OperationFailed

PLACEHOLDER = "@XEN_PCIBACK@"
UNITS = ("xen-pciback-restore.service", "xen-pciback-serve.service")
DEFAULT_UNIT_DIR = "/etc/systemd/system"


@dataclass(frozen=True)
class UnitResult:
    path: str
    changed: bool
    exec_command: str

    def to_json(self) -> dict[str, object]:
        return {"path": self.path, "changed": self.changed, "exec": self.exec_command}


def template(name: str) -> str:
    """The unit as shipped (package data; the wheel also installs it in share/xen-pciback/systemd)."""
    return (Path(__file__).resolve().parents[1] / "data" / name).read_text()


def exec_command(argv0: str | None = None) -> tuple[str, str | None]:
    """(the command that runs this installation, a PYTHONPATH it needs or None)."""
    argv0 = sys.argv[0] if argv0 is None else argv0
    if os.path.basename(argv0) == "xen-pciback" and os.path.isfile(argv0) and os.access(argv0, os.X_OK):
        command = shlex.quote(os.path.abspath(argv0))
    else:
        command = f"{shlex.quote(sys.executable)} -m xenpciback_cli"
    package_root = str(Path(__file__).resolve().parents[2])
    extra = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    needs_path = any(os.path.realpath(p) == os.path.realpath(package_root) for p in extra)
    return command, package_root if needs_path else None


def render(name: str, command: str, python_path: str | None) -> str:
    text = template(name).replace(PLACEHOLDER, command)
    if python_path:
        text = text.replace("[Service]\n", f"[Service]\nEnvironment={shlex.quote('PYTHONPATH=' + python_path)}\n", 1)
    return text


def install(directory: str, *, dry_run: bool = False, argv0: str | None = None) -> list[UnitResult]:
    """Write each unit into ``directory`` (which must exist); unchanged files are left alone."""
    if not os.path.isdir(directory):
        raise InputError(f"unit directory {directory} does not exist")
    command, python_path = exec_command(argv0)
    results = []
    for name in UNITS:
        path = os.path.join(directory, name)
        text = render(name, command, python_path)
        try:
            with open(path) as handle:
                current: str | None = handle.read()
        except FileNotFoundError:
            current = None
        except OSError as exc:
            raise OperationFailed(f"cannot read {path}: {exc.strerror}") from None
        changed = current != text
        if changed and not dry_run:
            from xenpciback_cli.engine.statestore import atomic_write

            atomic_write(Path(path), text, mode=0o644)
        results.append(UnitResult(path, changed, command))
    return results

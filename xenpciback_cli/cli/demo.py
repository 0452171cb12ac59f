"""``xen-pciback demo``: the whole flow on a fresh sandbox - the README's first command.

list, hide, a refused hide, a guest domain, attach, status, the guest's config-space view,
detach, unhide --rebind, list. Each step is the real command, run in-process and shown as typed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from xenpciback_cli.app import Application


@click.command("demo")
@click.option("--sandbox-dir", metavar="DIR", default=None, type=click.Path(file_okay=False),
              help="Build the demo sandbox in DIR (empty or absent) and keep it; default: a temporary one.")
@click.pass_obj
def command(app: Application, sandbox_dir: str | None) -> None:
    """Create a sandbox and walk through the whole flow, showing each command.

    list; hide the NIC 0000:03:00.0; a refused hide of the NVMe drive holding the root
    filesystem; create guest domain 5; attach the NIC to it; status; the config space the guest
    sees; detach; unhide --rebind; list.
    """
    import shutil
    import tempfile

    from xenpciback_cli.cli import cli
    from xenpciback_cli.cli.terminal import terminal_for
    from xenpciback_cli.errors import SafetyRefusal, XenPcibackError
    from xenpciback_cli.sandbox.host import create_sandbox

    terminal = terminal_for(app)
    as_json = app.settings.json
    temporary = sandbox_dir is None
    directory = tempfile.mkdtemp(prefix="xen-pciback-demo-") if temporary else sandbox_dir
    assert directory is not None
    try:
        create_sandbox(directory)
        if not as_json:
            terminal.line(f"# a simulated host in {directory} (nothing on this machine is touched)")
        nic = "0000:03:00.0"
        steps = [["list"], ["hide", nic], ["hide", "0000:01:00.0"],
                 ["sandbox", "domain", "create", "5"], ["attach", nic, "--domid", "5"],
                 ["list", "--seized"], ["status", "--domid", "5", "--wait", "10"], ["inspect", nic, "--diff"],
                 ["detach", nic, "--domid", "5"], ["unhide", "--rebind", nic], ["list"]]
        extra = ["--no-color"] if not app.settings.color else []
        if as_json:  # {"sandbox": DIR or null, "steps": [{"command", "exit_code", "output"}]}
            terminal.json({"sandbox": None if temporary else directory,
                           "steps": [_json_step(cli, directory, step) for step in steps]})
            return
        for step in steps:
            terminal.line("")
            terminal.line(f"$ xen-pciback --sandbox {directory} {' '.join(step)}")
            terminal.stdout.flush()
            try:
                cli.main(args=["--sandbox", directory, *extra, *step], prog_name="xen-pciback",
                         standalone_mode=False)
            except SafetyRefusal as exc:
                terminal.line(f"xen-pciback: error: {exc}")
                terminal.line(f"(exit {int(exc.exit_code)}: refused for safety, as it should be)")
            except XenPcibackError as exc:
                raise XenPcibackError(f"demo step '{' '.join(step)}' failed: {exc}") from None
        if not temporary:
            terminal.line("")
            terminal.line(f"# the sandbox stays in {directory}: try 'xen-pciback --sandbox {directory} list'")
    finally:
        _stop_daemons(directory)
        if temporary:
            shutil.rmtree(directory, ignore_errors=True)


def _json_step(cli: Any, directory: str, step: list[str]) -> dict[str, Any]:
    """One step run with --json: its exit status and its JSON (the error object on a failure)."""
    import contextlib
    import io
    import json

    from xenpciback_cli.errors import XenPcibackError

    out = io.StringIO()
    code, error = 0, None
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        try:
            cli.main(args=["--sandbox", directory, "--json", *step], prog_name="xen-pciback",
                     standalone_mode=False)
        except XenPcibackError as exc:
            code, error = int(exc.exit_code), {"error": str(exc), "exit_code": int(exc.exit_code)}
    text = out.getvalue().strip()
    output = json.loads(text) if text else None
    return {"command": ["xen-pciback", *step], "exit_code": code,
            "output": output if error is None else (output or error)}


def _stop_daemons(directory: str) -> None:
    """The sandbox's xenstored (and the simulated guest peers that hang on it) must not outlive
    a temporary demo."""
    from xenpciback_cli.sandbox.xenstored import SandboxDaemonError, stop

    try:
        stop(directory)
    except (SandboxDaemonError, OSError):
        pass

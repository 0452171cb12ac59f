"""``xen-pciback demo``: the whole flow on a fresh sandbox - the README's first command.

list, hide, a refused hide, a guest domain, attach, status, the guest's config-space view,
detach, unhide --rebind, list. Each step is the real command, run in-process and shown as typed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from xenpciback_cli.app import Application
    from xenpciback_cli.sandbox.demo import BackgroundServe, Step


@click.command("demo")
@click.option("--sandbox-dir", metavar="DIR", default=None, type=click.Path(file_okay=False),
              help="Build the demo sandbox in DIR (empty or absent) and keep it; default: a temporary one.")
@click.pass_obj
def command(app: Application, sandbox_dir: str | None) -> None:
    """Create a sandbox and walk through the whole flow, showing each command.

    list; hide the NIC 0000:03:00.0; a refused hide of the NVMe drive holding the root
    filesystem; create guest domain 5; attach the NIC to it; status; the config space the guest
    sees; detach; unhide --rebind; list. Where 'serve' exists: the NIC's virtual function is
    seized and attached to a guest created with --no-guest, 'serve foreground' runs in the
    background and 'sandbox guest 5' plays the guest (its view of the device, reads through the
    filter, MSI-X on) before serve is stopped and the device given back.

    \b
    --json prints {"sandbox": DIR, "serve": BOOL, "steps": [{"command": [...], "exit": N,
    "output": JSON-or-text, "note": TEXT}]} (background steps have "action" instead of
    "command").
    """
    import shutil
    import tempfile

    from xenpciback_cli.cli import COMMANDS
    from xenpciback_cli.cli.terminal import terminal_for
    from xenpciback_cli.sandbox.demo import BackgroundServe, steps
    from xenpciback_cli.sandbox.host import create_sandbox

    terminal = terminal_for(app)
    temporary = sandbox_dir is None
    directory = tempfile.mkdtemp(prefix="xen-pciback-demo-") if temporary else sandbox_dir
    assert directory is not None
    serve = BackgroundServe(directory)
    records: list[dict[str, object]] = []
    try:
        create_sandbox(directory)
        if not app.settings.json:
            terminal.line(f"# a simulated host in {directory} (nothing on this machine is touched)")
        flow = steps(serve="serve" in COMMANDS)
        for step in flow:
            records.append(_run_step(app, terminal, directory, step, serve))
        if app.settings.json:
            terminal.json({"sandbox": directory, "serve": "serve" in COMMANDS, "steps": records})
        elif not temporary:
            terminal.line("")
            terminal.line(f"# the sandbox stays in {directory}: try 'xen-pciback --sandbox {directory} list'")
    finally:
        serve.stop()
        _stop_daemons(directory)
        if temporary:
            shutil.rmtree(directory, ignore_errors=True)


def _run_step(app: Application, terminal: Any, directory: str, step: Step,
              serve: BackgroundServe) -> dict[str, object]:
    """One step: shown as typed (text) or kept as a record (--json)."""
    import contextlib
    import io
    import json

    from xenpciback_cli.cli import cli
    from xenpciback_cli.errors import SafetyRefusal, XenPcibackError

    as_json = app.settings.json
    if step.action is not None:
        if not as_json:
            terminal.line("")
            terminal.line(f"$ xen-pciback --sandbox {directory} serve foreground &"
                          if step.action == "start-serve" else "$ kill %1   # stop serve (SIGTERM)")
        result = serve.start() if step.action == "start-serve" else serve.stop()
        return {"action": step.action, "result": result, "note": step.note}
    extra = ["--no-color"] if not app.settings.color else []
    if not as_json:
        terminal.line("")
        if step.note:
            terminal.line(f"# {step.note}")
        terminal.line(f"$ xen-pciback --sandbox {directory} {' '.join(step.args)}")
        terminal.stdout.flush()
    argv = ["--sandbox", directory, *extra, *(["--json"] if as_json else []), *step.args]
    captured = io.StringIO()
    code = 0
    message = ""
    with contextlib.redirect_stdout(captured) if as_json else contextlib.nullcontext():
        try:
            cli.main(args=argv, prog_name="xen-pciback", standalone_mode=False)
        except SafetyRefusal as exc:
            if not step.refusal_expected:
                raise XenPcibackError(f"demo step '{' '.join(step.args)}' failed: {exc}") from None
            code, message = int(exc.exit_code), str(exc)
            if not as_json:
                terminal.line(f"xen-pciback: error: {exc}")
                terminal.line(f"(exit {code}: refused for safety, as it should be)")
        except XenPcibackError as exc:
            raise XenPcibackError(f"demo step '{' '.join(step.args)}' failed: {exc}") from None
    output: object = captured.getvalue()
    if as_json:
        try:
            output = json.loads(str(output)) if str(output).strip() else None
        except ValueError:
            pass
    record: dict[str, object] = {"command": list(step.args), "exit": code, "output": output}
    if message:
        record["error"] = message
    if step.note:
        record["note"] = step.note
    return record


def _stop_daemons(directory: str) -> None:
    """The sandbox's xenstored (and the simulated guest peers that hang on it) must not outlive
    a temporary demo."""
    from xenpciback_cli.sandbox.xenstored import SandboxDaemonError, stop

    try:
        stop(directory)
    except (SandboxDaemonError, OSError):
        pass

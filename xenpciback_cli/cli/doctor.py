"""``xen-pciback doctor``: is this host ready for passthrough? One check per line, with the fix."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from xenpciback_cli.app import Application


@click.command("doctor")
@click.pass_obj
def command(app: Application) -> None:
    """Check that this host is ready for PCI passthrough, one verdict per line.

    \b
    Checks, in order: xen (running under Xen), dom0, iommu (Xen's, from 'xl info'),
    interrupt-remapping (from 'xl dmesg'), backend (the kernel's pciback and its mode),
    xenstored, state-dir, persisted (seized devices a reboot would give back), journal
    (operations waiting for 'recover'), iommu-groups (groups split between host and guests).
    Each is ok, warn, fail or skip (does not apply here, e.g. without Xen); what is not ok
    says how to fix it. Reads only. Exit 0 when nothing fails, 1 otherwise.
    --json prints {"checks": [{"name", "verdict", "detail", "fix"}], "ready": bool}.
    """
    import shutil
    import textwrap

    from xenpciback_cli.cli.terminal import terminal_for
    from xenpciback_cli.engine.doctor import DoctorEnv, is_ready, iter_checks
    from xenpciback_cli.errors import ExitCode

    term = terminal_for(app)
    env = DoctorEnv(platform=app.platform, state_dir=app.state_dir, persist_file=app.persist_file,
                    host=lambda: app.host, xenstore=app.probe_xenstore, sandbox=app.sandbox_dir,
                    serve_control=app.serve_run_dir() / "serve.sock")
    results = []
    indent = " " * 27  # "verdict  name" columns, so the text keeps its own column
    columns = max(60, shutil.get_terminal_size((80, 24)).columns)
    for result in iter_checks(env):
        results.append(result)
        if app.settings.json:
            continue
        head = f"{result.verdict.value:<4}  {result.name:<20} "
        term.line(textwrap.fill(result.detail, columns - 1, initial_indent=head,
                                subsequent_indent=indent, break_on_hyphens=False))
        if result.fix:
            term.line(textwrap.fill(f"fix: {result.fix}", columns - 1, initial_indent=indent,
                                    subsequent_indent=indent + "     ", break_on_hyphens=False))
    ready = is_ready(results)
    if app.settings.json:
        term.json({"checks": [r.to_json() for r in results], "ready": ready})
    else:
        failed = [r.name for r in results if r.verdict == "fail"]
        term.line("ready for passthrough" if ready else
                  f"not ready for passthrough: {len(failed)} check(s) failed ({', '.join(failed)})")
    if not ready:
        raise SystemExit(ExitCode.FAILED)

"""``xen-pciback --sandbox S sandbox aer BDF --error fatal|nonfatal|corrected``: a host PCIe AER
error on a device, delivered to the running ``serve`` (engine: ``engine/serve.py``,
``backend/aer.py``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from xenpciback_cli.cli import Seconds

if TYPE_CHECKING:
    from xenpciback_cli.app import Application


@click.command("aer")
@click.argument("bdf")
@click.option("--error", "error", type=click.Choice(["fatal", "nonfatal", "corrected"]),
              default="nonfatal", show_default=True, help="The AER severity the host reports.")
@click.option("--timeout", type=Seconds(minimum=0.1), default=30.0, show_default=True, metavar="SECONDS",
              help="Seconds to wait for the recovery to finish (at least 0.1).")
@click.pass_obj
def command(app: Application, bdf: str, error: str, timeout: float) -> None:
    """Raise an AER error on BDF as the host's AER core would, and show the recovery.

    The running 'serve foreground' gets it through its control socket (S/run/serve.sock) and
    runs the host's recovery for the device (error_detected, then mmio_enabled or slot_reset,
    then resume), relaying each step to the guest holding the device. A guest without an AER
    handler, one that gives up or one that does not answer within serve's --aer-timeout gets
    aerState=aerfail (the toolstack destroys it). 'corrected' is only logged, as Linux does.

    \b
    --json prints: {"bdf", "error", "domid", "recovered", "aerfail",
                    "steps": [{"step", "outcome", "result", "aerfail"}]}
    """
    from xenpciback_cli.cli.terminal import terminal_for
    from xenpciback_cli.engine.serve import control_request
    from xenpciback_cli.errors import InputError, OperationFailed
    from xenpciback_cli.pci.address import Bdf

    if app.sandbox_dir is None:
        raise InputError("'sandbox aer' needs --sandbox DIR (or XEN_PCIBACK_SANDBOX)")
    host = Bdf.parse(bdf)
    path = app.serve_run_dir() / "serve.sock"
    try:
        answer = control_request(str(path), {"op": "aer", "bdf": str(host), "error": error},
                                 timeout=timeout)
    except (OSError, ValueError) as exc:
        raise OperationFailed(f"no answer from serve on {path} "
                              f"({getattr(exc, 'strerror', None) or exc}): is "
                              "'xen-pciback serve foreground' running?") from None
    if "error" in answer and "steps" not in answer:
        raise OperationFailed(f"serve refused: {answer['error']}")
    term = terminal_for(app)
    if app.settings.json:
        term.json(answer)
        return
    for step in answer.get("steps", []):
        fail = ", aerState=aerfail" if step.get("aerfail") else ""
        term.line(f"{host} {step['step']}: {step['outcome']}, host gets {step['result']}{fail}")
    who = f"domain {answer['domid']}" if answer.get("domid") is not None else "no served guest"
    if answer.get("why"):
        term.line(f"{host} ({who}): {answer['why']}")
    elif error == "corrected":
        term.line(f"{host} ({who}): corrected error, logged only")
    else:
        term.line(f"{host} ({who}): {'recovered' if answer.get('recovered') else 'not recovered'}"
                  + ("; the guest was marked aerfail" if answer.get("aerfail") else ""))

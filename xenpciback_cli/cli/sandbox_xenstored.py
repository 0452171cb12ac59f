"""``xen-pciback sandbox xenstored --socket PATH``: the embedded xenstored, in the foreground."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from xenpciback_cli.app import Application


@click.command("xenstored")
@click.option("--socket", "socket_path", required=True, metavar="PATH",
              help="Unix socket to serve (connections act as dom0); PATH.d/D for domain D.")
@click.option("--trace", "trace_path", metavar="FILE", help="Log every message in and out to FILE.")
@click.option("--state", "state_file", metavar="FILE",
              help="Tree saved here on clean shutdown, loaded at start [default: PATH.state.json].")
@click.option("--no-state", is_flag=True, help="Start empty and save nothing.")
@click.option("--quota-nodes", type=click.IntRange(1), default=1000, show_default=True,
              help="Nodes one guest domain may own.")
@click.option("--quota-value-size", type=click.IntRange(1), default=2048, show_default=True,
              help="Largest value a guest domain may write (bytes).")
@click.option("--quota-watches", type=click.IntRange(1), default=128, show_default=True,
              help="Watches per guest domain (over all its connections).")
@click.option("--quota-transactions", type=click.IntRange(1), default=10, show_default=True,
              help="Open transactions per guest connection.")
@click.option("--quota-connections", type=click.IntRange(1), default=16, show_default=True,
              help="Connections per guest domain.")
@click.pass_obj
def command(app: Application, socket_path: str, trace_path: str | None, state_file: str | None,
            no_state: bool, quota_nodes: int, quota_value_size: int, quota_watches: int,
            quota_transactions: int, quota_connections: int) -> None:
    """Run the embedded xenstored in the foreground until SIGTERM or Ctrl-C.

    Speaks the xenstore wire protocol, so xenstore-utils and pyxs work against it
    (XENSTORED_PATH=PATH). Dom0 is always introduced; each introduced domain D also gets
    PATH.d/D, where a connection acts as domain D.
    """
    from xenpciback_cli.errors import InputError, OperationFailed
    from xenpciback_cli.xenstore.daemon.core import Quotas
    from xenpciback_cli.xenstore.daemon.server import check_socket_path, run

    try:
        check_socket_path(socket_path)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    quotas = Quotas(max_nodes=quota_nodes, max_value=quota_value_size,
                    max_watches=quota_watches, max_transactions=quota_transactions,
                    max_connections=quota_connections)
    state = None if no_state else (state_file or socket_path + ".state.json")
    try:
        run(socket_path, trace_path=trace_path, state_file=state, quotas=quotas)
    except ValueError as exc:  # a state file that cannot be loaded
        raise InputError(str(exc)) from None
    except OSError as exc:
        raise OperationFailed(f"xenstored on {socket_path}: {exc.strerror or exc}") from None

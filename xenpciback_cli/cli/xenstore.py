"""``xen-pciback xenstore ls|read|write|rm|watch``: small debugging commands for any xenstored.

They connect to --socket PATH if given, else to the sandbox's daemon when --sandbox is set
(starting it if needed), else wherever Xen's library would (XENSTORED_PATH, the default
sockets, /dev/xen/xenbus).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from xenpciback_cli.cli import Seconds

if TYPE_CHECKING:
    from xenpciback_cli.app import Application
    from xenpciback_cli.cli.terminal import Terminal
    from xenpciback_cli.xenstore.client import Transaction, XenstoreClient

_socket_option = click.option("--socket", "socket_path", metavar="PATH", default=None,
                              help="xenstored socket (or /dev/xen/xenbus) to use.")


@click.group("xenstore")
@_socket_option
@click.pass_context
def group(ctx: click.Context, socket_path: str | None) -> None:
    """Small xenstore debugging commands (ls, read, write, rm, watch).

    Values are shown with non-printable bytes as \\xNN; 'write' accepts the same escapes.
    """
    ctx.meta["xenstore_socket"] = socket_path


def _client(ctx: click.Context, socket_path: str | None) -> XenstoreClient:
    app: Application = ctx.obj
    return app.connect_xenstore(socket_path or ctx.meta.get("xenstore_socket"))


def _term(ctx: click.Context) -> Terminal:
    from xenpciback_cli.cli.terminal import terminal_for

    return terminal_for(ctx.obj)


@group.command("ls")
@click.argument("path", default="/")
@click.option("-p", "--perms", is_flag=True, help="Show permissions.")
@_socket_option
@click.pass_context
def ls(ctx: click.Context, path: str, perms: bool, socket_path: str | None) -> None:
    """List the tree under PATH with values (like xenstore-ls)."""
    from xenpciback_cli.xenstore.tools import escape, walk

    term = _term(ctx)
    with _client(ctx, socket_path) as client:
        entries = list(walk(client, path, perms=perms))
    if ctx.obj.settings.json:
        term.json([{"path": e.path,
                    "value": None if e.value is None else escape(e.value),
                    **({"perms": [str(p) for p in e.perms or []]} if perms else {}),
                    **({"error": e.error} if e.error else {})} for e in entries])
        return
    for e in entries:
        name = e.path.rsplit("/", 1)[1]
        shown = f'"{escape(e.value)}"' if e.value is not None else f"<{e.error}>"
        line = f"{' ' * e.depth}{name} = {shown}"
        if perms and e.perms is not None:
            line += f"  ({','.join(str(p) for p in e.perms)})"
        term.line(line)


@group.command("read")
@click.argument("paths", nargs=-1, required=True, metavar="PATH...")
@_socket_option
@click.pass_context
def read(ctx: click.Context, paths: tuple[str, ...], socket_path: str | None) -> None:
    """Print the value of each PATH."""
    from xenpciback_cli.xenstore.tools import escape

    term = _term(ctx)
    with _client(ctx, socket_path) as client:
        values = [(p, client.read(p)) for p in paths]
    if ctx.obj.settings.json:
        term.json({p: escape(v) for p, v in values})
        return
    for _, v in values:
        term.line(escape(v))


@group.command("write")
@click.argument("pairs", nargs=-1, required=True, metavar="PATH VALUE [PATH VALUE]...")
@_socket_option
@click.pass_context
def write(ctx: click.Context, pairs: tuple[str, ...], socket_path: str | None) -> None:
    """Write VALUE to PATH (several pairs are written in one transaction)."""
    from xenpciback_cli.errors import InputError
    from xenpciback_cli.xenstore.tools import unescape

    if len(pairs) % 2:
        raise InputError("xenstore write wants PATH VALUE pairs (odd number of arguments given)")
    items = [(pairs[i], unescape(pairs[i + 1])) for i in range(0, len(pairs), 2)]
    with _client(ctx, socket_path) as client:
        if len(items) == 1:
            client.write(*items[0])
        else:
            def apply(tx: Transaction) -> None:
                for path, value in items:
                    tx.write(path, value)
            client.transact(apply)
    if ctx.obj.settings.json:
        _term(ctx).json({"written": [p for p, _ in items]})


@group.command("rm")
@click.argument("paths", nargs=-1, required=True, metavar="PATH...")
@_socket_option
@click.pass_context
def rm(ctx: click.Context, paths: tuple[str, ...], socket_path: str | None) -> None:
    """Remove each PATH and everything below it."""
    with _client(ctx, socket_path) as client:
        for p in paths:
            client.rm(p)
    if ctx.obj.settings.json:
        _term(ctx).json({"removed": list(paths)})


@group.command("watch")
@click.argument("paths", nargs=-1, required=True, metavar="PATH...")
@click.option("--count", "-n", type=click.IntRange(1), default=None,
              help="Stop after N events (the initial event of each watch counts).")
@click.option("--timeout", type=Seconds(), default=None, metavar="SECONDS",
              help="Stop after this long without reaching --count.")
@_socket_option
@click.pass_context
def watch(ctx: click.Context, paths: tuple[str, ...], count: int | None, timeout: float | None,
          socket_path: str | None) -> None:
    """Print 'CHANGED-PATH WATCHED-PATH' for each change at or below PATH.

    Each watch first reports its own PATH once (xenstore's initial event). With --json, one
    JSON object per line.
    """
    import json
    import time
    from xenpciback_cli.untrusted import decimal

    term = _term(ctx)
    as_json = ctx.obj.settings.json
    seen = 0
    deadline = None if timeout is None else time.monotonic() + timeout
    with _client(ctx, socket_path) as client:
        for i, p in enumerate(paths):
            client.watch(p, str(i))
        while count is None or seen < count:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                break
            event = client.next_event(remaining)
            if event is None:
                break
            seen += 1
            index = decimal(event.token)
            watched = paths[index] if index is not None and index < len(paths) else event.token
            if as_json:
                term.line(json.dumps({"path": event.path, "watch": watched}))
            else:
                term.line(f"{event.path} {watched}")
            term.stdout.flush()

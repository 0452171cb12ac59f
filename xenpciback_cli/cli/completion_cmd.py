"""``xen-pciback completion bash|zsh|fish``: print the completion script for a shell.

The text is :data:`xenpciback_cli.cli.completion.SCRIPTS`, the same that tools/gen_completions.py
writes to completions/ and the wheel installs where each shell looks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from xenpciback_cli.app import Application


@click.command("completion")
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
@click.pass_obj
def command(app: Application, shell: str) -> None:
    """Print the completion script for SHELL, to source or install.

    \b
    bash:  xen-pciback completion bash > /etc/bash_completion.d/xen-pciback
           (or, for this shell only: source <(xen-pciback completion bash))
    zsh:   xen-pciback completion zsh > "${fpath[1]}/_xen-pciback"
    fish:  xen-pciback completion fish > ~/.config/fish/completions/xen-pciback.fish

    Installed from the wheel, the scripts are already where bash-completion, zsh and fish look
    (share/bash-completion/completions, share/zsh/site-functions, share/fish/vendor_completions.d).
    """
    from xenpciback_cli.cli.completion import SCRIPTS
    from xenpciback_cli.cli.terminal import terminal_for

    terminal = terminal_for(app)
    if app.settings.json:
        terminal.json({"shell": shell, "script": SCRIPTS[shell]})
    else:
        terminal.line(SCRIPTS[shell].rstrip("\n"))

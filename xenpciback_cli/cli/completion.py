"""Shell completion: our own scripts and reply format, the same under every click release.

The shipped scripts (``completions/``, written by ``tools/gen_completions.py``) call back into
``xen-pciback`` with ``_XEN_PCIBACK_COMPLETE=<shell>_complete``; click works out the candidates
(its public ``ShellComplete.get_completions``), and the classes here print them in the format
*our* scripts read. click's own scripts and reply formats have changed between releases (zsh's
colon escaping in 8.2, fish's help escaping in 8.4, a fish script that no longer matched its
replies), and a script installed in /etc must keep working whichever click pip resolves later.

Imported only when the completion variable is set (see :func:`xenpciback_cli.cli.main`).
"""

from __future__ import annotations

from collections.abc import Callable

import click
from click.shell_completion import (
    BashComplete,
    CompletionItem,
    FishComplete,
    ZshComplete,
    add_completion_class,
)

#: The variable the scripts set; click derives the same name from the program name.
COMPLETE_VAR = "_XEN_PCIBACK_COMPLETE"
PROG_NAME = "xen-pciback"

HEADER = "{comment} {shell} completion for xen-pciback, written by tools/gen_completions.py: do not edit.\n"

BASH = HEADER.format(comment="#", shell="bash") + r"""
_xen_pciback_complete() {
    local IFS=$'\n' line kind value cur prefix
    local -a words
    COMPREPLY=()
    # The words as a person typed them: bash's COMP_WORDS also splits at ':' and '=' (in
    # COMP_WORDBREAKS), which would cut 0000:03:00.0 and name=NIC apart.
    line=${COMP_LINE:0:$COMP_POINT}
    IFS=$' \t' read -r -a words <<< "$line"
    [[ -z $line || $line == *[[:space:]] ]] && words+=("")
    cur=${words[${#words[@]}-1]}
    # Bash replaces only what follows the last word break in the word: drop what precedes it.
    prefix=${cur%"${cur##*[:=]}"}
    [[ $COMP_WORDBREAKS == *:* || $COMP_WORDBREAKS == *=* ]] || prefix=
    for line in $(env COMP_WORDS="${words[*]}" COMP_CWORD="$(( ${#words[@]} - 1 ))" \
                  _XEN_PCIBACK_COMPLETE=bash_complete "$1" 2>/dev/null); do
        IFS=',' read -r kind value <<< "$line"
        case $kind in
            plain) COMPREPLY+=("${value#"$prefix"}") ;;
            dir) COMPREPLY=(); compopt -o dirnames ;;
            file) COMPREPLY=(); compopt -o default ;;
        esac
    done
    return 0
}

complete -o nosort -F _xen_pciback_complete xen-pciback
"""

ZSH = "#compdef xen-pciback\n" + HEADER.format(comment="#", shell="zsh") + r"""
_xen_pciback() {
    local -a response described plain
    local kind key descr
    (( $+commands[xen-pciback] )) || return 1
    response=("${(@f)$(env COMP_WORDS="${words[*]}" COMP_CWORD=$((CURRENT-1)) \
                       _XEN_PCIBACK_COMPLETE=zsh_complete xen-pciback 2>/dev/null)}")
    for kind key descr in "${response[@]}"; do
        case $kind in
            plain)
                if [[ $descr == _ ]]; then plain+=("$key"); else described+=("$key:$descr"); fi ;;
            dir) _path_files -/ ;;
            file) _path_files -f ;;
        esac
    done
    (( ${#described} )) && _describe -V unsorted described -U
    (( ${#plain} )) && compadd -U -V unsorted -a plain
    return 0
}

if [[ $zsh_eval_context[-1] == loadautofunc ]]; then
    _xen_pciback "$@"
else
    compdef _xen_pciback xen-pciback
fi
"""

FISH = HEADER.format(comment="#", shell="fish") + r"""
function __xen_pciback_complete
    set -l response (env _XEN_PCIBACK_COMPLETE=fish_complete COMP_WORDS=(commandline -cp) \
                         COMP_CWORD=(commandline -t) xen-pciback 2>/dev/null)
    for line in $response
        set -l parts (string split --max 1 "," -- $line)
        switch $parts[1]
            case dir
                __fish_complete_directories $parts[2]
            case file
                __fish_complete_path $parts[2]
            case plain
                echo $parts[2]
        end
    end
end

complete --no-files --command xen-pciback --arguments "(__xen_pciback_complete)"
"""


def _one_line(text: str | None) -> str:
    return " ".join((text or "").split())


class Bash(BashComplete):
    """Replies ``KIND,VALUE`` per line (a value never holds a newline)."""

    source_template = BASH

    def source(self) -> str:
        return BASH

    def format_completion(self, item: CompletionItem) -> str:
        return f"{item.type},{item.value}"


class Zsh(ZshComplete):
    """Replies three lines per item: KIND, VALUE, HELP (``_`` for none). A value with help goes
    to ``_describe``, which splits at the first unescaped colon, so its colons are escaped."""

    source_template = ZSH

    def source(self) -> str:
        return ZSH

    def format_completion(self, item: CompletionItem) -> str:
        help_text = _one_line(item.help) or "_"
        value = str(item.value)
        if help_text != "_":
            value = value.replace(":", "\\:")
        return f"{item.type}\n{value}\n{help_text}"


class Fish(FishComplete):
    """Replies ``KIND,VALUE`` or ``KIND,VALUE<TAB>HELP`` per line (fish shows text after a tab
    as the description)."""

    source_template = FISH

    def source(self) -> str:
        return FISH

    def format_completion(self, item: CompletionItem) -> str:
        help_text = _one_line(item.help)
        return f"{item.type},{item.value}\t{help_text}" if help_text else f"{item.type},{item.value}"


SCRIPTS = {"bash": BASH, "zsh": ZSH, "fish": FISH}


def register() -> None:
    """Make click use these classes for bash, zsh and fish (replacing its own), and give the
    commands' values their candidates as each command is resolved."""
    from xenpciback_cli import cli

    for cls, name in ((Bash, "bash"), (Zsh, "zsh"), (Fish, "fish")):
        add_completion_class(cls, name)
    cli.COMPLETING_HOOK = equip
    equip("", cli.cli)


# -- dynamic values -------------------------------------------------------------------------------
# Which candidates a value gets: by command and parameter name, so the command modules stay as
# they are (and a parameter added later gets the rule of its kind). The candidates themselves are
# read by cli/candidates.py, imported on the first TAB that needs one.

#: Command -> the candidate kind of its device arguments.
DEVICE_ARGUMENTS = {
    "hide": "host_devices",
    "unhide": "seized_devices",
    "attach": "attachable_devices",
    "detach": "attached_devices",
    "inspect": "all_devices",
    "list": "all_devices",
    "bind": "all_devices",
    "rebind": "all_devices",
}
#: (command or "" for any, option name) -> kind.
OPTION_VALUES = {
    ("", "domid"): "domain_ids",
    ("", "domain"): "domain_ids",
    ("attach", "name"): "device_names",
    ("detach", "name"): "device_names",
}
PATH_METAVARS = {"PATH": "file", "FILE": "file", "DIR": "dir"}


def kind_of(command_name: str, param: click.Parameter) -> str | None:
    """The candidates ``param`` of ``command_name`` gets: a kind in cli/candidates.py, "file",
    "dir", or None (click's own: choices, flags)."""
    name = str(param.name or "")
    if isinstance(param.type, click.Path | click.File):
        return None  # click completes these as files or directories already
    if isinstance(param, click.Argument):
        if "dom" in name:
            return "domain_ids"
        if command_name in DEVICE_ARGUMENTS and param.metavar not in PATH_METAVARS:
            return DEVICE_ARGUMENTS[command_name]
    kind = OPTION_VALUES.get((command_name, name)) or OPTION_VALUES.get(("", name))
    if kind:
        return kind
    return PATH_METAVARS.get(str(param.metavar or ""))


def _completer(kind: str, param: click.Parameter) -> Callable[[click.Context, str], list[CompletionItem]]:
    def complete(ctx: click.Context, incomplete: str) -> list[CompletionItem]:
        if kind in ("file", "dir"):
            return [CompletionItem(incomplete, type=kind)]
        from xenpciback_cli.cli import candidates

        given = ctx.params.get(str(param.name))
        typed = set(given) if isinstance(given, list | tuple) else set()
        try:
            found = candidates.matching(getattr(candidates, kind)(ctx), incomplete)
        except Exception:  # noqa: BLE001  a TAB never shows a traceback
            return []
        return [CompletionItem(value, help=help_text) for value, help_text in found if value not in typed]

    return complete


def equip(command_name: str, command: click.Command) -> None:
    """Give ``command``'s parameters (and its sub-commands', for a plain group) their candidates."""
    for param in command.params:
        kind = kind_of(command_name, param)
        if kind is not None:
            param.shell_complete = _completer(kind, param)  # type: ignore[method-assign,assignment]
    if isinstance(command, click.Group) and command_name:
        for name, sub in command.commands.items():
            equip(name, sub)

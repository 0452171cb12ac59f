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
    local IFS=$'\n' line kind value
    COMPREPLY=()
    for line in $(env COMP_WORDS="${COMP_WORDS[*]}" COMP_CWORD="$COMP_CWORD" \
                  _XEN_PCIBACK_COMPLETE=bash_complete "$1" 2>/dev/null); do
        IFS=',' read -r kind value <<< "$line"
        case $kind in
            plain) COMPREPLY+=("$value") ;;
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
    """Make click use these classes for bash, zsh and fish (replacing its own)."""
    for cls, name in ((Bash, "bash"), (Zsh, "zsh"), (Fish, "fish")):
        add_completion_class(cls, name)

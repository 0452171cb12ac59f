#compdef xen-pciback
# zsh completion for xen-pciback, written by tools/gen_completions.py: do not edit.

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

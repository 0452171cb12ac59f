# bash completion for xen-pciback, written by tools/gen_completions.py: do not edit.

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

# bash completion for xen-pciback, written by tools/gen_completions.py: do not edit.

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

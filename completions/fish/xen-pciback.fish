# fish completion for xen-pciback, written by tools/gen_completions.py: do not edit.

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

"""Shell completion: the `completion` command, dynamic values, through real bash (and zsh, fish
where installed), and that a TAB stays light (no rich, tabulate or pyudev)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.cli import PACKAGE_ROOT, invoke, ok

REPO = Path(__file__).resolve().parents[2]
# Each script under the name its shell looks for (tools/gen_completions.py).
SHIPPED = {"bash": "bash/xen-pciback", "zsh": "zsh/_xen-pciback", "fish": "fish/xen-pciback.fish"}


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_command_prints_the_shipped_script(shell):
    run = ok("completion", shell)
    assert run.out == (REPO / "completions" / SHIPPED[shell]).read_text()
    from xenpciback_cli.cli.completion import SCRIPTS

    assert run.out == SCRIPTS[shell]  # one source: the generator writes the same text
    assert ok("completion", shell, "--json").json() == {"shell": shell, "script": SCRIPTS[shell]}


def test_completion_command_refuses_an_unknown_shell():
    run = invoke("completion", "tcsh")
    assert run.code == 2 and "tcsh" in run.error and run.out == ""


@pytest.fixture()
def program(tmp_path):
    """A 'xen-pciback' on PATH running this session's package, as the installed script would."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    exe = bindir / "xen-pciback"
    exe.write_text(f"#!/bin/sh\nexec {sys.executable} -m xenpciback_cli \"$@\"\n")
    exe.chmod(0o755)
    env = dict(os.environ, PATH=f"{bindir}:{os.environ['PATH']}",
               PYTHONPATH=PACKAGE_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("XEN_PCIBACK_SANDBOX", None)
    return env


def bash_tab(env, line):
    """Press TAB at the end of ``line`` in bash with completions/bash/xen-pciback loaded: bash
    sets COMP_LINE/COMP_POINT and splits COMP_WORDS at COMP_WORDBREAKS (':' and '=' included)."""
    probe = ('source "$1"; COMP_LINE="$2"; COMP_POINT=${#2}; '
             'COMP_WORDS=($(printf "%s" "$2" | sed "s/[:=]/ & /g")); COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 )); '
             '_xen_pciback_complete xen-pciback; printf "%s\\n" "${COMPREPLY[@]}"')
    run = subprocess.run(["bash", "-c", probe, "probe", str(REPO / "completions" / "bash" / "xen-pciback"), line],
                         env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    return [word for word in run.stdout.splitlines() if word]


def test_bash_offers_each_command_the_devices_it_takes(sandbox, program):
    start = f"xen-pciback --sandbox {sandbox}"
    assert bash_tab(program, f"{start} hide 03:") == ["00.0", "00.1"]  # bash keeps the '03:'
    assert bash_tab(program, f"{start} hide 0000:03:00.") == ["00.0", "00.1"]
    ok("hide", "03:00.0", "04:10.1", sandbox=sandbox)
    hide = bash_tab(program, f"{start} hide ")
    assert "0000:03:00.1" in hide and "0000:03:00.0" not in hide and "0000:04:10.1" not in hide
    assert bash_tab(program, f"{start} unhide ") == ["0000:03:00.0", "0000:04:10.1"]
    assert bash_tab(program, f"{start} unhide 0000:03:00.0 ") == ["0000:04:10.1"]  # not twice
    assert bash_tab(program, f"{start} detach ") == []  # nothing attached (no xenstored started)
    assert not (sandbox / "xenstore" / "pid").exists()
    ok("sandbox", "domain", "create", "5", sandbox=sandbox)
    ok("attach", "03:00.0", "--domid", "5", sandbox=sandbox)
    assert bash_tab(program, f"{start} attach ") == ["0000:04:10.1"]  # seized, not attached
    assert bash_tab(program, f"{start} detach ") == ["0000:03:00.0"]
    assert bash_tab(program, f"{start} detach --domid 5 ") == ["0000:03:00.0"]
    assert bash_tab(program, f"{start} status --domid ") == ["5"]
    assert bash_tab(program, f"{start} inspect 0000:00:0") == ["00.0"]


def test_attach_offers_pci_stub_devices_only_without_the_kernel_pciback(sandbox, program):
    """The rule attach follows (pci.drivers.serving_drivers), for completion too."""
    from xenpciback_cli.sandbox.host import open_sandbox

    start = f"xen-pciback --sandbox {sandbox}"
    ok("hide", "--driver", "pci-stub", "04:10.1", sandbox=sandbox)
    assert bash_tab(program, f"{start} attach ") == []  # pciback loaded: pci-stub's is someone else's
    open_sandbox(sandbox).kernel.unload_module("pciback")
    assert bash_tab(program, f"{start} attach ") == ["0000:04:10.1"]


def test_path_options_complete_files_and_directories():
    from xenpciback_cli.cli import cli
    from xenpciback_cli.cli.completion import kind_of
    from xenpciback_cli.cli.hide import command as hide

    options = {p.name: p for p in cli.params}
    assert kind_of("", options["state_dir"]) == "file" and kind_of("", options["sysfs_root"]) == "file"
    assert kind_of("hide", {p.name: p for p in hide.params}["config"]) == "file"
    env = dict(os.environ, COMP_WORDS="xen-pciback hide --config ", COMP_CWORD="3",
               _XEN_PCIBACK_COMPLETE="bash_complete", PYTHONPATH=PACKAGE_ROOT)
    run = subprocess.run([sys.executable, "-m", "xenpciback_cli"], env=env, capture_output=True,
                         text=True, timeout=60)
    assert run.stdout.splitlines() == ["file,"], run.stderr


def test_a_completion_request_imports_no_rich_tabulate_or_pyudev(sandbox):
    ok("hide", "03:00.0", sandbox=sandbox)
    for words in (f"xen-pciback --sandbox {sandbox} hide ", f"xen-pciback --sandbox {sandbox} unhide ",
                  "xen-pciback ", "xen-pciback list --format "):
        env = dict(os.environ, COMP_WORDS=words, COMP_CWORD=str(len(words.split())),
                   _XEN_PCIBACK_COMPLETE="bash_complete", PYTHONPATH=PACKAGE_ROOT)
        run = subprocess.run([sys.executable, "-X", "importtime", "-m", "xenpciback_cli"], env=env,
                             capture_output=True, text=True, timeout=60)
        assert run.returncode == 0 and run.stdout, (words, run.stderr[-400:])
        imported = {line.split("|")[-1].strip() for line in run.stderr.splitlines() if "|" in line}
        assert "click" in imported, run.stderr[-400:]  # the check itself sees imports
        heavy = {m for m in imported if m.split(".")[0] in ("rich", "tabulate", "pyudev")}
        assert not heavy, (words, heavy)


@pytest.mark.skipif(shutil.which("fish") is None, reason="fish is not installed")
def test_fish_completes_through_the_shipped_script(sandbox, program):
    ok("hide", "03:00.0", sandbox=sandbox)
    script = REPO / "completions" / "fish" / "xen-pciback.fish"

    def tab(line):
        run = subprocess.run(["fish", "--no-config", "-c", f"source {script}; complete -C '{line}'"],
                             env=program, capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stderr
        return run.stdout.splitlines()

    assert tab(f"xen-pciback --sandbox {sandbox} unhide ") == ["0000:03:00.0\tpciback"]
    assert tab(f"xen-pciback --sandbox {sandbox} hide 03:00.") == ["03:00.1\tigb"]


@pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh is not installed")
def test_zsh_completes_through_the_shipped_script(sandbox, program):
    """zsh's completion builtins work only inside its line editor: they are stood in for by
    functions printing what the script hands them."""
    ok("hide", "03:00.0", sandbox=sandbox)
    script = REPO / "completions" / "zsh" / "_xen-pciback"
    stubs = ("compdef() { :; }; _describe() { print -rl -- ${(P)3}; }; "
             "compadd() { print -rl -- ${(P)${@[-1]}}; }; _path_files() { print -r FILES $@; }; ")
    words = ["xen-pciback", "--sandbox", str(sandbox), "unhide", ""]
    line = stubs + f"source {script}; words=({' '.join(words[:-1])} ''); CURRENT={len(words)}; _xen_pciback"
    run = subprocess.run(["zsh", "-fc", line], env=program, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == ["0000\\:03\\:00.0:pciback"]

"""The man page and shell completion stay in step with the commands."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# Each script under the name its shell looks for (tools/gen_completions.py).
SHIPPED = {"bash": "bash/xen-pciback", "zsh": "zsh/_xen-pciback", "fish": "fish/xen-pciback.fish"}


def test_man_page_is_generated_from_the_current_commands():
    run = subprocess.run([sys.executable, str(REPO / "tools" / "gen_manpage.py"), "--check"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr


def complete(words: str) -> list[str]:
    env = dict(os.environ, COMP_WORDS=words, COMP_CWORD=str(len(words.split()) - (0 if words.endswith(" ") else 1)),
               _XEN_PCIBACK_COMPLETE="bash_complete", PYTHONPATH=str(REPO))
    run = subprocess.run([sys.executable, "-m", "xenpciback_cli"], env=env, capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    return [line.split(",", 1)[1] for line in run.stdout.splitlines()]


def test_bash_completion_offers_subcommands_and_options():
    assert {"hide", "unhide"} <= set(complete("xen-pciback h"))| set(complete("xen-pciback u"))
    assert "--rebind" in complete("xen-pciback unhide --re")
    assert {"init", "xenstored", "stop", "domain"} <= set(complete("xen-pciback sandbox "))


def test_shipped_completion_scripts_call_back_into_the_program():
    for shell in ("bash", "zsh", "fish"):
        text = (REPO / "completions" / SHIPPED[shell]).read_text()
        assert "_XEN_PCIBACK_COMPLETE" in text


def _generator():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gen_manpage", REPO / "tools" / "gen_manpage.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_man_page_does_not_come_from_clicks_help_formatter(monkeypatch, capsys):
    """click's formatter changed between releases (8.2 added rows for arguments): the generator
    renders from the command tree itself, so with the formatter gone the page is unchanged.
    Commands already run in this process (click 8.2+ caches each one's help option) change
    nothing either."""
    import click
    import pytest

    from xenpciback_cli.cli import main

    for args in (["-h"], ["sandbox", "domain", "create", "-h"], ["hide", "--help"]):
        with pytest.raises(SystemExit):
            main(args)
    capsys.readouterr()
    gen = _generator()

    def gone(*_args, **_kwargs):
        raise AssertionError("the man page generator used click's help formatting")

    for owner, name in [(click.Parameter, "get_help_record"), (click.Option, "get_help_record"),
                        (click.Argument, "get_help_record"), (click.Command, "collect_usage_pieces"),
                        (click.Command, "format_help"), (click.Command, "get_help"),
                        (click.Argument, "make_metavar"), (click.Option, "make_metavar"),
                        (click.Parameter, "get_usage_pieces"), (click.Command, "get_params"),
                        (click.Command, "get_help_option")]:
        if name in vars(owner):
            monkeypatch.setattr(owner, name, gone)
    assert gen.render() == (REPO / "man" / "xen-pciback.1").read_text()


def test_man_page_puts_arguments_in_the_usage_line_and_options_in_rows():
    import click

    gen = _generator()

    @click.command()
    @click.argument("bdf", nargs=-1, required=True)
    @click.argument("extra", required=False)
    @click.option("-d", "--domid", type=int, required=True, help="Guest.")
    @click.option("--driver", type=click.Choice(["a", "b"]), default="a", show_default=True)
    @click.option("--count", type=click.IntRange(1), default=None, help="N.")
    @click.option("--guest/--no-guest", default=True, show_default=True)
    @click.option("--secret", hidden=True)
    def command(**_kwargs):
        """Do it."""

    ctx = click.Context(command, info_name="x")
    assert gen.usage_of(ctx, command) == "[OPTIONS] BDF... [EXTRA]"
    assert gen.options_of(ctx, command) == [
        ("-d, --domid INTEGER", "Guest.  [required]"),
        ("--driver [a|b]", "[default: a]"),
        ("--count INTEGER RANGE", "N.  [x>=1]"),
        ("--guest / --no-guest", "[default: guest]"),
        ("--help", "Show this message and exit."),
    ]


def test_completion_scripts_are_generated_from_the_current_templates():
    run = subprocess.run([sys.executable, str(REPO / "tools" / "gen_completions.py"), "--check"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr


def test_the_shipped_bash_script_completes_through_the_program(tmp_path):
    """Source completions/bash/xen-pciback in a real bash and let it call back into the program
    (a 'xen-pciback' on PATH that runs this checkout), as pressing TAB would."""
    program = tmp_path / "xen-pciback"
    program.write_text(f"#!/bin/sh\nexec {sys.executable} -m xenpciback_cli \"$@\"\n")
    program.chmod(0o755)
    script = (REPO / "completions" / "bash" / "xen-pciback")
    probe = ("source \"$1\"; shift; COMP_WORDS=(\"$@\"); COMP_CWORD=$(( $# - 1 )); "
             "COMP_LINE=\"$*\"; COMP_POINT=${#COMP_LINE}; "
             "_xen_pciback_complete xen-pciback; printf '%s\\n' \"${COMPREPLY[@]}\"")
    env = dict(os.environ, PATH=f"{tmp_path}:{os.environ['PATH']}", PYTHONPATH=str(REPO))

    def tab(*words):
        run = subprocess.run(["bash", "-c", probe, "probe", str(script), *words], env=env,
                             capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stderr
        return run.stdout.split()

    assert {"hide", "unhide", "sandbox", "xenstore"} <= set(tab("xen-pciback", ""))
    assert tab("xen-pciback", "unhide", "--reb") == ["--rebind"]
    assert {"create", "destroy"} <= set(tab("xen-pciback", "sandbox", "domain", ""))


def test_fish_and_zsh_replies_are_in_the_format_the_shipped_scripts_read():
    def reply(shell, words, cword):
        env = dict(os.environ, COMP_WORDS=words, COMP_CWORD=cword, PYTHONPATH=str(REPO),
                   _XEN_PCIBACK_COMPLETE=f"{shell}_complete")
        run = subprocess.run([sys.executable, "-m", "xenpciback_cli"], env=env,
                             capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stderr
        return run.stdout

    fish = reply("fish", "xen-pciback hi", "hi").splitlines()
    assert len(fish) == 1 and fish[0].startswith("plain,hide\tSeize ")
    zsh = reply("zsh", "xen-pciback hi", "1").splitlines()
    assert zsh[:2] == ["plain", "hide"] and zsh[2].startswith("Seize ") and len(zsh) == 3


def test_zsh_escapes_colons_only_where_describe_splits():
    from click.shell_completion import CompletionItem

    from xenpciback_cli.cli.completion import Bash, Fish, Zsh

    zsh = Zsh.format_completion(None, CompletionItem("03:00.0", help="a\nNIC"))
    assert zsh == "plain\n03\\:00.0\na NIC"
    assert Zsh.format_completion(None, CompletionItem("03:00.0")) == "plain\n03:00.0\n_"
    assert Fish.format_completion(None, CompletionItem("x", help="two\tparts")) == "plain,x\ttwo parts"
    assert Bash.format_completion(None, CompletionItem("x", type="dir")) == "dir,x"

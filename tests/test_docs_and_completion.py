"""The man page and shell completion stay in step with the commands."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


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
        text = (REPO / "completions" / f"xen-pciback.{shell}").read_text()
        assert "_XEN_PCIBACK_COMPLETE" in text

"""The command group itself: version, help, the error boundary and exit codes."""

import subprocess
import sys

import pytest

from helpers.cli import invoke


def test_version(capsys):
    code, out, _ = invoke("--version")
    assert code == 0
    assert "xen-pciback" in out


def test_help_lists_commands_and_exit_codes(capsys):
    code, out, _ = invoke("--help")
    assert code == 0
    for name in ("list", "hide", "unhide", "recover", "inspect"):
        assert name in out
    assert "3  refused for safety" in out


def test_unknown_command_is_one_line_exit_2(capsys):
    code, out, err = invoke("no-such-command")
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("xen-pciback: error:")


def test_help_imports_no_heavy_modules():
    code = ("import sys; from xenpciback_cli.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('rich', 'tabulate', 'pyudev', 'xenpciback_cli.errors')"
            " if m in sys.modules]\n"
            "print('HEAVY=' + ','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "HEAVY="


def test_the_usage_exit_code_named_without_errors_py_is_errors_own():
    from xenpciback_cli.cli import USAGE_EXIT, HelpShownForMissingCommand
    from xenpciback_cli.errors import ExitCode

    assert USAGE_EXIT == HelpShownForMissingCommand.exit_code == ExitCode.USAGE


@pytest.mark.parametrize("group", [[], ["sandbox"], ["sandbox", "domain"], ["serve"], ["trace"],
                                   ["xenstore"]],
                         ids=["root", "sandbox", "sandbox-domain", "serve", "trace", "xenstore"])
def test_a_group_given_no_command_prints_its_help_and_exits_2(capsys, group):
    """Like git and xl: the normal, multi-line help on stdout, and a failing exit (2, bad usage,
    as README documents). Click >= 8.2 would flatten it onto one error line; < 8.2 exits 0."""
    code, out, err = invoke(*group)
    assert code == 2
    assert err == ""
    _, help_out, _ = invoke(*group, "--help")
    assert out == help_out
    lines = out.splitlines()
    assert lines[0].startswith(f"Usage: {' '.join(['xen-pciback', *group])} [OPTIONS] COMMAND")
    assert "Commands:" in lines and len(lines) > 8


def test_a_bare_group_in_a_fresh_process_prints_help_too():
    run_ = subprocess.run([sys.executable, "-m", "xenpciback_cli", "sandbox"], capture_output=True,
                          text=True, timeout=60)
    assert run_.returncode == 2 and run_.stderr == ""
    assert run_.stdout.startswith("Usage: xen-pciback sandbox [OPTIONS] COMMAND")
    assert "\n  init " in run_.stdout


def test_options_before_a_missing_command_are_a_one_line_usage_error(capsys):
    code, out, err = invoke("--json")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith('{"error": "Missing command')  # --json: JSON


def test_every_group_of_the_tree_is_covered_by_the_bare_group_test():
    import click

    from xenpciback_cli.cli import cli

    def groups(command, path):
        if isinstance(command, click.Group):
            yield path
            ctx = click.Context(command)
            for name in command.list_commands(ctx):
                yield from groups(command.get_command(ctx, name), [*path, name])

    assert sorted(groups(cli, [])) == [[], ["sandbox"], ["sandbox", "domain"], ["serve"],
                                       ["trace"], ["xenstore"]]

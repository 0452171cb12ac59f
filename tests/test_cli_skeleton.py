"""The command group itself: version, help, the error boundary and exit codes."""

import subprocess
import sys

import pytest

from xenpciback_cli.cli import main


def run(capsys, *args):
    with pytest.raises(SystemExit) as exc:
        main(list(args))
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def test_version(capsys):
    code, out, _ = run(capsys, "--version")
    assert code == 0
    assert "xen-pciback" in out


def test_help_lists_commands_and_exit_codes(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0
    for name in ("list", "hide", "unhide", "recover", "inspect"):
        assert name in out
    assert "3  refused for safety" in out


def test_unknown_command_is_one_line_exit_2(capsys):
    code, out, err = run(capsys, "no-such-command")
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("xen-pciback: error:")


def test_help_imports_no_heavy_modules():
    code = ("import sys; from xenpciback_cli.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('rich', 'tabulate', 'pyudev') if m in sys.modules]\n"
            "print('HEAVY=' + ','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "HEAVY="

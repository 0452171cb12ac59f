"""The wheel: built from the source, installed into a fresh prefix, its files where distributions
look; the installed man pages read with man -l; the systemd unit written by the installed
script starts that installation; the unit runs restore before networking."""

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

DATA_FILES = [
    "share/man/man1/xen-pciback.1",
    "share/man/man5/xen-pciback.toml.5",
    "share/bash-completion/completions/xen-pciback",
    "share/zsh/site-functions/_xen-pciback",
    "share/fish/vendor_completions.d/xen-pciback.fish",
    "share/xen-pciback/systemd/xen-pciback-restore.service",
    "share/xen-pciback/systemd/xen-pciback-serve.service",
]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """pip wheel . (from a copy of the tree, so no build/ is left in it), then pip install
    --prefix: the prefix and the environment that runs its script."""
    base = tmp_path_factory.mktemp("wheel")
    source = base / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build", "dist", ".git")
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    for name in ("xenpciback_cli", "man", "completions"):
        shutil.copytree(REPO / name, source / name, ignore=ignore)
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "-w", str(base / "w"),
                            "--no-deps", "-q"], capture_output=True, text=True, timeout=180)
    if build.returncode != 0:
        pytest.skip(f"cannot build a wheel here (setuptools>=68 not available?): {build.stderr[-300:]}")
    wheel = next((base / "w").glob("xen_pciback-*.whl"))
    prefix = base / "prefix"
    # --ignore-installed: where this package is already installed (CI's venv), pip would
    # otherwise call the wheel satisfied and put nothing in the prefix.
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index",
                              "--ignore-installed", "--prefix", str(prefix), str(wheel), "-q"],
                             capture_output=True, text=True, timeout=180)
    assert install.returncode == 0, install.stderr
    purelib = sysconfig.get_path("purelib", vars={"base": str(prefix), "platbase": str(prefix)})
    env = dict(os.environ, PYTHONPATH=purelib)
    env.pop("XEN_PCIBACK_SANDBOX", None)
    return prefix, env


def test_the_wheel_installs_man_pages_completions_and_the_unit_where_distributions_look(installed):
    prefix, _env = installed
    files = sorted(str(p.relative_to(prefix)) for p in prefix.rglob("*") if p.is_file()
                   and str(p.relative_to(prefix)).startswith("share/"))
    assert files == sorted(DATA_FILES)
    assert (prefix / DATA_FILES[2]).read_text() == (REPO / "completions/bash/xen-pciback").read_text()
    assert "@XEN_PCIBACK@" in (prefix / DATA_FILES[5]).read_text()  # a template: install-units fills it


@pytest.mark.skipif(shutil.which("man") is None, reason="man is not installed")
@pytest.mark.parametrize(("page", "heading"), [("share/man/man1/xen-pciback.1", "EXIT STATUS"),
                                               ("share/man/man5/xen-pciback.toml.5", "[[device]]")])
def test_the_installed_man_pages_read_with_man(installed, page, heading):
    prefix, _env = installed
    run = subprocess.run(["man", "-l", str(prefix / page)], capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, MANPAGER="cat", PAGER="cat", MANWIDTH="80"))
    assert run.returncode == 0, run.stderr
    assert heading in run.stdout


def test_install_units_writes_a_unit_that_starts_this_installation(installed, tmp_path):
    prefix, env = installed
    script = prefix / "bin" / "xen-pciback"
    first = subprocess.run([str(script), "--json", "install-units", "--dir", str(tmp_path)], env=env,
                           capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    import json

    assert json.loads(first.stdout)["changed"] is True
    unit = (tmp_path / "xen-pciback-restore.service").read_text()
    starts = [line.split("=", 1)[1] for line in unit.splitlines() if line.startswith("ExecStart=")]
    assert starts == [f"{script} recover", f"{script} restore"]
    # A --prefix install is found through PYTHONPATH: the unit carries it, and with only that
    # environment (systemd's, not this shell's) the command runs.
    environment = [line.split("=", 1)[1].strip("'") for line in unit.splitlines()
                   if line.startswith("Environment=")]
    assert environment == [f"PYTHONPATH={env['PYTHONPATH']}"]
    bare = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", environment[0].split("=")[0]: env["PYTHONPATH"]}
    version = subprocess.run([*starts[0].split()[:-1], "--version"], env=bare, capture_output=True,
                             text=True, timeout=60)
    assert version.returncode == 0 and "xen-pciback" in version.stdout, version.stderr
    again = subprocess.run([str(script), "--json", "install-units", "--dir", str(tmp_path)], env=env,
                           capture_output=True, text=True, timeout=60)
    assert json.loads(again.stdout)["changed"] is False  # idempotent
    if shutil.which("systemd-analyze"):
        verify = subprocess.run(["systemd-analyze", "verify", "--man=no",
                                 str(tmp_path / "xen-pciback-restore.service"),
                                 str(tmp_path / "xen-pciback-serve.service")],
                                capture_output=True, text=True, timeout=60)
        assert verify.returncode == 0, verify.stderr


def test_boot_restore_runs_before_networking():
    from xenpciback_cli.engine.units import template

    unit = template("xen-pciback-restore.service")
    lines = unit.splitlines()
    assert "Wants=network-pre.target" in lines
    before = " ".join(line.split("=", 1)[1] for line in lines if line.startswith("Before="))
    assert "network-pre.target" in before.split() and "xen-init-dom0.service" in before.split()
    # Default dependencies would order it after basic.target, too late for network-pre.target.
    assert "DefaultDependencies=no" in lines
    assert [line for line in lines if line.startswith("ExecStart=")] == [
        "ExecStart=@XEN_PCIBACK@ recover", "ExecStart=@XEN_PCIBACK@ restore"]


def test_install_units_dry_run_writes_nothing_and_a_missing_directory_is_one_line(tmp_path):
    from helpers.cli import invoke, ok

    run = ok("--json", "install-units", "--dir", tmp_path, "--dry-run")
    assert run.json()["changed"] is True and run.json()["dry_run"] is True
    assert list(tmp_path.iterdir()) == []
    missing = invoke("install-units", "--dir", tmp_path / "nope")
    assert missing.code == 2 and "does not exist" in missing.error


def test_serve_unit_is_type_notify_and_keeps_its_run_dir_across_restarts():
    """serve sends READY=1 itself (engine.serve.notify_ready); its interrupt records live in the
    run dir and must outlive a restart, or a restarted serve could not hand the guest's PIRQs
    back to the adapter."""
    from xenpciback_cli.engine.units import UNITS, template

    assert "xen-pciback-serve.service" in UNITS
    lines = template("xen-pciback-serve.service").splitlines()
    assert "Type=notify" in lines and "NotifyAccess=main" in lines
    assert [line for line in lines if line.startswith("ExecStart=")] == [
        "ExecStart=@XEN_PCIBACK@ serve foreground"]
    assert "RuntimeDirectory=xen-pciback" in lines and "RuntimeDirectoryPreserve=yes" in lines
    assert "KillSignal=SIGTERM" in lines and "Restart=on-failure" in lines
    after = " ".join(line.split("=", 1)[1] for line in lines if line.startswith("After="))
    assert "xenstored.service" in after.split() and "xen-pciback-restore.service" in after.split()


def test_serve_unit_run_dir_is_the_one_serve_uses(monkeypatch):
    from xenpciback_cli.app import Application, Settings

    monkeypatch.delenv("XEN_PCIBACK_RUN_DIR", raising=False)
    assert str(Application(Settings()).serve_run_dir()) == "/run/xen-pciback"

"""Shared pytest fixtures, and the guard that keeps tests off this machine's real /sys.

This machine's own PCI devices are its disk and network: tests act on a sandbox or a temporary
tree. So that a test which forgets ``--sandbox`` cannot reach the real /sys (in this process or in
a subprocess, which inherits the environment), the default sysfs root for the whole session points
at a path that does not exist. Tests that read the real /sys on purpose say ``--sysfs-root /sys``
(or ``SysfsHost("/sys")``) explicitly.
"""

import os
import shutil
from pathlib import Path

os.environ["XEN_PCIBACK_SYSFS_ROOT"] = "/nonexistent/xen-pciback-tests-must-not-touch-the-real-sys"

import pytest
import xsdaemons as _xsd

# -- the sandbox: one built per test session (per xdist worker), copied for each test that writes --


@pytest.fixture(scope="session")
def pristine_sandbox(tmp_path_factory) -> Path:
    """A freshly made sandbox, shared by the whole session: read it or copy it, never write to it."""
    from xenpciback_cli.sandbox.host import create_sandbox

    return create_sandbox(tmp_path_factory.mktemp("pristine") / "s").directory


@pytest.fixture()
def sandbox(pristine_sandbox: Path, tmp_path: Path):
    """This test's own copy of the pristine sandbox (its directory); whatever the test started in
    the background for it (xenstored, simulated guests) is stopped afterwards."""
    target = tmp_path / "s"
    shutil.copytree(pristine_sandbox, target, symlinks=True)
    yield target
    if (target / "xenstore" / "pid").exists() or (target / "domains").exists():
        from helpers.cli import invoke

        invoke("--sandbox", target, "sandbox", "stop")


# -- xenstore daemons (tools/xsdaemons.py): keep these fixture names stable, others reuse them --


def _start_xenstored(kind, tmp_path_factory, **kwargs):
    try:
        return _xsd.start(kind, tmp_path_factory.mktemp(kind), tmp_path_factory.getbasetemp() / "xsshim",
                          **kwargs)
    except _xsd.Unavailable as exc:
        pytest.skip(f"{kind} unavailable: {exc}")


_KIND_PARAMS = [pytest.param(k, marks=() if k == "embedded" else pytest.mark.realdaemon)
                for k in _xsd.KINDS]


@pytest.fixture(scope="module", params=_KIND_PARAMS)
def xenstored_daemon(request, tmp_path_factory):
    """A fresh daemon of each kind (embedded, cxenstored, oxenstored) per test module."""
    daemon = _start_xenstored(request.param, tmp_path_factory)
    yield daemon
    daemon.stop()


@pytest.fixture(scope="module")
def xenstored_socket(xenstored_daemon):
    """The socket path of a fresh daemon of each kind, shared by one test module."""
    return xenstored_daemon.socket


@pytest.fixture(scope="module")
def real_cxenstored_daemon(tmp_path_factory):
    daemon = _start_xenstored("cxenstored", tmp_path_factory)
    yield daemon
    daemon.stop()


@pytest.fixture(scope="module")
def real_cxenstored_socket(real_cxenstored_daemon):
    """The socket of Debian's real C xenstored (skipped when it cannot run here)."""
    return real_cxenstored_daemon.socket


@pytest.fixture(params=_KIND_PARAMS)
def fresh_xenstored_daemon(request, tmp_path_factory):
    """A daemon of each kind started for this one test (for tests that need a fresh tree)."""
    daemon = _start_xenstored(request.param, tmp_path_factory)
    yield daemon
    daemon.stop()

"""app.py picks the hypervisor adapter for attach/detach/recover (the one place adapters are
chosen): the sandbox's simulated Xen, libxenctrl under Xen on the real /sys, none elsewhere."""

from __future__ import annotations

from xenpciback_cli.app import Application, Settings
from xenpciback_cli.sandbox.hypervisor import SandboxDomainGrants
from xenpciback_cli.transport.xen_grants import XenDomainGrants


def _tree(tmp_path, hypervisor: str | None, initdomain: str | None):
    sys = tmp_path / "sys"
    (sys / "bus" / "pci" / "devices").mkdir(parents=True)
    if hypervisor is not None:
        (sys / "hypervisor" / "start_flags").mkdir(parents=True)
        (sys / "hypervisor" / "type").write_text(hypervisor + "\n")
        if initdomain is not None:
            (sys / "hypervisor" / "start_flags" / "initdomain").write_text(initdomain + "\n")
    return sys


def test_the_sandbox_gets_its_simulated_hypervisor(sandbox):
    grants = Application(Settings(sandbox=str(sandbox))).domain_grants()
    assert isinstance(grants, SandboxDomainGrants) and grants.root == sandbox


def test_a_sysfs_tree_gets_none_even_when_it_says_xen(tmp_path):
    """A --sysfs-root tree is never real Xen: no hypercall is made for it."""
    sys = _tree(tmp_path, "xen", "1")
    assert Application(Settings(sysfs_root=str(sys))).domain_grants() is None


def test_real_sys_under_xen_unless_a_guest(monkeypatch):
    from xenpciback_cli.host import platform

    monkeypatch.setattr(platform.Platform, "hypervisor_type", lambda self: "xen")
    for initial, expected in ((True, XenDomainGrants), (None, XenDomainGrants), (False, type(None))):
        monkeypatch.setattr(platform.Platform, "initial_domain", lambda self, v=initial: (v, "test"))
        assert type(Application(Settings()).domain_grants()) is expected, initial
    monkeypatch.setattr(platform.Platform, "hypervisor_type", lambda self: None)
    assert Application(Settings()).domain_grants() is None

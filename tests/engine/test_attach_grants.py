"""attach and detach on the hypervisor side, in a sandbox: what the simulated Xen holds for a
guest after attach (libxl's grants for a PV guest, computed here from the device's sysfs
``resource`` and ``irq`` files with libxl's own arithmetic), a failure half way that leaves
nothing behind, detach taking everything back, ``recover`` finishing a revoke cut short, and the
backend-kind rule (pci-stub's devices are attachable only without the kernel's pciback)."""

from __future__ import annotations

import errno
import json

import pytest

from helpers.cli import invoke, ok
from xenpciback_cli.pci.address import Bdf
from xenpciback_cli.sandbox.host import open_sandbox
from xenpciback_cli.sandbox.hypervisor import SandboxDomainGrants

NIC = Bdf.parse("03:00.0")  # igb port 0: memory BARs, an I/O BAR, an expansion ROM, INTx 33
XHCI = Bdf.parse("00:14.0")


def libxl_grants(sandbox, bdf):
    """What libxl's pci_add_dm_done grants, straight from the sysfs files: (iomem, ioport, irq)."""
    base = sandbox / "sys" / "bus" / "pci" / "devices" / str(bdf)
    iomem, ioport = [], []
    for line in (base / "resource").read_text().splitlines()[:7]:  # PROC_PCI_NUM_RESOURCES
        start, end, flags = (int(x, 16) for x in line.split())
        if not start:
            continue
        size = end - start + 1
        if flags & 0x100:  # IORESOURCE_IO
            ioport.append([start, size])
        else:
            iomem.append([start >> 12, (size + 4095) >> 12])
    return sorted(iomem), sorted(ioport), int((base / "irq").read_text())


def hypervisor(sandbox):
    return SandboxDomainGrants(sandbox).view()


def snapshot(sandbox):
    tree = ok("--sandbox", sandbox, "--json", "xenstore", "ls", "/").output
    return tree, hypervisor(sandbox)


def test_attach_grants_what_libxl_grants_and_detach_takes_it_back(sandbox):
    ok("--sandbox", sandbox, "sandbox", "domain", "create", 5, "--no-guest")
    result = json.loads(ok("--sandbox", sandbox, "--json", "attach", NIC, "--domid", 5, "--seize").output)
    iomem, ioport, irq = libxl_grants(sandbox, NIC)
    assert len(iomem) == 4 and len(ioport) == 1 and irq == 33  # the BARs and the ROM
    held = hypervisor(sandbox)
    assert held["owners"] == {str(NIC): 5}
    assert held["domains"] == {"5": {"iomem": iomem, "ioport": ioport, "pirqs": {"33": 33}, "irqs": [33]}}
    kinds = [g["kind"] for g in result["grants"][str(NIC)]]
    assert kinds == ["iomem", "iomem", "ioport", "iomem", "iomem", "intx", "assign"]  # libxl's order
    record = json.loads((sandbox / "state" / "grants" / "0000-03-00-0.json").read_text())
    assert record["phase"] == "attached" and record["domid"] == 5 and record["adapter"] == "sandbox"
    [row] = json.loads(ok("--sandbox", sandbox, "--json", "list", NIC).output)
    assert row["grants"] == record and row["grants"]["grants"] == result["grants"][str(NIC)]
    status = json.loads(ok("--sandbox", sandbox, "--json", "status", "--domid", 5).output)
    assert status["grants"] == {str(NIC): record}
    assert "INTx IRQ 33 as PIRQ 33, IOMMU assignment" in ok("--sandbox", sandbox, "status", "--domid", 5).output
    [report] = json.loads(ok("--sandbox", sandbox, "--json", "inspect", NIC).output)
    assert report["grants"] == record
    assert "granted to domain 5 (attached): memory 0xe0800000" in ok("--sandbox", sandbox, "inspect", NIC).output

    out = ok("--sandbox", sandbox, "detach", NIC, "--domid", 5).output
    assert "grants revoked" in out
    assert hypervisor(sandbox) == {"owners": {}, "domains": {}}  # back to dom0, nothing left
    assert not (sandbox / "state" / "grants" / "0000-03-00-0.json").exists()
    [row] = json.loads(ok("--sandbox", sandbox, "--json", "list", NIC).output)
    assert row["grants"] is None


def test_a_grant_failing_half_way_leaves_the_hypervisor_and_xenstore_as_they_were(sandbox):
    ok("--sandbox", sandbox, "sandbox", "domain", "create", 5, "--no-guest")
    ok("--sandbox", sandbox, "hide", NIC)
    # Someone else (another toolstack) gave the device to domain 9: Xen refuses a second owner.
    SandboxDomainGrants(sandbox).assign_device(9, NIC, relaxed=False)
    before = snapshot(sandbox)
    result = invoke("--sandbox", sandbox, "attach", NIC, "--domid", 5)
    assert result.code == 1, result.output
    assert result.output.count("\n") == 1 and "Traceback" not in result.output
    assert result.error.startswith(f"assigning {NIC} to domain 5 (IOMMU): EBUSY")
    assert "what was granted is revoked" in result.error
    assert snapshot(sandbox) == before  # memory, ports and PIRQ granted first: all taken back
    assert not (sandbox / "state" / "grants").exists() or not any((sandbox / "state" / "grants").iterdir())


def test_recover_finishes_a_revoke_cut_short(sandbox):
    """A detach that died after the guest let go, half way through revoking: recover finishes."""
    from xenpciback_cli.engine.grants import load_record, revoke_device

    ok("--sandbox", sandbox, "sandbox", "domain", "create", 5, "--no-guest")
    ok("--sandbox", sandbox, "attach", NIC, "--domid", 5, "--seize")

    class Killed(BaseException):
        pass

    class DiesOnThirdCall(SandboxDomainGrants):
        calls = 0

        def iomem_permission(self, *args, **kwargs):
            DiesOnThirdCall.calls += 1
            if DiesOnThirdCall.calls == 3:
                raise Killed()
            super().iomem_permission(*args, **kwargs)

    with pytest.raises(Killed):
        revoke_device(DiesOnThirdCall(sandbox), sandbox / "state", NIC, 5)
    left = load_record(sandbox / "state", NIC)
    assert left is not None and left.phase == "revoking"
    # Revoked newest first: the assignment, the PIRQ, the ROM, BAR 3, the I/O ports; died on BAR 1.
    # The assignment stays until the device is handed back from the quarantine.
    assert [g.kind for g in left.grants] == ["iomem", "iomem", "assign"]
    assert hypervisor(sandbox)["owners"] == {str(NIC): "io"}  # in Xen's quarantine meanwhile

    doctor = invoke("--sandbox", sandbox, "--json", "doctor")
    [journal] = [c for c in json.loads(doctor.out)["checks"] if c["name"] == "journal"]
    assert journal["verdict"] == "fail" and f"revoke {NIC}" in journal["detail"]
    assert journal["fix"] == "xen-pciback recover"

    out = ok("--sandbox", sandbox, "--json", "recover").output
    [op] = [o for o in json.loads(out)["operations"] if o["op"] == "grants"]
    assert op["action"] == "revoked" and op["bdf"] == str(NIC) and "detach was cut short" in op["reason"]
    assert hypervisor(sandbox) == {"owners": {}, "domains": {}}
    assert load_record(sandbox / "state", NIC) is None
    assert "nothing to recover" in ok("--sandbox", sandbox, "recover").output


def test_a_revoke_that_fails_leaves_a_record_that_recover_finishes(sandbox):
    """Xen refusing one revoke: the rest is revoked, the device handed back, and what is still
    granted stays recorded, so doctor says to recover and recover takes it back."""
    from xenpciback_cli.engine.grants import Grant, load_record, revoke_device

    ok("--sandbox", sandbox, "sandbox", "domain", "create", 5, "--no-guest")
    ok("--sandbox", sandbox, "attach", NIC, "--domid", 5, "--seize")
    _, ioport, _ = libxl_grants(sandbox, NIC)

    class RefusesToDenyPorts(SandboxDomainGrants):
        def ioport_permission(self, domid, first_port, ports, allow):
            if not allow:
                raise OSError(errno.EACCES, "xc_domain_ioport_permission")
            super().ioport_permission(domid, first_port, ports, allow)

    revoked, problems = revoke_device(RefusesToDenyPorts(sandbox), sandbox / "state", NIC, 5)
    ports = f"I/O ports {ioport[0][0]:#x}-{ioport[0][0] + ioport[0][1] - 1:#x}"
    assert problems[0] == f"revoking {ports}: EACCES (Permission denied)"
    assert "xen-pciback recover" in problems[-1]
    assert "ioport" not in [g.kind for g in revoked]
    held = hypervisor(sandbox)
    assert held == {"owners": {}, "domains": {"5": {"iomem": [], "ioport": ioport, "pirqs": {}, "irqs": []}}}
    left = load_record(sandbox / "state", NIC)
    assert left is not None and left.phase == "revoking"
    assert left.grants == [Grant("ioport", *ioport[0])]

    doctor = invoke("--sandbox", sandbox, "--json", "doctor")
    [journal] = [c for c in json.loads(doctor.out)["checks"] if c["name"] == "journal"]
    assert f"revoke {NIC}" in journal["detail"] and journal["fix"] == "xen-pciback recover"

    out = ok("--sandbox", sandbox, "--json", "recover").output
    [op] = [o for o in json.loads(out)["operations"] if o["op"] == "grants"]
    assert op["action"] == "revoked" and op["reason"].endswith(f"revoked {ports}")
    assert hypervisor(sandbox) == {"owners": {}, "domains": {}}
    assert load_record(sandbox / "state", NIC) is None
    assert "nothing to recover" in ok("--sandbox", sandbox, "recover").output


def test_recover_keeps_the_grants_of_an_attach_that_had_published(sandbox):
    """An attach killed after its xenstore commit (record still 'granting'): the guest keeps them."""
    from xenpciback_cli.engine import grants as G

    ok("--sandbox", sandbox, "sandbox", "domain", "create", 5, "--no-guest")
    ok("--sandbox", sandbox, "attach", NIC, "--domid", 5, "--seize")
    record = G.load_record(sandbox / "state", NIC)
    record.phase = "granting"
    G._save(G.st.StateStore(sandbox / "state"), record)
    held = hypervisor(sandbox)
    ops = json.loads(ok("--sandbox", sandbox, "--json", "recover").output)["operations"]
    assert [(o["op"], o["action"]) for o in ops] == [("grants", "kept")]
    assert hypervisor(sandbox) == held
    assert G.load_record(sandbox / "state", NIC).phase == "attached"


# -- the backend kind: the kernel's pciback loaded or not -----------------------------------------
def test_without_the_kernel_pciback_hide_picks_pci_stub_and_attach_takes_it(sandbox):
    open_sandbox(sandbox).kernel.unload_module("pciback")
    assert "pciback" not in open_sandbox(sandbox).loaded_drivers()
    out = ok("--sandbox", sandbox, "hide", XHCI).output
    assert "-> pci-stub" in out
    [row] = json.loads(ok("--sandbox", sandbox, "--json", "list", XHCI).output)
    assert row["driver"] == "pci-stub" and row["state"] == "seized" and row["attachable"] is True
    assert XHCI.__str__() in ok("--sandbox", sandbox, "list", "--assignable").output
    doctor = invoke("--sandbox", sandbox, "--json", "doctor")  # fails: serve is not running
    [backend] = [c for c in json.loads(doctor.out)["checks"] if c["name"] == "backend"]
    assert "pci-stub are attachable" in backend["detail"] and "serve foreground" in backend["fix"]
    ok("--sandbox", sandbox, "sandbox", "domain", "create", 7, "--no-guest")
    ok("--sandbox", sandbox, "attach", XHCI, "--domid", 7)
    [row] = json.loads(ok("--sandbox", sandbox, "--json", "list", XHCI).output)
    assert row["state"] == "attached" and row["domid"] == 7 and row["driver"] == "pci-stub"
    assert hypervisor(sandbox)["owners"] == {str(XHCI): 7}
    # attach --seize of a host device seizes it for pci-stub too
    ok("--sandbox", sandbox, "attach", NIC, "--domid", 7, "--seize")
    assert open_sandbox(sandbox).device(NIC).driver == "pci-stub"


def test_attach_dry_run_says_the_intx_is_routed_at_attach_time_and_writes_nothing(sandbox):
    """A stub-held device no dom0 driver enabled: sysfs irq is the firmware's INTERRUPT_LINE
    until the attach has the kernel route it, so the dry run must not offer it as the GSI."""
    open_sandbox(sandbox).kernel.unload_module("pciback")
    ok("--sandbox", sandbox, "hide", XHCI)
    ok("--sandbox", sandbox, "sandbox", "domain", "create", 7, "--no-guest")
    enable = sandbox / "sys" / "bus" / "pci" / "devices" / str(XHCI) / "enable"
    enable.write_text("0\n")
    irq = (sandbox / "sys" / "bus" / "pci" / "devices" / str(XHCI) / "irq").read_text().strip()
    before = snapshot(sandbox), (sandbox / "sandbox.json").read_text()
    result = json.loads(ok("--sandbox", sandbox, "--json", "attach", XHCI, "--domid", 7, "--dry-run").output)
    [planned] = [n for n in result["notes"] if n.startswith("would grant")]
    assert f"INTx: routed by the kernel at attach time (sysfs irq {irq} now), IOMMU assignment" in planned
    assert "INTx IRQ" not in planned
    text = ok("--sandbox", sandbox, "attach", XHCI, "--domid", 7, "--dry-run").output
    assert f"INTx: routed by the kernel at attach time (sysfs irq {irq} now)" in text
    assert (snapshot(sandbox), (sandbox / "sandbox.json").read_text()) == before
    assert enable.read_text() == "0\n"
    assert not (sandbox / "state" / "grants").exists() or not any((sandbox / "state" / "grants").iterdir())
    enable.write_text("1\n")  # enabled once already: its irq is the GSI, shown as it will be mapped
    result = json.loads(ok("--sandbox", sandbox, "--json", "attach", XHCI, "--domid", 7, "--dry-run").output)
    assert any(f"INTx IRQ {irq}, IOMMU assignment" in n for n in result["notes"])


def test_vfio_pci_stays_refused_without_the_kernel_pciback(sandbox):
    open_sandbox(sandbox).kernel.unload_module("pciback")
    ok("--sandbox", sandbox, "hide", "--driver", "vfio-pci", XHCI)
    ok("--sandbox", sandbox, "sandbox", "domain", "create", 7, "--no-guest")
    [row] = json.loads(ok("--sandbox", sandbox, "--json", "list", XHCI).output)
    assert row["attachable"] is False
    result = invoke("--sandbox", sandbox, "attach", XHCI, "--domid", 7)
    assert result.code == 3 and "is seized by vfio-pci" in result.error
    assert "move it to pci-stub" in result.error


def test_with_the_kernel_pciback_pci_stub_is_another_consumer(sandbox):
    assert "pciback" in open_sandbox(sandbox).loaded_drivers()
    assert "-> pciback" in ok("--sandbox", sandbox, "hide", NIC).output  # the old default holds
    ok("--sandbox", sandbox, "hide", "--driver", "pci-stub", XHCI)
    ok("--sandbox", sandbox, "sandbox", "domain", "create", 7, "--no-guest")
    result = invoke("--sandbox", sandbox, "attach", XHCI, "--domid", 7)
    assert result.code == 3 and "is seized by pci-stub" in result.error
    assert "pciback" in result.error
    backend = [c for c in json.loads(ok("--sandbox", sandbox, "--json", "doctor").output)["checks"]
               if c["name"] == "backend"]
    assert "kernel pciback" in backend[0]["detail"]


def test_destroying_the_guest_takes_its_grants_back_like_xl_destroy(sandbox):
    ok("--sandbox", sandbox, "sandbox", "domain", "create", 5, "--no-guest")
    ok("--sandbox", sandbox, "attach", NIC, "--domid", 5, "--seize")
    assert hypervisor(sandbox)["owners"] == {str(NIC): 5}
    ok("--sandbox", sandbox, "sandbox", "domain", "destroy", 5)
    assert hypervisor(sandbox) == {"owners": {}, "domains": {}}
    assert not (sandbox / "state" / "grants" / "0000-03-00-0.json").exists()
    assert "nothing to recover" in ok("--sandbox", sandbox, "recover").output


# -- xenstore failing after the grants: the grants go too ---------------------------------------
def _engine(sandbox):
    from xenpciback_cli.app import Application, Settings

    app = Application(Settings(sandbox=str(sandbox)))
    return app, app.open_xenstore()


def test_a_xenstore_failure_after_the_grants_revokes_them(sandbox):
    from xenpciback_cli.engine.attach import AttachSpec, attach
    from xenpciback_cli.errors import OperationFailed

    ok("--sandbox", sandbox, "sandbox", "domain", "create", 5, "--no-guest")
    ok("--sandbox", sandbox, "hide", NIC)
    app, client = _engine(sandbox)
    seen = []

    def collide(attempt):
        seen.append(hypervisor(sandbox)["owners"])  # granted before the transaction
        raise OperationFailed("xenstore went away")

    with client:
        before = ok("--sandbox", sandbox, "--json", "xenstore", "ls", "/").output
        with pytest.raises(OperationFailed, match="xenstore went away"):
            attach(client, AttachSpec(5, NIC), host=app.host, grants=app.domain_grants(),
                   state_dir=str(app.state_dir), on_attempt=collide)
    assert seen == [{str(NIC): 5}]
    assert hypervisor(sandbox) == {"owners": {}, "domains": {}}
    assert ok("--sandbox", sandbox, "--json", "xenstore", "ls", "/").output == before
    assert not (sandbox / "state" / "grants" / "0000-03-00-0.json").exists()


def test_a_hotplug_rolled_back_on_timeout_revokes_its_grants(sandbox):
    """The backend says Connected but nobody runs the round: xenstore is rolled back, and so is
    the hypervisor; the first device keeps its grants."""
    from xenpciback_cli.engine.attach import AttachSpec, attach
    from xenpciback_cli.errors import OperationFailed

    second = Bdf.parse("03:00.1")
    ok("--sandbox", sandbox, "sandbox", "domain", "create", 5, "--no-guest")
    ok("--sandbox", sandbox, "attach", NIC, "--domid", 5, "--seize")
    ok("--sandbox", sandbox, "hide", "--force", second)  # eth1 is up: a loud override
    app, client = _engine(sandbox)
    with client:
        client.write("/local/domain/0/backend/pci/5/0/state", "4")  # Connected, nobody serving
        first = hypervisor(sandbox)
        with pytest.raises(OperationFailed, match="attach rolled back, xenstore is as it was"):
            attach(client, AttachSpec(5, second), host=app.host, grants=app.domain_grants(),
                   state_dir=str(app.state_dir), timeout=0.5)
    assert hypervisor(sandbox) == first  # 03:00.1's grants gone, 03:00.0's kept
    assert not (sandbox / "state" / "grants" / "0000-03-00-1.json").exists()
    assert (sandbox / "state" / "grants" / "0000-03-00-0.json").exists()


def test_a_corrupt_grant_record_is_named_and_the_others_recovered(sandbox):
    from xenpciback_cli.engine.grants import revoke_device

    ok("--sandbox", sandbox, "sandbox", "domain", "create", 5, "--no-guest")
    ok("--sandbox", sandbox, "attach", NIC, "--domid", 5, "--seize")
    ok("--sandbox", sandbox, "attach", XHCI, "--domid", 5, "--seize")

    class Killed(BaseException):
        pass

    class DiesAtOnce(SandboxDomainGrants):
        def deassign_device(self, *args):
            raise Killed()

    with pytest.raises(Killed):
        revoke_device(DiesAtOnce(sandbox), sandbox / "state", NIC, 5)
    (sandbox / "state" / "grants" / "0000-00-14-0.json").write_text("{not json")
    result = invoke("--sandbox", sandbox, "recover")
    assert result.code == 2 and "0000-00-14-0.json is corrupt" in result.error
    assert "revoked the grants of domain 5 for 0000:03:00.0" in result.out
    assert str(NIC) not in hypervisor(sandbox)["owners"]


def test_recover_whose_revoke_xen_refuses_again_says_failed_and_keeps_the_record(sandbox):
    """Recover must not call a revoke done when Xen refused it again: the outcome is 'failed'
    (the CLI exits 1) and the record still holds what is granted, for the next recover."""
    from xenpciback_cli.engine.grants import load_record, recover_grants, revoke_device

    ok("--sandbox", sandbox, "sandbox", "domain", "create", 5, "--no-guest")
    ok("--sandbox", sandbox, "attach", NIC, "--domid", 5, "--seize")

    class RefusesToDenyPorts(SandboxDomainGrants):
        def ioport_permission(self, domid, first_port, ports, allow):
            if not allow:
                raise OSError(errno.EACCES, "xc_domain_ioport_permission")
            super().ioport_permission(domid, first_port, ports, allow)

    port = RefusesToDenyPorts(sandbox)
    revoke_device(port, sandbox / "state", NIC, 5)
    [outcome] = recover_grants(sandbox / "state", port, holders={})
    assert outcome.action == "failed" and "EACCES" in outcome.reason
    assert load_record(sandbox / "state", NIC) is not None
    [outcome] = recover_grants(sandbox / "state", SandboxDomainGrants(sandbox), holders={})
    assert outcome.action == "revoked" and load_record(sandbox / "state", NIC) is None

"""engine.grants against a recording fake hypervisor: libxl's plan from sysfs facts, the order
of the calls, all-or-nothing granting, revoking newest first with the reset in the quarantine,
the record a crash leaves, and recover."""

from __future__ import annotations

import errno
import json

import pytest

from xenpciback_cli.engine import grants as G
from xenpciback_cli.errors import OperationFailed, StateFileCorrupt
from xenpciback_cli.host.sysfs import SysfsHost
from xenpciback_cli.pci.address import Bdf

DEV = Bdf.parse("0000:05:00.0")
EMPTY = "0x0000000000000000 0x0000000000000000 0x0000000000000000"


def resource_lines(*lines: tuple[int, int, int] | None, total: int = 13) -> str:
    out = [EMPTY if line is None else f"0x{line[0]:016x} 0x{line[1]:016x} 0x{line[2]:016x}" for line in lines]
    return "\n".join(out + [EMPTY] * (total - len(out))) + "\n"


def make_device(tmp_path, resource: str, irq: str = "19\n"):
    base = tmp_path / "sys" / "bus" / "pci" / "devices" / str(DEV)
    base.mkdir(parents=True)
    config = bytearray(64)
    config[0:4] = bytes([0x86, 0x80, 0xD3, 0x10])
    (base / "config").write_bytes(bytes(config))
    for name, value in (("vendor", "0x8086"), ("device", "0x10d3"), ("class", "0x020000"),
                        ("resource", resource), ("irq", irq)):
        (base / name).write_text(value)
    return SysfsHost(str(tmp_path / "sys"), str(tmp_path / "proc")).device(DEV)


#: BAR0 128 KiB memory, BAR1 unset, BAR2 32 I/O ports, BAR3 a 16-byte memory BAR (less than a
#: page), an expansion ROM with its enable bit (bit 0: libxl would call it I/O), and a bridge
#: window past line 6 that libxl never reads.
RESOURCES = resource_lines((0xFEBC0000, 0xFEBDFFFF, 0x40200), None, (0xC000, 0xC01F, 0x40101),
                           (0xFEBF1000, 0xFEBF100F, 0x40200), None, None,
                           (0xFEB80001, 0xFEBBFFFF, 0x46201), (0xD0000000, 0xDFFFFFFF, 0x200))


class FakeHypervisor:
    kind = "fake"

    def __init__(self, fail: dict[str, int] | None = None) -> None:
        self.calls: list[tuple] = []
        self.fail = dict(fail or {})

    def _call(self, name, *args):
        self.calls.append((name, *args))
        if name in self.fail:
            code = self.fail[name]
            raise OSError(code, f"{name}: {errno.errorcode[code]}")

    def iomem_permission(self, domid, first_frame, frames, allow):
        self._call("iomem", domid, first_frame, frames, allow)

    def ioport_permission(self, domid, first_port, ports, allow):
        self._call("ioport", domid, first_port, ports, allow)

    def map_pirq(self, domid, irq):
        self._call("map_pirq", domid, irq)
        return irq

    def unmap_pirq(self, domid, pirq):
        self._call("unmap_pirq", domid, pirq)

    def irq_permission(self, domid, pirq, allow):
        self._call("irq_permission", domid, pirq, allow)

    def assign_device(self, domid, bdf, *, relaxed):
        self._call("assign", domid, str(bdf), relaxed)

    def deassign_device(self, domid, bdf):
        self._call("deassign", domid, str(bdf))


GRANT_CALLS = [("iomem", 5, 0xFEBC0, 32, True), ("ioport", 5, 0xC000, 32, True),
               ("iomem", 5, 0xFEBF1, 1, True), ("iomem", 5, 0xFEB80, 64, True),
               ("map_pirq", 5, 19), ("irq_permission", 5, 19, True), ("assign", 5, str(DEV), False)]


def test_plan_is_libxls_from_the_sysfs_files(tmp_path):
    plan = G.plan_grants(make_device(tmp_path, RESOURCES), relaxed=False)
    assert [g.to_json() for g in plan] == [
        {"kind": "iomem", "first": 0xFEBC0, "count": 32},
        {"kind": "ioport", "first": 0xC000, "count": 32},
        {"kind": "iomem", "first": 0xFEBF1, "count": 1},  # 16 bytes: one frame
        {"kind": "iomem", "first": 0xFEB80, "count": 64},  # the ROM is memory whatever bit 0 says
        {"kind": "intx", "irq": 19, "pirq": None},
        {"kind": "assign", "relaxed": False}]


@pytest.mark.parametrize("irq", ["0\n", "255\n", "1_9\n", "-19\n", "\u0661\u0669\n", "", "junk"])
def test_no_intx_grant_without_a_plain_line_number(tmp_path, irq):
    plan = G.plan_grants(make_device(tmp_path, RESOURCES, irq), relaxed=True)
    assert [g.kind for g in plan] == ["iomem", "ioport", "iomem", "iomem", "assign"]
    assert plan[-1].relaxed


def test_grant_calls_the_hypervisor_in_libxls_order_and_records_it(tmp_path):
    hv = FakeHypervisor()
    state = tmp_path / "state"
    outcome = G.grant_device(hv, state, 5, make_device(tmp_path, RESOURCES), relaxed=False)
    assert hv.calls == GRANT_CALLS
    assert outcome.grants[4] == G.Grant("intx", 19, pirq=19)
    record = G.load_record(state, DEV)
    assert record.phase == "granting" and record.grants == outcome.grants and record.adapter == "fake"
    G.mark_attached(state, [DEV])
    assert G.load_record(state, DEV).phase == "attached"


@pytest.mark.parametrize("failing, granted", [("iomem", 0), ("ioport", 1), ("map_pirq", 4),
                                              ("irq_permission", 4), ("assign", 6)])
def test_a_failure_revokes_what_was_granted_newest_first(tmp_path, failing, granted):
    hv = FakeHypervisor({failing: errno.EPERM})
    state = tmp_path / "state"
    with pytest.raises(OperationFailed) as exc:
        G.grant_device(hv, state, 5, make_device(tmp_path, RESOURCES), relaxed=False)
    assert "EPERM" in str(exc.value) and "\n" not in str(exc.value)
    index = next(i for i, c in enumerate(hv.calls) if c[0] == failing)
    undo = hv.calls[index + 1:]
    if failing == "irq_permission":  # mapped, not permitted: the map is taken back first
        assert undo[0] == ("unmap_pirq", 5, 19)
        undo = undo[1:]
    expected = []
    for call in reversed(GRANT_CALLS[:index if failing != "irq_permission" else index - 1]):
        if call[0] in ("iomem", "ioport"):
            expected.append(call[:-1] + (False,))
        elif call[0] == "irq_permission":
            expected += [("unmap_pirq", 5, 19), ("irq_permission", 5, 19, False)]
    assert undo == expected
    assert G.load_record(state, DEV) is None


def test_no_iommu_context_says_how_to_get_one_and_enosys_is_accepted(tmp_path):
    with pytest.raises(OperationFailed, match='passthrough="enabled"'):
        G.grant_device(FakeHypervisor({"assign": errno.EOPNOTSUPP}), None, 5,
                       make_device(tmp_path, RESOURCES), relaxed=False)
    outcome = G.grant_device(FakeHypervisor({"assign": errno.ENOSYS}), tmp_path / "state", 5,
                             SysfsHost(str(tmp_path / "sys"), str(tmp_path / "proc")).device(DEV), relaxed=False)
    assert [g.kind for g in outcome.grants] == ["iomem", "ioport", "iomem", "iomem", "intx"]
    assert "ENOSYS" in outcome.notes[0]
    assert [g.kind for g in G.load_record(tmp_path / "state", DEV).grants] == [g.kind for g in outcome.grants]


def test_revoke_newest_first_resets_in_the_quarantine_then_hands_back(tmp_path):
    state = tmp_path / "state"
    G.grant_device(FakeHypervisor(), state, 5, make_device(tmp_path, RESOURCES), relaxed=False)
    hv = FakeHypervisor({"unmap_pirq": errno.EINVAL})  # already unmapped: not a problem
    seen = []
    revoked, problems = G.revoke_device(hv, state, DEV, 5,
                                        before_release=lambda: seen.append(list(hv.calls)))
    assert problems == []
    assert hv.calls == [("deassign", 5, str(DEV)), ("unmap_pirq", 5, 19), ("irq_permission", 5, 19, False),
                        ("iomem", 5, 0xFEB80, 64, False), ("iomem", 5, 0xFEBF1, 1, False),
                        ("ioport", 5, 0xC000, 32, False), ("iomem", 5, 0xFEBC0, 32, False),
                        ("deassign", G.DOMID_IO, str(DEV))]
    assert seen == [hv.calls[:-1]]  # the reset ran after everything but the hand-back
    assert [g.kind for g in revoked] == ["assign", "intx", "iomem", "iomem", "ioport", "iomem"]
    assert G.load_record(state, DEV) is None


def test_revoke_failures_are_sentences_and_the_revoke_goes_on(tmp_path):
    state = tmp_path / "state"
    G.grant_device(FakeHypervisor(), state, 5, make_device(tmp_path, RESOURCES), relaxed=False)
    hv = FakeHypervisor({"ioport": errno.EACCES})
    _, problems = G.revoke_device(hv, state, DEV, 5)
    assert problems == ["revoking I/O ports 0xc000-0xc01f: EACCES (Permission denied)",
                        "still granted, kept in the record for 'xen-pciback recover': I/O ports 0xc000-0xc01f"]
    assert hv.calls[-1] == ("deassign", G.DOMID_IO, str(DEV))


@pytest.mark.parametrize(("failing", "code", "kept"),
                         [("ioport", errno.EACCES, ["ioport"]), ("unmap_pirq", errno.EPERM, ["intx"]),
                          ("deassign", errno.EPERM, ["assign"])])
def test_a_failed_revoke_keeps_what_is_still_granted_in_the_record(tmp_path, failing, code, kept):
    """Nothing is lost: what a revoke could not take back stays recorded (phase revoking), and
    recover finishes it with a hypervisor that answers."""
    state = tmp_path / "state"
    G.grant_device(FakeHypervisor(), state, 5, make_device(tmp_path, RESOURCES), relaxed=False)
    hv = FakeHypervisor({failing: code})
    revoked, problems = G.revoke_device(hv, state, DEV, 5)
    assert problems and "recover" in problems[-1]
    record = G.load_record(state, DEV)
    assert record is not None and record.phase == "revoking"
    assert [g.kind for g in record.grants] == kept
    assert kept[0] not in [g.kind for g in revoked]
    assert len(revoked) == 5
    [outcome] = G.recover_grants(state, FakeHypervisor(), {})
    assert outcome.action == "revoked" and "detach was cut short" in outcome.reason
    assert G.load_record(state, DEV) is None


def test_a_failed_hand_back_keeps_the_assignment_in_the_record(tmp_path):
    state = tmp_path / "state"
    G.grant_device(FakeHypervisor(), state, 5, make_device(tmp_path, RESOURCES), relaxed=False)

    class NoHandBack(FakeHypervisor):
        def deassign_device(self, domid, bdf):
            super().deassign_device(domid, bdf)
            if domid == G.DOMID_IO:
                raise OSError(errno.EIO, "EIO")

    _, problems = G.revoke_device(NoHandBack(), state, DEV, 5)
    assert problems[0].startswith(f"handing {DEV} back to dom0 from the quarantine: EIO")
    assert G.load_record(state, DEV).grants == [G.Grant("assign")]
    hv = FakeHypervisor()
    G.recover_grants(state, hv, {})
    assert ("deassign", G.DOMID_IO, str(DEV)) in hv.calls and G.load_record(state, DEV) is None


def test_a_failed_grant_whose_undo_fails_keeps_the_record_for_recover(tmp_path):
    state = tmp_path / "state"

    class Stuck(FakeHypervisor):
        def ioport_permission(self, domid, first_port, ports, allow):
            self._call("ioport", domid, first_port, ports, allow)
            if not allow:
                raise OSError(errno.EACCES, "EACCES")

    with pytest.raises(OperationFailed, match="revoking the rest failed too") as exc:
        G.grant_device(Stuck({"assign": errno.EBUSY}), state, 5, make_device(tmp_path, RESOURCES),
                       relaxed=False)
    assert "recover" in str(exc.value)
    record = G.load_record(state, DEV)
    assert record.phase == "revoking" and record.grants == [G.Grant("ioport", 0xC000, 32)]
    G.recover_grants(state, FakeHypervisor(), {})
    assert G.load_record(state, DEV) is None


def test_another_domains_record_is_not_revoked(tmp_path):
    state = tmp_path / "state"
    G.grant_device(FakeHypervisor(), state, 5, make_device(tmp_path, RESOURCES), relaxed=False)
    hv = FakeHypervisor()
    assert G.revoke_device(hv, state, DEV, 6) == ([], [])
    assert hv.calls == [] and G.load_record(state, DEV).domid == 5


def test_recover_revokes_an_unpublished_attach_and_a_destroyed_guests_grants(tmp_path):
    state = tmp_path / "state"
    G.grant_device(FakeHypervisor(), state, 5, make_device(tmp_path, RESOURCES), relaxed=False)
    hv = FakeHypervisor()
    assert G.recover_grants(state, hv, {DEV: 5}, dry_run=True)[0].action == "kept"
    assert G.load_record(state, DEV).phase == "granting"  # a dry run writes nothing
    [outcome] = G.recover_grants(state, hv, {})
    assert outcome.action == "revoked" and "before it published" in outcome.reason
    assert hv.calls[-1] == ("deassign", G.DOMID_IO, str(DEV)) and G.load_record(state, DEV) is None
    # attached, the guest destroyed since (xenstore no longer has it): revoked too
    G.grant_device(FakeHypervisor(), state, 5, make_device(tmp_path / "b", RESOURCES), relaxed=False)
    G.mark_attached(state, [DEV])
    assert G.recover_grants(state, hv, None) == []  # no xenstore: nothing says the guest let go
    assert G.recover_grants(state, None, {})[0].action == "skipped"
    assert G.recover_grants(state, hv, {DEV: 5}) == []
    assert G.recover_grants(state, hv, {})[0].reason.startswith("the guest no longer holds the device")


def test_a_corrupt_record_is_one_line_naming_the_file(tmp_path):
    state = tmp_path / "state"
    G.grant_device(FakeHypervisor(), state, 5, make_device(tmp_path, RESOURCES), relaxed=False)
    path = state / "grants" / "0000-05-00-0.json"
    data = json.loads(path.read_text())
    data["grants"][0]["count"] = -1
    path.write_text(json.dumps(data))
    with pytest.raises(StateFileCorrupt) as exc:
        G.load_record(state, DEV)
    assert str(path) in str(exc.value) and "count" in str(exc.value) and "\n" not in str(exc.value)
    found: list = []
    assert G.load_records(state, found) == {} and len(found) == 1


def test_an_interrupted_grant_takes_back_what_it_granted(tmp_path):
    """Ctrl-C (or a bug) in the middle: what was granted is revoked and the record goes."""
    class Interrupting(FakeHypervisor):
        def map_pirq(self, domid, irq):
            raise KeyboardInterrupt

    hv = Interrupting()
    with pytest.raises(KeyboardInterrupt):
        G.grant_device(hv, tmp_path / "state", 5, make_device(tmp_path, RESOURCES), relaxed=False)
    assert hv.calls[4:] == [("iomem", 5, 0xFEB80, 64, False), ("iomem", 5, 0xFEBF1, 1, False),
                            ("ioport", 5, 0xC000, 32, False), ("iomem", 5, 0xFEBC0, 32, False)]
    assert G.load_record(tmp_path / "state", DEV) is None


# -- route_intx: the GSI, not the firmware's INTERRUPT_LINE ---------------------------------------
def intx_host(tmp_path, *, enable: str | None, pin: int, driver: str | None = None,
              line_irq: str = "10\n", gsi: str = "22\n", enable_fails: bool = False,
              disable_fails: int = 0, rebound_after_enable: bool = False, bind_fails: bool = False):
    """A sysfs tree whose kernel, like Linux, replaces ``irq`` (the firmware's INTERRUPT_LINE
    until the device is first enabled) by the routed GSI when '1' is written to ``enable``, and
    refuses a write to ``enable`` (EBUSY) while a driver is bound. ``disable_fails``: that many
    writes of '0' fail (EIO); ``rebound_after_enable``: something (a udev rule's probe) binds
    the stub again right after the enable; ``bind_fails``: binding the stub back fails."""
    make_device(tmp_path, resource_lines(), irq=line_irq)
    sys_root = tmp_path / "sys"
    base = sys_root / "bus" / "pci" / "devices" / str(DEV)
    config = bytearray((base / "config").read_bytes())
    config[0x3D] = pin
    (base / "config").write_bytes(bytes(config))
    if enable is not None:
        (base / "enable").write_text(enable + "\n")
    if driver:
        drivers = sys_root / "bus" / "pci" / "drivers" / driver
        drivers.mkdir(parents=True)
        (base / "driver").symlink_to(drivers)
    host = SysfsHost(str(sys_root), str(tmp_path / "proc"))
    writes: list[tuple[str, str]] = []
    failures = [0]

    def kernel(write) -> None:  # noqa: ANN001
        name = write.path.rsplit("/", 1)[-1]
        writes.append((name, write.value))
        if name == "unbind":
            (base / "driver").unlink()
        elif name == "bind":
            if bind_fails:
                raise OSError(errno.ENODEV, "bind failed")
            (base / "driver").symlink_to(sys_root / "bus" / "pci" / "drivers" / driver)
        elif name == "enable" and (base / "driver").is_symlink():
            raise OSError(errno.EBUSY, "device busy")
        elif name == "enable" and write.value == "1":
            if enable_fails:
                raise OSError(errno.EIO, "enable failed")
            (base / "irq").write_text(gsi)
            (base / "enable").write_text("1\n")
            if rebound_after_enable:
                (base / "driver").symlink_to(sys_root / "bus" / "pci" / "drivers" / driver)
        elif name == "enable" and write.value == "0":
            if failures[0] < disable_fails:
                failures[0] += 1
                raise OSError(errno.EIO, "disable failed")
            (base / "enable").write_text("0\n")

    host.write_hooks.append(kernel)
    return host, writes


def test_route_intx_enables_a_never_enabled_device_once_so_irq_is_the_gsi(tmp_path):
    # Real Xen: a pci-stub-held e1000e reported irq 10 (its INTERRUPT_LINE); granted as is, the
    # guest's INTx never fired. After the enable/disable round sysfs irq is the routed GSI.
    host, writes = intx_host(tmp_path, enable="0", pin=1)
    assert host.device(DEV).irq == 10
    assert G.route_intx(host, DEV) is True
    assert writes == [("enable", "1"), ("enable", "0")]
    assert host.device(DEV).irq == 22
    assert [g for g in G.plan_grants(host.device(DEV), relaxed=False) if g.kind == "intx"] == [G.Grant("intx", 22)]


def test_route_intx_unbinds_the_stub_around_the_enable(tmp_path):
    # Real Xen: writing 'enable' while pci-stub held the device answered EBUSY.
    host, writes = intx_host(tmp_path, enable="0", pin=1, driver="pci-stub")
    assert G.route_intx(host, DEV) is True
    assert writes == [("unbind", str(DEV)), ("enable", "1"), ("enable", "0"), ("bind", str(DEV))]
    device = host.device(DEV)
    assert (device.driver, device.irq) == ("pci-stub", 22)


def test_route_intx_binds_the_stub_back_when_the_enable_fails(tmp_path):
    host, writes = intx_host(tmp_path, enable="0", pin=1, driver="pci-stub", enable_fails=True)
    with pytest.raises(OSError):
        G.route_intx(host, DEV)
    assert writes == [("unbind", str(DEV)), ("enable", "1"), ("bind", str(DEV))]
    assert host.device(DEV).driver == "pci-stub"


def test_route_intx_disables_again_when_the_stub_was_bound_back_meanwhile(tmp_path):
    # A udev rule probing the device between the two writes binds the stub again (its
    # driver_override lets only the stub in): the kernel answers the disable EBUSY. The stub is
    # unbound once more and the disable retried; the device is not left enabled in dom0.
    host, writes = intx_host(tmp_path, enable="0", pin=1, driver="pci-stub", rebound_after_enable=True)
    assert G.route_intx(host, DEV) is True
    assert writes == [("unbind", str(DEV)), ("enable", "1"), ("enable", "0"), ("unbind", str(DEV)),
                      ("enable", "0"), ("bind", str(DEV))]
    base = tmp_path / "sys" / "bus" / "pci" / "devices" / str(DEV)
    assert (base / "enable").read_text().strip() == "0"
    assert (host.device(DEV).driver, host.device(DEV).irq) == ("pci-stub", 22)


def test_route_intx_retries_a_failed_disable_once(tmp_path):
    host, writes = intx_host(tmp_path, enable="0", pin=1, driver="pci-stub", disable_fails=1)
    assert G.route_intx(host, DEV) is True
    assert writes == [("unbind", str(DEV)), ("enable", "1"), ("enable", "0"), ("enable", "0"),
                      ("bind", str(DEV))]
    assert host.device(DEV).driver == "pci-stub"


def test_route_intx_says_so_when_the_device_stays_enabled_in_dom0(tmp_path):
    host, writes = intx_host(tmp_path, enable="0", pin=1, driver="pci-stub", disable_fails=2)
    with pytest.raises(OperationFailed) as exc:
        G.route_intx(host, DEV)
    message = str(exc.value)
    assert f"{DEV} is left enabled in dom0" in message and "\n" not in message
    assert message.count("disable failed") == 2  # both attempts named
    assert "write 0 to its sysfs enable" in message and "attach again" in message
    assert writes[-1] == ("bind", str(DEV)) and host.device(DEV).driver == "pci-stub"


def test_route_intx_names_the_first_failure_when_binding_back_fails_too(tmp_path):
    host, writes = intx_host(tmp_path, enable="0", pin=1, driver="pci-stub", enable_fails=True,
                             bind_fails=True)
    with pytest.raises(OperationFailed) as exc:
        G.route_intx(host, DEV)
    message = str(exc.value)
    assert message.index("enable failed") < message.index("bind failed")
    assert f"binding {DEV} back to pci-stub failed too" in message and "\n" not in message
    assert isinstance(exc.value.__cause__, OSError) and "enable failed" in str(exc.value.__cause__)
    assert writes == [("unbind", str(DEV)), ("enable", "1"), ("bind", str(DEV))]


def test_an_attach_whose_device_stays_enabled_in_dom0_fails_before_any_grant(tmp_path):
    from xenpciback_cli.engine.attach import _grant_functions
    from xenpciback_cli.toolstack.libxl_layout import PciOptions

    host, _ = intx_host(tmp_path, enable="0", pin=1, driver="pci-stub", disable_fails=2)
    hv = FakeHypervisor()
    with pytest.raises(OperationFailed, match="left enabled in dom0"):
        _grant_functions(hv, host, [DEV], 5, PciOptions(), str(tmp_path / "state"), [])
    assert hv.calls == [] and G.load_record(tmp_path / "state", DEV) is None


@pytest.mark.parametrize(("enable", "pin", "driver"),
                         [("1", 1, "pci-stub"), ("0", 0, "pci-stub"), (None, 1, "pci-stub"), ("0", 1, "pciback")],
                         ids=["already-enabled", "no-interrupt-pin", "no-enable-attribute", "pciback-routed-it"])
def test_route_intx_leaves_other_devices_alone(tmp_path, enable, pin, driver):
    host, writes = intx_host(tmp_path, enable=enable, pin=pin, driver=driver)
    assert G.route_intx(host, DEV) is False
    assert writes == []
    assert host.device(DEV).irq == 10


@pytest.mark.parametrize(("line_irq", "now"), [("10\n", "sysfs irq 10 now"), ("0\n", "sysfs irq 0 now"),
                                               ("junk\n", "no sysfs irq now")],
                         ids=["a-line", "no-line-yet", "unreadable"])
def test_attach_dry_run_plans_the_intx_as_routed_at_attach_time(tmp_path, line_irq, now):
    # Even a device whose INTERRUPT_LINE says none (0) gets its INTx from the routing.
    from xenpciback_cli.engine.attach import _planned_grants
    from xenpciback_cli.toolstack.libxl_layout import PciOptions

    host, writes = intx_host(tmp_path, enable="0", pin=1, driver="pci-stub", line_irq=line_irq)
    [planned] = _planned_grants(FakeHypervisor(), host, [DEV], 5, PciOptions())
    assert planned == (f"would grant domain 5 INTx: routed by the kernel at attach time ({now}), "
                       f"IOMMU assignment of {DEV}")
    assert writes == []


def test_attach_grants_the_routed_gsi_not_the_interrupt_line(tmp_path):
    # The attach path (engine.attach._grant_functions) routes before it reads the device: the
    # PIRQ mapped and permitted is the GSI (real Xen: 20), not the INTERRUPT_LINE (10).
    from xenpciback_cli.engine.attach import _grant_functions
    from xenpciback_cli.toolstack.libxl_layout import PciOptions

    host, _ = intx_host(tmp_path, enable="0", pin=1, driver="pci-stub")
    hv, notes = FakeHypervisor(), []
    granted = _grant_functions(hv, host, [DEV], 5, PciOptions(), str(tmp_path / "state"), notes)
    assert [g for g in granted[DEV] if g.kind == "intx"] == [G.Grant("intx", 22, pirq=22)]
    assert [c for c in hv.calls if c[0] in ("map_pirq", "irq_permission")] == \
        [("map_pirq", 5, 22), ("irq_permission", 5, 22, True)]
    assert any("routes its INTx" in note for note in notes)


def test_recover_leaves_a_record_whose_process_is_still_running(tmp_path):
    """A second admin's recover must not revoke what a live attach (another process) is granting."""
    import os

    from xenpciback_cli.engine import statestore as st
    from xenpciback_cli.engine.journal import boot_id, process_start

    state = tmp_path / "state"
    G.grant_device(FakeHypervisor(), state, 5, make_device(tmp_path, RESOURCES), relaxed=False)
    record = G.load_record(state, DEV)
    assert record is not None
    record.phase = "granting"
    record.owner = {"pid": os.getppid(), "boot_id": boot_id(), "process_start": process_start(os.getppid())}
    st.StateStore(state).write(record.name, json.dumps(record.to_json()).encode())
    [outcome] = G.recover_grants(state, FakeHypervisor(), {})
    assert outcome.action == "skipped" and "still running" in outcome.reason
    assert G.load_record(state, DEV) is not None

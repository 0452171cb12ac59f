"""GuestSession: device export (vpci slots, passthrough roots) and op dispatch through the shared
page - lookup, the overlay, MSI/MSI-X with XSA-157's codes (spec §3.5), and hostile input."""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xenpciback_cli.backend.ports import InterruptError
from xenpciback_cli.backend.session import ExportError, GuestSession
from xenpciback_cli.backend.topology import Mode
from xenpciback_cli.config.fields import MemoryAccessor
from xenpciback_cli.pci.address import Bdf
from xenpciback_cli.pv.codec import encode_op, read_op, write_result
from xenpciback_cli.pv.trace import TraceRecord


def config_space(*, msi=True, msix=True, command=0x0000, pmcsr=0x0100):
    """A type-0 device: PM at 0x40 (PME_Enable set), MSI at 0x50, MSI-X (8 entries) at 0x70."""
    c = bytearray(256)
    c[0:4] = (0x8086 | (0x10D3 << 16)).to_bytes(4, "little")
    c[4:6] = command.to_bytes(2, "little")
    c[6:8] = (0x0010).to_bytes(2, "little")  # capability list
    c[0x34] = 0x40
    c[0x40:0x48] = bytes([0x01, 0x50 if msi else (0x70 if msix else 0), 0x03, 0xC8]) + \
        pmcsr.to_bytes(2, "little") + b"\0\0"
    if msi:
        c[0x50:0x54] = bytes([0x05, 0x70 if msix else 0, 0x80, 0x00])
    if msix:
        c[0x70:0x7C] = bytes([0x11, 0x00, 0x07, 0x00, 0x03, 0, 0, 0, 0x03, 0x08, 0, 0])
    return MemoryAccessor(bytes(c))


class FakeInterrupts:
    def __init__(self, fail_with=None):
        self.calls = []
        self.fail_with = fail_with

    def enable_msi(self, domid, host):
        self.calls.append(("enable_msi", host))
        if self.fail_with:
            raise InterruptError(self.fail_with)
        return 55

    def disable_msi(self, domid, host):
        self.calls.append(("disable_msi", host))

    def enable_msix(self, domid, host, entries):
        self.calls.append(("enable_msix", host, tuple(entries)))
        if self.fail_with:
            raise InterruptError(self.fail_with)
        return [100 + e if e != 2 else 0 for e in entries]

    def disable_msix(self, domid, host):
        self.calls.append(("disable_msix", host))

    def legacy_pirq(self, domid, host):
        return 17


HOST = Bdf(0, 3, 0, 0)
GUEST_DEVFN = 0  # vpci: first device in slot 0, function 0


def session(mode=Mode.VPCI, **kw):
    irq = FakeInterrupts(**kw)
    s = GuestSession(5, irq, mode=mode)
    hw = config_space()
    s.export(HOST, hw)
    return s, irq, hw


def op_page(cmd, devfn=GUEST_DEVFN, offset=0, size=4, value=0, domain=0, bus=0, entries=()):
    page = bytearray(4096)
    page[4:552] = encode_op(cmd, domain, bus, devfn, offset, size, value, msix_entries=entries)
    return page


def run(s, *args, **kw):
    page = op_page(*args, **kw)
    result = s.process(page)
    return result, page


def test_conf_read_and_write_go_through_the_overlay():
    s, _, hw = session()
    assert run(s, 0, offset=0, size=4)[0] == (0, 0x10D38086)
    # XSA-120: the guest clears COMMAND; memory decode stays on hardware (bus mastering goes),
    # the guest reads back its own value; conf_write echoes value
    hw.data[4:6] = (0x0006).to_bytes(2, "little")
    assert run(s, 1, offset=4, size=2, value=0x0000)[0] == (0, 0)
    assert int.from_bytes(hw.data[4:6], "little") == 0x0002
    assert run(s, 0, offset=4, size=2)[0] == (0, 0)
    assert run(s, 1, offset=0x3C, size=1, value=0x1FF)[0] == (0, 0x1FF)
    assert run(s, 0, offset=2, size=4)[0] == (-2, 0)      # misaligned: the overlay's -2
    assert run(s, 0, offset=-4, size=4)[0] == (-2, 0)     # negative offset
    assert run(s, 0, offset=0, size=3)[0] == (-2, 0)
    assert run(s, 0, offset=0x1000, size=4)[0] == (-2, 0)


def test_export_clears_pme_enable_once():
    _, _, hw = session()
    assert int.from_bytes(hw.data[0x44:0x46], "little") & 0x0100 == 0


def test_lookup_first_not_exported_is_dev_not_found_and_echoes_value():
    s, _, _ = session()
    for kw in ({"devfn": 1}, {"bus": 1}, {"domain": 1}, {"devfn": 0x100}, {"devfn": 0xFFFFFFFF}):
        assert run(s, 0, value=0xABCD, **kw)[0] == (-1, 0xABCD)
    assert run(s, 0xFFFFFFFF, devfn=8, value=7)[0] == (-1, 7)  # unknown cmd, unknown device


def test_a_released_device_is_not_found_and_a_reexported_one_is_served():
    s, _, _ = session()
    s.release(Bdf(0, 0, 0, 0))
    assert run(s, 0, offset=0, size=4, value=3)[0] == (-1, 3)
    assert s.handle(read_op(op_page(0, offset=0, size=4, value=3))) == (-1, 3)
    s.export(HOST, config_space())
    assert run(s, 0, offset=0, size=4)[0] == (0, 0x10D38086)


@pytest.mark.parametrize("cmd", [6, 7, 8, 9, 10, 11, 0xFFFFFFFF])
def test_other_ops_are_not_implemented(cmd):
    s, _, _ = session()
    assert run(s, cmd, value=9)[0] == (-4, 9)


def test_enable_msi_twice_and_with_msix_fail_with_op_failed():
    s, irq, _ = session()
    assert run(s, 2)[0] == (0, 55)
    assert run(s, 2, value=3)[0] == (-5, 0)           # already enabled (XSA-157)
    assert run(s, 4, value=1, entries=((0, 0),))[0][0] == -6  # MSI on: MSI-X refused (ENXIO)
    assert run(s, 3)[0] == (0, 17)
    assert run(s, 3)[0] == (0, 17)                     # disable when off: no call, no change
    assert [c[0] for c in irq.calls] == ["enable_msi", "disable_msi"]
    failures = [e for e in s.events if "failed" in e]
    assert len(failures) == 1                          # logged once per device


def test_enable_msix_checks_in_linux_order():
    s, irq, hw = session()
    assert run(s, 4, value=129)[0] == (-22, 129)       # > SH_INFO_MAX_VEC
    assert run(s, 4, value=0xFFFFFFFF)[0] == (-22, 0xFFFFFFFF)
    assert run(s, 4, value=1, entries=((0, 0),))[0] == (-6, 1)   # memory decode off (XSA-157)
    hw.data[4:6] = (0x0002).to_bytes(2, "little")
    assert run(s, 4, value=0)[0] == (-22, -22 & 0xFFFFFFFF)
    assert run(s, 4, value=2, entries=((0, 1), (0, 1)))[0][0] == -22   # duplicate entry
    assert run(s, 4, value=9, entries=tuple((0, i) for i in range(9)))[0][0] == -28  # > table
    assert run(s, 4, value=1, entries=((0, 8),))[0][0] == -22         # outside the table
    assert irq.calls == []
    result, page = run(s, 4, value=3, entries=((0xFFFF, 0), (0xFFFF, 2), (0xFFFF, 5)))
    assert result == (0, 0, (100, 0xFFFF, 105))        # entry 2 got no pirq: vector left as is
    assert [struct.unpack_from("<HH", page, 40 + 4 * i) for i in range(4)] == \
        [(100, 0), (0xFFFF, 2), (105, 5), (0, 0)]
    assert run(s, 4, value=1, entries=((0, 0),))[0] == (-114, 1)  # already enabled
    assert run(s, 2)[0] == (-5, 0)                     # MSI while MSI-X is on
    assert run(s, 5)[0] == (0, 17)
    assert run(s, 5)[0] == (0, 17)
    assert [c[0] for c in irq.calls] == ["enable_msix", "disable_msix"]


def test_vf_memory_decode_is_read_from_the_physical_function():
    irq = FakeInterrupts()
    s = GuestSession(5, irq)
    vf, pf = config_space(command=0x0000), config_space(command=0x0002)
    s.export(Bdf(0, 3, 0x10, 0), vf, physfn_config=pf, is_virtfn=True)
    assert run(s, 4, value=1, entries=((0, 0),))[0] == (0, 0, (100,))


def test_allocation_failure_passes_the_errno():
    s, _, hw = session(fail_with=-28)
    hw.data[4:6] = (0x0002).to_bytes(2, "little")
    assert run(s, 4, value=1, entries=((0, 0),))[0] == (-28, -28 & 0xFFFFFFFF)
    assert run(s, 2)[0] == (-5, 0)


def test_op_written_back_only_err_value_and_page_change_does_not_matter():
    s, _, _ = session()
    page = op_page(0, offset=0, size=2, value=0x1234)
    before = bytes(page)
    s.process(memoryview(page))
    changed = {i for i in range(4096) if page[i] != before[i]}
    assert changed <= set(range(8, 12)) | set(range(32, 36))
    assert struct.unpack_from("<I", page, 32)[0] == 0x8086


def test_vpci_slots_keep_functions_together_and_vf0_alone():
    s = GuestSession(1, FakeInterrupts())
    guests = [s.export(b, config_space(), is_virtfn=vf).guest for b, vf in (
        (Bdf(0, 3, 0, 0), False), (Bdf(0, 2, 0x1A, 1), False), (Bdf(0, 3, 0, 1), False),
        (Bdf(0, 4, 0x10, 0), True), (Bdf(0, 4, 0x10, 1), True))]
    assert [str(g) for g in guests] == ["0000:00:00.0", "0000:00:01.1", "0000:00:00.1",
                                        "0000:00:02.0", "0000:00:03.1"]
    assert s.roots() == [(0, 0)]
    assert run(s, 0, devfn=(1 << 3) | 1, offset=0, size=2)[0] == (0, 0x8086)
    with pytest.raises(ExportError):
        s.export(Bdf(0, 3, 0, 0), config_space())
    assert s.release(Bdf(0, 0, 1, 1)).host == Bdf(0, 2, 0x1A, 1)
    assert run(s, 0, devfn=(1 << 3) | 1)[0][0] == -1


def test_vpci_bus_full_is_an_export_error():
    s = GuestSession(1, FakeInterrupts())
    for slot in range(32):
        s.export(Bdf(0, 5, slot, 0), config_space())
    with pytest.raises(ExportError, match="No more space"):
        s.export(Bdf(0, 6, 0, 0), config_space())


def test_passthrough_uses_host_addresses_and_roots():
    s = GuestSession(1, FakeInterrupts(), mode=Mode.PASSTHROUGH)
    s.export(Bdf(0, 3, 0, 0), config_space())
    s.export(Bdf(0, 5, 0, 0), config_space(), bridges=(Bdf(0, 4, 0, 0),))
    s.export(Bdf(0, 4, 0, 0), config_space())
    assert s.roots() == [(0, 3), (0, 4)]
    assert run(s, 0, bus=3, devfn=0, size=2)[0] == (0, 0x8086)
    assert run(s, 0, bus=0, devfn=0, size=2)[0][0] == -1


def test_release_turns_interrupts_off():
    s, irq, _ = session()
    run(s, 2)
    s.release(Bdf(0, 0, 0, 0))
    assert irq.calls[-1] == ("disable_msi", HOST) and not s.devices


def test_trace_records_what_went_in_and_out():
    records = []
    s = GuestSession(4, FakeInterrupts(), recorder=records.append)
    s.export(HOST, config_space())
    page = op_page(0, offset=0, size=4)
    request = bytes(page[4:552])
    s.process(page)
    assert records == [TraceRecord(4, request, 0, 0x10D38086)]
    replay = GuestSession(4, FakeInterrupts())
    replay.export(HOST, config_space())
    assert replay.handle(records[0].op) == records[0].result


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cmd=st.one_of(st.integers(0, 11), st.integers(0, 2**32 - 1)),
       devfn=st.one_of(st.integers(0, 9), st.integers(0, 2**32 - 1)),
       offset=st.one_of(st.integers(-8, 300), st.integers(-(2**31), 2**31 - 1)),
       size=st.one_of(st.sampled_from([0, 1, 2, 3, 4, 8, -1]), st.integers(-(2**31), 2**31 - 1)),
       value=st.integers(0, 2**32 - 1),
       tail=st.binary(min_size=512, max_size=512))
def test_hostile_ops_never_raise(cmd, devfn, offset, size, value, tail):
    s, _, hw = session()
    hw.data[4:6] = (0x0002).to_bytes(2, "little")
    page = op_page(cmd, devfn=devfn, offset=offset, size=size, value=value)
    page[40:552] = tail
    result = s.process(page)
    assert -(2**31) <= result[0] <= 0
    assert read_op(page)[:1] == (cmd,)
    write_result(bytearray(4096), result)


def test_recorder_is_told_the_device_the_op_was_routed_to():
    """serve's trace and MSI records use ``recorded_device`` instead of looking the device up
    again (one lookup per op)."""
    seen = []
    s, _, _ = session()
    s.recorder = lambda record: seen.append((record.request[0], s.recorded_device))
    exported = s.devices[(0, 0, GUEST_DEVFN)]
    s.process(op_page(0, offset=0, size=2))
    s.process(op_page(1, offset=0x3C, size=1, value=5))
    s.process(op_page(0, devfn=GUEST_DEVFN + 1))  # nobody there
    s.process(op_page(2))                          # enable_msi: the other ops' path
    s.process(op_page(9))                          # not implemented, device present
    assert seen == [(0, exported), (1, exported), (0, None), (2, exported), (9, exported)]


@pytest.mark.parametrize("length", [0, 551, 4])
def test_a_buffer_too_short_for_an_op_is_a_page_error_and_nothing_is_written(length):
    from xenpciback_cli.pv.codec import PageError

    s, _, hw = session()
    writes = hw.writes  # the export's PME_Enable clear
    page = bytearray(b"\x5a" * length)
    with pytest.raises(PageError, match=f"this buffer has {length} bytes"):
        s.process(page)
    assert page == b"\x5a" * length and s.ops_served == 0 and hw.writes == writes


@pytest.mark.parametrize("kind", [lambda page: page, memoryview])
def test_conf_answers_are_packed_in_place_for_every_page_type(kind):
    s, _, _ = session()
    page = op_page(0, offset=0x40, size=1)  # PM capability ID, from hardware
    s.process(kind(page))
    assert struct.unpack_from("<i", page, 8)[0] == 0 and struct.unpack_from("<I", page, 32)[0] == 1
    page = op_page(1, offset=0x10, size=3, value=0xFFFFFFFF)  # bad size: -2, value echoed
    s.process(kind(page))
    assert struct.unpack_from("<i", page, 8)[0] == -2
    assert struct.unpack_from("<I", page, 32)[0] == 0xFFFFFFFF

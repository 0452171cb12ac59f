"""The host side of attach/detach on a minimal in-memory host model: seized checks, --seize,
pciback's permissive file, function wildcards and the reset method."""

from __future__ import annotations


import pytest

from xenpciback_cli.errors import InputError, NotSupported, SafetyRefusal
from xenpciback_cli.host.model import Host
from xenpciback_cli.pci.device import PciDevice
from xenpciback_cli.pci.address import Bdf
from xenpciback_cli.engine.attach import AttachSpec, apply_permissive, check_seized, resolve_functions
from xenpciback_cli.engine.detach import reset_device
from xenpciback_cli.toolstack.libxl_layout import PciOptions

NIC0, NIC1, GPU = Bdf(0, 3, 0, 0), Bdf(0, 3, 0, 1), Bdf(0, 2, 0, 0)


class MemoryHost(Host):
    def __init__(self, devices):
        super().__init__()
        self.devs = {d.bdf: d for d in devices}
        self.fail_reset = False
        self.written = []

    def devices(self):
        return sorted(self.devs.values(), key=lambda d: d.bdf)

    def device(self, bdf):
        from xenpciback_cli.errors import DeviceNotFound

        if bdf not in self.devs:
            raise DeviceNotFound(f"no PCI device {bdf}")
        return self.devs[bdf]

    def read_config(self, bdf, offset=0, length=None):
        return b""

    def loaded_drivers(self):
        return frozenset({"pciback", "e1000e"})

    def supports_driver_override(self, bdf):
        return True

    def pciback_slots(self):
        return []

    def usage(self, bdf):
        from xenpciback_cli.host.model import HostUsage

        return HostUsage()

    def _write(self, write):
        if write.path.endswith("/reset") and self.fail_reset:
            raise NotSupported("reset failed: not supported by this kernel")
        self.written.append(write)


def dev(bdf, driver, methods=("flr", "bus")):
    return PciDevice(bdf, 0x8086, 0x10D3, 0x020000, 0, driver=driver, reset_methods=methods)


@pytest.fixture
def host():
    return MemoryHost([dev(NIC0, "pciback"), dev(NIC1, "e1000e"), dev(GPU, "pciback", ())])


def test_unseized_device_is_refused_unless_seize(host):
    with pytest.raises(SafetyRefusal, match=r"^0000:03:00.1 is not seized \(bound to e1000e\): hide "
                                            r"it first, or attach with --seize$"):
        check_seized([NIC0, NIC1], host, seize=False, seize_fn=None)
    seized = []

    def seize(bdfs):
        seized.extend(bdfs)
        for b in bdfs:
            host.devs[b] = host.devs[b]._replace(driver="pciback")
        return bdfs

    assert check_seized([NIC0, NIC1], host, seize=True, seize_fn=seize) == [NIC1]
    assert seized == [NIC1]


def test_wildcard_brings_every_function_and_needs_a_vslot(host):
    assert resolve_functions(AttachSpec(5, NIC0, all_functions=True, vslot=4), host) == [NIC0, NIC1]
    with pytest.raises(InputError, match="needs a virtual slot"):
        resolve_functions(AttachSpec(5, NIC0, all_functions=True), host)
    with pytest.raises(InputError, match=r"no PCI function at 0000:07:00\.\*"):
        resolve_functions(AttachSpec(5, Bdf(0, 7, 0, 0), all_functions=True, vslot=1), host)


def test_permissive_goes_to_pcibacks_sysfs_file_only_when_asked(host):
    assert apply_permissive(host, [NIC0], PciOptions()) == []
    assert host.written == []
    assert apply_permissive(host, [NIC0], PciOptions(permissive=True)) == [NIC0]
    assert [(w.path, w.value, w.bdf) for w in host.written] == [
        ("bus/pci/drivers/pciback/permissive", "0000:03:00.0", NIC0)]


def test_reset_says_which_method_or_why_not(host):
    out = reset_device(host, NIC0)
    assert out.done and out.method == "flr"
    assert out.reason == "reset with flr (kernel's first method of flr, bus)"
    assert [(w.path, w.value) for w in host.written] == [("bus/pci/devices/0000:03:00.0/reset", "1")]
    out = reset_device(host, GPU)
    assert not out.done and "offers no reset method" in out.reason
    host.fail_reset = True
    out = reset_device(host, NIC0)
    assert not out.done and out.reason == "reset through sysfs failed: reset failed: not supported by this kernel"


def test_reset_on_a_kernel_without_reset_method(host, tmp_path):
    (tmp_path / "reset").write_text("")
    host.devs[GPU] = host.devs[GPU]._replace(sysfs_path=str(tmp_path))
    out = reset_device(host, GPU)
    assert out.done and out.method is None
    assert out.reason == "reset with the kernel's default (no reset_method file to name it)"


def test_a_host_with_only_the_abstract_methods_serves_every_caller(tmp_path):
    """``addresses`` and ``brief_devices`` are part of the Host interface (with defaults from
    ``devices``): the seize engine's wildcard expansion and ``list`` work on any host, not only
    on those that happened to define them (the engine once reached them through getattr)."""
    from xenpciback_cli.engine.inventory import inventory
    from xenpciback_cli.engine.seize import Seizer
    from xenpciback_cli.pci.spec import parse_device_patterns

    host = MemoryHost([dev(NIC1, "e1000e"), dev(NIC0, "pciback"), dev(GPU, "amdgpu")])
    assert host.addresses() == [GPU, NIC0, NIC1]
    assert host.brief_devices() == host.devices()
    assert Seizer(host, tmp_path).select(parse_device_patterns(["03:00.*"])) == [NIC0, NIC1]
    rows = inventory(host, patterns=parse_device_patterns(["03:00.*"]), brief=True)
    assert [(r.bdf, r.state) for r in rows] == [(NIC0, "seized"), (NIC1, "host")]

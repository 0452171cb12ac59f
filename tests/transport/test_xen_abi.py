"""The numbers and layouts of transport/xen_abi.py against the installed C headers (libxen-dev):
a small program compiled with gcc prints what the compiler computes, and each ctypes prototype
is re-declared after the header (a mismatch is a compile error). Skipped, saying why, where
gcc or the headers are missing (CI installs both)."""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess

import pytest

from xenpciback_cli.transport import xen_abi as abi
from xenpciback_cli.transport import xen_interrupts

HEADERS = ("/usr/include/xen/sys/gntdev.h", "/usr/include/xen/sys/evtchn.h",
           "/usr/include/xen/physdev.h", "/usr/include/xen/domctl.h", "/usr/include/xenctrl.h",
           "/usr/include/xencall.h")


def _need_toolchain() -> str:
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc is not installed: the C layouts cannot be compared (CI installs it)")
    missing = [h for h in HEADERS if not os.path.exists(h)]
    if missing:
        pytest.skip(f"Xen headers missing ({', '.join(missing)}): install libxen-dev")
    return gcc


def _compile_and_run(tmp_path, source: str) -> str:
    gcc = _need_toolchain()
    src = tmp_path / "probe.c"
    src.write_text(source)
    exe = tmp_path / "probe"
    build = subprocess.run([gcc, "-Wall", "-Werror", "-o", str(exe), str(src)],
                           capture_output=True, text=True, timeout=60)
    assert build.returncode == 0, build.stderr
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=10)
    assert run.returncode == 0, run.stderr
    return run.stdout


# __XEN_TOOLS__ selects the current hypercall interface, as Xen's own libraries are built
# (without it xen.h falls back to the pre-3.2 compat numbering: physdev_op would read 19).
PROBE = r"""
#define __XEN_TOOLS__ 1
#include <stdint.h>
#include <stddef.h>
#include <stdio.h>
#include <sys/ioctl.h>
#include <xen/xen.h>
#include <xen/sys/gntdev.h>
#include <xen/sys/evtchn.h>
#include <xen/physdev.h>
#include <xen/domctl.h>
#define P(name, value) printf("%s %lu\n", name, (unsigned long)(value))
int main(void) {
    P("IOCTL_GNTDEV_MAP_GRANT_REF", IOCTL_GNTDEV_MAP_GRANT_REF);
    P("IOCTL_GNTDEV_UNMAP_GRANT_REF", IOCTL_GNTDEV_UNMAP_GRANT_REF);
    P("IOCTL_EVTCHN_BIND_INTERDOMAIN", IOCTL_EVTCHN_BIND_INTERDOMAIN);
    P("IOCTL_EVTCHN_UNBIND", IOCTL_EVTCHN_UNBIND);
    P("IOCTL_EVTCHN_NOTIFY", IOCTL_EVTCHN_NOTIFY);
    P("IOCTL_EVTCHN_RESET", IOCTL_EVTCHN_RESET);
    P("sizeof grant_ref", sizeof(struct ioctl_gntdev_grant_ref));
    P("grant_ref.domid", offsetof(struct ioctl_gntdev_grant_ref, domid));
    P("grant_ref.ref", offsetof(struct ioctl_gntdev_grant_ref, ref));
    P("sizeof map_grant_ref", sizeof(struct ioctl_gntdev_map_grant_ref));
    P("map.count", offsetof(struct ioctl_gntdev_map_grant_ref, count));
    P("map.index", offsetof(struct ioctl_gntdev_map_grant_ref, index));
    P("map.refs", offsetof(struct ioctl_gntdev_map_grant_ref, refs));
    P("sizeof unmap_grant_ref", sizeof(struct ioctl_gntdev_unmap_grant_ref));
    P("unmap.index", offsetof(struct ioctl_gntdev_unmap_grant_ref, index));
    P("unmap.count", offsetof(struct ioctl_gntdev_unmap_grant_ref, count));
    P("sizeof bind_interdomain", sizeof(struct ioctl_evtchn_bind_interdomain));
    P("bind.remote_domain", offsetof(struct ioctl_evtchn_bind_interdomain, remote_domain));
    P("bind.remote_port", offsetof(struct ioctl_evtchn_bind_interdomain, remote_port));
    P("sizeof notify", sizeof(struct ioctl_evtchn_notify));
    P("sizeof unbind", sizeof(struct ioctl_evtchn_unbind));
    P("__HYPERVISOR_physdev_op", __HYPERVISOR_physdev_op);
    P("PHYSDEVOP_prepare_msix", PHYSDEVOP_prepare_msix);
    P("PHYSDEVOP_release_msix", PHYSDEVOP_release_msix);
    P("sizeof physdev_pci_device", sizeof(struct physdev_pci_device));
    P("pci.seg", offsetof(struct physdev_pci_device, seg));
    P("pci.bus", offsetof(struct physdev_pci_device, bus));
    P("pci.devfn", offsetof(struct physdev_pci_device, devfn));
    P("DOMID_IO", DOMID_IO);
    P("XEN_DOMCTL_DEV_RDM_RELAXED", XEN_DOMCTL_DEV_RDM_RELAXED);
    return 0;
}
"""


def test_ioctl_numbers_and_struct_layouts_match_the_headers(tmp_path):
    out = dict(line.rsplit(" ", 1) for line in _compile_and_run(tmp_path, PROBE).splitlines())
    got = {k: int(v) for k, v in out.items()}
    assert got == {
        "IOCTL_GNTDEV_MAP_GRANT_REF": abi.IOCTL_GNTDEV_MAP_GRANT_REF,
        "IOCTL_GNTDEV_UNMAP_GRANT_REF": abi.IOCTL_GNTDEV_UNMAP_GRANT_REF,
        "IOCTL_EVTCHN_BIND_INTERDOMAIN": abi.IOCTL_EVTCHN_BIND_INTERDOMAIN,
        "IOCTL_EVTCHN_UNBIND": abi.IOCTL_EVTCHN_UNBIND,
        "IOCTL_EVTCHN_NOTIFY": abi.IOCTL_EVTCHN_NOTIFY,
        "IOCTL_EVTCHN_RESET": abi.IOCTL_EVTCHN_RESET,
        "sizeof grant_ref": abi.GNTDEV_GRANT_REF.size,
        "grant_ref.domid": 0,
        "grant_ref.ref": 4,
        # Our one-ref packing "=IIQII": count at 0, index at 8, refs[0] at 16, 24 bytes in all.
        "sizeof map_grant_ref": abi.GNTDEV_MAP_GRANT_REF.size,
        "map.count": 0,
        "map.index": abi.struct.calcsize("=II"),
        "map.refs": abi.struct.calcsize("=IIQ"),
        "sizeof unmap_grant_ref": abi.GNTDEV_UNMAP_GRANT_REF.size,
        "unmap.index": 0,
        "unmap.count": abi.struct.calcsize("=Q"),
        "sizeof bind_interdomain": abi.EVTCHN_BIND_INTERDOMAIN.size,
        "bind.remote_domain": 0,
        "bind.remote_port": 4,
        "sizeof notify": abi.EVTCHN_PORT.size,
        "sizeof unbind": abi.EVTCHN_PORT.size,
        "__HYPERVISOR_physdev_op": abi.HYPERVISOR_PHYSDEV_OP,
        "PHYSDEVOP_prepare_msix": abi.PHYSDEVOP_PREPARE_MSIX,
        "PHYSDEVOP_release_msix": abi.PHYSDEVOP_RELEASE_MSIX,
        "sizeof physdev_pci_device": abi.PHYSDEV_PCI_DEVICE.size,
        "pci.seg": 0,
        "pci.bus": 2,
        "pci.devfn": 3,
        "DOMID_IO": abi.DOMID_IO,
        "XEN_DOMCTL_DEV_RDM_RELAXED": abi.XEN_DOMCTL_DEV_RDM_RELAXED,
    }


def test_numbers_the_proof_of_concept_used_on_real_xen():
    """The values spec/xen-in-qemu.md records from the run on real Xen (independent of gcc)."""
    assert abi.IOCTL_EVTCHN_BIND_INTERDOMAIN == abi.ioc(0, "E", 1, 8) == 0x00084501
    assert abi.IOCTL_EVTCHN_NOTIFY == abi.ioc(0, "E", 4, 4) == 0x00044504
    assert abi.IOCTL_GNTDEV_MAP_GRANT_REF == abi.ioc(0, "G", 0, 24) == 0x00184700


def _declarations(functions: dict[str, tuple[str, tuple[str, ...]]]) -> str:
    return "\n".join(f"{ret} {name}({', '.join(params)});"
                     for name, (ret, params) in functions.items())


def test_prototypes_redeclared_after_the_headers_compile(tmp_path):
    """Our tables re-declared after xenctrl.h/xencall.h: C rejects a conflicting redeclaration
    (a wrong parameter count or type), so this compiles only if every prototype matches."""
    source = ("#include <stdint.h>\n#include <stddef.h>\n#include <stdio.h>\n"
              "#include <xenctrl.h>\n#include <xencall.h>\n"
              + _declarations(abi.XENCTRL_FUNCTIONS) + "\n" + _declarations(abi.XENCALL_FUNCTIONS)
              + "\nint main(void) { printf(\"%zu %zu %zu %zu %zu\\n\", sizeof(int), sizeof(unsigned),"
              " sizeof(uint64_t), sizeof(size_t), sizeof(void *)); return 0; }\n")
    sizes = [int(x) for x in _compile_and_run(tmp_path, source).split()]
    assert sizes == [ctypes.sizeof(ctypes.c_int), ctypes.sizeof(ctypes.c_uint),
                     ctypes.sizeof(ctypes.c_uint64), ctypes.sizeof(ctypes.c_size_t),
                     ctypes.sizeof(ctypes.c_void_p)]


def test_a_wrong_prototype_is_caught(tmp_path):
    """The check above can fail: one parameter type changed is a compile error."""
    gcc = _need_toolchain()
    wrong = dict(abi.XENCTRL_FUNCTIONS)
    ret, params = wrong["xc_physdev_map_pirq_msi"]
    wrong["xc_physdev_map_pirq_msi"] = (ret, params[:-1] + ("uint32_t",))
    src = tmp_path / "wrong.c"
    src.write_text("#include <stdint.h>\n#include <xenctrl.h>\n" + _declarations(wrong) + "\n")
    build = subprocess.run([gcc, "-c", "-o", str(tmp_path / "wrong.o"), str(src)],
                           capture_output=True, text=True, timeout=60)
    assert build.returncode != 0
    assert "conflicting types" in build.stderr


def test_every_c_type_in_the_tables_has_a_ctypes_type():
    for functions in (abi.XENCTRL_FUNCTIONS, abi.XENCALL_FUNCTIONS):
        for name, (ret, params) in functions.items():
            restype, argtypes = xen_interrupts.ctypes_prototype(ret, params)
            assert len(argtypes) == len(params), name
            if ret.endswith("*"):
                assert restype is ctypes.c_void_p, name
    # int * is a pointer to a C int, uint64_t a 64-bit unsigned
    _, argtypes = xen_interrupts.ctypes_prototype(*abi.XENCTRL_FUNCTIONS["xc_physdev_map_pirq_msi"])
    assert argtypes[3] is ctypes.POINTER(ctypes.c_int)
    assert argtypes[7] is ctypes.c_uint64
    assert argtypes[1] is ctypes.c_uint32
    # the grant calls: frame numbers are unsigned long, allow_access uint8_t or bool
    _, argtypes = xen_interrupts.ctypes_prototype(*abi.XENCTRL_FUNCTIONS["xc_domain_iomem_permission"])
    assert argtypes[2:] == [ctypes.c_ulong, ctypes.c_ulong, ctypes.c_uint8]
    _, argtypes = xen_interrupts.ctypes_prototype(*abi.XENCTRL_FUNCTIONS["xc_domain_irq_permission"])
    assert argtypes[3] is ctypes.c_bool
    _, argtypes = xen_interrupts.ctypes_prototype(*abi.XENCTRL_FUNCTIONS["xc_physdev_map_pirq"])
    assert argtypes[2:] == [ctypes.c_int, ctypes.POINTER(ctypes.c_int)]


def test_the_machine_sbdf_is_libxls_encoding():
    """``pci_encode_bdf``: segment << 16 | bus << 8 | devfn (devfn = slot << 3 | function)."""
    assert abi.machine_sbdf(0x0001, 0x0A, 0xFD) == 0x00010AFD
    assert abi.machine_sbdf(0, 3, 0) == 0x300


def test_the_installed_libraries_export_every_function():
    """Binding the prototypes to the real shared objects (no Xen needed to dlopen them)."""
    try:
        libs = xen_interrupts.load_libraries()
    except OSError as exc:
        pytest.skip(f"libxenctrl/libxencall not installed ({exc}): install xen-utils/libxen-dev")
    for lib, functions in ((libs.xenctrl, abi.XENCTRL_FUNCTIONS), (libs.xencall, abi.XENCALL_FUNCTIONS)):
        for name in functions:
            fn = getattr(lib, name)
            assert fn.argtypes is not None and len(fn.argtypes) == len(functions[name][1])

"""Build the real-Xen tier's stack from Debian packages: the hypervisor, a Linux PV dom0 initramfs
and the base of a PV domU initramfs. Nothing here runs under Xen.

Why these pieces and not installed packages: installing the hypervisor or a kernel would run
initramfs-tools and grub hooks on this machine; ``apt-get download`` + ``dpkg-deb -x`` into a
scratch root takes seconds and touches nothing (``../shared/spec/xen-in-qemu.md``). The real-kernel
tier's builder (``tests/realkernel/build_initramfs.py``) already stages busybox, Debian's
python3.11, the project's dependencies, kernel modules by ``modules.dep`` and shared libraries by
``ldd``; this module reuses those pieces and adds Xen's tools, libraries and Python binding.

* ``xen``: ``boot/xen-4.17-amd64.gz`` from xen-hypervisor-4.17-amd64, decompressed (multiboot1,
  QEMU's ``-kernel`` boots it).
* ``vmlinux`` and ``vmlinux.gz``: the Debian kernel (dom0 and domU alike; 6.1: XEN_PV_DOM0
  built in, xen-pciback and xen-pcifront modules) as the ELF image inside its bzImage, plain for
  dom0 (a multiboot module: Xen would otherwise inflate its XZ payload under emulation) and
  gzipped for the guest (``xl create`` reads it from the 9p share; libxenguest inflates gzip
  several times faster than XZ, which made ``xl create`` take a minute and a half).
* ``dom0.cpio.gz``: busybox; the Xen tools (xl, xenstored, xenconsoled, xen-init-dom0,
  xenstore-*) with their libraries and libgcc_s (xl aborts without it); libxenctrl/libxencall;
  python3.11 and the project's dependencies; lspci; the modules dom0 needs; ``dom0_init.sh`` as
  /init. The project's code and the scenario come over 9p at run time (no rebuild per change).
* ``domu-base.cpio`` (not compressed): busybox, lspci, xenstore-read/-write, xen-pcifront and e1000e. The
  harness appends a second archive with the guest's /init and its test program (compiled with
  gcc each run: seconds), which the kernel unpacks over the first; neither is compressed
  (libxenguest inflates a gzipped ramdisk itself, slowly under emulation, and fails on two
  concatenated gzip streams).

Cached under ``$XEN_PCIBACK_REALXEN_CACHE`` (default ``~/.cache/xen-pciback-realxen``) in a
directory named by a hash of every package version, the module lists and the recipe files.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import lzma
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import sys

if str(Path(__file__).resolve().parents[1]) not in sys.path:  # run as a script or with -m
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from realkernel import build_initramfs as rk

HERE = Path(__file__).resolve().parent
DOM0_INIT = HERE / "dom0_init.sh"
BuildError = rk.BuildError

HYPERVISOR_PACKAGE = "xen-hypervisor-4.17-amd64"
XEN_LIBEXEC = "/usr/lib/xen-4.17"

#: dom0's modules (dependencies from modules.dep; built-in ones are skipped).
DOM0_MODULES = ("xen-evtchn", "xen-gntdev", "xen-gntalloc", "xen-privcmd", "xenfs", "xen-pciback",
                "pci-stub", "virtio_pci", "9pnet_virtio", "9p")
#: the guest's: the real PCI frontend and the e1000e driver (MSI/MSI-X).
DOMU_MODULES = ("xen-pcifront", "e1000e")

DOM0_BINARIES = tuple(f"{XEN_LIBEXEC}/bin/{name}" for name in
                      ("xl", "xenstored", "xenconsoled", "xen-init-dom0")) + tuple(
    f"/usr/bin/xenstore-{name}" for name in
    ("read", "write", "ls", "list", "rm", "exists", "chmod", "watch")) + (
    "/usr/bin/python3.11", "/usr/bin/lspci")
DOMU_BINARIES = ("/usr/bin/lspci", "/usr/bin/xenstore-read", "/usr/bin/xenstore-write",
                 "/usr/bin/xenstore-rm")

HOST_PACKAGES = ("busybox-static", "python3.11-minimal", "libpython3.11-stdlib",
                 "libpython3.11-minimal", "pciutils", "libpci3", "kmod", "xen-utils-4.17",
                 "xenstore-utils", "libxenmisc4.17", "libxenstore4", "libxencall1", "libgcc-s1")


@dataclass(frozen=True)
class Stack:
    xen: Path
    kernel: Path  # dom0's: the plain ELF
    domu_kernel: Path  # the guest's: the ELF, gzipped
    dom0_initramfs: Path
    domu_base: Path
    kernel_release: str
    key: str
    built: bool  # False when it came from the cache


def cache_root() -> Path:
    env = os.environ.get("XEN_PCIBACK_REALXEN_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "xen-pciback-realxen"


def _candidate(package: str) -> str:
    policy = rk._run(f"resolve {package}", ["apt-cache", "policy", package])
    for line in policy.splitlines():
        if line.strip().startswith("Candidate:"):
            version = line.split(":", 1)[1].strip()
            if version and version != "(none)":
                return version
    raise BuildError(f"resolve {package}: no candidate version (apt-get update?)")


def cache_key(kernel: tuple[str, str], hypervisor: tuple[str, str]) -> tuple[str, dict[str, object]]:
    recipe = b"".join(p.read_bytes() for p in (Path(__file__), DOM0_INIT, Path(rk.__file__)))
    manifest: dict[str, object] = {
        "kernel": list(kernel),
        "hypervisor": list(hypervisor),
        "packages": rk.installed_versions(HOST_PACKAGES),
        "python": rk.python_distributions(),
        "modules": [list(DOM0_MODULES), list(DOMU_MODULES)],
        "recipe": hashlib.sha256(recipe).hexdigest(),
    }
    digest = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()[:16]
    return digest, manifest


def _base_dirs(stage: Path) -> None:
    for directory in ("proc", "sys", "dev", "mnt", "tmp", "run", "root", "etc", "var/lib",
                      "var/log", "lib/modules", "usr/share/misc", "boot"):
        (stage / directory).mkdir(parents=True, exist_ok=True)
    os.symlink("../run", stage / "var/run")
    (stage / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (stage / "etc/group").write_text("root:x:0:\n")


def _stage_modules(stage: Path, modroot: Path, release: str, names: tuple[str, ...]) -> None:
    for rel in rk._module_closure(modroot, names):
        rk._copy_file(modroot / rel, stage, f"/lib/modules/{release}/{rel}")
    for meta in ("modules.order", "modules.builtin", "modules.builtin.modinfo"):
        rk._copy_file(modroot / meta, stage, f"/lib/modules/{release}/{meta}")
    rk._run("depmod (initramfs)", ["depmod", "-b", str(stage), release])


def _stage_binaries(stage: Path, binaries: list[str], extra_objects: list[str]) -> None:
    for binary in binaries:
        rk._copy_file(binary, stage)
    for lib in rk._ldd_closure(binaries + extra_objects):
        rk._copy_file(lib, stage)
    rk._copy_file("/lib64/ld-linux-x86-64.so.2", stage)
    rk._copy_file("/usr/share/misc/pci.ids", stage)


def _libgcc_s() -> str:
    for candidate in ("/lib/x86_64-linux-gnu/libgcc_s.so.1", "/usr/lib/x86_64-linux-gnu/libgcc_s.so.1"):
        if os.path.exists(candidate):
            return candidate
    raise BuildError("dom0: libgcc_s.so.1 not found (xl aborts without it: apt libgcc-s1)")


def build_dom0(stage: Path, modroot: Path, release: str, versions: dict[str, str]) -> None:
    _base_dirs(stage)
    for directory in ("var/lib/xen", "var/log/xen", "var/lib/xenstored", "etc/xen"):
        (stage / directory).mkdir(parents=True, exist_ok=True)
    rk._stage_busybox(stage)
    extensions = rk._stage_python(stage)
    rk._stage_python_deps(stage, versions)
    libgcc = _libgcc_s()
    libraries = [libgcc] + [f"/lib/x86_64-linux-gnu/{name}" for name in
                            ("libxenctrl.so.4.17", "libxencall.so.1")]
    _stage_binaries(stage, list(DOM0_BINARIES), extensions + libraries)
    for lib in libraries:
        rk._copy_file(lib, stage)
    os.symlink("python3.11", stage / "usr/bin/python") if not (stage / "usr/bin/python").exists() else None
    # ctypes.util.find_library asks 'ldconfig -p': ship ldconfig (static) and the guest's cache.
    rk._copy_file("/sbin/ldconfig", stage)
    (stage / "etc/ld.so.conf").write_text("/lib/x86_64-linux-gnu\n/usr/lib/x86_64-linux-gnu\n")
    rk._run("ldconfig (dom0)", ["ldconfig", "-r", str(stage)])
    xl_conf = Path("/etc/xen/xl.conf")
    (stage / "etc/xen/xl.conf").write_text(xl_conf.read_text() if xl_conf.exists() else "")
    _stage_modules(stage, modroot, release, DOM0_MODULES)
    init = stage / "init"
    shutil.copy2(DOM0_INIT, init)
    init.chmod(0o755)


def build_domu(stage: Path, modroot: Path, release: str) -> None:
    _base_dirs(stage)
    rk._stage_busybox(stage)
    _stage_binaries(stage, list(DOMU_BINARIES), [])
    _stage_modules(stage, modroot, release, DOMU_MODULES)


def extract_elf(bzimage: Path) -> bytes:
    """The ELF kernel inside a bzImage (Debian compresses it with XZ)."""
    data = bzimage.read_bytes()
    start = data.find(b"\xfd7zXZ\x00")
    if start < 0:
        raise BuildError(f"kernel: no XZ payload in {bzimage.name}")
    try:
        elf = lzma.LZMADecompressor().decompress(data[start:])
    except lzma.LZMAError as exc:
        raise BuildError(f"kernel: the XZ payload of {bzimage.name} does not inflate: {exc}") from exc
    if not elf.startswith(b"\x7fELF"):
        raise BuildError(f"kernel: the payload of {bzimage.name} is not an ELF image")
    return elf


def _prune(cache: Path, keep: Path) -> None:
    for other in cache.glob("stack-*"):
        if other != keep:
            shutil.rmtree(other, ignore_errors=True)


def ensure_stack(log: Callable[[str], None] | None = None) -> Stack:
    """The cached stack, built (and its two packages fetched) when missing."""
    say = log or (lambda message: None)
    cache = cache_root()
    cache.mkdir(parents=True, exist_ok=True)
    kernel = rk.kernel_package()
    hypervisor = (HYPERVISOR_PACKAGE, _candidate(HYPERVISOR_PACKAGE))
    key, manifest = cache_key(kernel, hypervisor)
    out = cache / f"stack-{key}"
    if (out / "manifest.json").is_file():
        release = json.loads((out / "manifest.json").read_text())["kernel_release"]
        return Stack(out / "xen", out / "vmlinux", out / "vmlinux.gz", out / "dom0.cpio.gz",
                     out / "domu-base.cpio", release, key, built=False)

    say(f"building stack {key} (kernel {kernel[1]}, xen {hypervisor[1]})")
    # The kernel .deb is shared with the real-kernel tier's cache: one download for both tiers.
    kernel_deb = rk.fetch_kernel_deb(*kernel, rk.cache_root())
    xen_deb = rk.fetch_deb(*hypervisor, cache, "hypervisor", stale_glob="xen-hypervisor-*.deb")
    with tempfile.TemporaryDirectory(dir=cache, prefix="build-") as tmp:
        work = Path(tmp)
        unpacked = work / "kernel-root"
        rk._run("unpack kernel", ["dpkg-deb", "-x", str(kernel_deb), str(unpacked)])
        releases = sorted(p.name for p in (unpacked / "lib/modules").iterdir())
        if len(releases) != 1:
            raise BuildError(f"unpack kernel: expected one kernel release, found {releases}")
        release = releases[0]
        rk._run("depmod (kernel)", ["depmod", "-b", str(unpacked), release])
        modroot = unpacked / "lib/modules" / release
        xen_root = work / "xen-root"
        rk._run("unpack hypervisor", ["dpkg-deb", "-x", str(xen_deb), str(xen_root)])
        images = sorted((xen_root / "boot").glob("xen-*.gz"))
        if len(images) != 1:
            raise BuildError(f"unpack hypervisor: expected one boot/xen-*.gz, found {images}")

        partial = work / "out"
        partial.mkdir()
        with open(partial / "xen", "wb") as sink:
            subprocess.run(["zcat", str(images[0])], stdout=sink, check=True, timeout=60)
        elf = extract_elf(unpacked / "boot" / f"vmlinuz-{release}")
        (partial / "vmlinux").write_bytes(elf)
        with gzip.open(partial / "vmlinux.gz", "wb", compresslevel=1) as packed:
            packed.write(elf)
        dom0 = work / "dom0"
        dom0.mkdir()
        build_dom0(dom0, modroot, release, manifest["python"])  # type: ignore[arg-type]
        rk.pack_initramfs(dom0, partial / "dom0.cpio.gz")
        domu = work / "domu"
        domu.mkdir()
        build_domu(domu, modroot, release)
        rk.pack_initramfs(domu, partial / "domu-base.cpio", compress=False)
        manifest["kernel_release"] = release
        (partial / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
        try:
            os.replace(partial, out)
        except OSError:
            if not (out / "manifest.json").is_file():
                raise
    _prune(cache, keep=out)
    return Stack(out / "xen", out / "vmlinux", out / "vmlinux.gz", out / "dom0.cpio.gz",
                 out / "domu-base.cpio", release, key, built=True)


if __name__ == "__main__":
    print(ensure_stack(print))

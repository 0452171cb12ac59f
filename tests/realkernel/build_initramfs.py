"""Build the guest for the real-kernel tier from Debian packages: a kernel image and an initramfs.

Why build it ourselves: the point of the tier is a *real* kernel's sysfs (driver binding,
driver_override, probing, refusals), and a Debian kernel under QEMU gives exactly that in seconds.
Everything comes from Debian packages on this machine or fetched with ``apt-get download`` (the
kernel, unpacked with ``dpkg-deb -x``: no initramfs-tools run), so CI on a bare Debian box can
rebuild it. Nothing here runs inside the guest.

The result is cached under ``$XEN_PCIBACK_REALKERNEL_CACHE`` (default
``~/.cache/xen-pciback-realkernel``), in a directory whose name is a hash of the package versions,
the Python dependencies' versions, the module list and this file and the guest's /init: any change
rebuilds, nothing else does.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable

HERE = Path(__file__).resolve().parent
GUEST_INIT = HERE / "guest_init.sh"

#: Kernel modules the scenarios need; their dependencies come from modules.dep.
#: crc32c_generic is ext4/jbd2's soft dependency (busybox modprobe ignores softdeps, and the
#: SSE4.2 variant cannot load on the qemu64 CPU).
GUEST_MODULES = (
    "virtio_pci", "9pnet_virtio", "9p",  # the share that carries code in and results out
    "e1000e", "nvme", "pci-stub",       # the devices under test and the seize driver
    "crc32c_generic", "ext4",           # a mounted filesystem on the NVMe drive
)

#: Debian packages whose files go into the guest; their versions key the cache.
HOST_PACKAGES = ("busybox-static", "python3.11-minimal", "libpython3.11-stdlib",
                 "libpython3.11-minimal", "pciutils", "libpci3", "e2fsprogs", "libudev1", "kmod")

#: Executables copied with their shared libraries (path in guest == path on host).
GUEST_BINARIES = ("/usr/bin/python3.11", "/usr/bin/lspci", "/usr/sbin/mke2fs")
GUEST_LIBRARIES = ("libudev.so.1",)  # pyudev loads it with ctypes; ldd cannot see that

#: The project's Python dependencies (pure Python), copied from this interpreter's site-packages.
PYTHON_DISTRIBUTIONS = ("click", "rich", "pyudev", "tabulate")

STDLIB_SKIP = {"test", "idlelib", "tkinter", "ensurepip", "lib2to3", "turtledemo", "pydoc_data",
               "distutils", "config-3.11-x86_64-linux-gnu"}

KERNEL_META_PACKAGE = "linux-image-amd64"


class BuildError(RuntimeError):
    """A build step failed; the message names the step and what it ran."""


@dataclass(frozen=True)
class GuestImage:
    kernel: Path
    initramfs: Path
    kernel_release: str
    key: str
    built: bool  # False when it came from the cache


def cache_root() -> Path:
    env = os.environ.get("XEN_PCIBACK_REALKERNEL_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "xen-pciback-realkernel"


def _run(step: str, argv: list[str], **kwargs: object) -> str:
    try:
        proc = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=300,
                              **kwargs)  # type: ignore[call-overload]
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BuildError(f"{step}: {' '.join(argv)}: {exc}") from exc
    if proc.returncode != 0:
        raise BuildError(f"{step}: {' '.join(argv)} exited {proc.returncode}: "
                         f"{(proc.stderr or proc.stdout).strip()[-800:]}")
    return proc.stdout


def kernel_package() -> tuple[str, str]:
    """(package, version) of the kernel image the Debian meta package points at."""
    out = _run("resolve kernel", ["apt-cache", "depends", "--no-recommends", "--no-suggests",
                                  KERNEL_META_PACKAGE])
    match = re.search(r"Depends:\s*(linux-image-\S+)", out)
    if not match:
        raise BuildError(f"resolve kernel: no linux-image dependency in 'apt-cache depends "
                         f"{KERNEL_META_PACKAGE}' output")
    package = match.group(1)
    policy = _run("resolve kernel", ["apt-cache", "policy", package])
    candidate = re.search(r"Candidate:\s*(\S+)", policy)
    if not candidate or candidate.group(1) == "(none)":
        raise BuildError(f"resolve kernel: {package} has no candidate version (apt-get update?)")
    return package, candidate.group(1)


def installed_versions(packages: tuple[str, ...]) -> dict[str, str]:
    versions = {}
    for package in packages:
        out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package],
                             capture_output=True, text=True, check=False)
        versions[package] = out.stdout.strip() if out.returncode == 0 else "absent"
    return versions


def python_distributions() -> dict[str, str]:
    """The project's runtime dependencies and their own dependencies, with versions."""
    found: dict[str, str] = {}
    todo = list(PYTHON_DISTRIBUTIONS)
    while todo:
        name = todo.pop()
        key = name.lower().replace("_", "-")
        if key in found:
            continue
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError as exc:
            raise BuildError(f"python deps: {name} is not installed for {sys.executable}") from exc
        found[key] = dist.version
        for requirement in dist.requires or ():
            if ";" in requirement:  # extras and platform markers: not needed in the guest
                continue
            todo.append(re.split(r"[\s<>=!~(\[]", requirement, maxsplit=1)[0])
    return found


def cache_key(kernel: tuple[str, str]) -> tuple[str, dict[str, object]]:
    manifest: dict[str, object] = {
        "kernel": list(kernel),
        "packages": installed_versions(HOST_PACKAGES),
        "python": python_distributions(),
        "modules": list(GUEST_MODULES),
        "recipe": hashlib.sha256(Path(__file__).read_bytes() + GUEST_INIT.read_bytes()).hexdigest(),
    }
    digest = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()[:16]
    return digest, manifest


def fetch_kernel_deb(package: str, version: str, cache: Path) -> Path:
    return fetch_deb(package, version, cache, "kernel", stale_glob=f"{package.split('-')[0]}-image-*.deb")


def fetch_deb(package: str, version: str, cache: Path, what: str, *,
              stale_glob: str | None = None) -> Path:
    """``package=version`` as a .deb under ``cache/debs`` (``apt-get download``, once); other
    files matching ``stale_glob`` there are superseded and removed. The real-Xen tier fetches
    the hypervisor with it too."""
    debs = cache / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    for existing in debs.glob(f"{package}_*.deb"):
        if _deb_version(existing) == version:
            return existing
    with tempfile.TemporaryDirectory(dir=debs) as tmp:
        os.chmod(tmp, 0o755)  # apt's _apt user downloads into it when it can
        _run(f"download {what}", ["apt-get", "download", "-q", f"{package}={version}"], cwd=tmp)
        downloaded = list(Path(tmp).glob("*.deb"))
        if not downloaded:
            raise BuildError(f"download {what}: apt-get download {package} produced no .deb")
        target = debs / downloaded[0].name
        os.replace(downloaded[0], target)
    for stale in debs.glob(stale_glob) if stale_glob else ():
        if stale != target:
            stale.unlink(missing_ok=True)  # an older version: superseded
    return target


def _deb_version(deb: Path) -> str:
    try:
        return _run("inspect deb", ["dpkg-deb", "-f", str(deb), "Version"]).strip()
    except BuildError:
        return ""


def _module_closure(modroot: Path, names: tuple[str, ...]) -> list[str]:
    """Relative module paths for ``names`` and everything they depend on (modules.dep)."""
    deps: dict[str, list[str]] = {}
    by_name: dict[str, str] = {}
    for line in (modroot / "modules.dep").read_text().splitlines():
        path, _, rest = line.partition(":")
        deps[path] = rest.split()
        stem = Path(path).name.split(".ko")[0]
        by_name[stem] = path
        by_name[stem.replace("-", "_")] = path
    builtin = {Path(p).name.split(".ko")[0].replace("-", "_")
               for p in (modroot / "modules.builtin").read_text().split()}
    wanted: list[str] = []
    todo = []
    for name in names:
        path = by_name.get(name) or by_name.get(name.replace("-", "_"))
        if path is None:
            if name.replace("-", "_") in builtin:
                continue
            raise BuildError(f"modules: {name} is neither a module nor built into this kernel")
        todo.append(path)
    while todo:
        path = todo.pop()
        if path in wanted:
            continue
        wanted.append(path)
        todo.extend(deps.get(path, ()))
    return wanted


def _ldd_closure(paths: list[str]) -> set[str]:
    libs: set[str] = set()
    for path in paths:
        proc = subprocess.run(["ldd", path], capture_output=True, text=True, check=False)
        for line in proc.stdout.splitlines():
            match = re.search(r"(/\S+)\s+\(0x", line)
            if match:
                libs.add(match.group(1))
    return libs


def _copy_file(src: str | Path, stage: Path, dest: str | None = None) -> None:
    target = stage / (dest or str(src)).lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(os.path.realpath(src), target)


def _stage_python(stage: Path) -> list[str]:
    """Debian's python3.11 and its standard library; returns the C extensions (for ldd)."""
    src = Path("/usr/lib/python3.11")
    if not src.is_dir() or not Path("/usr/bin/python3.11").exists():
        raise BuildError("python: Debian's /usr/bin/python3.11 is not installed (apt python3.11)")

    def ignore(directory: str, names: list[str]) -> set[str]:
        if Path(directory) == src:
            return {n for n in names if n in STDLIB_SKIP or n in ("site-packages", "dist-packages")}
        return set()

    shutil.copytree(src, stage / "usr/lib/python3.11", ignore=ignore, symlinks=False)
    (stage / "usr/bin").mkdir(parents=True, exist_ok=True)
    os.symlink("python3.11", stage / "usr/bin/python3")
    return [str(p) for p in (src / "lib-dynload").glob("*.so")]


def _stage_python_deps(stage: Path, versions: dict[str, str]) -> None:
    """Copy the pure-Python dependencies' files into /opt/pydeps (PYTHONPATH in the guest)."""
    target = stage / "opt/pydeps"
    for name in versions:
        dist = importlib.metadata.distribution(name)
        for file in dist.files or ():
            if file.parts[0] == ".." or "__pycache__" in file.parts or file.suffix in (".pyc",):
                continue
            located = Path(dist.locate_file(file))
            if located.is_file():
                dest = target / file
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(located, dest)
    # Precompile: the guest runs under emulation, where compiling rich on every start costs seconds.
    subprocess.run(["/usr/bin/python3.11", "-m", "compileall", "-q", "-j", "0", str(target)],
                   check=False, capture_output=True)


def _stage_busybox(stage: Path) -> None:
    busybox = shutil.which("busybox") or "/bin/busybox"
    _copy_file(busybox, stage, "/bin/busybox")
    applets = _run("busybox applets", [str(stage / "bin/busybox"), "--list-full"]).split()
    for applet in applets:
        link = stage / applet
        if link.exists() or link.is_symlink():
            continue
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink("/bin/busybox", link)


def build(stage: Path, kernel_deb: Path, versions: dict[str, str]) -> str:
    """Fill ``stage`` with the guest root; return the kernel release. Also extracts vmlinuz."""
    unpacked = stage.parent / "kernel-root"
    _run("unpack kernel", ["dpkg-deb", "-x", str(kernel_deb), str(unpacked)])
    releases = sorted(p.name for p in (unpacked / "lib/modules").iterdir())
    if len(releases) != 1:
        raise BuildError(f"unpack kernel: expected one kernel release, found {releases}")
    release = releases[0]
    _run("depmod (kernel)", ["depmod", "-b", str(unpacked), release])
    modroot = unpacked / "lib/modules" / release

    for directory in ("proc", "sys", "dev", "mnt", "tmp", "run", "root", "etc", "var/lib",
                      "lib/modules", "usr/share/misc"):
        (stage / directory).mkdir(parents=True, exist_ok=True)
    _stage_busybox(stage)
    extensions = _stage_python(stage)
    _stage_python_deps(stage, versions)

    binaries = list(GUEST_BINARIES)
    for binary in binaries:
        _copy_file(binary, stage)
    libraries = [f"/lib/x86_64-linux-gnu/{lib}" for lib in GUEST_LIBRARIES]
    for lib in _ldd_closure(binaries + extensions + libraries) | set(libraries):
        _copy_file(lib, stage)
    # The dynamic loader is found by its absolute path (/lib64/ld-linux-x86-64.so.2).
    _copy_file("/lib64/ld-linux-x86-64.so.2", stage)
    _copy_file("/usr/share/misc/pci.ids", stage)
    # ctypes.util.find_library (how pyudev finds libudev) asks 'ldconfig -p': ship ldconfig
    # (static) and a cache of the guest's own libraries.
    _copy_file("/sbin/ldconfig", stage)
    (stage / "etc/ld.so.conf").write_text("/lib/x86_64-linux-gnu\n/usr/lib/x86_64-linux-gnu\n")
    _run("ldconfig (guest)", ["ldconfig", "-r", str(stage)])

    target_modroot = stage / "lib/modules" / release
    for rel in _module_closure(modroot, GUEST_MODULES):
        _copy_file(modroot / rel, stage, f"/lib/modules/{release}/{rel}")
    for meta in ("modules.order", "modules.builtin", "modules.builtin.modinfo"):
        _copy_file(modroot / meta, stage, f"/lib/modules/{release}/{meta}")
    _run("depmod (guest)", ["depmod", "-b", str(stage), release])
    assert target_modroot.is_dir()

    (stage / "etc").mkdir(exist_ok=True)
    (stage / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (stage / "etc/group").write_text("root:x:0:\n")
    init = stage / "init"
    shutil.copy2(GUEST_INIT, init)
    init.chmod(0o755)
    return release


def pack_initramfs(stage: Path, image: Path, *, compress: bool = True) -> None:
    """``stage`` as a newc cpio archive (what the kernel unpacks as its initramfs), gzipped
    unless ``compress`` is false (the real-Xen tier appends archives before compressing once)."""
    with open(image, "wb") as sink:
        find = subprocess.Popen(["find", ".", "-print0"], cwd=stage, stdout=subprocess.PIPE)
        cpio = subprocess.Popen(["cpio", "--null", "-o", "-H", "newc", "--quiet"], cwd=stage,
                                stdin=find.stdout, stdout=subprocess.PIPE if compress else sink)
        procs = [cpio, find]
        if compress:
            procs.insert(0, subprocess.Popen(["gzip", "-1"], stdin=cpio.stdout, stdout=sink))
            assert cpio.stdout is not None
            cpio.stdout.close()
        assert find.stdout is not None
        find.stdout.close()
        codes = tuple(proc.wait(timeout=300) for proc in procs)
    if any(codes):
        raise BuildError(f"pack initramfs: find/cpio/gzip exited {codes}")


def _prune(cache: Path, keep: Path) -> None:
    """Drop guests built for other package versions: the cache holds one guest at a time."""
    for other in cache.glob("guest-*"):
        if other != keep:
            shutil.rmtree(other, ignore_errors=True)


def ensure_guest(log: Callable[[str], None] | None = None) -> GuestImage:
    """Return a cached guest image, building it (and fetching the kernel) when missing."""
    say = log or (lambda message: None)
    cache = cache_root()
    cache.mkdir(parents=True, exist_ok=True)
    kernel = kernel_package()
    key, manifest = cache_key(kernel)
    out = cache / f"guest-{key}"
    if (out / "manifest.json").is_file():
        release = json.loads((out / "manifest.json").read_text())["kernel_release"]
        return GuestImage(out / "vmlinuz", out / "initramfs.cpio.gz", release, key, built=False)

    say(f"building guest {key} (kernel {kernel[0]} {kernel[1]})")
    deb = fetch_kernel_deb(*kernel, cache)
    with tempfile.TemporaryDirectory(dir=cache, prefix="build-") as tmp:
        work = Path(tmp)
        stage = work / "root"
        stage.mkdir()
        release = build(stage, deb, manifest["python"])  # type: ignore[arg-type]
        partial = work / "out"
        partial.mkdir()
        vmlinuz = work / "kernel-root/boot" / f"vmlinuz-{release}"
        shutil.copy2(vmlinuz, partial / "vmlinuz")
        image = partial / "initramfs.cpio.gz"
        pack_initramfs(stage, image)
        manifest["kernel_release"] = release
        (partial / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
        try:
            os.replace(partial, out)
        except OSError:
            if not (out / "manifest.json").is_file():  # not a concurrent build that won the race
                raise
    _prune(cache, keep=out)
    return GuestImage(out / "vmlinuz", out / "initramfs.cpio.gz", release, key, built=True)


if __name__ == "__main__":
    image = ensure_guest(print)
    print(image)

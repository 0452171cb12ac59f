"""Every real-kernel scenario, run INSIDE the QEMU guest against the guest kernel's own /sys.

There is no sandbox here: the target is a real Linux kernel with real drivers (e1000e, nvme,
pci-stub), so binding, driver_override, probing and the kernel's refusals are the real thing.
Each check starts from the boot-time baseline (drivers as the kernel bound them, no overrides,
an empty state directory), runs the CLI as a person would (``python3 -m xenpciback_cli``), and
judges the result from sysfs and ``lspci -k`` -- never from the CLI's own say-so alone.

One JSON line per check goes to ``RESULTS/results.jsonl`` (name, ok, detail, seconds, the
commands it ran): pytest on the host asserts per check. Stdlib only; runs with Debian's python3.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

SYS_PCI = Path("/sys/bus/pci")
STATE_DIR = Path("/var/lib/xen-pciback")
HERE = Path(__file__).resolve().parent

NIC = "0000:00:02.0"        # e1000e, the NIC under test
NVME = "0000:00:03.0"       # NVMe drive
TESTDEV = "0000:00:04.0"    # pci-testdev, no Linux driver
MF0 = "0000:00:05.0"        # multi-function device: e1000e ...
MF1 = "0000:00:05.1"        # ... and a pci-testdev
MF_WILDCARD = "0000:00:05.*"
NIC_ADDRESS = "10.0.2.15/24"
MOUNT_POINT = Path("/srv/nvme")

CLI_TIMEOUT = 60


class CheckFailed(AssertionError):
    pass


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


# -- facts from the kernel ----------------------------------------------------------------------
def driver_of(bdf: str) -> str | None:
    link = SYS_PCI / "devices" / bdf / "driver"
    return os.path.basename(os.readlink(link)) if link.is_symlink() else None


def override_of(bdf: str) -> str | None:
    """driver_override as the kernel reports it; None when unset (the kernel prints '(null)')."""
    value = (SYS_PCI / "devices" / bdf / "driver_override").read_text().strip()
    return None if value in ("(null)", "") else value


def net_interfaces(bdf: str) -> list[str]:
    net = SYS_PCI / "devices" / bdf / "net"
    return sorted(os.listdir(net)) if net.is_dir() else []


def all_bdfs() -> list[str]:
    return sorted(os.listdir(SYS_PCI / "devices"))


def lspci_drivers() -> dict[str, str | None]:
    """``lspci -D -k``: BDF -> 'Kernel driver in use' (None when no driver)."""
    out = run(["lspci", "-D", "-k"], check=True).stdout
    drivers: dict[str, str | None] = {}
    current = None
    for line in out.splitlines():
        if line and not line[0].isspace():
            current = line.split()[0]
            drivers[current] = None
        elif current and "Kernel driver in use:" in line:
            drivers[current] = line.split(":", 1)[1].strip()
    return drivers


def lspci_ids() -> dict[str, tuple[str, str, str]]:
    """``lspci -D -n``: BDF -> (class, vendor, device) as 4-hex-digit strings."""
    ids = {}
    for line in run(["lspci", "-D", "-n"], check=True).stdout.splitlines():
        match = re.match(r"(\S+) ([0-9a-f]{4}): ([0-9a-f]{4}):([0-9a-f]{4})", line)
        if match:
            ids[match.group(1)] = match.group(2, 3, 4)
    return ids


def sysfs_snapshot() -> dict[str, object]:
    """Everything a seize could change: driver and override of every device, state dir files."""
    devices = {bdf: (driver_of(bdf), override_of(bdf), tuple(net_interfaces(bdf)))
               for bdf in all_bdfs()}
    stub = SYS_PCI / "drivers/pci-stub"
    bound = sorted(n for n in os.listdir(stub) if n.startswith("0000:")) if stub.is_dir() else []
    state = sorted(str(p.relative_to(STATE_DIR)) for p in STATE_DIR.rglob("*")) \
        if STATE_DIR.exists() else []
    return {"devices": devices, "pci-stub": bound, "state": state}


# -- running things -----------------------------------------------------------------------------
class Log:
    """The commands a check ran, kept for its result line."""

    def __init__(self) -> None:
        self.entries: list[dict[str, object]] = []


LOG = Log()


def run(argv: list[str], check: bool = False, env: dict[str, str] | None = None,
        timeout: float = CLI_TIMEOUT) -> subprocess.CompletedProcess:
    started = time.monotonic()
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL,
                              env={**os.environ, **(env or {})})
    except subprocess.TimeoutExpired as exc:
        raise CheckFailed(f"{' '.join(argv)} did not finish within {timeout} s") from exc
    LOG.entries.append({"argv": argv, "rc": proc.returncode,
                        "seconds": round(time.monotonic() - started, 2),
                        "stdout": proc.stdout[-3000:], "stderr": proc.stderr[-3000:]})
    if check and proc.returncode != 0:
        raise CheckFailed(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr.strip()[-500:]}")
    return proc


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "xenpciback_cli", *args], env=env)


def cli_json(*args: str) -> object:
    proc = cli("--json", *args)
    expect(proc.returncode == 0, f"'{' '.join(args)} --json' exited {proc.returncode}: "
                                 f"{proc.stderr.strip()[-500:]}")
    try:
        return json.loads(proc.stdout)
    except ValueError as exc:
        raise CheckFailed(f"'{' '.join(args)} --json' printed no JSON: {proc.stdout[:300]!r}") from exc


def one_line_error(proc: subprocess.CompletedProcess, what: str) -> str:
    """The CLI contract for failures: one 'xen-pciback: error:' line, never a traceback."""
    err = proc.stderr.strip()
    expect("Traceback" not in err, f"{what}: traceback on stderr: {err[-800:]}")
    lines = [line for line in err.splitlines() if line.startswith("xen-pciback: error:")]
    expect(len(lines) == 1, f"{what}: expected one 'xen-pciback: error:' line, stderr was {err!r}")
    return lines[0]


def expect_rc(proc: subprocess.CompletedProcess, code: int, what: str) -> None:
    """Exit code as documented (0 done, 1 failed, 2 bad input, 3 refused), else say what it said."""
    expect(proc.returncode == code,
           f"{what} exited {proc.returncode}, expected {code}; stderr: "
           f"{proc.stderr.strip()[-600:]!r}; stdout: {proc.stdout.strip()[-400:]!r}")


def list_by_bdf() -> dict[str, dict]:
    rows = cli_json("list")
    expect(isinstance(rows, list), f"list --json is not a list: {str(rows)[:200]}")
    return {row["bdf"]: row for row in rows}  # type: ignore[index]


def sysfs_write(path: Path, value: str) -> None:
    try:
        path.write_text(value)
    except OSError:
        pass  # best effort: the baseline restore tolerates what is already true


# -- baseline -------------------------------------------------------------------------------------
BASELINE: dict[str, str | None] = {}


def restore_baseline() -> None:
    """Put every device back on the driver the kernel gave it at boot, without the CLI."""
    for driver in {d for d in BASELINE.values() if d}:
        if not (SYS_PCI / "drivers" / driver).is_dir():
            run(["modprobe", driver])  # a check unloaded it
    for bdf, original in BASELINE.items():
        if override_of(bdf) is not None:
            sysfs_write(SYS_PCI / "devices" / bdf / "driver_override", "\n")
        current = driver_of(bdf)
        if current != original:
            if current is not None:
                sysfs_write(SYS_PCI / "drivers" / current / "unbind", bdf)
            if original is not None:
                sysfs_write(SYS_PCI / "drivers" / original / "bind", bdf)
    for dev in net_interfaces(NIC) + net_interfaces(MF0):
        run(["ip", "addr", "flush", "dev", dev])
        run(["ip", "link", "set", dev, "down"])
    if os.path.ismount(MOUNT_POINT):
        run(["umount", str(MOUNT_POINT)])
    shutil.rmtree(STATE_DIR, ignore_errors=True)
    # e1000e registers its netdev asynchronously after bind: wait (bounded) for it.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and BASELINE.get(NIC) == "e1000e" and not net_interfaces(NIC):
        time.sleep(0.1)


def wait_for(predicate, timeout: float = 10.0) -> bool:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


# -- the checks -----------------------------------------------------------------------------------
def check_guest_environment() -> str:
    """The harness itself: the devices and drivers the scenarios rely on are there."""
    expect(BASELINE.get(NIC) == "e1000e", f"{NIC} driver is {BASELINE.get(NIC)}, expected e1000e")
    expect(BASELINE.get(NVME) == "nvme", f"{NVME} driver is {BASELINE.get(NVME)}, expected nvme")
    expect(TESTDEV in BASELINE and BASELINE[TESTDEV] is None, f"{TESTDEV} missing or bound")
    expect(BASELINE.get(MF0) == "e1000e" and MF1 in BASELINE, "multi-function device missing")
    expect((SYS_PCI / "drivers/pci-stub").is_dir(), "pci-stub driver not loaded")
    expect(net_interfaces(NIC) != [], f"{NIC} has no network interface")
    expect(Path("/dev/nvme0n1").exists(), "/dev/nvme0n1 missing")
    return f"{len(BASELINE)} PCI functions; kernel {os.uname().release}"


def check_list_agrees_with_lspci() -> str:
    """``list --json`` shows exactly the functions lspci shows, with the same ids and drivers."""
    rows = list_by_bdf()
    drivers = lspci_drivers()
    ids = lspci_ids()
    expect(sorted(rows) == sorted(drivers),
           f"list shows {sorted(rows)}, lspci shows {sorted(drivers)}")
    for bdf, row in rows.items():
        expect(row.get("driver") == drivers[bdf],
               f"{bdf}: list says driver {row.get('driver')}, lspci -k says {drivers[bdf]}")
        cls, vendor, device = ids[bdf]
        expect(str(row.get("vendor_id")).lower() == f"0x{vendor}",
               f"{bdf}: vendor_id {row.get('vendor_id')} != lspci 0x{vendor}")
        expect(str(row.get("device_id")).lower() == f"0x{device}",
               f"{bdf}: device_id {row.get('device_id')} != lspci 0x{device}")
        expect(str(row.get("class")).lower().startswith(f"0x{cls}"),
               f"{bdf}: class {row.get('class')} != lspci 0x{cls}..")
        expect(row.get("state") == "host", f"{bdf}: state {row.get('state')} before any hide")
    table = cli("list")
    expect_rc(table, 0, "plain list")
    for bdf in rows:
        short = bdf[5:]
        expect(bdf in table.stdout or short in table.stdout, f"plain 'list' does not show {bdf}")
    return f"{len(rows)} functions, ids and drivers match lspci -k"


def check_iommu_groups_absent() -> str:
    """No IOMMU in this guest: the tool says so and does not crash."""
    groups = Path("/sys/kernel/iommu_groups")
    expect(not groups.is_dir() or not os.listdir(groups),
           "this guest unexpectedly has IOMMU groups; the scenario assumes none")
    rows = list_by_bdf()
    bad = {bdf: row.get("iommu_group") for bdf, row in rows.items() if row.get("iommu_group")
           is not None}
    expect(not bad, f"list reports IOMMU groups that do not exist: {bad}")
    proc = cli("hide", "--dry-run", "--driver", "pci-stub", NIC)
    expect_rc(proc, 0, "hide --dry-run")
    text = (proc.stdout + proc.stderr).lower()
    expect("iommu" in text, "hide's pre-flight output does not mention the absent IOMMU groups")
    expect("traceback" not in text, "traceback in hide --dry-run output")
    return "no IOMMU groups; list shows null, hide's pre-flight says so"


def check_dry_run_changes_nothing() -> str:
    """``hide --dry-run`` prints the sysfs writes it would make and makes none."""
    before = sysfs_snapshot()
    proc = cli("hide", "--dry-run", "--driver", "pci-stub", NIC)
    after = sysfs_snapshot()
    expect_rc(proc, 0, "hide --dry-run")
    expect(before == after, f"hide --dry-run changed the system: {before} -> {after}")
    printed = proc.stdout + proc.stderr
    expect("e1000e/unbind" in printed and f"{NIC}/driver_override" in printed,
           f"hide --dry-run does not print the unbind and driver_override writes: "
           f"{printed[-600:]!r}")
    wildcard = cli("hide", "--dry-run", "--driver", "pci-stub", MF_WILDCARD)
    expect_rc(wildcard, 0, "wildcard hide --dry-run")
    expect(sysfs_snapshot() == before, "wildcard hide --dry-run changed the system")
    return "no sysfs or state change; writes printed"


def check_hide_nic_pci_stub() -> str:
    """hide --driver pci-stub: e1000e lets go, pci-stub takes the NIC (sysfs and lspci -k)."""
    interfaces = net_interfaces(NIC)
    proc = cli("hide", "--driver", "pci-stub", NIC)
    expect_rc(proc, 0, "hide")
    expect(driver_of(NIC) == "pci-stub", f"after hide, driver is {driver_of(NIC)}")
    expect(override_of(NIC) == "pci-stub",
           f"after hide, driver_override is {override_of(NIC)!r}, expected 'pci-stub'")
    expect(lspci_drivers()[NIC] == "pci-stub", f"lspci -k says {lspci_drivers()[NIC]}")
    expect(net_interfaces(NIC) == [], f"interfaces {interfaces} still present after hide")
    row = list_by_bdf()[NIC]
    expect(row.get("state") == "seized", f"list state {row.get('state')}, expected seized")
    expect(row.get("original_driver") == "e1000e",
           f"list original_driver {row.get('original_driver')}, expected e1000e")
    expect(driver_of(MF0) == "e1000e", "hiding 00:02.0 disturbed the other e1000e")
    return f"e1000e unbound ({', '.join(interfaces)} gone), pci-stub bound, override set"


def check_unhide_dry_run_changes_nothing() -> str:
    """``unhide --rebind --dry-run`` on a seized NIC changes nothing."""
    cli_ok("hide", "--driver", "pci-stub", NIC)
    before = sysfs_snapshot()
    proc = cli("unhide", "--rebind", "--dry-run", NIC)
    expect_rc(proc, 0, "unhide --dry-run")
    expect(sysfs_snapshot() == before, "unhide --dry-run changed the system")
    expect(driver_of(NIC) == "pci-stub", "unhide --dry-run released the device")
    return "seized NIC stays seized"


def check_unhide_rebind_nic() -> str:
    """unhide --rebind: override cleared, pci-stub lets go, e1000e is back with its interface."""
    cli_ok("hide", "--driver", "pci-stub", NIC)
    proc = cli("unhide", "--rebind", NIC)
    expect_rc(proc, 0, "unhide --rebind")
    expect(driver_of(NIC) == "e1000e", f"after unhide --rebind, driver is {driver_of(NIC)}")
    expect(override_of(NIC) is None, f"driver_override still {override_of(NIC)!r} after unhide")
    expect(lspci_drivers()[NIC] == "e1000e", f"lspci -k says {lspci_drivers()[NIC]}")
    expect(wait_for(lambda: net_interfaces(NIC) != []), "no network interface after rebind")
    row = list_by_bdf()[NIC]
    expect(row.get("state") == "host", f"list state {row.get('state')}, expected host")
    return f"e1000e back ({', '.join(net_interfaces(NIC))}), override cleared"


def check_hide_driverless_device() -> str:
    """A function no driver claims (pci-testdev) is seized and released too."""
    proc = cli("hide", "--driver", "pci-stub", TESTDEV)
    expect_rc(proc, 0, "hide")
    expect(driver_of(TESTDEV) == "pci-stub", f"after hide, driver is {driver_of(TESTDEV)}")
    row = list_by_bdf()[TESTDEV]
    expect(row.get("state") == "seized" and row.get("original_driver") is None,
           f"list: state {row.get('state')}, original_driver {row.get('original_driver')}")
    proc = cli("unhide", "--rebind", TESTDEV)
    expect_rc(proc, 0, "unhide --rebind")
    expect(driver_of(TESTDEV) is None and override_of(TESTDEV) is None,
           f"after unhide: driver {driver_of(TESTDEV)}, override {override_of(TESTDEV)!r}")
    return "pci-testdev: none -> pci-stub -> none"


def check_refuse_nic_in_use() -> str:
    """A NIC that is up with an address is the host's: hide refuses (exit 3) and names it."""
    interfaces = net_interfaces(NIC)
    expect(len(interfaces) == 1, f"{NIC} interfaces: {interfaces}")
    dev = interfaces[0]
    run(["ip", "addr", "add", NIC_ADDRESS, "dev", dev], check=True)
    run(["ip", "link", "set", dev, "up"], check=True)
    proc = cli("hide", "--driver", "pci-stub", NIC)
    expect_rc(proc, 3, "hide of an up NIC with an address")
    line = one_line_error(proc, "refusal")
    expect(dev in proc.stdout + proc.stderr, f"refusal does not name {dev}: {line}")
    expect(driver_of(NIC) == "e1000e", f"refused hide still changed the driver: {driver_of(NIC)}")
    expect(override_of(NIC) is None, f"refused hide left driver_override {override_of(NIC)!r}")
    return line


def check_refuse_nvme_mounted() -> str:
    """An NVMe drive with a mounted filesystem is the host's: hide refuses (exit 3)."""
    run(["mke2fs", "-q", "-F", "-t", "ext4", "/dev/nvme0n1"], check=True, timeout=120)
    MOUNT_POINT.mkdir(parents=True, exist_ok=True)
    run(["mount", "-t", "ext4", "/dev/nvme0n1", str(MOUNT_POINT)], check=True)
    proc = cli("hide", "--driver", "pci-stub", NVME)
    expect_rc(proc, 3, "hide of an NVMe drive with a mounted filesystem")
    line = one_line_error(proc, "refusal")
    text = proc.stdout + proc.stderr
    expect("nvme0n1" in text or str(MOUNT_POINT) in text,
           f"refusal names neither nvme0n1 nor {MOUNT_POINT}: {line}")
    expect(driver_of(NVME) == "nvme", f"refused hide still changed the driver: {driver_of(NVME)}")
    expect(os.path.ismount(MOUNT_POINT), "the filesystem is no longer mounted")
    return line


KILLER = HERE / "kill_after_write.py"


def _killed_then_recovered(argv: list[str], what: str) -> str:
    """Run ``argv`` (a CLI call), SIGKILL it right after its unbind, and judge the recovery."""
    proc = run([sys.executable, str(KILLER), "/unbind", *argv])
    expect(proc.returncode == -signal.SIGKILL,
           f"the {what} was not killed after its unbind (exit {proc.returncode}): "
           f"{proc.stderr[-400:]}")
    expect(driver_of(NIC) is None, f"after the killed {what} the driver is {driver_of(NIC)}")
    listing = cli("list")
    text = listing.stdout + listing.stderr
    expect("interrupted" in text.lower() and "recover" in text,
           f"the next 'list' does not report the interrupted {what}: {text[-600:]!r}")
    proc = cli("recover")
    expect_rc(proc, 0, "recover")
    driver, override = driver_of(NIC), override_of(NIC)
    row = list_by_bdf()[NIC]
    if driver == "e1000e":
        outcome = "back on e1000e"
        expect(override is None, f"back on e1000e but driver_override is {override!r}")
        expect(row.get("state") == "host", f"back on e1000e but list state {row.get('state')}")
        expect(wait_for(lambda: net_interfaces(NIC) != []), "e1000e bound but no interface")
    elif driver == "pci-stub":
        outcome = "seized by pci-stub"
        expect(override == "pci-stub", f"seized but driver_override is {override!r}")
        expect(row.get("state") == "seized" and row.get("original_driver") == "e1000e",
               f"seized but list: {row.get('state')}, {row.get('original_driver')}")
    else:
        raise CheckFailed(f"after recover the NIC is half-done: driver {driver}, "
                          f"override {override!r}")
    again = cli("list")
    expect("interrupted" not in (again.stdout + again.stderr).lower(),
           "'list' still reports an interrupted operation after recover")
    return f"{what} killed after unbind; recover left it fully {outcome}"


def check_killed_hide_recovered() -> str:
    """A hide SIGKILLed right after its unbind is reported by the next command and repaired."""
    return _killed_then_recovered(["hide", "--driver", "pci-stub", NIC], "hide")


def check_killed_unhide_recovered() -> str:
    """The same for an unhide --rebind killed after pci-stub let go."""
    cli_ok("hide", "--driver", "pci-stub", NIC)
    return _killed_then_recovered(["unhide", "--rebind", NIC], "unhide --rebind")


def check_wildcard_multifunction() -> str:
    """hide 0000:00:05.* seizes both functions of the multi-function device; unhide gives back."""
    proc = cli("hide", "--driver", "pci-stub", MF_WILDCARD)
    expect_rc(proc, 0, "wildcard hide")
    for bdf in (MF0, MF1):
        expect(driver_of(bdf) == "pci-stub", f"{bdf}: driver {driver_of(bdf)} after wildcard hide")
        expect(override_of(bdf) == "pci-stub", f"{bdf}: override {override_of(bdf)!r}")
    rows = list_by_bdf()
    expect(rows[MF0].get("state") == rows[MF1].get("state") == "seized",
           f"list states {rows[MF0].get('state')}, {rows[MF1].get('state')}")
    expect(driver_of(NIC) == "e1000e", "wildcard reached beyond slot 05")
    proc = cli("unhide", "--rebind", MF_WILDCARD)
    expect_rc(proc, 0, "wildcard unhide --rebind")
    expect(driver_of(MF0) == "e1000e", f"{MF0}: driver {driver_of(MF0)} after unhide --rebind")
    expect(driver_of(MF1) is None, f"{MF1}: driver {driver_of(MF1)} after unhide --rebind")
    expect(override_of(MF0) is None and override_of(MF1) is None, "overrides left after unhide")
    return "05.0 e1000e and 05.1 (no driver) -> pci-stub -> back"


def check_rebind_to_unloaded_driver() -> str:
    """The kernel refuses a bind to a driver that is gone: one line, exit 1, and a retry works."""
    cli_ok("hide", "--driver", "pci-stub", NIC)
    run(["rmmod", "e1000e"], check=True)
    expect(not (SYS_PCI / "drivers/e1000e").exists(), "e1000e still registered after rmmod")
    proc = cli("unhide", "--rebind", NIC)
    expect_rc(proc, 1, "unhide --rebind to an unloaded driver")
    line = one_line_error(proc, "failed rebind")
    expect("e1000e" in line, f"the error does not name the missing driver: {line}")
    expect(driver_of(NIC) in (None, "pci-stub"), f"NIC ended on {driver_of(NIC)}")
    run(["modprobe", "e1000e"], check=True)
    # Loading e1000e probes every unbound e1000e device; ours may be taken right away. Either
    # way, a second unhide --rebind (or recover) must leave it on e1000e with no override.
    again = cli("unhide", "--rebind", NIC)
    if driver_of(NIC) != "e1000e" or override_of(NIC) is not None:
        cli("recover")
    expect(driver_of(NIC) == "e1000e", f"after modprobe and a retry, driver is {driver_of(NIC)} "
                                       f"(retry exited {again.returncode}: {again.stderr[-300:]!r})")
    expect(override_of(NIC) is None, f"driver_override left at {override_of(NIC)!r}")
    return line


def check_bad_input() -> str:
    """Bad addresses: one line, exit 2; an absent device: one line, non-zero, nothing changed."""
    before = sysfs_snapshot()
    proc = cli("hide", "--driver", "pci-stub", "0000:zz:00.0")
    expect_rc(proc, 2, "hide of a malformed BDF")
    one_line_error(proc, "malformed BDF")
    proc = cli("hide", "--driver", "pci-stub", "0000:00:1e.7")
    expect(proc.returncode not in (0,), "hide of an absent device succeeded")
    one_line_error(proc, "absent device")
    expect(sysfs_snapshot() == before, "a failed hide changed the system")
    return "exit 2 for a malformed BDF, one line for an absent device"


def check_engine_host_facts() -> str:
    """The real-sysfs adapter's facts about this kernel (what a 'doctor' would print)."""
    code = r"""
import json
from xenpciback_cli.host.sysfs import SysfsHost
from xenpciback_cli.pci.address import Bdf
h = SysfsHost("/sys")
devs = h.devices()
nic = h.device(Bdf.parse("%s"))
print(json.dumps({
    "count": len(devs),
    "groups": sorted({str(d.iommu_group) for d in devs}),
    "drivers": sorted(h.loaded_drivers()),
    "override": h.supports_driver_override(nic.bdf),
    "slots": list(h.pciback_slots()),
    "nic_driver": nic.driver,
    "nvme_usage": list(h.usage(Bdf.parse("%s")).reasons),
}))
""" % (NIC, NVME)  # noqa: UP031 - a program text: % leaves its braces alone
    MOUNT_POINT.mkdir(parents=True, exist_ok=True)
    run(["mke2fs", "-q", "-F", "-t", "ext4", "/dev/nvme0n1"], check=True, timeout=120)
    run(["mount", "-t", "ext4", "/dev/nvme0n1", str(MOUNT_POINT)], check=True)
    proc = run([sys.executable, "-c", code])
    expect(proc.returncode == 0, f"engine facts crashed: {proc.stderr[-800:]}")
    facts = json.loads(proc.stdout)
    expect(facts["count"] == len(BASELINE), f"{facts['count']} devices, sysfs has {len(BASELINE)}")
    expect(facts["groups"] == ["None"], f"IOMMU groups reported: {facts['groups']}")
    expect({"e1000e", "nvme", "pci-stub"} <= set(facts["drivers"]),
           f"loaded drivers: {facts['drivers']}")
    expect(facts["override"] is True, "driver_override reported unsupported on Linux 6.1")
    expect(facts["slots"] == [], f"pciback slots without pciback: {facts['slots']}")
    expect(facts["nic_driver"] == "e1000e", f"NIC driver {facts['nic_driver']}")
    expect(any(str(MOUNT_POINT) in r or "nvme0n1" in r for r in facts["nvme_usage"]),
           f"mounted NVMe not reported in use: {facts['nvme_usage']}")
    return json.dumps(facts)


def cli_ok(*args: str) -> None:
    proc = cli(*args)
    expect(proc.returncode == 0, f"'{' '.join(args)}' exited {proc.returncode}: "
                                 f"{proc.stderr.strip()[-500:]}")


#: (name, function), in the order they run. The host-side test file lists the same names.
CHECKS = (
    ("guest-environment", check_guest_environment),
    ("list-agrees-with-lspci", check_list_agrees_with_lspci),
    ("engine-host-facts", check_engine_host_facts),
    ("iommu-groups-absent", check_iommu_groups_absent),
    ("hide-dry-run-changes-nothing", check_dry_run_changes_nothing),
    ("hide-nic-pci-stub", check_hide_nic_pci_stub),
    ("unhide-dry-run-changes-nothing", check_unhide_dry_run_changes_nothing),
    ("unhide-rebind-nic", check_unhide_rebind_nic),
    ("hide-driverless-device", check_hide_driverless_device),
    ("refuse-nic-up-with-address", check_refuse_nic_in_use),
    ("refuse-nvme-mounted", check_refuse_nvme_mounted),
    ("killed-hide-recovered", check_killed_hide_recovered),
    ("killed-unhide-recovered", check_killed_unhide_recovered),
    ("wildcard-multifunction", check_wildcard_multifunction),
    ("rebind-to-unloaded-driver", check_rebind_to_unloaded_driver),
    ("bad-input", check_bad_input),
)


def main(results_dir: str) -> int:
    out = Path(results_dir) / "results.jsonl"
    selection = HERE / "only-checks.txt"  # written by the harness from its environment
    only = set(selection.read_text().split()) if selection.exists() else set()
    BASELINE.update({bdf: driver_of(bdf) for bdf in all_bdfs()})
    failures = 0
    for name, function in CHECKS:
        if only and name not in only:
            continue
        LOG.entries.clear()
        started = time.monotonic()
        try:
            restore_baseline()
            detail = function()
            ok = True
        except CheckFailed as exc:
            ok, detail = False, str(exc)
        except Exception:  # a bug in the scenario or an unexpected guest state: report, go on
            ok, detail = False, traceback.format_exc()[-1500:]
        seconds = round(time.monotonic() - started, 2)
        failures += not ok
        record = {"name": name, "ok": ok, "detail": detail, "seconds": seconds,
                  "commands": LOG.entries[-12:]}
        with open(out, "a") as sink:
            sink.write(json.dumps(record) + "\n")
            sink.flush()
            os.fsync(sink.fileno())
        with open("/dev/console", "w") as console:
            console.write(f"XPB-CHECK {name} {'ok' if ok else 'FAIL'} {seconds:.2f}s\n")
    restore_baseline()
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1]))

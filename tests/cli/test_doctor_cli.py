"""``xen-pciback doctor`` on a sandbox and (reading only) on this machine."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from xenpciback_cli.engine.doctor import CHECK_NAMES
from xenpciback_cli.engine.journal import Journal, JournalEntry
from xenpciback_cli.pci.address import Bdf
from xenpciback_cli.sandbox.host import create_sandbox
from helpers.cli import invoke


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    return create_sandbox(tmp_path_factory.mktemp("doctor") / "s").directory


@pytest.fixture()
def box(pristine, tmp_path):
    target = tmp_path / "s"
    shutil.copytree(pristine, target, symlinks=True)
    return target


def test_a_fresh_sandbox_is_ready_and_says_it_is_a_sandbox(box):
    run = invoke("--sandbox", box, "doctor")
    assert run.code == 0, run.output
    lines = run.output.splitlines()
    assert lines[0].startswith("ok    xen ") and "sandbox" in lines[0]
    assert lines[-1] == "ready for passthrough"
    assert "not running" in run.output  # the userspace backend, said plainly
    assert not (box / "xenstore" / "socket").exists()  # doctor starts nothing


def test_json_shape_and_a_waiting_journal_entry_exits_1(box):
    Journal(box / "state").begin(JournalEntry(op="hide", bdf=Bdf(0, 3, 0, 0), original_driver="igb",
                                              target_driver="pciback", method="override", steps=[], pid=0))
    run = invoke("--sandbox", box, "doctor", "--json")
    assert run.code == 1
    data = json.loads(run.output)
    assert set(data) == {"checks", "ready"} and data["ready"] is False
    assert [c["name"] for c in data["checks"]] == list(CHECK_NAMES)
    assert all(set(c) == {"name", "verdict", "detail", "fix"} for c in data["checks"])
    assert all(c["verdict"] in ("ok", "warn", "fail", "skip") for c in data["checks"])
    [journal] = [c for c in data["checks"] if c["name"] == "journal"]
    assert (journal["verdict"], journal["fix"]) == ("fail", "xen-pciback recover")
    text = invoke("--sandbox", box, "doctor")
    assert text.code == 1 and text.output.splitlines()[-1] == (
        "not ready for passthrough: 1 check(s) failed (journal)")


def test_seized_not_persisted_and_split_group_in_the_sandbox(box):
    assert invoke("--sandbox", box, "hide", "03:00.0").code == 0
    data = invoke("--sandbox", box, "doctor", "--json").json()
    checks = {c["name"]: c for c in data["checks"]}
    assert checks["persisted"]["verdict"] == "warn" and "0000:03:00.0" in checks["persisted"]["detail"]
    assert checks["iommu-groups"]["verdict"] == "warn"
    assert "0000:03:00.1 (igb) with the host" in checks["iommu-groups"]["detail"]
    assert data["ready"] is True  # warnings do not make a host unready


@pytest.mark.skipif(os.path.exists("/sys/hypervisor/type"), reason="this machine may run under Xen")
def test_on_this_machine_without_xen_the_first_check_says_so(tmp_path):
    run = invoke("--sysfs-root", "/sys", "--state-dir", tmp_path / "state", "doctor", "--json")
    assert run.code == 1
    data = json.loads(run.output)
    first = data["checks"][0]
    assert (first["name"], first["verdict"]) == ("xen", "fail")
    assert first["detail"].startswith("not running under Xen")
    skipped = {c["name"] for c in data["checks"] if c["verdict"] == "skip"}
    assert {"dom0", "iommu", "interrupt-remapping", "backend", "xenstored"} <= skipped
    assert not (tmp_path / "state").exists()  # read only

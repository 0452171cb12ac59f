"""Fleets (Ansible, Salt): every mutating command is idempotent and says "changed" in its JSON,
--dry-run answers as check mode does, and docs/ansible.md's playbook is valid YAML using the
commands as they are."""

import re
from pathlib import Path

from helpers.cli import ok

REPO = Path(__file__).resolve().parents[2]


def changed(*args, sandbox):
    return ok("--json", *args, sandbox=sandbox).json()["changed"]


def test_seizing_is_idempotent_and_dry_run_is_check_mode(sandbox):
    assert changed("hide", "--dry-run", "03:00.0", sandbox=sandbox) is True
    assert changed("hide", "--dry-run", "--persist", "03:00.0", sandbox=sandbox) is True
    first = ok("--json", "hide", "--persist", "03:00.0", sandbox=sandbox).json()
    assert first["changed"] is True and first["devices"][0]["changed"] is True
    assert changed("hide", "--persist", "03:00.0", sandbox=sandbox) is False  # seized and persisted
    assert changed("hide", "--dry-run", "--persist", "03:00.0", sandbox=sandbox) is False
    assert changed("restore", sandbox=sandbox) is False
    assert changed("restore", "--dry-run", sandbox=sandbox) is False
    assert changed("recover", sandbox=sandbox) is False
    assert changed("unhide", "--dry-run", "--rebind", "03:00.0", sandbox=sandbox) is True
    assert changed("unhide", "--rebind", "03:00.0", sandbox=sandbox) is True
    assert changed("unhide", "--rebind", "03:00.0", sandbox=sandbox) is False
    assert changed("unhide", "--dry-run", "03:00.0", sandbox=sandbox) is False


def test_restore_dry_run_writes_nothing_and_says_what_would_change(sandbox):
    ok("hide", "--persist", "03:00.0", sandbox=sandbox)
    ok("unhide", "--rebind", "--config", "/dev/null", "03:00.0", sandbox=sandbox)  # keep the list
    dry = ok("--json", "restore", "--dry-run", sandbox=sandbox).json()
    assert dry["changed"] is True and dry["dry_run"] is True
    assert [d["status"] for d in dry["devices"]] == ["planned"]
    assert changed("hide", "--dry-run", "03:00.0", sandbox=sandbox) is True  # still not seized
    assert changed("restore", sandbox=sandbox) is True
    assert changed("restore", sandbox=sandbox) is False


def test_attach_and_detach_are_idempotent_with_a_check_mode(sandbox):
    ok("hide", "03:00.0", sandbox=sandbox)
    ok("sandbox", "domain", "create", "6", "--no-guest", sandbox=sandbox)
    dry = ok("--json", "attach", "--dry-run", "03:00.0", "--domid", "6", sandbox=sandbox).json()
    assert dry["changed"] is True and dry["dry_run"] is True
    assert changed("detach", "03:00.0", "--domid", "6", sandbox=sandbox) is False  # not attached
    assert changed("attach", "03:00.0", "--domid", "6", sandbox=sandbox) is True
    again = ok("attach", "03:00.0", "--domid", "6", sandbox=sandbox)  # a person sees why nothing happened
    assert "already attached to domain 6" in again.out
    assert changed("attach", "03:00.0", "--domid", "6", sandbox=sandbox) is False
    assert changed("detach", "--dry-run", "03:00.0", "--domid", "6", sandbox=sandbox) is True
    assert changed("detach", "03:00.0", "--domid", "6", sandbox=sandbox) is True
    assert changed("detach", "03:00.0", "--domid", "6", sandbox=sandbox) is False


def _yaml_blocks():
    text = (REPO / "docs" / "ansible.md").read_text()
    return re.findall(r"```yaml\n(.*?)```", text, re.S)


def test_the_documented_playbook_is_valid_yaml_using_the_commands_as_they_are():
    import yaml

    host_vars, playbook = (yaml.safe_load(block) for block in _yaml_blocks())
    assert host_vars["passthrough"][0]["bdf"] == "0000:03:00.0"
    [play] = playbook
    tasks = play["tasks"]
    commands = [t["ansible.builtin.command"] for t in tasks]
    assert all("--json" in c for c in commands)
    for task in tasks:  # every task decides changed from the command's own JSON
        assert "from_json).changed" in task["changed_when"]
    words = {c.split("--json", 1)[1].split()[0] for c in commands}
    assert words == {"recover", "hide", "attach", "install-units"}
    from xenpciback_cli.cli import COMMANDS

    assert words <= set(COMMANDS)
    # The options the playbook passes exist on those commands (with check mode's --dry-run).
    import importlib

    for word, options in {"recover": ["--dry-run"], "hide": ["--persist", "--dry-run"],
                          "attach": ["--dry-run", "--domid"],
                          "install-units": ["--dry-run"]}.items():
        module, attr, _ = COMMANDS[word]
        command = getattr(importlib.import_module(f"xenpciback_cli.cli.{module}"), attr)
        opts = {o for p in command.params for o in getattr(p, "opts", ())}
        assert set(options) <= opts, (word, options, opts)

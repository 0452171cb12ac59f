#!/usr/bin/env python3
"""Generate man/xen-pciback.1 from the click command tree, so the man page never drifts from --help.

Usage: python tools/gen_manpage.py [--check]   (--check exits 1 if the committed page is stale)

Every command and group is imported (this is a build step, not start-up), its help text, usage line
and options are rendered into roff. The hand-written parts (exit codes, files, environment, examples)
live in this script.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from xenpciback_cli import __version__  # noqa: E402
from xenpciback_cli.cli import cli  # noqa: E402

PAGE = ROOT / "man" / "xen-pciback.1"


def roff_escape(text: str) -> str:
    text = text.replace("\\", "\\e").replace("-", "\\-")
    lines = []
    for line in text.splitlines():
        if line.startswith((".", "'")):
            line = "\\&" + line
        lines.append(line)
    return "\n".join(lines)


def paragraphs(text: str) -> list[str]:
    text = text.replace("\b\n", "").replace("\b", "")
    return [p.strip() for p in text.strip().split("\n\n") if p.strip()]


def options_of(ctx: click.Context, command: click.Command) -> list[tuple[str, str]]:
    rows = []
    for param in command.get_params(ctx):
        record = param.get_help_record(ctx)
        if record:
            rows.append(record)
    return rows


def walk(ctx: click.Context, command: click.Command, path: list[str]) -> list[str]:
    out: list[str] = []
    if path:
        out.append(f".SS {roff_escape(' '.join(path))}")
        usage = " ".join(command.collect_usage_pieces(ctx))
        out.append(f".B xen\\-pciback {roff_escape(' '.join(path))}")
        out.append(roff_escape(usage))
        out.append(".PP")
        for para in paragraphs(command.help or command.short_help or ""):
            out.append(roff_escape(" ".join(para.split())))
            out.append(".PP")
        for opt, desc in options_of(ctx, command):
            if opt.startswith("-h, --help"):
                continue
            out.append(f".TP\n.B {roff_escape(opt)}\n{roff_escape(desc)}")
    if isinstance(command, click.Group):
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            if sub is None or sub.hidden:
                continue
            sub_ctx = click.Context(sub, info_name=name, parent=ctx)
            out.extend(walk(sub_ctx, sub, path + [name]))
    return out


def render() -> str:
    ctx = click.Context(cli, info_name="xen-pciback")
    head = [
        f'.TH XEN\\-PCIBACK 1 "" "xen-pciback {__version__}" "User Commands"',
        ".SH NAME",
        "xen\\-pciback \\- administer Xen PCI passthrough on the host (dom0)",
        ".SH SYNOPSIS",
        ".B xen\\-pciback",
        "[\\fIGLOBAL OPTIONS\\fR] \\fICOMMAND\\fR [\\fIARGS\\fR]...",
        ".SH DESCRIPTION",
    ]
    for para in paragraphs(cli.help or ""):
        head += [roff_escape(" ".join(para.split())), ".PP"]
    head.append(".SH GLOBAL OPTIONS")
    for opt, desc in options_of(ctx, cli):
        head.append(f".TP\n.B {roff_escape(opt)}\n{roff_escape(desc)}")
    head.append(".SH COMMANDS")
    body = walk(ctx, cli, [])
    tail = [
        ".SH EXIT STATUS",
        ".TP\n.B 0\ndone",
        ".TP\n.B 1\nthe operation failed",
        ".TP\n.B 2\nbad usage or bad input; one line on standard error says what and where",
        ".TP\n.B 3\nrefused for safety; \\-\\-force overrides where offered",
        ".SH ENVIRONMENT",
        ".TP\n.B XEN_PCIBACK_SANDBOX\nsame as \\-\\-sandbox",
        ".TP\n.B XEN_PCIBACK_SYSFS_ROOT\nsame as \\-\\-sysfs\\-root",
        ".TP\n.B XEN_PCIBACK_CONFIG\nthe persisted seize list (default /etc/xen\\-pciback/seized.toml)",
        ".TP\n.B NO_COLOR\nplain output",
        ".TP\n.B XENSTORED_PATH\nthe xenstored socket to use",
        ".SH FILES",
        ".TP\n.B /var/lib/xen\\-pciback\njournal of interrupted operations and records of seized devices",
        ".TP\n.B /etc/xen\\-pciback/seized.toml\ndevices seized at boot by \\fBxen\\-pciback restore\\fR",
        ".SH SEE ALSO",
        ".BR xl (1),",
        ".BR xl\\-pci\\-configuration (5),",
        ".BR lspci (8),",
        ".BR driverctl (8)",
        "",
    ]
    return "\n".join(head + body + tail)


def main() -> int:
    page = render()
    if "--check" in sys.argv:
        current = PAGE.read_text() if PAGE.exists() else ""
        if current != page:
            print(f"{PAGE} is stale: run python tools/gen_manpage.py", file=sys.stderr)
            return 1
        return 0
    PAGE.parent.mkdir(exist_ok=True)
    PAGE.write_text(page)
    print(f"wrote {PAGE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

#!/usr/bin/env python3
"""Generate man/xen-pciback.1 from the click command tree, so the man page never drifts from --help.

Usage: python tools/gen_manpage.py [--check]   (--check exits 1 if the committed page is stale)

Every command and group is imported (this is a build step, not start-up), its help text, usage line
and options are rendered into roff by this script's own walk of the command tree, from click's
stable public attributes only, so the page is the same under every click release pyproject.toml
allows (CI checks it with the newest; the oldest is checked the same way by hand). The
hand-written parts (exit codes, files, environment, examples) live in this script.
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


# -- our own rendering of a parameter -------------------------------------------------------------
# Only click's stable public attributes are read (Option.opts, secondary_opts, metavar, type, help,
# default, show_default, required...; Argument.name, metavar, required, nargs). click's own help
# formatter is not used: its output for arguments changed in 8.2 (rows for arguments appeared),
# and this page must come out byte for byte the same whichever click release is installed.


def type_metavar(param: click.Parameter) -> str:
    if isinstance(param.type, click.Choice):
        return "[" + "|".join(str(c) for c in param.type.choices) + "]"
    return param.type.name.upper()


def argument_usage(arg: click.Argument) -> str:
    text = arg.metavar or (type_metavar(arg) if isinstance(arg.type, click.Choice)
                           else str(arg.name).upper())
    if arg.metavar is None and not arg.required:
        text = f"[{text}]"
    if arg.metavar is None and arg.nargs != 1:
        text += "..."
    return text


def option_names(opt: click.Option, names: list[str]) -> str:
    # Shorter prefixes first, as in every help text: "-d, --domid".
    ordered = sorted(names, key=lambda name: len(name) - len(name.lstrip(name[0])))
    text = ", ".join(ordered)
    if not opt.is_flag and not opt.count:
        metavar = opt.metavar or type_metavar(opt)
        text += f" {metavar}" + ("..." if opt.nargs != 1 else "")
    return text


def describe_range(kind: click.IntRange | click.FloatRange) -> str:
    if kind.min is None:
        return f"x{'<' if kind.max_open else '<='}{kind.max}"
    if kind.max is None:
        return f"x{'>' if kind.min_open else '>='}{kind.min}"
    return f"{kind.min}{'<' if kind.min_open else '<='}x{'<' if kind.max_open else '<='}{kind.max}"


def option_row(opt: click.Option) -> tuple[str, str]:
    term = option_names(opt, list(opt.opts))
    if opt.secondary_opts:
        term += " / " + option_names(opt, list(opt.secondary_opts))
    extra = []
    default = opt.default
    if isinstance(opt.show_default, str):
        extra.append(f"default: ({opt.show_default})")
    elif opt.show_default and default is not None and not callable(default):
        if isinstance(default, list | tuple):
            text = ", ".join(str(d) for d in default)
        elif opt.is_flag and opt.secondary_opts:
            text = (opt.opts if default else opt.secondary_opts)[0].lstrip("-")
        elif opt.is_flag and not default:
            text = ""
        else:
            text = str(default)
        if text:
            extra.append(f"default: {text}")
    if isinstance(opt.type, click.IntRange | click.FloatRange) and not opt.count:
        extra.append(describe_range(opt.type))
    if opt.required:
        extra.append("required")
    help_text = " ".join((opt.help or "").split())
    if extra:
        help_text = f"{help_text}  [{'; '.join(extra)}]" if help_text else f"[{'; '.join(extra)}]"
    return term, help_text


def options_of(ctx: click.Context, command: click.Command) -> list[tuple[str, str]]:
    rows = [option_row(param) for param in command.params
            if isinstance(param, click.Option) and not param.hidden]
    # The help option is click's to make (8.2+ caches it on the command, built with whichever
    # context asked first): its row is written here from the context's names instead.
    if command.add_help_option and ctx.help_option_names:
        names = sorted(ctx.help_option_names, key=lambda name: len(name) - len(name.lstrip("-")))
        rows.append((", ".join(names), "Show this message and exit."))
    return rows


def usage_of(ctx: click.Context, command: click.Command) -> str:
    pieces = [command.options_metavar] if command.options_metavar else []
    pieces += [argument_usage(param) for param in command.params
               if isinstance(param, click.Argument)]
    if isinstance(command, click.Group):
        pieces.append(command.subcommand_metavar)
    return " ".join(pieces)


def help_of(command: click.Command) -> str:
    # click stops help at a form feed; do the same here rather than rely on where it does so.
    return (command.help or command.short_help or "").partition("\f")[0]


def walk(ctx: click.Context, command: click.Command, path: list[str]) -> list[str]:
    out: list[str] = []
    if path:
        out.append(f".SS {roff_escape(' '.join(path))}")
        usage = usage_of(ctx, command)
        out.append(f".B xen\\-pciback {roff_escape(' '.join(path))}")
        out.append(roff_escape(usage))
        out.append(".PP")
        for para in paragraphs(help_of(command)):
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
            sub_ctx = click.Context(sub, info_name=name, parent=ctx, **sub.context_settings)
            out.extend(walk(sub_ctx, sub, path + [name]))
    return out


def render() -> str:
    # As 'xen-pciback' itself runs: the group's context settings (-h as well as --help).
    ctx = click.Context(cli, info_name="xen-pciback", **cli.context_settings)
    head = [
        f'.TH XEN\\-PCIBACK 1 "" "xen-pciback {__version__}" "User Commands"',
        ".SH NAME",
        "xen\\-pciback \\- administer Xen PCI passthrough on the host (dom0)",
        ".SH SYNOPSIS",
        ".B xen\\-pciback",
        "[\\fIGLOBAL OPTIONS\\fR] \\fICOMMAND\\fR [\\fIARGS\\fR]...",
        ".SH DESCRIPTION",
    ]
    for para in paragraphs(help_of(cli)):
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

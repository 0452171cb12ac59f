#!/usr/bin/env python3
"""Generate man/xen-pciback.1 from the click command tree, so the man page never drifts from --help,
and man/xen-pciback.toml.5, the persisted seize list's format (engine/persist.py).

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
from xenpciback_cli.app import DEFAULT_PERSIST_FILE, DEFAULT_STATE_DIR  # noqa: E402
from xenpciback_cli.cli import cli  # noqa: E402
from xenpciback_cli.engine import persist  # noqa: E402
from xenpciback_cli.pci.drivers import SEIZE_DRIVERS  # noqa: E402
from xenpciback_cli.pci.names import PCI_IDS_PATHS  # noqa: E402
from xenpciback_cli.xenstore.transport import DEFAULT_SOCKETS, DEVICE_PATHS  # noqa: E402

PAGE = ROOT / "man" / "xen-pciback.1"
TOML_PAGE = ROOT / "man" / "xen-pciback.toml.5"


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
            out.append(f".TP\n.B {roff_escape(opt)}\n{roff_escape(desc)}")
    if isinstance(command, click.Group):
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            if sub is None or sub.hidden:
                continue
            sub_ctx = click.Context(sub, info_name=name, parent=ctx, **sub.context_settings)
            out.extend(walk(sub_ctx, sub, path + [name]))
    return out


def example(what: str, *commands: str) -> list[str]:
    lines = [".PP", roff_escape(what), ".PP", ".RS", ".nf"]
    lines += [roff_escape(command) for command in commands]
    return lines + [".fi", ".RE"]


def render_toml() -> str:
    """xen-pciback.toml(5): the persisted seize list, as engine/persist.py reads and writes it."""
    sample = persist.dumps([persist.PersistedDevice(persist.BdfPattern.parse("0000:03:00.0")),
                            persist.PersistedDevice(persist.BdfPattern.parse("0000:04:00.*"), "vfio-pci")])
    return "\n".join([
        f'.TH XEN\\-PCIBACK.TOML 5 "" "xen-pciback {__version__}" "File Formats"',
        ".SH NAME",
        "xen\\-pciback.toml \\- devices xen\\-pciback seizes at boot",
        ".SH SYNOPSIS",
        f".B {roff_escape(DEFAULT_PERSIST_FILE)}",
        ".SH DESCRIPTION",
        "The persisted seize list: the devices \\fBxen\\-pciback restore\\fR seizes at boot (the "
        "xen\\-pciback\\-restore unit runs it before networking), and that \\fBxen\\-pciback cmdline\\fR "
        "turns into the kernel's \\fBxen\\-pciback.hide=\\fR parameter. \\fBhide \\-\\-persist\\fR "
        "adds a device and \\fBunhide\\fR removes it; editing it by hand is fine. Another file is "
        "chosen with \\-\\-config PATH or XEN_PCIBACK_CONFIG; in a sandbox it is "
        "DIR/etc/xen\\-pciback/seized.toml.",
        ".PP",
        "The file is TOML (UTF\\-8, at most " + str(persist.MAX_SIZE) + " bytes). Its only key is "
        "\\fBdevice\\fR, an array of tables, one \\fB[[device]]\\fR per device or wildcard, each with:",
        ".TP\n.B bdf\n(string, required) the device's address, DDDD:BB:DD.F, BB:DD.F, or BB:DD.* for "
        "every function of a device",
        ".TP\n.B driver\n(string, default \\(dqpciback\\(dq) the driver that holds it: "
        + roff_escape(", ".join(SEIZE_DRIVERS)),
        ".PP",
        "Any other key, a missing or malformed bdf, or another driver makes every command that reads the "
        "file fail with one line naming the file and the entry (exit status 2); a missing file means "
        "no devices. The file is replaced atomically (mode 0644) when a command changes it.",
        ".SH EXAMPLE",
        ".nf",
        roff_escape(sample.rstrip("\n")),
        ".fi",
        ".SH FILES",
        f".TP\n.B {roff_escape(DEFAULT_PERSIST_FILE)}\nthe default location",
        ".SH SEE ALSO",
        ".BR xen\\-pciback (1)",
        "",
    ])


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
        ".SH EXAMPLES",
        *example("Is this host ready for passthrough?", "xen-pciback doctor"),
        *example("Devices pciback holds that no guest has (xl pci-assignable-list):",
                 "xen-pciback list --seized"),
        *example("See every sysfs write a seize would make, then seize a NIC and keep it seized "
                 "across reboots:", "xen-pciback hide --dry-run 03:00.0",
                 "xen-pciback hide --persist 03:00.0"),
        *example("Give it to guest 5, check the handshake, take it back:",
                 "xen-pciback attach 03:00.0 --domid 5", "xen-pciback status --domid 5",
                 "xen-pciback detach 03:00.0 --domid 5"),
        *example("Give it back to the host driver it was taken from:",
                 "xen-pciback unhide --rebind 03:00.0"),
        *example("After a crash or power loss in the middle of a hide:", "xen-pciback recover"),
        *example("Boot: install the unit that runs recover and restore before networking:",
                 "xen-pciback install-units",
                 "systemctl daemon-reload && systemctl enable xen-pciback-restore"),
        *example("From a script or Ansible: JSON with \"changed\": true|false, check mode with "
                 "--dry-run:", "xen-pciback hide --json --dry-run 03:00.0"),
        *example("Try everything on a simulated host:", "xen-pciback sandbox init /tmp/s",
                 "xen-pciback --sandbox /tmp/s hide 03:00.0"),
        ".SH EXIT STATUS",
        ".TP\n.B 0\ndone (also when there was nothing to change: JSON says \\(dqchanged\\(dq: false)",
        ".TP\n.B 1\nthe operation failed",
        ".TP\n.B 2\nbad usage or bad input, or a corrupt state file; one line on standard error says "
        "what and where (with \\-\\-json, one JSON object: error, exit_code)",
        ".TP\n.B 3\nrefused for safety; \\-\\-force overrides where offered",
        ".TP\n.B 130\ninterrupted (Ctrl\\-C)",
        ".TP\n.B 141\nthe reader of the output went away (as after SIGPIPE: \\fB| head\\fR)",
        ".SH ENVIRONMENT",
        ".TP\n.B XEN_PCIBACK_SANDBOX\nsame as \\-\\-sandbox",
        ".TP\n.B XEN_PCIBACK_SYSFS_ROOT\nsame as \\-\\-sysfs\\-root",
        f".TP\n.B XEN_PCIBACK_CONFIG\nthe persisted seize list (default {roff_escape(DEFAULT_PERSIST_FILE)}; "
        "see \\fBxen\\-pciback.toml\\fR(5))",
        ".TP\n.B XEN_PCIBACK_PCI_IDS\nthe pci.ids file naming vendors and devices (default: the first of "
        + roff_escape(", ".join(PCI_IDS_PATHS)) + ")",
        ".TP\n.B NO_COLOR\nplain output, as \\-\\-no\\-color",
        ".TP\n.B XENSTORED_PATH\nthe xenstored socket or device to use (as libxenstore reads it)",
        ".TP\n.B XENSTORED_RUNDIR\nthe directory of xenstored's socket (as libxenstore reads it)",
        ".TP\n.B XEN_PCIBACK_TEST_KILL_AFTER_WRITES\nfor the crash tests only: die after N sysfs writes. "
        "Never set it otherwise.",
        ".SH FILES",
        f".TP\n.B {roff_escape(DEFAULT_STATE_DIR)}\nthe state dir (\\-\\-state\\-dir), root's alone (0700): "
        "\\fBseized/\\fR records of seized devices and their original drivers, \\fBjournal/\\fR "
        "operations in progress (what \\fBrecover\\fR finishes), \\fBbackend\\-settings/\\fR "
        "permissive and quirks, \\fB.lock\\fR the one\\-operation\\-at\\-a\\-time lock",
        f".TP\n.B {roff_escape(DEFAULT_PERSIST_FILE)}\ndevices seized at boot by \\fBxen\\-pciback restore\\fR "
        "(\\fBhide \\-\\-persist\\fR); see \\fBxen\\-pciback.toml\\fR(5)",
        ".TP\n.B " + roff_escape(" ".join(DEFAULT_SOCKETS)) + "\nwhere xenstored's socket is looked for, "
        "then " + roff_escape(" ".join(DEVICE_PATHS)),
        ".TP\n.B /etc/systemd/system/xen\\-pciback\\-restore.service\nthe boot unit "
        "(\\fBinstall\\-units\\fR; the template is installed in share/xen\\-pciback/systemd/)",
        ".TP\n.B /sys/bus/pci\nthe devices and drivers acted on (\\-\\-sysfs\\-root)",
        ".SH SEE ALSO",
        ".BR xen\\-pciback.toml (5),",
        ".BR xl (1),",
        ".BR xl\\-pci\\-configuration (5),",
        ".BR lspci (8),",
        ".BR driverctl (8)",
        "",
    ]
    return "\n".join(head + body + tail)


def main() -> int:
    pages = {PAGE: render(), TOML_PAGE: render_toml()}
    if "--check" in sys.argv:
        stale = [path for path, text in pages.items()
                 if (path.read_text() if path.exists() else "") != text]
        for path in stale:
            print(f"{path} is stale: run python tools/gen_manpage.py", file=sys.stderr)
        return 1 if stale else 0
    PAGE.parent.mkdir(exist_ok=True)
    for path, text in pages.items():
        path.write_text(text)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

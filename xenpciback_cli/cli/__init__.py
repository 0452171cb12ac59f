"""The ``xen-pciback`` command group: global options, lazy subcommands, and the one error boundary.

Importing this module must stay cheap (only click): ``--help`` and shell completion run it on
every keystroke. Each subcommand lives in its own module under ``xenpciback_cli.cli`` and is
imported only when it runs. To add a command, add one line to :data:`COMMANDS`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, NoReturn
import sys

import click

from xenpciback_cli import __version__

#: name -> (module under xenpciback_cli.cli, attribute, one-line help shown by ``--help``).
#: The help text lives here so that ``xen-pciback --help`` imports no command module.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "demo": ("demo", "command", "Walk through hide, attach, inspect, detach, unhide on a fresh sandbox."),
    "list": ("list_cmd", "command", "List PCI devices with driver, state and IOMMU group."),
    "hide": ("hide", "command", "Seize devices from their host drivers for passthrough."),
    "unhide": ("unhide", "command", "Release seized devices, optionally rebinding the original driver."),
    "recover": ("recover", "command", "Finish or roll back operations interrupted by a crash."),
    "restore": ("restore", "command", "Re-seize every device in the persisted configuration (boot time)."),
    "cmdline": ("cmdline", "command", "Print the xen-pciback.hide=... boot parameter for persisted devices."),
    "inspect": ("inspect", "command", "Decode config space and show the guest's filtered view."),
    "sandbox": ("sandbox", "group", "Create and drive a simulated host (no Xen needed)."),
    "xenstore": ("xenstore", "group", "Small xenstore debugging commands (ls, read, write, rm, watch)."),
    "attach": ("attach", "command", "Attach a seized device to a guest through xenstore (libxl layout)."),
    "detach": ("detach", "command", "Detach a device from a guest safely, then reset it."),
    "status": ("status", "command", "Show a guest's PV PCI handshake: states, vdevs, errors."),
    "doctor": ("doctor", "command", "Check that this host is ready for passthrough, with the fixes."),
    "bind": ("bind", "command", "Bind a device to any driver (driverctl set-override); loads its module."),
    "rebind": ("rebind", "command", "Give a device to the driver the kernel picks (driverctl unset-override)."),
    "pci-list": ("pci_list", "command", "List one domain's PCI devices, like 'xl pci-list DOMAIN'."),
    "completion": ("completion_cmd", "command", "Print the shell completion script for bash, zsh or fish."),
    "install-units": ("install_units", "command", "Write the systemd units so they start this installation."),
    "replay": ("replay", "command", "Re-run a recorded trace (serve --record) and check the answers."),
    "trace": ("trace", "group", "Read recorded traces: registers named, a summary, or two side by side."),
    "serve": ("serve", "group", "Run the userspace PCI backend for guests (serve foreground), or ask it."),
}

#: Set while a shell asks for completions (cli/completion.py): called with each command resolved,
#: to give its values their candidates (devices, domains, files).
COMPLETING_HOOK: Callable[[str, click.Command], None] | None = None

#: errors.ExitCode.USAGE, named here: ``--help`` and completion never import errors.py.
USAGE_EXIT = 2

EXIT_CODES_HELP = (
    "\b\nExit codes:\n  0  done\n  1  operation failed\n  2  bad usage or input\n"
    "  3  refused for safety (--force overrides where offered)"
)


class Seconds(click.types.FloatParamType):
    """A duration option: a finite number of seconds, ``minimum`` or more (click's float, and
    its FloatRange too, let nan and inf through; a wait of nan seconds ends at once or never)."""

    def __init__(self, minimum: float = 0.0) -> None:
        self.minimum = minimum

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        seconds = float(super().convert(value, param, ctx))
        if not self.minimum <= seconds < float("inf"):  # False for nan too
            self.fail(f"{value!r} is not a number of seconds ({self.minimum:g} or more, finite).", param, ctx)
        return seconds


class OutputClosed(Exception):
    """Whoever read our standard output closed it (``xen-pciback list | head -1``)."""


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use."""

    def __init__(self, *args: object, lazy: dict[str, tuple[str, str, str]] | None = None,
                 **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.lazy = dict(lazy or {})
        self.package = __name__

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        help_when_bare(ctx, args)
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context) -> object:
        """Run the command, flushing its output here: a reader that went away ('| head') is met
        as :class:`OutputClosed`, which click passes through to :func:`main` (click itself
        would turn the BrokenPipeError into a plain exit 1)."""
        try:
            result = super().invoke(ctx)
        except BrokenPipeError:
            raise OutputClosed() from None
        except BaseException:  # an error or exit status in flight stays the outcome
            try:
                sys.stdout.flush()
            except BrokenPipeError:
                _silence_stdout()
            raise
        try:
            sys.stdout.flush()
        except BrokenPipeError:
            raise OutputClosed() from None
        return result

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self.lazy))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy:
            module_name, attr, _ = self.lazy[cmd_name]
            import importlib

            module = importlib.import_module(f"{self.package}.{module_name}")
            command: click.Command = getattr(module, attr)
            accept_global_flags(command)
            if COMPLETING_HOOK is not None:
                COMPLETING_HOOK(cmd_name, command)
            return command
        return super().get_command(ctx, cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, self.lazy[name][2]) for name in self.list_commands(ctx) if name in self.lazy]
        rows += [(name, cmd.get_short_help_str())
                 for name, cmd in sorted(self.commands.items()) if name not in self.lazy]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


def help_when_bare(ctx: click.Context, args: list[str]) -> None:
    """A group given nothing at all prints its normal help on stdout and exits 2 (bad usage).

    Like git and xl (help, and a failing exit), and the same under every click release: click
    before 8.2 printed the help and exited 0; from 8.2 on it raises a usage error whose message is
    the whole help, which the one-line error boundary in :func:`main` would flatten. So groups
    decide this themselves, before click's own ``no_args_is_help`` handling is reached. Options
    without a command (``xen-pciback --json``) stay click's one-line "Missing command." error.
    """
    if not args and not ctx.resilient_parsing:
        click.echo(ctx.get_help(), color=ctx.color)
        raise HelpShownForMissingCommand()


class HelpShownForMissingCommand(click.ClickException):
    """The help is out already; exit 2 without an error line (click's ``Exit`` would be turned
    into a return value by ``main(standalone_mode=False)``)."""

    exit_code = USAGE_EXIT

    def __init__(self) -> None:
        super().__init__("no command given")

    def show(self, file: object = None) -> None:
        pass


def _bare_group_prints_help(group: click.Group) -> None:
    """Give a plain click group (one not built on :class:`LazyGroup`) :func:`help_when_bare`."""
    parse_args = group.parse_args

    def parse_args_or_help(ctx: click.Context, args: list[str]) -> list[str]:
        help_when_bare(ctx, args)
        return parse_args(ctx, args)

    group.parse_args = parse_args_or_help  # type: ignore[method-assign]


def _set_flag(setting: str, value: object) -> Callable[[click.Context, click.Parameter, object], None]:
    """A callback that turns a subcommand's copy of a global flag into the global setting."""

    def callback(ctx: click.Context, _param: click.Parameter, given: object) -> None:
        app = ctx.find_root().obj
        if given and app is not None:
            app.settings = app.settings._replace(**{setting: value})

    return callback


def accept_global_flags(command: click.Command) -> None:
    """Let people put --json and --no-color after the subcommand too (``list --json``).

    Administrators type flags where they think of them; xl and virsh accept them after the
    command. Rather than every command declaring them, the group adds them once, here, to each
    command it resolves (and to the commands of plain sub-groups).
    """
    if getattr(command, "_global_flags_added", False):
        return
    command._global_flags_added = True  # type: ignore[attr-defined]
    if isinstance(command, click.Group) and not isinstance(command, LazyGroup):
        _bare_group_prints_help(command)
        for sub in command.commands.values():
            accept_global_flags(sub)
    taken = {opt for param in command.params for opt in getattr(param, "opts", ())}
    if "--json" not in taken:
        command.params.append(click.Option(
            ["--json"], is_flag=True, expose_value=False, callback=_set_flag("json", True),
            help="Machine-readable JSON output (same as the global --json)."))
    if "--no-color" not in taken:
        command.params.append(click.Option(
            ["--no-color"], is_flag=True, expose_value=False, hidden=True,
            callback=_set_flag("color", False)))


def _a_place(variable: str | None = None) -> Callable[[click.Context, click.Parameter, object], object]:
    """A callback refusing an empty path: '' must never quietly mean the real host's default.

    Click treats an empty environment variable as unset (so ``XEN_PCIBACK_SANDBOX=`` would act
    on the real host); it is refused here too, unless the option itself was given.
    """

    def callback(ctx: click.Context, param: click.Parameter, value: object) -> object:
        name = param.opts[-1] if param.opts else str(param.name)
        if value == "":
            raise click.UsageError(f"{name} is empty: give a path, or leave the option out", ctx)
        given = ctx.get_parameter_source(str(param.name)) is click.core.ParameterSource.COMMANDLINE
        if variable and not given and os.environ.get(variable) == "":
            raise click.UsageError(f"{variable} is set but empty: give a path, or unset it", ctx)
        return value

    return callback


@click.group(
    cls=LazyGroup,
    lazy=COMMANDS,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog=EXIT_CODES_HELP,
)
@click.version_option(__version__, "--version", prog_name="xen-pciback")
@click.option("--sandbox", "sandbox", metavar="DIR", envvar="XEN_PCIBACK_SANDBOX",
              type=click.Path(file_okay=False), callback=_a_place("XEN_PCIBACK_SANDBOX"),
              help="Act on the simulated host in DIR (env XEN_PCIBACK_SANDBOX).")
@click.option("--sysfs-root", metavar="PATH", envvar="XEN_PCIBACK_SYSFS_ROOT", default="/sys",
              show_default=True, callback=_a_place("XEN_PCIBACK_SYSFS_ROOT"),
              help="Where sysfs is mounted (env XEN_PCIBACK_SYSFS_ROOT).")
@click.option("--state-dir", metavar="PATH", default=None, callback=_a_place(),
              help="Journal and state [default: /var/lib/xen-pciback, or DIR/state in a sandbox].")
@click.option("--json", "json_output", is_flag=True, help="Machine-readable JSON output.")
@click.option("-v", "--verbose", count=True, help="More detail; tracebacks for internal errors.")
@click.option("--no-color", is_flag=True, envvar="NO_COLOR", help="Plain output (also NO_COLOR).")
@click.pass_context
def cli(ctx: click.Context, sandbox: str | None, sysfs_root: str, state_dir: str | None,
        json_output: bool, verbose: int, no_color: bool) -> None:
    """Administer Xen PCI passthrough on the host (dom0).

    Seize devices from their host drivers, attach them to guests through xenstore, and inspect
    the config space a guest sees. Everything runs against a simulated host with --sandbox DIR
    (create one with 'sandbox init DIR'; 'demo' shows the whole flow on one).
    """
    from xenpciback_cli.app import Application, Settings

    ctx.obj = Application(Settings(
        sandbox=sandbox,
        sysfs_root=sysfs_root,
        state_dir=state_dir,
        json=json_output,
        verbose=verbose,
        color=not no_color and "NO_COLOR" not in os.environ,
    ))


def _fail(message: str, code: int, *, as_json: bool = False) -> NoReturn:
    """The one error line on stderr; with --json, one JSON object instead, so a script reading
    JSON never has to parse text: ``{"error": "...", "exit_code": N}``."""
    if as_json:
        import json

        sys.stderr.write(json.dumps({"error": message, "exit_code": int(code)}) + "\n")
    else:
        sys.stderr.write(f"xen-pciback: error: {message}\n")
    sys.stderr.flush()
    raise SystemExit(code)


#: Exit status after the reader of our output went away (``xen-pciback list | head -1``): what
#: a shell reports for any program killed by SIGPIPE (128 + 13), as ``ls | head`` gives.
BROKEN_PIPE_EXIT = 141


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's last flush has nowhere to fail."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # a stdout without a descriptor (tests): nothing to flush
        pass


def _wants_json(args: list[str]) -> bool:
    """Whether --json was given, before or after the command (not after a ``--``)."""
    words = args[:args.index("--")] if "--" in args else args
    return "--json" in words


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: the single boundary where errors become one line + exit code.

    errors.py is imported only when something failed (``--help`` and completion never need it).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    verbose = any(a in ("-v", "--verbose") or (a.startswith("-v") and set(a[1:]) == {"v"})
                  for a in args)
    if os.environ.get("_XEN_PCIBACK_COMPLETE"):  # a shipped completion script asking
        from xenpciback_cli.cli.completion import register

        register()
    as_json = _wants_json(args)
    try:
        cli.main(args=args, prog_name="xen-pciback", standalone_mode=False)
        sys.stdout.flush()  # here, so a closed pipe is met inside the boundary, not at exit
    except click.exceptions.Exit as exc:
        raise SystemExit(exc.exit_code) from None
    except click.exceptions.Abort:
        _fail("aborted", 130, as_json=as_json)
    except HelpShownForMissingCommand as exc:
        raise SystemExit(exc.exit_code) from None
    except click.ClickException as exc:  # usage errors, bad parameters
        code = exc.exit_code if exc.exit_code else USAGE_EXIT
        message = exc.format_message().replace("\n", " ")
        if isinstance(exc, click.UsageError) and exc.ctx is not None and exc.ctx.command_path:
            message = f"{message} (see '{exc.ctx.command_path} --help')"
        _fail(message, int(code), as_json=as_json)
    except KeyboardInterrupt:
        _fail("interrupted", 130, as_json=as_json)
    except (BrokenPipeError, OutputClosed):
        # The reader went away ('| head'): not an error worth a line.
        _silence_stdout()
        raise SystemExit(BROKEN_PIPE_EXIT) from None
    except Exception as exc:
        from xenpciback_cli.errors import ExitCode, XenPcibackError

        if isinstance(exc, XenPcibackError):  # refused or failed, as the message says
            _fail(str(exc).replace("\n", " "), int(exc.exit_code), as_json=as_json)
        # a bug: one line, traceback only with -v
        if verbose:
            import traceback

            traceback.print_exc()
        _fail(f"internal error: {type(exc).__name__}: {exc} (run with -v for a traceback)",
              ExitCode.FAILED, as_json=as_json)
    raise SystemExit(0)

"""The terminal façade: the only place that writes to the user's terminal.

It owns the rich console (imported lazily, markup and highlighting off, so device names, driver
names and anything a guest wrote are printed inertly) and the JSON and tabulate renderings. Commands
hand it data; they never print directly.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from xenpciback_cli.app import Application

T = TypeVar("T")

TABLE_FORMATS = ("rich", "plain", "simple", "github", "csv")


class Terminal:
    """Renders results for a person (rich) or a script (plain text, csv, JSON)."""

    def __init__(self, *, color: bool = True, verbose: int = 0, stdout: Any = None,
                 stderr: Any = None) -> None:
        self.color = color
        self.verbose = verbose
        self.stdout = stdout if stdout is not None else sys.stdout
        self.stderr = stderr if stderr is not None else sys.stderr
        self._console: Any = None
        self.sysfs_root = "/sys"  # where sysfs is for the commands this run shows (dry runs)

    @property
    def is_tty(self) -> bool:
        return bool(getattr(self.stdout, "isatty", lambda: False)())

    @property
    def console(self) -> Any:
        if self._console is None:
            from rich.console import Console

            self._console = Console(file=self.stdout, markup=False, highlight=False, emoji=False,
                                    no_color=not self.color, soft_wrap=False)
        return self._console

    # -- plain lines -------------------------------------------------------------------------
    def line(self, text: str = "") -> None:
        self.stdout.write(text + "\n")

    def info(self, text: str) -> None:
        """A progress or status line for a person; goes to stderr so stdout stays parseable."""
        self.stderr.write(text + "\n")

    def warn(self, text: str) -> None:
        self.stderr.write(f"xen-pciback: warning: {text}\n")

    def debug(self, text: str) -> None:
        if self.verbose:
            self.stderr.write(f"xen-pciback: {text}\n")

    # -- structured output -------------------------------------------------------------------
    def json(self, data: Any) -> None:
        import json  # only --json output needs it (a table run skips the import)

        # One string, one write: json.dump with indent writes every token separately.
        self.stdout.write(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")

    def width(self) -> int | None:
        """How many columns a line may take: ``COLUMNS`` when set (as a shell exports it), else
        the terminal's width; None when writing to a file or pipe (no limit: scripts get every
        character)."""
        import os

        text = os.environ.get("COLUMNS", "")
        if text.isdigit() and int(text) > 0:
            return int(text)
        if self.is_tty:
            try:
                return os.get_terminal_size(self.stdout.fileno()).columns
            except (OSError, ValueError, AttributeError):
                return None
        return None

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[Any]], *,
              fmt: str | None = None, title: str | None = None, empty: str = "",
              names: Sequence[str] = (), optional: Sequence[str] = ()) -> None:
        """A table: rich on a terminal (or fmt='rich'), tabulate/csv for scripts.

        A None cell is shown as ``empty`` (e.g. "-", so a person sees the column has nothing),
        except in CSV, where an empty cell stays empty for the program reading it.

        Fitting the width (:meth:`width`; CSV never): the columns in ``names`` hold names and
        free text, and are the only ones ever shortened (ending in "…"); addresses, ids, drivers
        and states are never cut or folded. When the table is too wide, first the ``optional``
        columns that are empty in every row go, then the name columns shrink (to 8 characters
        at least), then name columns go, last first. A table that still does not fit keeps
        every cell whole, one line per row."""
        fmt = fmt or ("rich" if self.is_tty else "plain")
        blank = "" if fmt == "csv" else empty
        cells = [[blank if c is None else str(c) for c in row] for row in rows]
        if fmt == "csv":
            import csv

            writer = csv.writer(self.stdout, lineterminator="\n")
            writer.writerow(headers)
            writer.writerows(cells)
            return
        limit = self.width()
        headers = list(headers)
        if limit is not None:
            # Between columns: "  ", " | " (github), or rich's boxed " " + padding in color.
            gap = 3 if fmt == "github" or (fmt == "rich" and self.color) else 2
            headers, cells = fit_table(headers, cells, limit, gap=gap, names=names,
                                       optional=optional, empty=blank,
                                       header_pad=0 if fmt == "rich" else 2)
        if fmt == "rich":
            from rich import box
            from rich.table import Table

            # In color the bold header stands out; the rule under it goes with the color (and
            # without color the table stays free of box-drawing characters).
            table = Table(title=title, box=box.SIMPLE_HEAD if self.color else None, show_edge=False, pad_edge=False,
                          header_style="bold" if self.color else "")
            for index, header in enumerate(headers):
                widest = max([len(header)] + [len(row[index]) for row in cells])
                table.add_column(header, no_wrap=True, overflow="ignore", min_width=widest)
            for row in cells:
                table.add_row(*row)
            needed = _widest(headers, cells, gap=3)
            if limit is None or needed > limit:
                from rich.console import Console  # never fold a cell: lines run long instead

                Console(file=self.stdout, markup=False, highlight=False, emoji=False,
                        no_color=not self.color, soft_wrap=False, width=needed).print(table)
                return
            self.console.print(table)
            return
        if fmt == "plain" and _ascii(headers, cells):
            self.line(plain_table(headers, cells))
            return
        from tabulate import tabulate

        self.line(tabulate(cells, headers=list(headers), tablefmt=fmt, disable_numparse=True))

    def progress(self, items: Iterable[T], *, total: int, description: str,
                 threshold: int = 4) -> Iterator[T]:
        """Iterate with a progress bar when many items go by on a terminal; silently otherwise."""
        if total < threshold or not getattr(self.stderr, "isatty", lambda: False)():
            yield from items
            return
        from rich.progress import Progress
        from rich.console import Console

        with Progress(console=Console(file=self.stderr, markup=False), transient=True) as bar:
            task = bar.add_task(description, total=total)
            for item in items:
                yield item
                bar.advance(task)

    @contextlib.contextmanager
    def bar(self, description: str, *, total: int, threshold: int = 1 << 22
            ) -> Iterator[Callable[[int, int], None] | None]:
        """A progress bar on stderr, for work measured in units (bytes of a file): yields
        ``update(done, total)``, or None when stderr is not a terminal or ``total`` is below
        ``threshold`` (a short job shows nothing)."""
        if total < threshold or not getattr(self.stderr, "isatty", lambda: False)():
            yield None
            return
        from rich.console import Console
        from rich.progress import Progress

        with Progress(console=Console(file=self.stderr, markup=False), transient=True) as bar:
            task = bar.add_task(description, total=total)

            def update(done: int, whole: int) -> None:
                bar.update(task, completed=done, total=whole)
            yield update


ELLIPSIS = "\u2026"  # one column wide, so a cut name keeps the width it was given


def _ascii(headers: Sequence[str], cells: Sequence[Sequence[str]]) -> bool:
    """Whether every character takes one column (ASCII, and the ellipsis of a cut name)."""
    return (all(h.isascii() for h in headers)
            and all(c.isascii() or c.replace(ELLIPSIS, "").isascii() for row in cells for c in row))


def _widest(headers: Sequence[str], cells: Sequence[Sequence[str]], gap: int = 2,
            header_pad: int = 0) -> int:
    widths = [len(h) + header_pad for h in headers]
    for row in cells:
        for index, cell in enumerate(row):
            widths[index] = max(widths[index], len(cell))
    return sum(widths) + gap * (len(widths) - 1)


def fit_table(headers: list[str], cells: list[list[str]], limit: int, *, gap: int = 2,
              names: Sequence[str] = (), optional: Sequence[str] = (), empty: str = "",
              minimum: int = 8, header_pad: int = 0) -> tuple[list[str], list[list[str]]]:
    """The table's columns and cells cut to fit ``limit`` characters a line (see
    :meth:`Terminal.table`): only the columns in ``names`` are shortened or dropped, and the
    ``optional`` ones that hold nothing. ``header_pad``: tabulate makes a column at least its
    header and two more characters wide."""

    def without(index: int) -> None:
        del headers[index]
        for row in cells:
            del row[index]

    headers, cells = list(headers), [list(row) for row in cells]
    for header in optional:
        if _widest(headers, cells, gap, header_pad) <= limit:
            break
        if header in headers:
            index = headers.index(header)
            if all(row[index] in ("", empty) for row in cells):
                without(index)
    while _widest(headers, cells, gap, header_pad) > limit:
        shrinkable = [headers.index(h) for h in names if h in headers]
        if not shrinkable:
            break
        widths = [max([len(headers[i]) + header_pad] + [len(row[i]) for row in cells])
                  for i in range(len(headers))]
        fixed = sum(w for i, w in enumerate(widths) if i not in shrinkable)
        room = limit - fixed - gap * (len(headers) - 1)
        floors = {i: max(minimum, len(headers[i]) + header_pad) for i in shrinkable}
        if room >= sum(min(floors[i], widths[i]) for i in shrinkable):
            # Share the room: narrow columns keep their width, the rest split what is left.
            share = dict.fromkeys(shrinkable, 0)
            pending = sorted(shrinkable, key=lambda i: widths[i])
            left = room
            while pending:
                even = left // len(pending)
                index = pending[0]
                if widths[index] <= even:
                    share[index] = widths[index]
                else:
                    share[index] = max(floors[index], even)
                left -= share[index]
                pending.pop(0)
            for index, width in share.items():
                for row in cells:
                    if len(row[index]) > width:
                        row[index] = row[index][:width - 1].rstrip() + ELLIPSIS
            break
        without(shrinkable[-1])  # the last name column in ``names`` goes first
    return headers, cells


def plain_table(headers: Sequence[str], cells: Sequence[Sequence[str]]) -> str:
    """Exactly tabulate's ``plain`` format for ASCII text, without importing tabulate.

    Why: tabulate costs ~45 ms to import and ~80 ms to lay out 512 rows here, more than the
    whole ``lspci`` run that ``list`` is measured against (bench/bench_cli.py).
    """
    widths = [len(h) + 2 for h in headers]
    for row in cells:
        for index, cell in enumerate(row):
            if len(cell) > widths[index]:
                widths[index] = len(cell)
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    return "\n".join(lines)


def terminal_for(app: Application) -> Terminal:
    """The terminal matching the application's global options."""
    terminal = Terminal(color=app.settings.color, verbose=app.settings.verbose)
    # Where sysfs really is for this run, so a dry run's shell lines act on the right tree.
    sandbox = getattr(app, "sandbox_dir", None)
    terminal.sysfs_root = str(sandbox / "sys") if sandbox is not None else app.settings.sysfs_root
    return terminal

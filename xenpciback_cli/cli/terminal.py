"""The terminal façade: the only place that writes to the user's terminal.

It owns the rich console (imported lazily, markup and highlighting off, so device names, driver
names and anything a guest wrote are printed inertly) and the JSON and tabulate renderings. Commands
hand it data; they never print directly.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Iterator, Sequence
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
        # One string, one write: json.dump with indent writes every token separately.
        self.stdout.write(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[Any]], *,
              fmt: str | None = None, title: str | None = None, empty: str = "") -> None:
        """A table: rich on a terminal (or fmt='rich'), tabulate/csv for scripts.

        A None cell is shown as ``empty`` (e.g. "-", so a person sees the column has nothing),
        except in CSV, where an empty cell stays empty for the program reading it."""
        fmt = fmt or ("rich" if self.is_tty else "plain")
        blank = "" if fmt == "csv" else empty
        cells = [[blank if c is None else str(c) for c in row] for row in rows]
        if fmt == "csv":
            import csv

            writer = csv.writer(self.stdout, lineterminator="\n")
            writer.writerow(headers)
            writer.writerows(cells)
            return
        if fmt == "rich":
            from rich import box
            from rich.table import Table

            # In color the bold header stands out; the rule under it goes with the color (and
            # without color the table stays free of box-drawing characters).
            table = Table(title=title, box=box.SIMPLE_HEAD if self.color else None, show_edge=False,
                          header_style="bold" if self.color else "")
            for header in headers:
                table.add_column(header, overflow="fold")
            for row in cells:
                table.add_row(*row)
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


def _ascii(headers: Sequence[str], cells: Sequence[Sequence[str]]) -> bool:
    return all(h.isascii() for h in headers) and all(c.isascii() for row in cells for c in row)


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
    return Terminal(color=app.settings.color, verbose=app.settings.verbose)

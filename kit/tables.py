"""Tables as every renderer writes them: Rich tables whose paths and ids stay whole, on a terminal and off it; plain
text of a Rich renderable; markdown cells; csv of raw values.

A path or a run id folded across two lines cannot be copied and pasted, and a header cut to "micro/GAS/glob…"
says nothing; both happened where a column was narrower than one unbroken word. Here the columns that hold
names keep them on one line while the table can still fit the width by wrapping its other columns (prose), and
a table printed to a pipe or a file is as wide as it needs: a log is read, not a screen of 80 columns.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from typing import Any

from rich.console import Console, ConsoleOptions, RenderResult
from rich.measure import Measurement
from rich.table import Table


class Whole:
    """`table` with the columns `columns` (headers or indexes, most important first) kept unbroken: no_wrap, so
    Rich wraps the other columns instead. Decided at render time, at the width the table gets: where they cannot
    all fit, the last ones fold first; a column whose names are longer than the width allows folds as before,
    rather than crush the other columns to nothing."""

    def __init__(self, table: Table, *columns: str | int) -> None:
        self.table = table
        headers = [str(c.header) for c in table.columns]
        self.indexes = [c if isinstance(c, int) else headers.index(c) for c in columns]

    def _set(self, n: int) -> None:
        """The first n of the columns whole, the others folding."""
        for k, i in enumerate(self.indexes):
            col = self.table.columns[i]
            col.no_wrap = k < n
            col.overflow = "ignore" if k < n else "fold"

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        for n in range(len(self.indexes), -1, -1):
            self._set(n)
            # measured unbounded: a table's measurement is clamped to the width it is given
            if n == 0 or Measurement.get(console, options.update_width(10**5), self.table).minimum <= options.max_width:
                break
        yield self.table

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        self._set(len(self.indexes))
        return Measurement.get(console, options, self.table)


def whole(table: Table, *columns: str | int) -> Whole:
    """The table with its path and id columns kept whole (Whole)."""
    return Whole(table, *columns)


def print_table(console: Console, renderable: Table | Whole) -> None:
    """On a terminal, at its width; to a pipe or a file, as wide as the table wants (never less than the console's
    own width, which COLUMNS sets), so that no header is cut and no name folded in a log."""
    if console.is_terminal:
        console.print(renderable)
        return
    wide = Measurement.get(console, console.options.update_width(10**4), renderable).maximum
    # console.print(width=) cannot go past the console's own width: a console of that width on the same file
    Console(file=console.file, width=max(console.width, wide), color_system=None).print(renderable)


def plain(renderable: Any, width: int) -> str:
    """A Rich renderable as plain text (no colour codes) at a fixed width: for logs, pipes and tests."""
    console = Console(file=io.StringIO(), width=width, color_system=None, force_terminal=False, record=True)
    console.print(renderable)
    return console.export_text()


def md(value: Any) -> str:
    """A markdown table cell: its pipes escaped, on one line."""
    return str(value).replace("|", "\\|").replace("\n", " ")


def csv_value(v: Any) -> Any:
    """A raw csv cell: numbers as numbers, booleans as true/false, None as an empty cell (n/a)."""
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    return v


def csv_text(columns: list[str], rows: Iterable[dict[str, Any]]) -> str:
    """Rows as csv with a header of `columns` (other keys are left out)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for row in rows:
        w.writerow({k: csv_value(row.get(k)) for k in columns})
    return buf.getvalue()

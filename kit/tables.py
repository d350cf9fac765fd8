"""Rich tables whose paths and ids stay whole, on a terminal and off it.

A path or a run id folded across two lines cannot be copied and pasted, and a header cut to "micro/GAS/glob…"
says nothing; both happened where a column was narrower than one unbroken word. Here the columns that hold
names keep them on one line while the table can still fit the width by wrapping its other columns (prose), and
a table printed to a pipe or a file is as wide as it needs: a log is read, not a screen of 80 columns.
"""

from __future__ import annotations

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

"""`kit report`: derive every number from the run's raw facts and show it beside the reference."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console


def show(run: Path, console: Console, fmt: str = "table") -> dict:
    from .. import report

    summary = report.write_summary(run)
    if fmt == "table":
        console.print(report.table_renderable(summary))
    else:
        console.print(report.render(summary, fmt), markup=False, highlight=False, soft_wrap=True)
    return summary

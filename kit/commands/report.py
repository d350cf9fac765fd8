"""`kit report`: derive every number from the run's raw facts and show it beside the reference."""

from __future__ import annotations

import sys
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from kit.results.entries import check_one_config
from kit.results.render_report import multi_renderable, multi_summary, render, render_multi, table_renderable
from kit.results.summary import write_summary
from kit.run.dir import RunDir


def _warn_unwritten(summary: dict, fmt: str) -> None:
    """The table shows the warning itself; json/csv/markdown go to a pipe, so stderr gets the line too."""
    if summary.get("not_written") and fmt != "table":
        Console(stderr=True).print(f"[yellow]warning:[/] {escape(summary['not_written'])}", soft_wrap=True)


def show(run: Path, console: Console, fmt: str = "table", peak_flops: float | None = None) -> dict:
    """One run: check its inputs (RunDirError names the damaged file), recompute, write, print."""
    RunDir(run).check()
    summary = write_summary(run, peak_flops=peak_flops)
    if fmt == "table":
        console.print(table_renderable(summary))
    else:
        console.print(render(summary, fmt), markup=False, highlight=False, soft_wrap=True)
    _warn_unwritten(summary, fmt)
    return summary


def show_many(runs: list[Path], console: Console, fmt: str = "table", peak_flops: float | None = None) -> dict:
    """Several runs of one config: each one's summary recomputed (and written), then the headline and spread."""
    if len(runs) == 1:
        return show(runs[0], console, fmt, peak_flops)
    for run in runs:
        RunDir(run).check()
    check_one_config(runs)  # before anything is written
    summaries = [write_summary(run, peak_flops=peak_flops) for run in runs]
    ms = multi_summary(runs, summaries)
    if fmt == "table":
        console.print(multi_renderable(ms))
    else:
        console.print(render_multi(ms, fmt), markup=False, highlight=False, soft_wrap=True)
    for s in summaries:
        _warn_unwritten(s, fmt)
    return ms


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use `kit report`")

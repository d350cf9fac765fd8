"""The progress display of `kit data verify`, `kit data fix` and `kit check-host --deep`, on stderr.

Their phases (reading a record file of 1 GB, finding the changed images, decoding 700,000 images, counting folders,
rewriting images, writing a filtered record file) each take from milliseconds to many minutes. On a terminal each
phase is a Rich bar with its amount, elapsed time and ETA, removed when the phase ends. Anywhere else (a log, CI)
each phase gets plain, complete lines: one when it ends, and while it runs one every 10% (after its first 2 s) and
at least one every 10 s, so that nothing is silent for longer than that.
"""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

PLAIN_EVERY_S = 10.0  # off a terminal, a running phase prints at least this often
PLAIN_QUIET_S = 2.0  # ... and its 10% steps only once it has run this long (a quick phase prints its end alone)


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"  # pragma: no cover


def amount(done: int, total: int, unit: str) -> str:
    if unit == "bytes":
        return f"{human_bytes(done)} of {human_bytes(total)}"
    return f"{done:,} of {total:,}" + (f" {unit}" if unit else "")


def rate(per_s: float, unit: str) -> str:
    return f"{human_bytes(per_s)}/s" if unit == "bytes" else f"{per_s:,.0f} {unit or 'items'}/s"


class PhaseProgress:
    """kit.data.audit.Progress for a console (stderr): a bar per phase on a terminal, plain lines elsewhere;
    nothing with `quiet` off a terminal (--json into a file or a pipe)."""

    def __init__(self, console: Console | None = None, quiet: bool = False) -> None:
        self.console = console or Console(stderr=True)
        self.quiet = quiet and not self.console.is_terminal
        self.what: str | None = None
        self.t0 = 0.0
        self.last_line = 0.0
        self.last_step = -1
        self.bar: Progress | None = None
        self.task: Any = None

    def __call__(self, what: str, done: int, total: int, unit: str = "", detail: str = "") -> None:
        if self.quiet:
            return
        now = time.monotonic()
        if what != self.what:
            self.close()
            self.what, self.t0, self.last_line, self.last_step = what, now, now, -1
        ended = total <= 0 or done >= total
        if self.console.is_terminal:
            self._bar(what, done, total, unit, detail, ended)
        else:
            self._plain(what, done, total, unit, detail, ended, now)
        if ended:
            self.what = None

    def _bar(self, what: str, done: int, total: int, unit: str, detail: str, ended: bool) -> None:
        if ended:
            self.close()
            return
        if self.bar is None:
            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[amount]}"),
                                TextColumn("{task.fields[detail]}"), TimeElapsedColumn(), TextColumn("ETA"),
                                TimeRemainingColumn(), console=self.console, transient=True)  # fmt: skip
            self.bar.start()
            self.task = self.bar.add_task(what, total=total, amount="", detail="")
        self.bar.update(self.task, completed=done, total=total, amount=amount(done, total, unit), detail=detail)

    def _plain(self, what: str, done: int, total: int, unit: str, detail: str, ended: bool, now: float) -> None:
        if total <= 0:
            return  # an empty phase: nothing to say
        elapsed = now - self.t0
        step = done * 10 // total
        due = now - self.last_line >= PLAIN_EVERY_S or (step > self.last_step and elapsed >= PLAIN_QUIET_S)
        if not (ended or due):
            return
        extra = f", {detail}" if detail else ""
        if ended:
            line = f"{what}: {amount(done, total, unit)} (100%){extra}, {elapsed:,.1f} s"
        else:
            per_s = done / max(1e-9, elapsed)
            eta = f", ETA {(total - done) / per_s:,.0f} s" if done else ""
            line = f"{what}: {amount(done, total, unit)} ({done / total:.0%}){extra}, {rate(per_s, unit)}{eta}"
        self.console.print(line, soft_wrap=True, highlight=False, markup=False)
        self.last_line, self.last_step = now, step

    def close(self) -> None:
        """The terminal's bar, if one runs, stopped and cleared (before workers are forked, and at the end)."""
        if self.bar is not None:
            self.bar.stop()
            self.bar, self.task = None, None

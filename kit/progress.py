"""The live display of a stage, fed by the events that rank 0 appends to events.log."""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from .events import parse_mllog_line


class EventTail:
    """Reads the events appended to a file since the last call; a line still being written waits."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.partial = b""

    def read(self) -> list[dict]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                chunk = f.read()
        except FileNotFoundError:
            return []
        self.offset += len(chunk)
        data = self.partial + chunk
        lines = data.split(b"\n")
        self.partial = lines.pop()
        events = (parse_mllog_line(line.decode("utf-8", "replace")) for line in lines)
        return [e for e in events if e is not None]


class StepsColumn(ProgressColumn):
    """`step/total`, with `?` until the stage has said how many steps it plans."""

    def render(self, task: Task) -> Text:
        total = "?" if task.total is None else f"{task.total:.0f}"
        return Text(f"{task.completed:>5.0f}/{total:<5}")


class StageProgress:
    """One progress line per stage: step of total, loss, throughput per GPU, elapsed and ETA."""

    def __init__(self, console: Console) -> None:
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("[bold]{task.description:<9}"),
            BarColumn(bar_width=30),
            StepsColumn(),
            TextColumn("loss [cyan]{task.fields[loss]}"),
            TextColumn("[green]{task.fields[tps]}[/] tok/s/gpu"),
            TextColumn("{task.fields[note]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
            transient=False,
            refresh_per_second=4,
        )
        self.task = None
        self.world = 1
        self.recent: list[tuple[float, float]] = []

    def __enter__(self) -> StageProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)

    def start(self, stage: str, note: str = "starting") -> None:
        self.task = self.progress.add_task(stage, total=None, loss="-", tps="-", note=note)

    def note(self, text: str) -> None:
        self.progress.update(self.task, note=text)

    def feed(self, events: list[dict]) -> None:
        for ev in events:
            key, value = ev.get("key"), ev.get("value")
            if key == "kit_facts":
                self.world = value.get("world_size", 1)
                done = value.get("resumed_from_step", 0)
                self.progress.update(self.task, total=value.get("steps_planned"), completed=done, note="loading")
            elif key == "init_stop":
                self.progress.update(self.task, note="")
            elif key == "kit_step":
                self.recent = (self.recent + [(value["real_tokens"], value["step_time_s"])])[-20:]
                toks, secs = sum(r[0] for r in self.recent), sum(r[1] for r in self.recent)
                tps = toks / secs / self.world if secs > 0 else 0.0
                self.progress.update(
                    self.task, completed=value["step"], loss=f"{value['loss']:.4f}", tps=f"{tps:,.0f}", note=""
                )
            elif key == "kit_checkpoint":
                self.progress.update(self.task, note=f"checkpoint at step {value['step']}")
            elif key == "run_stop":
                self.progress.update(self.task, note="saving")
            elif key == "kit_save":
                self.progress.update(self.task, note=f"saved in {value['seconds']:.1f}s")

    def finish(self, state: str) -> None:
        colour = {"finished": "green", "failed": "red", "interrupted": "yellow"}.get(state, "white")
        task = self.progress.tasks[self.task]
        if task.total is None:
            self.progress.update(self.task, total=max(1, task.completed))
        self.progress.update(self.task, note=f"[{colour}]{state}")
        self.progress.stop_task(self.task)


def wait_with_progress(proc, tail: EventTail, display: StageProgress, poll: float = 0.5, watch=None) -> int:
    """Feed the display (and the hang watch, which raises StageHung) until the process ends; returns its exit code."""
    while True:
        events = tail.read()
        display.feed(events)
        if watch is not None:
            watch.feed(events)
            watch.check()
        code = proc.poll()
        if code is not None:
            display.feed(tail.read())
            return code
        time.sleep(poll)

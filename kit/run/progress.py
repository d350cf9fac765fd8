"""The live display of a stage, fed by the events that rank 0 appends to events.log.

On a terminal it is one Rich progress line per stage, redrawn in place. Written to a file or a CI log (not a
terminal) a redrawn line is useless and Rich would cut it at 80 columns, so the same facts go out as plain,
complete lines: one per step, or one every `interval` seconds when steps come faster, plus the stage's notes
and its final line. A stage that failed or was interrupted ends on where it stopped, never on an ETA.

Training stages show step of total, loss and real tokens per second per rank; the eval stage shows MMMU
questions answered of total and questions per second (its events.log holds rank 0's batches only, so with
several ranks the count is rank 0's share scaled to the whole, marked `~`).
"""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console
from rich.errors import MarkupError
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

from kit.run.events import parse_mllog_line

PLAIN_INTERVAL_S = 5.0  # at most one step line per this many seconds of the stage's own clock, off a terminal
STOPPED = ("failed", "interrupted")


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


def clock(seconds: float | None) -> str:
    """0:01:05 (h:mm:ss), or -:--:-- when unknown."""
    if seconds is None or seconds < 0:
        return "-:--:--"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class StageState:
    """What the events of one stage said so far: the counts, the rates and the ETA, in words for either display."""

    def __init__(self, stage: str, started: float) -> None:
        self.stage = stage
        self.eval = stage == "eval"
        self.started = started  # the host's monotonic clock at start()
        self.world = 1
        self.total: int | None = None  # steps planned, or questions in all
        self.done = 0  # steps done, or questions answered (all ranks)
        self.loss: float | None = None
        self.recent: list[tuple[float, float]] = []  # (tokens or questions, seconds) of the last 20 steps/batches
        self.rank0_done = 0  # eval: rank 0's questions answered
        self.note = "starting"
        self.state: str | None = None  # finished | failed | interrupted once it ended

    @property
    def unit(self) -> str:
        return "questions" if self.eval else "steps"

    @property
    def estimated(self) -> bool:
        """Eval with several ranks: the count is rank 0's share scaled, until kit_eval_done gives the exact one."""
        return self.eval and self.world > 1 and self.done != self.total

    def rate(self) -> float | None:
        """Real tokens per second per rank (training) or questions per second, all ranks (eval)."""
        n, secs = sum(r[0] for r in self.recent), sum(r[1] for r in self.recent)
        if secs <= 0:
            return None
        return n / secs / self.world if not self.eval else n / secs * self.world

    def eta(self) -> float | None:
        """Seconds left at the recent pace; None while unknown or once the stage ended."""
        if self.state is not None or self.total is None or not self.recent:
            return None
        left = max(0, self.total - self.done)
        secs = sum(r[1] for r in self.recent)
        if self.eval:
            per_question = secs / max(1e-9, sum(r[0] for r in self.recent) * self.world)
            return left * per_question
        return left * secs / len(self.recent)

    def feed(self, ev: dict) -> bool:
        """Take one event; True when it moved the count (a step or a batch)."""
        key, value = ev.get("key"), ev.get("value")
        if not isinstance(value, dict):
            value = {}
        if key == "kit_facts":
            self.world = int(value.get("world_size") or 1)
            if self.eval:
                self.total = value.get("questions")
            else:
                self.total = value.get("steps_planned")
                self.done = int(value.get("resumed_from_step") or 0)
            self.note = "loading"
        elif key == "init_stop":
            self.note = ""
        elif key == "kit_step" and "step" in value:
            self.recent = (self.recent + [(float(value.get("real_tokens", 0)), float(value.get("step_time_s", 0)))])[-20:]
            self.done = int(value["step"])
            if isinstance(value.get("loss"), (int, float)):
                self.loss = float(value["loss"])
            self.note = ""
            return True
        elif key == "kit_eval_batch":
            q = int(value.get("questions", 0))
            self.recent = (self.recent + [(float(q), float(value.get("seconds", 0)))])[-20:]
            self.rank0_done += q
            if self.total:
                share = -(-self.total // self.world)  # rank 0 takes questions 0, world, 2 x world, ...
                self.done = min(self.total, round(self.rank0_done / share * self.total))
            else:
                self.done = self.rank0_done * self.world
            self.note = ""
            return True
        elif key == "kit_eval_done":  # the exact count (with several ranks, the scaled one may differ by one)
            before = self.done
            self.done = int(value.get("questions", self.done))
            self.total = self.total or self.done
            return self.done != before
        elif key == "kit_checkpoint":
            self.note = f"checkpoint at step {value.get('step')}"
        elif key == "run_stop":
            self.note = "merging the responses" if self.eval else "saving"
        elif key == "kit_save":
            self.note = f"saved in {float(value.get('seconds', 0)):.1f}s"
        return False

    def count(self) -> str:
        total = "?" if self.total is None else f"{self.total:,}"
        return f"{'~' if self.estimated else ''}{self.done:,}/{total} {self.unit}"

    def metrics(self) -> str:
        """loss and tok/s/gpu (training), questions/s (eval); empty until the first step or batch."""
        rate = self.rate()
        if self.eval:
            return "" if rate is None else f"{rate:,.2f} questions/s"
        parts = []
        if self.loss is not None:
            parts.append(f"loss {self.loss:.4f}")
        if rate is not None:
            parts.append(f"{rate:,.0f} tok/s/gpu")
        return "  ".join(parts)

    def line(self, now: float) -> str:
        """One complete plain line: the stage, its count, its figures, elapsed, and the ETA while it runs."""
        elapsed = clock(now - self.started)
        figures = self.metrics()
        if self.state in STOPPED:
            total = "?" if self.total is None else f"{self.total:,}"
            at = (f"after {'~' if self.estimated else ''}{self.done:,}/{total} questions" if self.eval
                  else f"at step {self.done:,}/{total}")  # fmt: skip
            return f"{self.stage}: {self.state} {at}" + (f"  ({figures})" if figures else "") + f"  elapsed {elapsed}"
        if self.state is not None:
            return f"{self.stage}: {self.state}  {self.count()}" + (f"  {figures}" if figures else "") + f"  elapsed {elapsed}"
        parts = [f"{self.stage}: {self.count()}"]
        if m := self.metrics():
            parts.append(m)
        parts.append(f"elapsed {elapsed}")
        if self.total is None or self.done < self.total:  # all done: saving or merging follows, not a countdown
            parts.append(f"ETA {clock(self.eta())}")
        return "  ".join(parts)


class CountColumn(ProgressColumn):
    """`done/total unit`, with `?` until the stage has said how many it plans."""

    def render(self, task: Task) -> Text:
        st: StageState | None = task.fields.get("st")
        return Text(st.count() if st is not None else "")


class EtaColumn(ProgressColumn):
    """`ETA h:mm:ss` while the stage runs; nothing once it ended (a failed stage has no time remaining)."""

    def render(self, task: Task) -> Text:
        st: StageState | None = task.fields.get("st")
        if st is None or st.state is not None:
            return Text("")
        return Text(f"ETA {clock(st.eta())}")


def _markup(text: str) -> Text:
    """A note may carry markup ("[red]..."); a container's own output line may carry brackets that are not."""
    try:
        return Text.from_markup(text)
    except MarkupError:
        return Text(text)


class StageProgress:
    """One progress line per stage on a terminal; plain, complete lines anywhere else (a file, a CI log)."""

    def __init__(self, console: Console, plain: bool | None = None, interval: float = PLAIN_INTERVAL_S) -> None:
        self.console = console
        self.plain = (not console.is_terminal) if plain is None else plain
        self.interval = interval
        self.progress: Progress | None = None
        if not self.plain:
            self.progress = Progress(
                SpinnerColumn(),
                TextColumn("[bold]{task.description:<9}"),
                BarColumn(bar_width=30),
                CountColumn(),
                TextColumn("[cyan]{task.fields[metrics]}"),
                TextColumn("{task.fields[note]}"),
                TimeElapsedColumn(),
                EtaColumn(),
                console=console,
                transient=False,
                refresh_per_second=4,
            )
        self.task = None
        self.st: StageState | None = None
        self.last_line_at: float | None = None  # the stage's clock (event time) of the last step line printed
        self.last_note = ""

    @property
    def world(self) -> int:
        return self.st.world if self.st else 1

    def __enter__(self) -> StageProgress:
        if self.progress is not None:
            self.progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.__exit__(*exc)

    def _print(self, text: str | Text) -> None:
        self.console.print(text if isinstance(text, Text) else Text(text), soft_wrap=True, highlight=False)

    def _refresh(self) -> None:
        if self.progress is None or self.task is None or self.st is None:
            return
        st = self.st
        total = st.total if st.total is not None else None
        self.progress.update(self.task, total=total, completed=st.done, metrics=st.metrics(), note=st.note)

    def start(self, stage: str, note: str = "starting") -> None:
        self.st = StageState(stage, time.monotonic())
        self.st.note = note
        self.last_line_at, self.last_note = None, ""
        if self.progress is not None:
            self.task = self.progress.add_task(stage, total=None, metrics="", note=note, st=self.st)
        else:
            self._print(f"{stage}: {note}")
            self.last_note = note

    def note(self, text: str) -> None:
        if self.st is None:
            return
        self.st.note = text
        if self.progress is not None:
            self.progress.update(self.task, note=text)
            return
        shown = _markup(text).plain
        if shown and shown != self.last_note:
            self._print(f"{self.st.stage}: {shown}")
        self.last_note = shown

    def feed(self, events: list[dict]) -> None:
        if self.st is None:
            return
        for ev in events:
            before = self.st.note
            moved = self.st.feed(ev)
            if self.progress is not None:
                continue
            if moved:
                at = ev.get("time_ms")
                at = at / 1000.0 if isinstance(at, (int, float)) else time.monotonic()
                last = self.st.total is not None and self.st.done >= self.st.total
                if self.last_line_at is None or at - self.last_line_at >= self.interval or last:
                    self._print(self.st.line(time.monotonic()))
                    self.last_line_at = at
            elif self.st.note and self.st.note != before and self.st.note != self.last_note:
                self._print(f"{self.st.stage}: {self.st.note}")
                self.last_note = self.st.note
        self._refresh()

    def finish(self, state: str) -> None:
        if self.st is None:
            return
        self.st.state = state
        if state in STOPPED:
            self.st.note = ""
        if self.progress is not None:
            colour = {"finished": "green", "failed": "red", "interrupted": "yellow"}.get(state, "white")
            task = self.progress.tasks[self.task]
            total = self.st.total if self.st.total is not None else max(1, int(task.completed))
            where = f" at {self.st.done:,}/{total:,} {self.st.unit}" if state in STOPPED else ""
            self.progress.update(self.task, total=total, completed=self.st.done, metrics=self.st.metrics(),
                                 note=f"[{colour}]{state}{where}")  # fmt: skip
            self.progress.stop_task(self.task)
            return
        self._print(self.st.line(time.monotonic()))

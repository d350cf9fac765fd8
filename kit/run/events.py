"""Readers for the raw facts of a run directory: `<stage>/events.log` and `status.jsonl`.

The case writes these files while it runs and never rewrites them (docs/run-directory.md), so a reader
must accept a file that is still growing: lines that are not `:::MLLOG` events are skipped, and so is a
last line that is only partly written. Only the standard library is used (host side).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

MLLOG_PREFIX = ":::MLLOG"
STAGE_TERMINAL = ("finished", "failed", "interrupted")


def parse_mllog_line(line: str) -> dict[str, Any] | None:
    """One `:::MLLOG {json}` event, or None for any other line (or one still being written).

    The marker may follow a prefix (a logger's time stamp), so it is searched for, not required at the
    start. A truncated JSON object never decodes, which is how a partial last line is rejected.
    """
    pos = line.find(MLLOG_PREFIX)
    if pos < 0:
        return None
    try:
        event = json.loads(line[pos + len(MLLOG_PREFIX):])
    except ValueError:
        return None
    if not isinstance(event, dict) or "key" not in event:
        return None
    return event


@dataclass
class EventsFile:
    """The events of one events.log and where it is damaged.

    `torn_lines`: 1-based numbers of complete lines (ending in a newline) that carry the `:::MLLOG` marker but
    do not decode: damage (a crash mid-write, a bad copy), never a line still being written. `partial_tail`: the
    last line has the marker, no newline and does not decode: normal while the stage runs, damage once it ended.
    """

    events: list[dict[str, Any]] = field(default_factory=list)
    torn_lines: list[int] = field(default_factory=list)
    partial_tail: int | None = None  # line number of a half-written last line


def read_events_checked(path: str | Path) -> EventsFile:
    """All events of one events.log in file order, with its torn lines; a missing file is empty."""
    out = EventsFile()
    p = Path(path)
    if not p.is_file():
        return out
    with p.open("r", encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, 1):
            event = parse_mllog_line(line)
            if event is not None:
                out.events.append(event)
            elif MLLOG_PREFIX in line:
                if line.endswith("\n"):
                    out.torn_lines.append(number)
                else:
                    out.partial_tail = number
    return out


def read_events(path: str | Path) -> list[dict[str, Any]]:
    """All events of one events.log in file order; a missing file is an empty list (stage not started)."""
    return read_events_checked(path).events


@dataclass
class Attempt:
    """One process start of a stage (a resume appends a new attempt to the same events.log)."""

    init_start_ms: float | None = None
    init_stop_ms: float | None = None
    run_start_ms: float | None = None
    first_step: int | None = None  # run_start's value.step
    run_stop_ms: float | None = None
    status: str | None = None  # run_stop metadata.status: "success" or "aborted"


@dataclass
class StageEvents:
    """What one stage's events.log says, reduced to what the metrics need.

    Times are epoch milliseconds. `init_start_ms`, `init_stop_ms` and `run_start_ms` are those of the
    first attempt (start-up is measured once); `run_stop_ms` is that of the last attempt.
    """

    stage: str
    facts: dict[str, Any] = field(default_factory=dict)
    steps: list[dict[str, Any]] = field(default_factory=list)
    init_start_ms: float | None = None
    init_stop_ms: float | None = None
    run_start_ms: float | None = None
    run_stop_ms: float | None = None
    run_stop_status: str | None = None
    checkpoints: list[dict[str, Any]] = field(default_factory=list)
    save: dict[str, Any] | None = None
    attempts: int = 0
    attempt_list: list[Attempt] = field(default_factory=list)
    first_ms: float | None = None  # first and last event times in the file
    last_ms: float | None = None
    # Steps that were logged more than once (re-logged by a resumed attempt): the last occurrence won.
    replaced_steps: int = 0
    # Damage found by read_events_checked (line numbers of events.log): see EventsFile.
    torn_lines: list[int] = field(default_factory=list)
    partial_tail: int | None = None
    # Which attempt (index into attempt_list) logged each step's kept line: stamps compare within one attempt only.
    step_attempt: dict[int, int] = field(default_factory=dict)
    # kit_eval_batch lines of rank 0 (value with its time_ms), in file order: the eval stage's steps.
    eval_batches: list[dict[str, Any]] = field(default_factory=list)
    # Values no honest step logs (a step time that is not a positive finite number, a loss that is not finite):
    # (step, key, value as logged). The figures leave them out and every report names them as damaged input.
    bad_values: list[tuple[int, str, Any]] = field(default_factory=list)

    @property
    def resume_first_steps(self) -> list[int]:
        """First step of every attempt after the first: warm-up again after a restart."""
        return [a.first_step for a in self.attempt_list[1:] if a.first_step is not None]


# kit_step values that must be positive finite numbers (step_time_s) or finite ones (loss) when present.
CHECKED_STEP_VALUES = ("step_time_s", "loss")


def bad_value(key: str, value: Any) -> str | None:
    """Why a logged step value is not one an honest step logs, or None (None for a value that is absent)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "not a number"
    if not math.isfinite(value):
        return "not finite"
    if key == "step_time_s" and value <= 0:
        return "not positive"
    return None


def _value(event: dict[str, Any]) -> dict[str, Any]:
    v = event.get("value")
    return v if isinstance(v, dict) else {}


def stage_events_from(stage: str, events: list[dict[str, Any]]) -> StageEvents:
    """Fold a stream of events into a StageEvents (pure: tests feed it lists)."""
    out = StageEvents(stage=stage)
    by_step: dict[int, dict[str, Any]] = {}
    current: Attempt | None = None

    def attempt() -> Attempt:
        # An event before any init_start (a file cut at its head) still belongs to some attempt.
        nonlocal current
        if current is None:
            current = Attempt()
            out.attempt_list.append(current)
        return current

    for e in events:
        key, t = e.get("key"), e.get("time_ms")
        if isinstance(t, (int, float)):
            out.first_ms = t if out.first_ms is None else min(out.first_ms, t)
            out.last_ms = t if out.last_ms is None else max(out.last_ms, t)
        if key == "init_start":
            current = Attempt(init_start_ms=t)
            out.attempt_list.append(current)
        elif key == "kit_facts":
            out.facts = dict(_value(e))  # a resumed attempt re-logs them; the last one describes the run
        elif key == "init_stop":
            attempt().init_stop_ms = t
        elif key == "run_start":
            a = attempt()
            a.run_start_ms = t
            step = _value(e).get("step")
            a.first_step = int(step) if isinstance(step, (int, float)) else None
        elif key == "kit_step":
            v = dict(_value(e))
            step = v.get("step")
            if not isinstance(step, (int, float)) or isinstance(step, bool) or not math.isfinite(step):
                continue
            v.setdefault("time_ms", t)
            if int(step) in by_step:
                out.replaced_steps += 1  # a resumed attempt re-logged it: this later one wins
            by_step[int(step)] = v
            attempt()
            out.step_attempt[int(step)] = len(out.attempt_list) - 1
        elif key == "kit_eval_batch":
            out.eval_batches.append({**_value(e), "time_ms": t})
        elif key == "kit_checkpoint":
            out.checkpoints.append({**_value(e), "time_ms": t})
        elif key == "run_stop":
            a = attempt()
            a.run_stop_ms = t
            meta = e.get("metadata") if isinstance(e.get("metadata"), dict) else {}
            a.status = meta.get("status")
        elif key == "kit_save":
            out.save = {**_value(e), "time_ms": t}

    out.steps = [by_step[k] for k in sorted(by_step)]
    for s in out.steps:
        for key, why in ((k, bad_value(k, s.get(k))) for k in CHECKED_STEP_VALUES):
            if why:
                out.bad_values.append((int(s["step"]), key, s.get(key)))
    out.attempts = len(out.attempt_list)
    if out.attempt_list:
        first, last = out.attempt_list[0], out.attempt_list[-1]
        out.init_start_ms, out.init_stop_ms, out.run_start_ms = (
            first.init_start_ms, first.init_stop_ms, first.run_start_ms
        )
        out.run_stop_ms, out.run_stop_status = last.run_stop_ms, last.status
    return out


def load_stage(stage_dir: str | Path) -> StageEvents:
    """Read `<stage_dir>/events.log`; the stage name is the directory's name."""
    d = Path(stage_dir)
    checked = read_events_checked(d / "events.log")
    out = stage_events_from(d.name, checked.events)
    out.torn_lines, out.partial_tail = checked.torn_lines, checked.partial_tail
    return out


# ---- status.jsonl ----


@dataclass
class StageStatus:
    """A stage's lines in status.jsonl; times are epoch seconds."""

    state: str  # the last line's state: created, launched, finished, failed, interrupted
    detail: Any = None
    created_t: float | None = None
    launched_t: float | None = None  # the first launch (start of the whole stage's wall time)
    last_launched_t: float | None = None
    launches: int = 0
    end_t: float | None = None  # time of the last finished/failed/interrupted line
    last_t: float | None = None


@dataclass
class RunStatus:
    """status.jsonl reduced: per-stage states and the run's own state (lines with stage null)."""

    stages: dict[str, StageStatus] = field(default_factory=dict)
    run_state: str | None = None
    run_detail: Any = None
    run_end_t: float | None = None
    first_t: float | None = None
    last_t: float | None = None
    lines: int = 0  # non-blank lines in the file
    valid: int = 0  # lines that are status objects
    torn_lines: list[int] = field(default_factory=list)  # 1-based numbers of lines that are not a status object

    @property
    def unreadable(self) -> bool:
        """The file has content but not one status line: no state can be read from it at all."""
        return self.lines > 0 and self.valid == 0


def _epoch_seconds(line: dict[str, Any]) -> float | None:
    t = line.get("t")
    if isinstance(t, (int, float)) and not isinstance(t, bool):
        return float(t)
    iso = line.get("time")
    if isinstance(iso, str):
        try:
            return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return None
    return None


def read_status(run_dir: str | Path) -> RunStatus:
    """Parse `<run>/status.jsonl` (missing file: empty status); unreadable lines are skipped and counted.

    A last line without its newline is one still being written and is not counted as damage.
    """
    out = RunStatus()
    p = Path(run_dir) / "status.jsonl"
    if not p.is_file():
        return out
    with p.open("r", encoding="utf-8", errors="replace") as f:
        for number, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            out.lines += 1
            try:
                line = json.loads(raw)
            except ValueError:
                line = None  # a line still being written, or garbage
            if not isinstance(line, dict) or not isinstance(line.get("state"), str):
                if raw.endswith("\n"):
                    out.torn_lines.append(number)
                continue
            out.valid += 1
            t = _epoch_seconds(line)
            if t is not None:
                out.first_t = t if out.first_t is None else min(out.first_t, t)
                out.last_t = t if out.last_t is None else max(out.last_t, t)
            state, stage = line["state"], line.get("stage")
            if stage is None:
                out.run_state, out.run_detail = state, line.get("detail")
                if state in STAGE_TERMINAL:
                    out.run_end_t = t
                continue
            s = out.stages.setdefault(str(stage), StageStatus(state=state))
            s.state, s.detail, s.last_t = state, line.get("detail"), t
            if state == "created" and s.created_t is None:
                s.created_t = t
            elif state == "launched":
                s.launches += 1
                s.launched_t = t if s.launched_t is None else s.launched_t
                s.last_launched_t = t
            elif state in STAGE_TERMINAL:
                s.end_t = t
    return out

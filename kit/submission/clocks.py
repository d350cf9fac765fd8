"""The clocks of one run, checked against each other in both directions.

A run holds several clocks, written by different processes: each step's own `step_time_s` and the event stamps
(rank 0, events.log), the stage's transitions (the kit process, status.jsonl), the monitor's samples (a thread of
the kit process, monitor.jsonl), and each rank's start and end (its own log). Halving the step times, or the
stamps, leaves the others behind; editing all of them consistently is the one forgery these checks cannot see
(docs/submissions.md, the threat model).

Tolerances (docs/submissions.md): the case stamps each step with its end, so an honest gap equals the next step's
time to the microsecond; STEP_SLACK_S covers a checkpoint's closing synchronize and float rounding. Two
processes on one host share a clock; HOST_SKEW_S covers ranks on another host than the kit process (NTP keeps
hosts within milliseconds; seconds are a misconfigured host).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from kit.run.events import StageEvents
from kit.submission.findings import Findings
from kit.submission.layout import RunFacts

STEP_SLACK_S = 0.05  # a step's logged time against its stamps, plus 1% of the step (STEP_SLACK_REL)
STEP_SLACK_REL = 0.01
HOST_SKEW_S = 5.0  # events (rank 0's host) against status.jsonl (the kit process's host)
TAIL_MAX_S = 300.0  # a stage's end in status.jsonl after its last event: process exit and teardown
MONITOR_SLACK_S = 2.0  # the monitor's start and stop against the stage's launch and end (one process)
MONITOR_DT_SLACK_S = 0.05  # a sample's `dt` against the gap to the sample before it
RANK_LOG_TIME = re.compile(r"\((?P<what>started|ended) at (?P<t>\d+\.\d+)\)")
CHECK = "clocks"


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def step_clock(ev: StageEvents, out: Findings, where: str) -> None:
    """Each step's logged time against the gap between its stamp and the one before it, both ways."""
    by_step = {int(s["step"]): s for s in ev.steps}
    ckpts = sorted((c for c in ev.checkpoints if _num(c.get("time_ms")) is not None), key=lambda c: c["time_ms"])
    for n, key, value in ev.bad_values:
        if key == "step_time_s":
            out.fail(CHECK, f"step {n}: step_time_s = {value!r} is not a positive finite number: not a measured step "
                            "time", where)  # fmt: skip
    prev_t: float | None = None
    for s in ev.steps:
        step, t = int(s["step"]), _num(s.get("time_ms"))
        logged = _num(s.get("step_time_s"))
        if t is not None and prev_t is not None and t < prev_t:
            out.fail(CHECK, f"step {step}'s stamp is earlier than the step before it: the events are not in the "
                            "order they happened", where)  # fmt: skip
        prev_t = t if t is not None else prev_t
        prev = by_step.get(step - 1)
        same_attempt = prev is not None and ev.step_attempt.get(step) == ev.step_attempt.get(step - 1)
        t0 = _num((prev or {}).get("time_ms")) if same_attempt else None
        if t is None or logged is None or logged <= 0:
            continue
        if t0 is None:  # the first step of an attempt: only its run_start bounds it, from one side
            a = ev.attempt_list[ev.step_attempt.get(step, 0)] if ev.attempt_list else None
            start = _num(a.run_start_ms) if a else None
            if start is not None and logged > (t - start) / 1000 + STEP_SLACK_S + STEP_SLACK_REL * logged:
                out.fail(CHECK, f"step {step}: step_time_s {logged:.6g} s is longer than the {(t - start) / 1000:.6g} s "
                                "from run_start to its stamp", where)  # fmt: skip
            continue
        between = [c for c in ckpts if t0 < c["time_ms"] < t]
        start = max([t0, *(float(c["time_ms"]) for c in between)])
        gap = (t - start) / 1000
        for c in between:
            secs = _num(c.get("seconds"))
            if secs is not None and secs > (float(c["time_ms"]) - t0) / 1000 + STEP_SLACK_S:
                out.fail(CHECK, f"the checkpoint after step {c.get('step')} took {secs:.3f} s by its own account, "
                                f"but its stamp is {(float(c['time_ms']) - t0) / 1000:.3f} s after the step's", where)  # fmt: skip
        if abs(gap - logged) > STEP_SLACK_S + STEP_SLACK_REL * max(gap, logged):
            word = "shorter" if logged < gap else "longer"
            out.fail(CHECK, f"step {step}: step_time_s {logged:.6g} s is {word} than the {gap:.6g} s between its stamp "
                            f"and the one before it (allowed: {STEP_SLACK_S} s + {STEP_SLACK_REL:.0%})", where)  # fmt: skip


def eval_clock(ev: StageEvents, out: Findings, where: str) -> None:
    """Each eval batch's logged seconds against its stamps (rank 0's batches; the case stamps each batch's end)."""
    prev: float | None = None
    for b in ev.eval_batches:
        t, secs = _num(b.get("time_ms")), _num(b.get("seconds"))
        if b.get("seconds") is not None and (secs is None or secs < 0):
            out.fail(CHECK, f"eval batch {b.get('batch')}: seconds = {b.get('seconds')!r} is not a measured time", where)
            continue
        if b.get("rank") not in (0, None):
            continue
        if t is not None and prev is not None and secs is not None:
            gap = (t - prev) / 1000
            if abs(gap - secs) > STEP_SLACK_S + STEP_SLACK_REL * max(gap, secs):
                out.fail(CHECK, f"eval batch {b.get('batch')}: {secs:.6g} s logged, {gap:.6g} s between its stamp and "
                                "the one before it", where)  # fmt: skip
        prev = t if t is not None else prev


def status_clock(rf: RunFacts, stage: str, ev: StageEvents, out: Findings, where: str) -> None:
    """The stage's events inside its launch and end in status.jsonl, and no long unaccounted tail."""
    st = rf.status.stages.get(stage) if rf.status is not None else None
    if st is None or st.launched_t is None:
        return
    stamps = [x for x in (ev.first_ms, ev.last_ms) if x is not None]
    if not stamps:
        return
    first, last = min(stamps) / 1000, max(stamps) / 1000
    if first < st.launched_t - HOST_SKEW_S:
        out.fail(CHECK, f"{stage}: its first event is {st.launched_t - first:.1f} s before status.jsonl says it was "
                        f"launched (allowed: {HOST_SKEW_S:.0f} s of clock skew)", where)  # fmt: skip
    if st.end_t is not None:
        if last > st.end_t + HOST_SKEW_S:
            out.fail(CHECK, f"{stage}: its last event is {last - st.end_t:.1f} s after status.jsonl says it ended "
                            f"(allowed: {HOST_SKEW_S:.0f} s of clock skew)", where)  # fmt: skip
        elif rf.stage_states.get(stage) == "finished" and st.end_t - last > TAIL_MAX_S:
            out.fail(CHECK, f"{stage}: status.jsonl says it ended {st.end_t - last:.0f} s after its last event; a "
                            f"finished stage's process ends within {TAIL_MAX_S:.0f} s of it", where)  # fmt: skip


def monitor_clock(run: Path, stage: str, rf: RunFacts, out: Findings, where: str) -> None:
    """monitor.jsonl: each start and stop beside a launch and an end of the stage, samples in order, each `dt`
    the gap it claims, and no more samples than the time allows."""
    path = run / stage / "monitor.jsonl"
    if not path.is_file():
        return
    st = rf.status.stages.get(stage) if rf.status is not None else None
    starts: list[float] = []
    stops: list[float] = []
    samples = 0
    prev: float | None = None
    interval = None
    span = 0.0
    start_t: float | None = None
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        try:
            rec = json.loads(line)
        except ValueError:
            continue  # named as damage by the report
        if not isinstance(rec, dict):
            continue
        t = _num(rec.get("t"))
        kind = rec.get("type")
        if t is None:
            continue
        if prev is not None and t < prev - 1e-3:
            out.fail(CHECK, f"{stage}/monitor.jsonl line {number}: its time is earlier than the line before it", where)
            return
        if kind == "start":
            starts.append(t)
            start_t = t
            interval = _num(rec.get("interval_s")) or interval
        elif kind == "sample":
            samples += 1
            dt = _num(rec.get("dt"))
            if dt is not None and prev is not None and abs((t - prev) - dt) > MONITOR_DT_SLACK_S:
                out.fail(CHECK, f"{stage}/monitor.jsonl line {number}: dt {dt:.3f} s, but {t - prev:.3f} s since the "
                                "line before it", where)  # fmt: skip
                return
        elif kind in ("stop", "error"):
            stops.append(t)
            if start_t is not None:
                span += t - start_t
                start_t = None
        prev = t
    if interval and samples > span / interval + 2 * max(1, len(starts)) + 0.05 * (span / interval):
        out.fail(CHECK, f"{stage}/monitor.jsonl: {samples} samples in {span:.0f} s of sampling every {interval:g} s: "
                        "more than that time allows", where)  # fmt: skip
    if st is None or st.launched_t is None or not starts:
        return
    launches = [st.launched_t] if st.launches <= 1 else None
    if launches and abs(starts[0] - launches[0]) > MONITOR_SLACK_S:
        out.fail(CHECK, f"{stage}: the monitor started {starts[0] - launches[0]:+.1f} s from the launch in "
                        f"status.jsonl; both are the kit process's clock (allowed: {MONITOR_SLACK_S:.0f} s)", where)  # fmt: skip
    if st.end_t is not None and stops and abs(stops[-1] - st.end_t) > MONITOR_SLACK_S + 5.0:
        out.fail(CHECK, f"{stage}: the monitor stopped {stops[-1] - st.end_t:+.1f} s from the stage's end in "
                        "status.jsonl; both are the kit process's clock", where)  # fmt: skip


def rank_log_clock(run: Path, stage: str, rf: RunFacts, out: Findings, where: str) -> None:
    """Each rank's start and end lines (the case writes them with the epoch time) inside the stage's launch and
    end."""
    st = rf.status.stages.get(stage) if rf.status is not None else None
    if st is None or st.launched_t is None:
        return
    end = st.end_t
    for log in sorted((run / stage / "logs").glob("rank*.log")):
        try:
            with open(log, errors="replace") as f:
                head = f.readline()
        except OSError:
            continue
        m = RANK_LOG_TIME.search(head)
        if not m:
            continue
        t = float(m.group("t"))
        if t < st.launched_t - HOST_SKEW_S or (end is not None and t > end + HOST_SKEW_S):
            out.fail(CHECK, f"{stage}/logs/{log.name}: the rank started at {t:.3f}, outside the stage's launch "
                            f"{st.launched_t:.3f} to end {end}", where)  # fmt: skip


def check_run(rf: RunFacts, out: Findings, where: str) -> None:
    """Every clock of one run against the others."""
    for stage in rf.stages:
        ev = rf.events.get(stage)
        if ev is None:
            continue
        step_clock(ev, out, where)
        if stage == rf.eval_stage:
            eval_clock(ev, out, where)
        status_clock(rf, stage, ev, out, where)
        monitor_clock(rf.path, stage, rf, out, where)
        rank_log_clock(rf.path, stage, rf, out, where)

"""No run counted twice: what differs between two honest runs, and a copy cannot shed without a rewrite.

Two honest runs of one config on one host read the same data in the same order; on a CPU their losses are even
identical, so no fact of the data or the model tells them apart. Their timing noise does: every step time, eval
batch time, monitor interval and status transition is a measurement whose last digits no second run repeats. A copy
renamed (run id, paths), re-stamped (every time shifted) or padded (comment lines in events.log) keeps them all;
one rescaled (every step time times a constant) keeps their shape. So two runs are the same run when one of these
channels of one equals the other's, whole or in a fixed part, or up to a scale and a shift. Two honest runs
also cannot overlap in time on one host: they would have shared it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from typing import Any

from kit.submission.findings import Findings
from kit.submission.layout import RunFacts

CHECK = "duplicate run"
EXACT_MIN = 3  # values equal to the last digit, at least this many ...
EXACT_SHARE = 0.2  # ... and this share of the shorter channel
AFFINE_MIN = 5  # values needed before an exact scale-and-shift relation means anything
AFFINE_REL = 1e-6  # residual of that relation, relative to the values' spread
COARSE_MIN = 8  # a coarse channel counts from this many readings ...
COARSE_DISTINCT = 5  # ... of at least this many different values


def _nums(values: Iterable[Any]) -> list[float]:
    return [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]


def channels(rf: RunFacts) -> dict[str, tuple[list[float], bool]]:
    """name -> (values, fine): `fine` channels carry microsecond noise (an exact match of a few values already
    means a copy); coarse ones (milliseconds, rounded percentages) count only as a whole."""
    out: dict[str, tuple[list[float], bool]] = {}
    for stage in rf.training:
        ev = rf.events.get(stage)
        if ev and ev.steps:
            out[f"{stage} step times"] = (_nums(s.get("step_time_s") for s in ev.steps), True)
    ev = rf.events.get(rf.eval_stage or "")
    if ev and ev.eval_batches:
        out["eval batch times"] = (_nums(b.get("seconds") for b in ev.eval_batches), True)
    for stage in rf.stages:
        path = rf.path / stage / "monitor.jsonl"
        if not path.is_file():
            continue
        dts, loads = [], []
        for line in path.read_text(errors="replace").splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict) and rec.get("type") == "sample":
                dts.append(rec.get("dt"))
                cpu = rec.get("cpu") if isinstance(rec.get("cpu"), dict) else {}
                loads.append(cpu.get("busy_pct"))
        out[f"{stage} monitor intervals"] = (_nums(dts), False)
        out[f"{stage} monitor CPU load"] = (_nums(loads), False)
    if rf.status is not None:
        ts = []
        path = rf.path / "status.jsonl"
        for line in path.read_text(errors="replace").splitlines() if path.is_file() else []:
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict):
                ts.append(row.get("t"))
        t = _nums(ts)
        out["status transitions"] = ([b - a for a, b in zip(t, t[1:], strict=False)], True)
    return out


def _exact(a: list[float], b: list[float]) -> int:
    """How many positions hold the same value in both (to the last digit)."""
    return sum(1 for x, y in zip(a, b, strict=False) if x == y)


def _affine(a: list[float], b: list[float]) -> tuple[float, float] | None:
    """(scale, shift) when b = scale * a + shift holds exactly over the whole channel, else None."""
    n = min(len(a), len(b))
    if n < AFFINE_MIN or len(a) != len(b):
        return None
    ma, mb = sum(a) / n, sum(b) / n
    va = sum((x - ma) ** 2 for x in a)
    vb = sum((y - mb) ** 2 for y in b)
    if va <= 0 or vb <= 0:
        return None  # constant channels (a saturated device at 100%) say nothing
    scale = sum((x - ma) * (y - mb) for x, y in zip(a, b, strict=True)) / va
    shift = mb - scale * ma
    resid = max(abs(y - (scale * x + shift)) for x, y in zip(a, b, strict=True))
    spread = math.sqrt(vb / n)
    return (scale, shift) if resid <= AFFINE_REL * spread else None


def same_run(a: RunFacts, b: RunFacts) -> str | None:
    """Why b is a copy of a, or None."""
    ca, cb = channels(a), channels(b)
    for name in sorted(ca.keys() & cb.keys()):
        (x, fine), (y, _) = ca[name], cb[name]
        n = min(len(x), len(y))
        if not fine and (n < COARSE_MIN or len(set(x)) < COARSE_DISTINCT):
            continue  # a few rounded readings can agree by chance
        same = _exact(x, y)
        if fine and same >= EXACT_MIN and same >= EXACT_SHARE * n:
            return f"{same} of {n} {name} are the same to the last digit"
        if not fine and same == n == len(x) == len(y):
            return f"all {n} {name} are the same"
        rel = _affine(x, y)
        if rel is not None:
            scale, shift = rel
            return f"its {n} {name} are the other's times {scale:.6g}, plus {shift:.6g}, exactly"
    return None


def interval(rf: RunFacts) -> tuple[float, float] | None:
    if rf.status is None or rf.status.first_t is None or rf.status.last_t is None:
        return None
    return rf.status.first_t, rf.status.last_t


def check(runs: list[tuple[str, RunFacts]], out: Findings) -> None:
    seen_ids: dict[str, str] = {}
    for i, (where, rf) in enumerate(runs):
        if rf.run_id in seen_ids:
            out.fail(CHECK, f"run id {rf.run_id} is also {seen_ids[rf.run_id]}'s: a run counts once", where)
        seen_ids.setdefault(rf.run_id, where)
        for other_where, other in runs[:i]:
            if why := same_run(other, rf):
                out.fail(CHECK, f"the same run as {other_where}: {why}; a run counts once, however renamed or "
                                "re-stamped", where)  # fmt: skip
                continue
            ia, ib = interval(other), interval(rf)
            if ia and ib and set(other.hosts()) & set(rf.hosts()) and ia[0] < ib[1] and ib[0] < ia[1]:
                overlap = min(ia[1], ib[1]) - max(ia[0], ib[0])
                out.fail(CHECK, f"ran at the same time as {other_where} on the same host ({overlap:.0f} s overlap): "
                                "two runs that share a host are not two measurements of it", where)  # fmt: skip

"""The formulas of a run's figures: plain functions of plain values (a step's facts, a stage's steps).

Pure and case-free: what depends on the model (FLOPs, the reference's MFU formula) is the case's
(kit/case/metrics.py). kit/results/summary.py applies these to a run directory's raw facts.

Conventions used throughout:
- token/p/s = tokens per second per GPU (the seed's unit); world_size = number of ranks (GPUs).
- Fractions (MFU, padding waste, memory used, accuracy) are numbers in 0..1, never percentages.
- None means "cannot be computed"; the stage's `notes` say why, and the report prints n/a.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from typing import Any

from kit.run.events import StageEvents

GIB = 2**30

STEADY_RULE = (
    "steady state: with n steps logged, skip the first max(2, ceil(5% of n)) when n > 4, the first one "
    "when 2 <= n <= 4, none when n = 1; also skip the first step of every resumed attempt"
)
LOSS_RULE = "loss: mean over the last max(1, floor(1% of n)) logged steps; loss_last = the last step's"

# A stage whose steady step times vary more than this (coefficient of variation: population standard deviation
# over the mean) gets a warning: its throughput is one draw from a wide spread (a shared or throttled host or
# device), not a repeatable figure. 10%: an idle GPU node stays well under it (a few %); a loaded host does not.
STEP_TIME_CV_WARN = 0.10
SPREAD_RULE = (
    "step time: median, p10 and p90 (linear interpolation between ranks) and CV (population standard deviation / "
    f"mean) over the steady-state steps; a warning above CV {STEP_TIME_CV_WARN:.0%}"
)
# Whether the steady steps are steady: tokens per second over the second half of them against the first half.
# Step times alone cannot tell (micro-batches cut by tokens carry different token counts); a drift above this says
# the stage was still warming up (kernels compiled late, caches filling) or slowing down (throttling, a neighbour).
STEADY_DRIFT_WARN = 0.05
STEADY_DRIFT_MIN_STEPS = 6
DRIFT_RULE = (
    f"steady state reached: padded tokens/s over the second half of the steady steps within {STEADY_DRIFT_WARN:.0%} "
    f"of the first half's, or within twice the standard error of the per-step rates (judged from "
    f"{STEADY_DRIFT_MIN_STEPS} steady steps on)"
)


# ---- data counts ----


def data_counts(steps: Sequence[dict[str, Any]], facts: dict[str, Any], keys: Iterable[str] = ()) -> dict[str, Any]:
    """The stage's data counts: the kit_step counts `keys` (the case's DATA_STEP_COUNTS) summed over every logged step
    (a re-logged step counts once: the last occurrence replaced it), and the load-time skips of kit_facts, in total
    and by category.

    A count the logs do not hold (a run from before the field existed) is None, not 0.
    """
    out: dict[str, Any] = {}
    for key in keys:
        vals = [s[key] for s in steps if isinstance(s.get(key), (int, float))]
        out[key] = int(sum(vals)) if vals else None
    skipped = facts.get("skipped_records")
    out["skipped_records"] = skipped if isinstance(skipped, int) else None
    by_cat = facts.get("skipped_by_category")
    out["skipped_by_category"] = (
        {str(k): int(v) for k, v in by_cat.items() if isinstance(v, int)} if isinstance(by_cat, dict) else None
    )
    return out



# ---- steady state and throughput ----


def steady_skip(n: int) -> int:
    """How many leading steps are warm-up (allocator, kernels, data-loader start): see STEADY_RULE."""
    if n > 4:
        return max(2, math.ceil(0.05 * n))
    if n > 1:
        return 1
    return 0


def is_timed(step: dict[str, Any]) -> bool:
    t = step.get("step_time_s")
    return isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t) and t > 0


STEP_CLOCK_RULE = (
    "step time: the gap between a step's event stamp and the stamp before it in the same attempt (a checkpoint "
    "written between them excluded), the clock `kit verify` ties to status.jsonl and the monitor; the step's own "
    "step_time_s where no stamp precedes it (the first step of an attempt)"
)


def clocked_steps(events: StageEvents) -> list[dict[str, Any]]:
    """The stage's steps with `step_time_s` taken from the event stamps (STEP_CLOCK_RULE).

    The case stamps each kit_step with the step's end, so for an honest run the gap equals the logged
    step_time_s to the microsecond; `kit verify` fails a run where they differ. A step whose logged step time is
    damaged (not a positive finite number) keeps no time: the figures leave it out and the warnings name it.
    """
    ckpts = sorted(float(c["time_ms"]) for c in events.checkpoints if _finite_num(c.get("time_ms")))
    by_step = {int(s["step"]): s for s in events.steps}
    out = []
    for s in events.steps:
        step = int(s["step"])
        prev = by_step.get(step - 1)
        t, t_prev = s.get("time_ms"), (prev or {}).get("time_ms")
        dur = None
        if not is_timed(s):
            dur = None
        elif (prev is not None and _finite_num(t) and _finite_num(t_prev)
              and events.step_attempt.get(step) == events.step_attempt.get(step - 1)):  # fmt: skip
            start = max([float(t_prev), *(c for c in ckpts if float(t_prev) < c < float(t))])
            gap = (float(t) - start) / 1000
            dur = gap if gap > 0 else None
        else:
            dur = float(s["step_time_s"])
        out.append({**s, "step_time_s": dur, "step_time_logged_s": s.get("step_time_s")})
    return out


def _finite_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def steady_steps(steps: Sequence[dict[str, Any]], resume_first_steps: Iterable[int] = ()) -> list[dict[str, Any]]:
    """The steps that count for throughput: STEADY_RULE applied to steps sorted by step number.

    A single step is kept (it is all there is; its time includes warm-up). Steps without a positive
    step_time_s are dropped.
    """
    resumed = set(resume_first_steps)
    kept = [s for s in steps[steady_skip(len(steps)):] if s.get("step") not in resumed]
    if not kept and len(steps) == 1:
        kept = list(steps)
    return [s for s in kept if is_timed(s)]


def total(steps: Iterable[dict[str, Any]], key: str) -> float:
    return float(sum(s[key] for s in steps if _finite_num(s.get(key))))


def throughput(steps: Sequence[dict[str, Any]], world_size: int, key: str = "real_tokens") -> float | None:
    """token/p/s = sum(tokens) / sum(step_time_s) / world_size over the given (steady) steps."""
    time_s = total(steps, "step_time_s")
    if not steps or time_s <= 0 or world_size <= 0:
        return None
    return total(steps, key) / time_s / world_size


def padding_waste(steps: Sequence[dict[str, Any]]) -> float | None:
    """Fraction of computed positions that are padding: (padded - real) / padded, over the steps."""
    padded = total(steps, "padded_tokens")
    if padded <= 0:
        return None
    return (padded - total(steps, "real_tokens")) / padded


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-quantile (0..1) by linear interpolation between the closest ranks (numpy's default method)."""
    vals = sorted(values)
    if not vals:
        return None
    pos = (len(vals) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(vals) - 1)
    return vals[lo] + (vals[hi] - vals[lo]) * (pos - lo)


def step_time_spread(steps: Sequence[dict[str, Any]]) -> dict[str, float | int | None]:
    """Median, p10, p90 and CV of step_time_s over the given (steady) steps, and how many there were.

    CV = population standard deviation / mean: these steps are all the steady steps there are, not a sample.
    """
    times = [float(s["step_time_s"]) for s in steps if is_timed(s)]
    mean = sum(times) / len(times) if times else None
    return {
        "step_time_median_s": statistics.median(times) if times else None,
        "step_time_p10_s": percentile(times, 0.10),
        "step_time_p90_s": percentile(times, 0.90),
        "step_time_cv": statistics.pstdev(times) / mean if len(times) > 1 and mean else None,
        "step_time_steps": len(times),
    }


def steady_drift(steps: Sequence[dict[str, Any]]) -> float | None:
    """Tokens/s over the second half of the (steady) steps over the first half's, minus 1; None with fewer than
    STEADY_DRIFT_MIN_STEPS steps (too few to tell). Padded tokens (the positions the device computes; real tokens
    where a step lacks them): a later half whose samples happen to hold fewer pad positions is not faster."""
    timed = [s for s in steps if is_timed(s)]
    if len(timed) < STEADY_DRIFT_MIN_STEPS:
        return None
    half = len(timed) // 2
    key = "padded_tokens" if all(s.get("padded_tokens") for s in timed) else "real_tokens"
    first, second = throughput(timed[:half], 1, key), throughput(timed[-half:], 1, key)
    return second / first - 1 if first and second else None


def drift_within_noise(steps: Sequence[dict[str, Any]]) -> bool:
    """Whether the halves' difference is within what the steps' own spread explains: the per-step rates' means
    differ by less than twice the standard error of their difference (steps that alternate fast and slow do not
    read as a trend)."""
    timed = [s for s in steps if is_timed(s)]
    half = len(timed) // 2
    if half < 2:
        return True
    key = "padded_tokens" if all(s.get("padded_tokens") for s in timed) else "real_tokens"
    rates = [float(s.get(key) or 0) / float(s["step_time_s"]) for s in timed]
    a, b = rates[:half], rates[-half:]
    se = math.sqrt(statistics.pvariance(a) / len(a) + statistics.pvariance(b) / len(b))
    return abs(statistics.fmean(b) - statistics.fmean(a)) <= 2 * se


def reference_method_throughput(padded_tokens_total: float, wall_s: float | None, world_size: int) -> float | None:
    """The seed's token/p/s: all padded tokens / the whole stage's wall time / world_size.

    The wall time runs from the host's launch to the stage's end, so start-up (container, model load,
    data) and the final save are included, as in the seed (case facts section 4).
    """
    if wall_s is None or wall_s <= 0 or world_size <= 0 or padded_tokens_total <= 0:
        return None
    return padded_tokens_total / wall_s / world_size


def startup_seconds(
    launched_t: float | None, init_start_ms: float | None, first_step_start_ms: float | None
) -> float | None:
    """Seconds from the launch (or, without a launch time, the rank-0 process start) to the first step.

    The first step starts at init_stop (engines built, data ready), or at run_start without it.
    """
    if first_step_start_ms is None:
        return None
    start_s = launched_t if launched_t is not None else (init_start_ms / 1000 if init_start_ms is not None else None)
    if start_s is None:
        return None
    return first_step_start_ms / 1000 - start_s


# ---- loss and memory ----


def loss_tail(steps: Sequence[dict[str, Any]]) -> tuple[float | None, int, float | None]:
    """(mean loss over the last max(1, floor(1% of n)) steps, how many steps, the last step's loss)."""
    losses = [float(s["loss"]) for s in steps if isinstance(s.get("loss"), (int, float))]
    if not losses:
        return None, 0, None
    k = max(1, len(losses) // 100)
    return sum(losses[-k:]) / k, k, losses[-1]


def memory(steps: Sequence[dict[str, Any]], facts: dict[str, Any]) -> dict[str, float | None]:
    """Peak device memory as nvidia-smi counts it (total - free), the device total, and the allocator's peaks.

    All in GiB (2^30 bytes), maxima over every step (warm-up included: memory peaks are peaks).
    """
    def peak(key: str) -> float | None:
        vals = [s[key] for s in steps if isinstance(s.get(key), (int, float))]
        return max(vals) / GIB if vals else None

    used, total = peak("device_mem_used_bytes"), peak("device_mem_total_bytes")
    if total is None and isinstance(facts.get("device_mem_total_bytes"), (int, float)):
        total = facts["device_mem_total_bytes"] / GIB
    return {
        "mem_used_peak_gib": used,
        "mem_total_gib": total,
        "mem_used_fraction": used / total if used is not None and total else None,
        "mem_reserved_peak_gib": peak("mem_reserved_peak_bytes"),
        "mem_allocated_peak_gib": peak("mem_allocated_peak_bytes"),
    }


"""A run's summary: every derived number of every stage, recomputed from the raw facts through the run model.

The case logs raw facts (docs/run-directory.md); `run_summary` reads them through `kit.run.dir.RunDir`, applies the
formulas (kit/results/formulas.py, and the case's own: kit/case/metrics.py) and returns what summary.json holds,
so a corrected formula corrects old runs too (`kit report RUN` recomputes). It is tolerant of damage (a report
must show what can be shown): `RunDir.check()` is the strict gate `kit report` passes first; damage found here is
in the `warnings` (run) and `stage_warnings` (stage). `write_summary` writes summary.json and the plots.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from kit import __version__
from kit import case as cases
from kit.case import metrics as case_metrics
from kit.image.stacks import run_stack
from kit.io import read_json
from kit.results.comparability import eval_inputs, standing
from kit.results.formulas import (
    DRIFT_RULE,
    LOSS_RULE,
    SPREAD_RULE,
    STEADY_DRIFT_MIN_STEPS,
    STEADY_DRIFT_WARN,
    STEADY_RULE,
    STEP_CLOCK_RULE,
    STEP_TIME_CV_WARN,
    clocked_steps,
    data_counts,
    drift_within_noise,
    is_timed,
    loss_tail,
    memory,
    padding_waste,
    reference_method_throughput,
    startup_seconds,
    steady_drift,
    steady_steps,
    step_time_spread,
    throughput,
    total,
)
from kit.results.model import accuracy_figure, accuracy_stage
from kit.results.peak import lookup_peak
from kit.results.plots import write_plots
from kit.results.reference import case_of
from kit.results.samples import monitor_summary
from kit.run.dir import RunDir
from kit.run.events import STAGE_TERMINAL, RunStatus, StageEvents, StageStatus
from kit.run.guard import held

SUMMARY_SCHEMA = "kit.summary/1"

# The hook for warnings about how a stage ran that other modules derive from the stage directory: each callable
# takes the stage directory and returns warning lines (or None). run_summary calls every one for every stage; each
# line lands in the stage's `stage_warnings` and is shown in every format of `kit report`. A hook that raises is
# reported, never fatal. (The device monitor's warnings come from monitor.jsonl directly: kit/results/samples.py.)
STAGE_WARNING_HOOKS: list[Callable[[Path], Iterable[str] | None]] = []


def _finite(v: Any) -> Any:
    """JSON has no NaN/inf: they become None (the notes say so where it matters)."""
    return None if isinstance(v, float) and not math.isfinite(v) else v


def stage_state(stage_status: StageStatus | None, events: StageEvents, run_status: RunStatus) -> str:
    """finished | failed | interrupted | running | pending: the stage's last status line decides.

    A stage still 'launched' after the run itself ended takes the run's end state (the launcher died
    with it). Without status lines, run_stop in events.log decides (success -> finished, else failed).
    """
    run_over = run_status.run_state in STAGE_TERMINAL
    # A run line "finished" beside a stage that never ended does not make the stage finished: it stopped.
    run_end = "stopped" if run_status.run_state == "finished" else run_status.run_state
    if stage_status is not None:
        s = stage_status.state
        if s in STAGE_TERMINAL:
            return s
        if s == "launched":
            return run_end if run_over else "running"
        return "pending"  # created
    if events.run_stop_status is not None:
        return "finished" if events.run_stop_status == "success" else "failed"
    if events.attempts:
        return run_end if run_over else "running"
    return "pending"


def damage_warnings(events: StageEvents, state: str) -> list[str]:
    """What the stage's events.log lost: torn lines (always damage) and a cut last line once the stage ended."""
    log = f"{events.stage}/events.log"
    out = []
    if events.torn_lines:
        lines = ", ".join(str(n) for n in events.torn_lines[:10]) + (" ..." if len(events.torn_lines) > 10 else "")
        out.append(f"{log}: {len(events.torn_lines)} torn line(s) (line {lines}): not whole events, left out; "
                   "the figures are computed without them")  # fmt: skip
    if events.partial_tail is not None and state in STAGE_TERMINAL:
        out.append(f"{log}: the last line ({events.partial_tail}) is cut short although the stage ended: left out")
    if events.bad_values:
        shown = ", ".join(f"step {n} {k} = {v!r}" for n, k, v in events.bad_values[:5])
        more = f" and {len(events.bad_values) - 5} more" if len(events.bad_values) > 5 else ""
        out.append(f"{log}: damaged input: {shown}{more} (a step time must be a positive finite number, a loss a "
                   "finite one): left out of the figures")  # fmt: skip
    return out


def summarize_stage(
    events: StageEvents,
    stage_status: StageStatus | None,
    run_status: RunStatus,
    request: dict[str, Any],
    cfg: dict[str, Any],
    case: Any = None,
    peak_flops: float | None = None,
    accuracy: float | None = None,
) -> dict[str, Any]:
    """The derived numbers of one stage from already-read facts (pure; stage_summary reads the files). `case`: the
    run's case (its formulas), or None when it is not installed; `accuracy`: the eval's, on the stage it scored."""
    notes: list[str] = []
    facts, steps, stage = events.facts, clocked_steps(events), events.stage
    state = stage_state(stage_status, events, run_status)
    m = case_metrics.of(case)

    world = facts.get("world_size")
    if not isinstance(world, int) or world <= 0:
        nodes, gpus = request.get("nodes"), request.get("gpus")
        world = nodes * gpus if isinstance(nodes, int) and isinstance(gpus, int) else 0
        if steps:
            notes.append(f"world size {world or 'unknown'} taken from run.json (no kit_facts in events.log)")

    device_name = facts.get("device_name") or cfg.get("device")
    if peak_flops:
        peak, peak_source = float(peak_flops), "given on the command line"
    else:
        peak, peak_source = lookup_peak(device_name, facts.get("device_type"))

    steady = steady_steps(steps, events.resume_first_steps)
    tps = throughput(steady, world)
    tps_padded = throughput(steady, world, "padded_tokens")
    if not steps:
        notes.append("no steps logged yet: throughput, loss, memory and MFU are n/a")
    elif not steady:
        notes.append("no timed steady-state step: throughput and MFU are n/a")
    if peak is None and steps:
        notes.append(f"MFU n/a: {peak_source}")

    # Reference method: the whole stage's wall time, launch to end.
    st = stage_status
    wall_start = st.launched_t if st and st.launched_t is not None else None
    if wall_start is None and events.init_start_ms is not None:
        wall_start = events.init_start_ms / 1000
        if steps:
            notes.append("no 'launched' time in status.jsonl: wall time and start-up counted from init_start")
    wall_end = st.end_t if st and st.end_t is not None and state in STAGE_TERMINAL else None
    if wall_end is None:
        ends = [t for t in (events.run_stop_ms, (events.save or {}).get("time_ms"), events.last_ms) if t]
        wall_end = max(ends) / 1000 if ends else None
    if steps and state != "finished":
        notes.append(f"stage {state}: the reference-method throughput covers only the part that ran")
    wall_s = wall_end - wall_start if wall_start is not None and wall_end is not None else None
    ref_tps = reference_method_throughput(total(steps, "padded_tokens"), wall_s, world)
    startup = startup_seconds(
        st.launched_t if st else None,
        events.init_start_ms,
        events.init_stop_ms if events.init_stop_ms is not None else events.run_start_ms,
    )
    if startup is not None and startup < 0:
        notes.append("start-up time is negative (host and container clocks disagree): shown as n/a")
        startup = None
    if events.attempts > 1:
        notes.append(f"{events.attempts} attempts (resumed); start-up is the first attempt's; wall time spans all")

    model = facts.get("model") if isinstance(facts.get("model"), dict) else None
    exact_flops = sum(sum(m.flops(model, s).values()) for s in steady) if m and model and steady else None
    steady_time = total(steady, "step_time_s")
    flops_per_s_gpu = exact_flops / steady_time / world if exact_flops and steady_time > 0 and world else None
    if steps and m is None:
        notes.append(f"exact and reference MFU n/a: the case {request.get('case')!r} is not installed here (its "
                     "FLOPs and its reference's formula are the case's)")  # fmt: skip
    elif steps and model is None:
        notes.append("exact MFU n/a: kit_facts has no model shape")

    ref_stage_ok = m is not None and stage in m.REFERENCE_FACTOR
    loss_mean, loss_n, loss_last = loss_tail(steps)
    if loss_last is not None and not math.isfinite(loss_last):
        notes.append("the last loss is not finite (NaN/inf)")
    mem = memory(steps, facts)
    checkpoint_s = [c.get("seconds") for c in events.checkpoints if isinstance(c.get("seconds"), (int, float))]
    steps_done = max((int(s["step"]) for s in steps), default=0)
    logged = {int(s["step"]) for s in steps}
    missing = [k for k in range(1, steps_done + 1) if k not in logged]
    warnings = damage_warnings(events, state)
    if missing:
        shown = ", ".join(str(k) for k in missing[:10]) + (" ..." if len(missing) > 10 else "")
        notes.append(f"{len(logged)} of {steps_done} steps logged: step {shown} missing from {stage}/events.log")
    spread = step_time_spread(steady)
    drift = steady_drift(steady)
    if isinstance(drift, float) and abs(drift) > STEADY_DRIFT_WARN and not drift_within_noise(steady):
        half = len(steady) // 2
        warnings.append(
            f"no steady state: tokens/s {'rose' if drift > 0 else 'fell'} {abs(drift):.0%} from the first half of "
            f"the steady steps ({steady[0]['step']}-{steady[half - 1]['step']}) to the second "
            f"({steady[-half]['step']}-{steady[-1]['step']}), more than {STEADY_DRIFT_WARN:.0%}: "
            + ("the stage was still warming up (kernels compiled late, caches filling); run more steps"
               if drift > 0 else "the stage slowed down as it ran (throttling, another load); see the monitor")
        )  # fmt: skip
    elif drift is None and len(steady) > 1:
        notes.append(f"{len(steady)} steady steps: too few to tell whether a steady state was reached "
                     f"(from {STEADY_DRIFT_MIN_STEPS})")  # fmt: skip
    first_step = next((float(s["step_time_s"]) for s in steps if is_timed(s)), None)
    cv = spread["step_time_cv"]
    if isinstance(cv, float) and cv > STEP_TIME_CV_WARN:
        warnings.append(
            f"step time varies: CV {cv:.0%} over {spread['step_time_steps']} steady steps (above "
            f"{STEP_TIME_CV_WARN:.0%}; median {spread['step_time_median_s']:.3g} s, p10-p90 "
            f"{spread['step_time_p10_s']:.3g}-{spread['step_time_p90_s']:.3g} s): throughput is one draw from a wide "
            "spread; rerun on an idle host and report several runs"
        )

    out: dict[str, Any] = {
        "stage": stage,
        "state": state,
        "attempts": events.attempts,
        "world_size": world or None,
        "device_name": device_name,
        "device_type": facts.get("device_type"),
        "runtime": facts.get("runtime"),  # the vendor's runtime the ranks applied (a free change, shown everywhere)
        "steps_done": steps_done,
        "steps_logged": len(steps),
        "steps_planned": facts.get("steps_planned"),
        "steps_total": facts.get("steps_total"),
        "steps_relogged": events.replaced_steps,
        "steps_missing": missing,
        "records": facts.get("records"),
        "steady_steps": len(steady),
        "steady_from_step": steady[0]["step"] if steady else None,
        "tokens_per_s_per_gpu": tps,
        "padded_tokens_per_s_per_gpu": tps_padded,
        "padding_waste": padding_waste(steady),
        **spread,
        "reference_method_tokens_per_s_per_gpu": ref_tps,
        "wall_s": wall_s,
        "startup_s": startup,
        "first_step_s": first_step,
        "steady_drift": drift,
        "peak_flops": peak,
        "peak_source": peak_source,
        "mfu_reference": m.reference_mfu(tps, stage, peak) if ref_stage_ok else None,
        "mfu_reference_method": m.reference_mfu(ref_tps, stage, peak) if ref_stage_ok else None,
        "mfu_exact": flops_per_s_gpu / peak if flops_per_s_gpu is not None and peak else None,
        "model_flops_per_s_per_gpu": flops_per_s_gpu,
        "exact_flops_per_real_token": exact_flops / total(steady, "real_tokens") if exact_flops else None,
        "loss_tail_mean": loss_mean,
        "loss_tail_steps": loss_n,
        "loss_last": loss_last,
        **mem,
        "checkpoints": len(events.checkpoints),
        "checkpoint_s": sum(checkpoint_s) if checkpoint_s else None,
        "save_s": (events.save or {}).get("seconds"),
        "save_bytes": (events.save or {}).get("bytes"),
        "data": data_counts(steps, facts, m.DATA_STEP_COUNTS if m else ()),
        "notes": notes,
        "stage_warnings": warnings,
    }
    if (acc := accuracy_figure(case)) is not None:
        out[acc.key] = accuracy
    if m is not None and not ref_stage_ok and steps:
        notes.append(f"reference MFU n/a: the seed's formula has no factor for stage {stage!r}")
    return {k: _finite(v) for k, v in out.items()}



def _accuracy(rd: RunDir, case: Any) -> float | None:
    """The eval's headline accuracy (0..1) from the scores the host wrote (the case's scorer reads them), or None."""
    scorer = getattr(case, "scorer", None)
    if scorer is None:
        return None
    scored = read_json(rd.file(scorer.scores) / "summary.json")
    return scorer.accuracy(scored) if isinstance(scored, dict) else None


def eval_stage(case: Any) -> str | None:
    """The case's eval stage (the first, should it have several), or None."""
    names = cases.evaluating(case) if case is not None else ()
    return names[0] if names else None


def eval_summary(rd: RunDir, case: Any, generated: bool = False) -> dict[str, Any] | None:
    """The eval stage at a glance: its state, questions, decoding and wall time (None when it never ran).

    generated: the questions were made by --synthetic in the eval set's format (not the eval set itself).
    """
    stage = eval_stage(case)
    if stage is None:
        return None
    status = rd.status()
    st = status.stages.get(stage)
    events = rd.events(stage)
    if st is None and not events.facts:
        return None
    scorer = case.scorer
    scored = read_json(rd.file(scorer.scores) / "summary.json") if scorer is not None else None
    state = stage_state(st, events, status)
    wall = (st.end_t - st.launched_t) if st is not None and st.end_t and st.launched_t else None
    return {
        "state": state,
        "questions": scored.get("num") if isinstance(scored, dict) else events.facts.get("questions"),
        "decoding": events.facts.get("decoding"),
        "wall_s": wall,
        "overall": _accuracy(rd, case),
        "generated": generated,
        "device_type": events.facts.get("device_type"),
        "stage_warnings": damage_warnings(events, state),
    }


def stage_summary(run_dir: str | Path, stage: str, peak_flops: float | None = None) -> dict[str, Any]:
    """Derived metrics of one stage of a run directory (see `summarize_stage` for the keys)."""
    rd = RunDir(run_dir)
    request = rd.request()
    case = case_of(request.get("case"))
    acc = _accuracy(rd, case) if stage == accuracy_stage(case) else None
    return summarize_stage(rd.events(stage), rd.status().stages.get(stage), rd.status(), request, rd.config(), case,
                           peak_flops, acc)  # fmt: skip


def _monitor(stage_dir: Path, st: dict[str, Any]) -> dict[str, Any] | None:
    """The stage's device (or host) samples, summarised (kit/results/samples.py; docs/monitoring.md); its warnings
    (throttling, other processes on the devices or the CPU) join the stage's. None without a monitor.jsonl."""
    try:
        mon = monitor_summary(stage_dir)
    except Exception as e:  # noqa: BLE001 - damaged samples must not hide the report; they are named instead
        st["stage_warnings"].append(f"monitor.jsonl could not be read: {type(e).__name__}: {e}")
        return None
    st["stage_warnings"] += [str(w) for w in (mon or {}).get("warnings") or []]
    return mon


def _hook_warnings(stage_dir: Path) -> list[str]:
    """Every STAGE_WARNING_HOOKS line for one stage directory (a hook that fails says so instead)."""
    out: list[str] = []
    for hook in STAGE_WARNING_HOOKS:
        try:
            out += [str(w) for w in hook(stage_dir) or []]
        except Exception as e:  # noqa: BLE001 - one broken source of warnings must not hide the report
            out.append(f"warning source {getattr(hook, '__name__', hook)!r} failed on {stage_dir.name}: {e}")
    return out


def run_summary(run_dir: str | Path, peak_flops: float | None = None) -> dict[str, Any]:
    """The whole run: every stage (planned or present), the run's state, the eval; what summary.json holds.

    Training stages are the table's rows; the case's eval stage feeds the accuracy (on the training stage whose
    model it scored, and the run's own key) and has a section of its own (`eval`).
    """
    rd = RunDir(run_dir)
    info = rd.request()
    status = rd.status()
    cfg = rd.config()
    case = case_of(info.get("case"))
    run_warnings = list(rd.config_warnings())
    if info.get("case") and case is None:
        run_warnings.append(f"the case {info.get('case')!r} is not installed here: the figures its formulas give "
                            "(MFU) and its eval's accuracy are n/a")  # fmt: skip
    if status.torn_lines:
        run_warnings.append(f"status.jsonl: {len(status.torn_lines)} damaged line(s) (line "
                            f"{', '.join(str(n) for n in status.torn_lines[:10])}): left out of the stages' states")  # fmt: skip
    inputs = rd.inputs()
    if rd.inputs_damaged():
        run_warnings.append("inputs.json is damaged: what the run read is not known by content")
    acc_fig = accuracy_figure(case)
    acc = _accuracy(rd, case)
    carrier = accuracy_stage(case)
    eval_names = cases.evaluating(case) if case is not None else ()
    all_names = rd.stage_names()
    names = [n for n in all_names if n not in eval_names]
    stages = {
        n: summarize_stage(rd.events(n), status.stages.get(n), status, info, cfg, case, peak_flops,
                           acc if n == carrier else None)  # fmt: skip
        for n in names
    }
    generated = bool(info.get("synthetic")) or bool((eval_inputs(inputs) or {}).get("generated"))
    ev_sum = eval_summary(rd, case, generated)
    ev_name = eval_stage(case)
    for n, st in [*stages.items(), *([(ev_name, ev_sum)] if ev_sum is not None else [])]:
        st["monitor"] = _monitor(rd.stage_dir(n), st)
        st["stage_warnings"] += _hook_warnings(rd.stage_dir(n))
    states = [s["state"] for s in stages.values()]
    if ev_sum is not None:  # the eval stage decides the run's state as much as the training stages do
        states.append(ev_sum["state"])
    # A run line "finished" counts only when every stage finished: a stage launched and never ended is not done.
    run_line = status.run_state
    if run_line == "finished" and any(x != "finished" for x in states):
        run_line = None
        run_warnings.append("status.jsonl says the run finished, but not every stage did: "
                            + ", ".join(f"{n} {st['state']}" for n, st in [*stages.items(), (ev_name, ev_sum or {})]
                                        if st and st.get("state") != "finished"))  # fmt: skip
    if "running" in states and run_line not in STAGE_TERMINAL and not held(rd.path):
        # no kit process holds the run: it was killed (SIGKILL, a lost host); resume continues it
        for st in [*stages.values(), *([ev_sum] if ev_sum else [])]:
            if st["state"] == "running":
                st["state"] = "stopped"
                st.setdefault("notes", []).append(
                    "stopped: no kit process holds the run (killed?); `kit resume` continues it")
        states = ["stopped" if x == "running" else x for x in states]
    if run_line in STAGE_TERMINAL:
        state = run_line
    elif "running" in states:
        state = "running"
    elif states and all(s == "finished" for s in states):
        state = "finished"
    elif any(s in ("failed", "interrupted", "stopped") for s in states):
        state = next(s for s in states if s in ("failed", "interrupted", "stopped"))
    elif status.run_state == "finished":  # the run line said finished, yet a planned stage never started
        state = "stopped"
    else:
        state = "pending" if not status.stages else "running"
    stage_records = {n: st.get("records") for n, st in stages.items()}
    out = {
        "schema": SUMMARY_SCHEMA,
        "run_id": info.get("run_id") or rd.path.name,
        "case": info.get("case"),
        "config": cfg.get("name"),
        "device": cfg.get("device"),
        "nodes": info.get("nodes"),
        "gpus": info.get("gpus"),
        "state": state,
        "stage_order": names,
        "stages": stages,
        "eval": ev_sum,
        "comparable": standing(info, cfg, inputs, all_names, stage_records),
        "warnings": run_warnings,
        "rules": {"steady_state": STEADY_RULE, "loss": LOSS_RULE, "spread": SPREAD_RULE, "drift": DRIFT_RULE,
                  "step_clock": STEP_CLOCK_RULE},
        "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "kit_version": __version__,
    }
    if acc_fig is not None:
        out[acc_fig.key] = acc
    return out


def stack_of_run(run_dir: str | Path) -> dict[str, Any]:
    """run.json's `stack` (the software the run ran on: kit/image/stacks.py's record), "unknown" in older runs."""
    rd = RunDir(run_dir)
    return run_stack(rd.request(), rd.environment() or None)


def write_summary(run_dir: str | Path, peak_flops: float | None = None, plots: bool = True) -> dict[str, Any]:
    """Recompute summary.json and the plots from the raw facts (both written atomically); returns the summary.

    A run directory that cannot be written (a read-only share, a full disk) still gets its summary: the
    returned summary says in `not_written` (and its warnings) what was not written and why.
    """
    rd = RunDir(run_dir)
    summary = run_summary(rd.path, peak_flops=peak_flops)
    summary["stack"] = stack_of_run(rd.path)
    failed: list[str] = []
    problem: OSError | None = None
    evals = (eval_stage(case_of(summary.get("case"))),) if summary.get("eval") else ()
    try:
        made, notes = write_plots(rd.path, summary, evals) if plots else ([], [])
    except OSError as e:
        made, notes, problem = [], [], e
        failed.append("the plots")
    summary["plots"] = made
    summary["notes"] = notes
    try:
        rd.write_summary(summary)
    except OSError as e:
        problem = problem or e
        failed.insert(0, "summary.json")
    if failed and problem is not None:
        why = problem.strerror or str(problem)
        line = (f"{' and '.join(failed)} {'was' if failed == ['summary.json'] else 'were'} not written to {rd.path} "
                f"({why}); the figures shown are computed from the raw facts all the same")  # fmt: skip
        summary["not_written"] = line
        summary.setdefault("warnings", []).append(line)
    return summary

"""Every derived number of a run, in one module, each with its formula.

The case logs raw facts (docs/run-directory.md); this module turns them into the numbers a table shows,
so a corrected formula corrects old runs too (`kit report RUN` recomputes). The formulas are plain
functions of plain values; only `stage_summary` / `run_summary` read files.

Conventions used throughout:
- token/p/s = tokens per second per GPU (the seed's unit); world_size = number of ranks (GPUs).
- Fractions (MFU, padding waste, memory used, MMMU accuracy) are numbers in 0..1, never percentages.
- None means "cannot be computed"; the stage's `notes` say why, and the report prints n/a.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from kit import __version__
from kit.events import STAGE_TERMINAL, RunStatus, StageEvents, StageStatus, load_stage, read_status

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

GIB = 2**30
REFERENCE_PARAMS = 7e9  # the seed's flat parameter count for LLaVA-1.5-7B
REFERENCE_FACTOR = {"pretrain": 2, "finetune": 6}  # the seed's FLOPs per parameter per token
ACCELERATORS_TOML = Path(__file__).resolve().parent.parent / "env" / "accelerators.toml"
SUMMARY_SCHEMA = "kit.summary/1"

STEADY_RULE = (
    "steady state: with n steps logged, skip the first max(2, ceil(5% of n)) when n > 4, the first one "
    "when 2 <= n <= 4, none when n = 1; also skip the first step of every resumed attempt"
)
LOSS_RULE = "loss: mean over the last max(1, floor(1% of n)) logged steps; loss_last = the last step's"


# ---- reference formula (the seed's) ----


def reference_mfu(
    tokens_per_s_per_gpu: float | None, stage: str, peak_flops: float | None, params: float = REFERENCE_PARAMS
) -> float | None:
    """The seed's MFU: token/p/s x 7e9 x (2 pretrain | 6 finetune) / peak (case facts section 4).

    It ignores attention, the vision tower and the backward through the frozen LLM in pretrain; kept
    only so rows compare with the seed's table. 4013 -> 18.01% and 2937 -> 39.54% at 312e12.
    """
    if tokens_per_s_per_gpu is None or not peak_flops:
        return None
    if stage not in REFERENCE_FACTOR:
        raise ValueError(f"reference MFU is defined for stages {sorted(REFERENCE_FACTOR)}, not {stage!r}")
    return tokens_per_s_per_gpu * params * REFERENCE_FACTOR[stage] / peak_flops


# ---- exact model FLOPs ----


def _pass_factor(trains: bool, grad_flows_through: bool) -> int:
    """FLOPs per weight per token: 6 = fwd 2 + input-grad 2 + weight-grad 2; 4 = no weight grad; 2 = fwd."""
    if trains:
        return 6
    return 4 if grad_flows_through else 2


def exact_flops_breakdown(model: dict[str, Any], step: dict[str, Any]) -> dict[str, float]:
    """Model FLOPs of one optimizer step (summed over ranks and micro-batches), by component.

    Conventions (model FLOPs as the graph really runs, not hardware FLOPs):
    - A multiply-add is 2 FLOPs. No activation recomputation is counted (gradient checkpointing re-runs
      forwards; that is hardware work, not model work).
    - LLM decoder Linear weights N_body run on every real (non-padded) token:
      N_body x real_tokens x f, f = 6 when the LLM trains, 4 when it is frozen but gradients still flow
      through it to a trainable projector (forward 2N + input gradient 2N), 2 when nothing upstream trains.
    - lm_head runs on supervised positions only: lm_head_params x supervised_tokens x f (same f).
    - Attention scores and weighted sum (no weights): PaLM's 12.L.H.Q.T per token with T the sample's own
      real length, i.e. 12 x layers x heads x head_dim x sum_i(T_i^2) per step (heads x head_dim = hidden
      without GQA). Full T^2, no causal halving (PaLM's convention). 12 = fwd 4 + bwd 8; counted in both
      stages because the backward runs through it whenever anything upstream trains (else 4, forward).
    - Projector: projector_params x image_tokens x images x (6 trains | 4 | 2), on every image through
      CLIP (text-only samples carry a zero image that is projected and then not spliced).
    - CLIP (frozen: forward only, x3 if it trained): 2 x vision_matmul_params_run x vision_tokens x images
      + 4 x vision_layers_run x vision_hidden x vision_tokens^2 x images (its attention).
    - Embedding lookups, norms, activations, softmax and the loss are not counted (O(hidden) per token).
    """
    g = lambda d, k: float(d.get(k) or 0)  # noqa: E731 - missing counts are zero
    trains_llm = bool(model.get("trainable_llm"))
    trains_proj = bool(model.get("trainable_projector"))
    trains_vision = bool(model.get("trainable_vision"))
    f_llm = _pass_factor(trains_llm, trains_proj or trains_vision)
    f_proj = _pass_factor(trains_proj, trains_vision)
    grads_reach_attention = trains_llm or trains_proj or trains_vision
    heads, head_dim = model.get("llm_heads"), model.get("llm_head_dim")
    attn_width = float(heads * head_dim) if heads and head_dim else g(model, "llm_hidden")
    images, vtok = g(step, "images"), g(model, "vision_tokens")
    vision_fwd = (
        2 * g(model, "vision_matmul_params_run") * vtok * images
        + 4 * g(model, "vision_layers_run") * g(model, "vision_hidden") * vtok**2 * images
    )
    return {
        "llm_body": g(model, "llm_body_matmul_params") * g(step, "real_tokens") * f_llm,
        "lm_head": g(model, "lm_head_params") * g(step, "supervised_tokens") * f_llm,
        "attention": (12 if grads_reach_attention else 4)
        * g(model, "llm_layers") * attn_width * g(step, "real_tokens_sq"),
        "projector": f_proj * g(model, "projector_params") * g(model, "image_tokens") * images,
        "vision": vision_fwd * (3 if trains_vision else 1),
    }


def exact_flops_per_step(model: dict[str, Any], step: dict[str, Any]) -> float:
    """Sum of `exact_flops_breakdown` (see its docstring for every convention)."""
    return sum(exact_flops_breakdown(model, step).values())


# ---- data fidelity counts ----

# kit_step counts of what the reference pipeline's own rules did to the step's samples (docs/fidelity.md).
DATA_STEP_COUNTS = (
    "masked_by_reference_rule",
    "relabelled_by_reference_rule",
    "pad_tokens_removed",
    "images_dropped_by_truncation",
    "skipped_unreadable_images",
)


def data_counts(steps: Sequence[dict[str, Any]], facts: dict[str, Any]) -> dict[str, Any]:
    """The stage's data counts: kit_step counts summed over every logged step (a re-logged step counts once:
    the last occurrence replaced it), and the load-time skips of kit_facts, in total and by category.

    A count the logs do not hold (a run from before the field existed) is None, not 0.
    """
    out: dict[str, Any] = {}
    for key in DATA_STEP_COUNTS:
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


def _timed(step: dict[str, Any]) -> bool:
    t = step.get("step_time_s")
    return isinstance(t, (int, float)) and t > 0


def steady_steps(steps: Sequence[dict[str, Any]], resume_first_steps: Iterable[int] = ()) -> list[dict[str, Any]]:
    """The steps that count for throughput: STEADY_RULE applied to steps sorted by step number.

    A single step is kept (it is all there is; its time includes warm-up). Steps without a positive
    step_time_s are dropped.
    """
    resumed = set(resume_first_steps)
    kept = [s for s in steps[steady_skip(len(steps)):] if s.get("step") not in resumed]
    if not kept and len(steps) == 1:
        kept = list(steps)
    return [s for s in kept if _timed(s)]


def _sum(steps: Iterable[dict[str, Any]], key: str) -> float:
    return float(sum(s.get(key) or 0 for s in steps))


def throughput(steps: Sequence[dict[str, Any]], world_size: int, key: str = "real_tokens") -> float | None:
    """token/p/s = sum(tokens) / sum(step_time_s) / world_size over the given (steady) steps."""
    time_s = _sum(steps, "step_time_s")
    if not steps or time_s <= 0 or world_size <= 0:
        return None
    return _sum(steps, key) / time_s / world_size


def padding_waste(steps: Sequence[dict[str, Any]]) -> float | None:
    """Fraction of computed positions that are padding: (padded - real) / padded, over the steps."""
    padded = _sum(steps, "padded_tokens")
    if padded <= 0:
        return None
    return (padded - _sum(steps, "real_tokens")) / padded


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


# ---- peak FLOP/s ----


def load_accelerators(path: str | Path | None = None) -> list[dict[str, Any]]:
    """Rows of env/accelerators.toml (empty when the file is absent, e.g. a wheel without env/)."""
    p = Path(path) if path else ACCELERATORS_TOML
    if not p.is_file():
        return []
    return list(tomllib.loads(p.read_text()).get("accelerator", []))


def lookup_peak(
    device_name: str | None, device_type: str | None = None, table: list[dict[str, Any]] | None = None
) -> tuple[float | None, str]:
    """(peak dense bf16 FLOP/s, where it came from or why there is none). First matching row wins."""
    if device_type == "cpu" or (device_name or "").strip().lower() == "cpu":
        return None, "CPU has no peak FLOP/s in env/accelerators.toml (MFU is for accelerators)"
    if not device_name:
        return None, "the device name is unknown (no kit_facts yet); pass --peak-flops"
    rows = load_accelerators() if table is None else table
    norm = device_name.upper().replace("_", " ")
    for row in rows:
        if any(str(m).upper().replace("_", " ") in norm for m in row.get("match", [])):
            return float(row["peak_bf16_flops"]), f"{row.get('name', '?')}: {row.get('source', 'env/accelerators.toml')}"
    return None, f"device {device_name!r} is not in env/accelerators.toml; add a row or pass --peak-flops"


# ---- reading a run directory ----


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def read_run_json(run_dir: str | Path) -> dict[str, Any]:
    data = _read_json(Path(run_dir) / "run.json")
    return data if isinstance(data, dict) else {}


def mmmu_accuracy(run_dir: str | Path) -> float | None:
    """`overall` of <run>/eval/mmmu/summary.json as a fraction (a dict's acc/accuracy; >1 read as %)."""
    data = _read_json(Path(run_dir) / "eval" / "mmmu" / "summary.json")
    if not isinstance(data, dict):
        return None
    v = data.get("overall")
    if isinstance(v, dict):
        v = v.get("acc", v.get("accuracy"))
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        return None
    return v / 100 if v > 1 else float(v)


def eval_summary(run_dir: Path, status: RunStatus) -> dict[str, Any] | None:
    """The eval stage at a glance: its state, questions, decoding and wall time (None when it never ran)."""
    st = status.stages.get("eval")
    events = load_stage(run_dir / "eval")
    if st is None and not events.facts:
        return None
    scored = _read_json(run_dir / "eval" / "mmmu" / "summary.json")
    wall = (st.end_t - st.launched_t) if st is not None and st.end_t and st.launched_t else None
    return {
        "state": st.state if st is not None else "unknown",
        "questions": scored.get("num") if isinstance(scored, dict) else events.facts.get("questions"),
        "decoding": events.facts.get("decoding"),
        "wall_s": wall,
        "overall": mmmu_accuracy(run_dir),
    }


def _finite(v: Any) -> Any:
    """JSON has no NaN/inf: they become None (the notes say so where it matters)."""
    return None if isinstance(v, float) and not math.isfinite(v) else v


def stage_state(stage_status: StageStatus | None, events: StageEvents, run_status: RunStatus) -> str:
    """finished | failed | interrupted | running | pending: the stage's last status line decides.

    A stage still 'launched' after the run itself ended takes the run's end state (the launcher died
    with it). Without status lines, run_stop in events.log decides (success -> finished, else failed).
    """
    run_over = run_status.run_state in STAGE_TERMINAL
    if stage_status is not None:
        s = stage_status.state
        if s in STAGE_TERMINAL:
            return s
        if s == "launched":
            return run_status.run_state if run_over else "running"
        return "pending"  # created
    if events.run_stop_status is not None:
        return "finished" if events.run_stop_status == "success" else "failed"
    if events.attempts:
        return run_status.run_state if run_over else "running"
    return "pending"


def summarize_stage(
    events: StageEvents,
    stage_status: StageStatus | None,
    run_status: RunStatus,
    run_info: dict[str, Any],
    peak_flops: float | None = None,
    mmmu_acc: float | None = None,
) -> dict[str, Any]:
    """The derived numbers of one stage from already-read facts (pure; stage_summary reads the files)."""
    notes: list[str] = []
    facts, steps, stage = events.facts, events.steps, events.stage
    cfg = run_info.get("config") if isinstance(run_info.get("config"), dict) else {}
    state = stage_state(stage_status, events, run_status)

    world = facts.get("world_size")
    if not isinstance(world, int) or world <= 0:
        nodes, gpus = run_info.get("nodes"), run_info.get("gpus")
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
    ref_tps = reference_method_throughput(_sum(steps, "padded_tokens"), wall_s, world)
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
    exact_flops = sum(exact_flops_per_step(model, s) for s in steady) if model and steady else None
    steady_time = _sum(steady, "step_time_s")
    flops_per_s_gpu = exact_flops / steady_time / world if exact_flops and steady_time > 0 and world else None
    if steps and model is None:
        notes.append("exact MFU n/a: kit_facts has no model shape")

    ref_stage_ok = stage in REFERENCE_FACTOR
    loss_mean, loss_n, loss_last = loss_tail(steps)
    if loss_last is not None and not math.isfinite(loss_last):
        notes.append("the last loss is not finite (NaN/inf)")
    mem = memory(steps, facts)
    checkpoint_s = [c.get("seconds") for c in events.checkpoints if isinstance(c.get("seconds"), (int, float))]
    steps_done = max((int(s["step"]) for s in steps), default=0)

    out: dict[str, Any] = {
        "stage": stage,
        "state": state,
        "attempts": events.attempts,
        "world_size": world or None,
        "device_name": device_name,
        "device_type": facts.get("device_type"),
        "steps_done": steps_done,
        "steps_logged": len(steps),
        "steps_planned": facts.get("steps_planned"),
        "steps_total": facts.get("steps_total"),
        "steps_relogged": events.replaced_steps,
        "steady_steps": len(steady),
        "steady_from_step": steady[0]["step"] if steady else None,
        "tokens_per_s_per_gpu": tps,
        "padded_tokens_per_s_per_gpu": tps_padded,
        "padding_waste": padding_waste(steady),
        "reference_method_tokens_per_s_per_gpu": ref_tps,
        "wall_s": wall_s,
        "startup_s": startup,
        "peak_flops": peak,
        "peak_source": peak_source,
        "mfu_reference": reference_mfu(tps, stage, peak) if ref_stage_ok else None,
        "mfu_reference_method": reference_mfu(ref_tps, stage, peak) if ref_stage_ok else None,
        "mfu_exact": flops_per_s_gpu / peak if flops_per_s_gpu is not None and peak else None,
        "model_flops_per_s_per_gpu": flops_per_s_gpu,
        "exact_flops_per_real_token": exact_flops / _sum(steady, "real_tokens") if exact_flops else None,
        "loss_tail_mean": loss_mean,
        "loss_tail_steps": loss_n,
        "loss_last": loss_last,
        **mem,
        "mmmu_acc": mmmu_acc,
        "checkpoints": len(events.checkpoints),
        "checkpoint_s": sum(checkpoint_s) if checkpoint_s else None,
        "save_s": (events.save or {}).get("seconds"),
        "save_bytes": (events.save or {}).get("bytes"),
        "data": data_counts(steps, facts),
        "notes": notes,
    }
    if not ref_stage_ok and steps:
        notes.append(f"reference MFU n/a: the seed's formula has no factor for stage {stage!r}")
    return {k: _finite(v) for k, v in out.items()}


def _stage_names(run_dir: Path, run_info: dict[str, Any], status: RunStatus) -> list[str]:
    """Stages in run.json order, then any other stage that has status lines or an events.log."""
    names: list[str] = []
    for s in run_info.get("stages") or []:  # names, or tables with a name
        n = s.get("name") if isinstance(s, dict) else s
        if isinstance(n, str) and n not in names:
            names.append(n)
    extra = list(status.stages) + sorted(p.parent.name for p in run_dir.glob("*/events.log"))
    for n in extra:
        if n not in names:
            names.append(n)
    return names


def stage_summary(run_dir: str | Path, stage: str, peak_flops: float | None = None) -> dict[str, Any]:
    """Derived metrics of one stage of a run directory (see `summarize_stage` for the keys)."""
    rd = Path(run_dir)
    status = read_status(rd)
    mmmu = mmmu_accuracy(rd) if stage == "finetune" else None
    return summarize_stage(
        load_stage(rd / stage), status.stages.get(stage), status, read_run_json(rd), peak_flops, mmmu
    )


def run_summary(run_dir: str | Path, peak_flops: float | None = None) -> dict[str, Any]:
    """The whole run: every stage (planned or present), the run's state, MMMU; what summary.json holds."""
    rd = Path(run_dir)
    info = read_run_json(rd)
    status = read_status(rd)
    cfg = info.get("config") if isinstance(info.get("config"), dict) else {}
    mmmu = mmmu_accuracy(rd)
    # Training stages are the table's rows; the eval stage feeds the MMMU column and has a section of its own.
    names = [n for n in _stage_names(rd, info, status) if n != "eval"]
    stages = {
        n: summarize_stage(
            load_stage(rd / n), status.stages.get(n), status, info, peak_flops, mmmu if n == "finetune" else None
        )
        for n in names
    }
    states = [s["state"] for s in stages.values()]
    ev = status.stages.get("eval")
    if ev is not None:  # the eval stage decides the run's state as much as the training stages do
        states.append(ev.state if ev.state in STAGE_TERMINAL else "running" if ev.state == "launched" else "pending")
    if "running" in states and status.run_state not in STAGE_TERMINAL:
        from kit.guard import held

        if not held(rd):  # no kit process holds the run: it was killed (SIGKILL, a lost host); resume continues it
            for st in stages.values():
                if st["state"] == "running":
                    st["state"] = "stopped"
                    st["notes"].append("stopped: no kit process holds the run (killed?); `kit resume` continues it")
            states = ["stopped" if x == "running" else x for x in states]
    if status.run_state in STAGE_TERMINAL:
        state = status.run_state
    elif "running" in states:
        state = "running"
    elif states and all(s == "finished" for s in states):
        state = "finished"
    elif any(s in ("failed", "interrupted", "stopped") for s in states):
        state = next(s for s in states if s in ("failed", "interrupted", "stopped"))
    else:
        state = "pending" if not status.stages else "running"
    return {
        "schema": SUMMARY_SCHEMA,
        "run_id": info.get("run_id") or rd.name,
        "case": info.get("case"),
        "config": cfg.get("name"),
        "device": cfg.get("device"),
        "nodes": info.get("nodes"),
        "gpus": info.get("gpus"),
        "state": state,
        "stage_order": names,
        "stages": stages,
        "mmmu_acc": mmmu,
        "eval": eval_summary(rd, status),
        "rules": {"steady_state": STEADY_RULE, "loss": LOSS_RULE},
        "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "kit_version": __version__,
    }

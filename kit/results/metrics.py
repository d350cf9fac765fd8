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
import statistics
import sys
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from kit import __version__
from kit.run.dir import RunDirError
from kit.run.events import STAGE_TERMINAL, RunStatus, StageEvents, StageStatus, load_stage, read_status

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

GIB = 2**30
REFERENCE_PARAMS = 7e9  # the seed's flat parameter count for LLaVA-1.5-7B
REFERENCE_FACTOR = {"pretrain": 2, "finetune": 6}  # the seed's FLOPs per parameter per token
ACCELERATORS_TOML = Path(__file__).resolve().parents[2] / "env" / "accelerators.toml"
SUMMARY_SCHEMA = "kit.summary/1"

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

# The hook for warnings about how a stage ran that other modules derive from the stage directory (the device
# monitor's "other processes used the devices", "throttled"): each callable takes the stage directory and returns
# warning lines (or None). run_summary calls every one for every stage; each line lands in the stage's
# `stage_warnings` and is shown in every format of `kit report`. A hook that raises is reported, never fatal.
STAGE_WARNING_HOOKS: list[Callable[[Path], Iterable[str] | None]] = []


class RunInputError(RunDirError):
    """A file of the run directory the report needs is damaged: the message names the file and the reason."""


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
        if not _timed(s):
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
    return [s for s in kept if _timed(s)]


def _sum(steps: Iterable[dict[str, Any]], key: str) -> float:
    return float(sum(s[key] for s in steps if _finite_num(s.get(key))))


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
    times = [float(s["step_time_s"]) for s in steps if _timed(s)]
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
    timed = [s for s in steps if _timed(s)]
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
    timed = [s for s in steps if _timed(s)]
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
    """run.json, or {} when it is missing or damaged (check_run_inputs is the strict reader)."""
    data = _read_json(Path(run_dir) / "run.json")
    return data if isinstance(data, dict) else {}


_RAW_FACTS_KEPT = "the raw facts (events.log, status.jsonl) are not touched"


def check_run_inputs(run_dir: str | Path) -> None:
    """Raise RunInputError, naming the file and the reason, when the report cannot go on from this run directory.

    The report needs run.json (a JSON object with the case: without it the rows cannot be named or set beside the
    reference), the run's config (run.json's config table, or config.toml), and a status.jsonl with at least one
    readable line when it has any. A damaged line among good ones is not fatal: the summary notes it.
    """
    rd = Path(run_dir)
    p = rd / "run.json"
    try:
        text = p.read_text(errors="replace")
    except OSError as e:
        raise RunInputError(f"{p} cannot be read ({e.strerror or e})") from None
    fix = f"restore it from a copy of the run (a submission keeps one); {_RAW_FACTS_KEPT}"
    if not text.strip():
        raise RunInputError(f"{p} is empty: the run's request (case, config, stages) is lost, so its rows cannot be "
                            f"named or set beside the reference; {fix}")  # fmt: skip
    try:
        data = json.loads(text)
    except ValueError as e:
        raise RunInputError(f"{p} is not valid JSON ({e}): the file is damaged; {fix}") from None
    if not isinstance(data, dict):
        raise RunInputError(f"{p} holds a JSON {type(data).__name__}, not an object: the file is damaged; {fix}")
    if not isinstance(data.get("case"), str):
        raise RunInputError(f"{p} names no case (key \"case\"): the reference rows cannot be found; {fix}")
    if not isinstance(data.get("config"), dict):
        c = rd / "config.toml"
        if not c.is_file():
            raise RunInputError(f"{p} has no config table and {c} does not exist: the run's config is lost; {fix}")
        try:
            tomllib.loads(c.read_text(errors="replace"))
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise RunInputError(f"{c} is damaged ({e}) and {p} has no config table: the run's config is lost; "
                                f"{fix}") from None  # fmt: skip
    status = read_status(rd)
    if status.unreadable:
        raise RunInputError(f"{rd / 'status.jsonl'} has {status.lines} line(s) and not one readable status line: "
                            "the stages' states and launch times are lost; restore it from a copy of the run")  # fmt: skip


def run_config(run_dir: str | Path, info: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The run's resolved config: run.json's config table, else config.toml; (config, warnings)."""
    if isinstance(info.get("config"), dict):
        return info["config"], []
    c = Path(run_dir) / "config.toml"
    try:
        cfg = tomllib.loads(c.read_text(errors="replace"))
    except (OSError, tomllib.TOMLDecodeError) as e:
        return {}, [f"run.json has no config table and config.toml cannot be read ({e}): the config is unknown"]
    cfg.setdefault("name", Path(info.get("config_path") or "").stem or None)
    return cfg, ["run.json has no config table: the config is read from config.toml"]


# ---- comparable with the seed's rows ----

SHAPE_KEYS = ("llm", "vision", "projector", "max_length")  # the model section's keys that define its shape


def model_shape(cfg: dict[str, Any]) -> dict[str, Any] | None:
    """The model's shape in a resolved config (LLM and CLIP sizes, projector, max length); None without a model."""
    m = cfg.get("model")
    if not isinstance(m, dict) or not m:
        return None
    return {k: m.get(k) for k in SHAPE_KEYS}


def _case_reference(case: str | None) -> tuple[Any, dict[str, Any] | None, str | None]:
    """(the case's rules, its reference config as a dict, why not) from cases/<case>/rules.toml."""
    if not case:
        return None, None, "the run names no case"
    try:
        from kit.case import rules as rules_mod

        r = rules_mod.load(case)
        return r, rules_mod.reference_for(r, {}, False), None
    except Exception as e:  # an unknown case, a case without rules: nothing to compare with, say why
        return None, None, f"the case's rules cannot be read ({e})"


def _data_of_stage(
    stage: str, entry: dict[str, Any] | None, records: Any, rules: Any, ref_cfg: dict[str, Any]
) -> tuple[str, str | None]:
    """(reference | filtered | other, detail) for one training stage of a run on real data (inputs.json's entry)."""
    from kit.case import rules as rules_mod

    if not isinstance(entry, dict):
        return "unknown", f"{stage}: inputs.json records no data for the stage"
    fixed = (ref_cfg.get("data") or {}).get(f"{stage}_json")
    prov = entry.get("filter")
    expected = rules.records.get(stage)
    if prov:
        why = rules_mod.filter_standing(rules, stage, fixed, prov)
        if why is not None:
            return "other", f"{stage}: filtered record file {entry.get('records_file')} the rules do not admit: {why}"
        dropped = int(prov.get("dropped") or 0)
        if isinstance(records, int) and isinstance(expected, int) and records != expected - dropped:
            return "other", f"{stage}: {records:,} records, the filtered reference set has {expected - dropped:,}"
        return "filtered", f"{stage}: {dropped:,} records filtered out by `kit data fix` (admitted by the rules)"
    if entry.get("missing"):
        return "unknown", f"{stage}: the record file {entry.get('records_file')} was missing when the run started"
    if fixed and entry.get("records_file") != fixed:
        return "other", f"{stage}: record file {entry.get('records_file')}, the reference reads {fixed}"
    pin = rules.data.get(f"{stage}_sha256")
    if pin and entry.get("sha256") != pin:
        return "other", f"{stage}: record file sha256 {str(entry.get('sha256'))[:16]}, the reference's is {pin[:16]}"
    if isinstance(records, int) and isinstance(expected, int) and records != expected:
        return "other", f"{stage}: {records:,} records, the reference set has {expected:,}"
    return "reference", None


def comparability(
    info: dict[str, Any], cfg: dict[str, Any], inputs: dict[str, Any] | None, stages: Sequence[str],
    stage_records: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Whether the run's figures may be set beside the seed's: its data, weights and model shape, each the
    reference's or not, a boolean and a one-line reason. Pure (the rules and reference config are the case's).

    data: reference | synthetic | filtered (a `kit data fix --write-filtered` file the rules admit) | other |
    unknown (no inputs.json); weights: published | random init | finetuned model (eval alone) | other | unknown;
    shape: "reference shape" or "<config> shape" | unknown. Comparable: reference or filtered data, published
    (or, eval alone, finetuned) weights and the reference shape.
    """
    rules, ref_cfg, why_no_ref = _case_reference(info.get("case"))
    synthetic = bool(info.get("synthetic")) or bool((inputs or {}).get("synthetic"))
    training = [s for s in stages if s in ("pretrain", "finetune")]
    details: list[str] = []

    by_stage: dict[str, str] = {}
    if synthetic:
        data = "synthetic"
        by_stage = {s: "synthetic" for s in training}
    elif inputs is None:
        data = "unknown"
        details.append("no inputs.json: what the run read is not known by content")
    elif not training:  # eval alone: its data is MMMU validation
        mm = inputs.get("mmmu") if isinstance(inputs.get("mmmu"), dict) else None
        data = "reference" if mm and mm.get("files") else "unknown"
        if data == "unknown":
            details.append("inputs.json records no MMMU files")
    elif rules is None:
        data = "unknown"
        details.append(str(why_no_ref))
    else:
        stage_entries = ((inputs.get("data") or {}).get("stages") or {}) if isinstance(inputs.get("data"), dict) else {}
        for s in training:
            label, detail = _data_of_stage(s, stage_entries.get(s), (stage_records or {}).get(s), rules, ref_cfg or {})
            by_stage[s] = label
            if detail:
                details.append(detail)
        labels = set(by_stage.values())
        data = next(x for x in ("other", "unknown", "filtered", "reference") if x in labels)

    weights_in = (inputs or {}).get("weights") if isinstance((inputs or {}).get("weights"), dict) else None
    if synthetic or (weights_in or {}).get("random_init"):
        weights = "random init"
    elif not training and (info.get("model_dir") or inputs is not None):
        weights = "finetuned model"
    elif weights_in is None:
        weights = "unknown"
        if inputs is not None:
            details.append("inputs.json records no weights")
    else:
        weights = "published"
        for part in ("llm", "vision"):
            pin = (rules.weights.get(f"{part}_sha256") if rules is not None else None) or None
            got = (weights_in.get(part) or {}).get("digest")
            if pin and got != pin:
                weights = "other"
                details.append(f"{part} weights digest {str(got)[:16]}, the published one is {pin[:16]}")

    shape_run = model_shape(cfg)
    shape_ref = model_shape(ref_cfg) if ref_cfg else None
    if shape_run is None:
        shape = "unknown"
        details.append("the run's config has no model section")
    elif shape_ref is None:
        shape = "unknown"
        if why_no_ref and why_no_ref not in details:
            details.append(why_no_ref)
    elif shape_run == shape_ref:
        shape = "reference shape"
    else:
        shape = f"{cfg.get('name') or 'its own'} shape"

    ok = data in ("reference", "filtered") and weights in ("published", "finetuned model") and shape == "reference shape"
    if ok:
        parts = [f"{data} data", f"{weights} weights" if weights != "finetuned model" else "a finetuned model", shape]
    else:
        parts = []
        if data != "reference" and data != "filtered":
            parts.append("data unknown" if data == "unknown" else f"{data} data")
        if weights not in ("published", "finetuned model"):
            parts.append("weights unknown" if weights == "unknown" else f"{weights.replace(' ', '-')} weights")
        if shape != "reference shape":
            parts.append("shape unknown" if shape == "unknown" else shape)
    return {
        "comparable": ok,
        "reason": ", ".join(parts),
        "data": data,
        "weights": weights,
        "shape": shape,
        "data_by_stage": by_stage,
        "details": details,
    }


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


def eval_summary(run_dir: Path, status: RunStatus, generated: bool = False) -> dict[str, Any] | None:
    """The eval stage at a glance: its state, questions, decoding and wall time (None when it never ran).

    generated: the questions were made by --synthetic in MMMU's format (not MMMU validation).
    """
    st = status.stages.get("eval")
    events = load_stage(run_dir / "eval")
    if st is None and not events.facts:
        return None
    scored = _read_json(run_dir / "eval" / "mmmu" / "summary.json")
    state = stage_state(st, events, status)
    wall = (st.end_t - st.launched_t) if st is not None and st.end_t and st.launched_t else None
    return {
        "state": state,
        "questions": scored.get("num") if isinstance(scored, dict) else events.facts.get("questions"),
        "decoding": events.facts.get("decoding"),
        "wall_s": wall,
        "overall": mmmu_accuracy(run_dir),
        "generated": generated,
        "device_type": events.facts.get("device_type"),
        "stage_warnings": damage_warnings(events, state),
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
    run_info: dict[str, Any],
    peak_flops: float | None = None,
    mmmu_acc: float | None = None,
) -> dict[str, Any]:
    """The derived numbers of one stage from already-read facts (pure; stage_summary reads the files)."""
    notes: list[str] = []
    facts, steps, stage = events.facts, clocked_steps(events), events.stage
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
    first_step = next((float(s["step_time_s"]) for s in steps if _timed(s)), None)
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
        "stage_warnings": warnings,
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


def _monitor(stage_dir: Path, st: dict[str, Any]) -> dict[str, Any] | None:
    """The stage's device (or host) samples, summarised (kit/monitor.py; docs/monitoring.md); its warnings (throttling,
    other processes on the devices or the CPU) join the stage's. None when the stage has no monitor.jsonl."""
    from kit.run.monitor import monitor_summary

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
        except Exception as e:  # one broken source of warnings must not hide the report
            out.append(f"warning source {getattr(hook, '__name__', hook)!r} failed on {stage_dir.name}: {e}")
    return out


def run_summary(run_dir: str | Path, peak_flops: float | None = None) -> dict[str, Any]:
    """The whole run: every stage (planned or present), the run's state, MMMU; what summary.json holds.

    Tolerant of damage (a report must show what can be shown): check_run_inputs is the strict gate that
    `kit report` passes first. Damage found here is in the `warnings` (run) and `stage_warnings` (stage).
    """
    rd = Path(run_dir)
    info = read_run_json(rd)
    status = read_status(rd)
    cfg, run_warnings = run_config(rd, info)
    if status.torn_lines:
        run_warnings.append(f"status.jsonl: {len(status.torn_lines)} damaged line(s) (line "
                            f"{', '.join(str(n) for n in status.torn_lines[:10])}): left out of the stages' states")  # fmt: skip
    inputs_raw = _read_json(rd / "inputs.json")
    inputs = inputs_raw if isinstance(inputs_raw, dict) else None
    if inputs is None and (rd / "inputs.json").exists():
        run_warnings.append("inputs.json is damaged: what the run read is not known by content")
    mmmu = mmmu_accuracy(rd)
    # Training stages are the table's rows; the eval stage feeds the MMMU column and has a section of its own.
    all_names = _stage_names(rd, info, status)
    names = [n for n in all_names if n != "eval"]
    stages = {
        n: summarize_stage(
            load_stage(rd / n), status.stages.get(n), status, info, peak_flops, mmmu if n == "finetune" else None
        )
        for n in names
    }
    generated = bool(info.get("synthetic")) or bool(((inputs or {}).get("mmmu") or {}).get("generated"))
    ev_sum = eval_summary(rd, status, generated)
    for n, st in [*stages.items(), *([("eval", ev_sum)] if ev_sum is not None else [])]:
        st["monitor"] = _monitor(rd / n, st)
        st["stage_warnings"] += _hook_warnings(rd / n)
    states = [s["state"] for s in stages.values()]
    if ev_sum is not None:  # the eval stage decides the run's state as much as the training stages do
        states.append(ev_sum["state"])
    # A run line "finished" counts only when every stage finished: a stage launched and never ended is not done.
    run_line = status.run_state
    if run_line == "finished" and any(x != "finished" for x in states):
        run_line = None
        run_warnings.append("status.jsonl says the run finished, but not every stage did: "
                            + ", ".join(f"{n} {st['state']}" for n, st in [*stages.items(), ("eval", ev_sum or {})]
                                        if st and st.get("state") != "finished"))  # fmt: skip
    if "running" in states and run_line not in STAGE_TERMINAL:
        from kit.run.guard import held

        if not held(rd):  # no kit process holds the run: it was killed (SIGKILL, a lost host); resume continues it
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
        "eval": ev_sum,
        "comparable": comparability(info, cfg, inputs, all_names, stage_records),
        "warnings": run_warnings,
        "rules": {"steady_state": STEADY_RULE, "loss": LOSS_RULE, "spread": SPREAD_RULE, "drift": DRIFT_RULE,
                  "step_clock": STEP_CLOCK_RULE},
        "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "kit_version": __version__,
    }

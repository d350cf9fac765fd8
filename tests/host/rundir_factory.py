"""Build run directories by hand, in the exact contract format (docs/run-directory.md), for host tests.

events.log lines are written with plain json in the shape mlperf-logging emits
(`:::MLLOG {"namespace", "time_ms", "event_type", "key", "value", "metadata"}`), so these tests need
neither the case nor mlperf-logging. Step facts are simple functions of the step number, so a test can
recompute any metric by hand.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

T0 = 1_700_000_000.0  # epoch seconds of the first status line
GIB = 2**30

# A small model shape whose FLOPs are easy to compute by hand.
SMALL_MODEL: dict[str, Any] = {
    "llm_layers": 2, "llm_hidden": 8, "llm_heads": 2, "llm_kv_heads": 2, "llm_head_dim": 4, "llm_ffn": 16,
    "vocab": 32, "llm_body_matmul_params": 1000, "lm_head_params": 256, "embed_params": 256,
    "vision_layers_run": 3, "vision_hidden": 4, "vision_tokens": 5, "vision_matmul_params_run": 100,
    "projector_params": 50, "image_tokens": 4, "total_params": 2000, "trainable_params": 50,
}
STAGE_TRAINS = {
    "pretrain": {"trainable_llm": False, "trainable_projector": True, "trainable_vision": False},
    "finetune": {"trainable_llm": True, "trainable_projector": True, "trainable_vision": False},
}


def mllog(key: str, value: Any, time_ms: float, event_type: str = "POINT_IN_TIME",
          metadata: dict[str, Any] | None = None) -> str:
    event = {"namespace": "", "time_ms": round(time_ms), "event_type": event_type, "key": key, "value": value,
             "metadata": {"file": "train.py", "lineno": 1, **(metadata or {})}}
    return ":::MLLOG " + json.dumps(event)


def step_facts(step: int, step_time_s: float = 2.0, mem_total: int = 80 * GIB) -> dict[str, Any]:
    """Raw facts of one step, a pure function of the step number."""
    return {
        "step": step, "step_time_s": step_time_s, "samples": 8, "images": 8,
        "real_tokens": 1000 + 10 * step, "padded_tokens": 1600, "real_tokens_sq": 125_000 + 100 * step,
        "supervised_tokens": 200, "loss": 3.0 - 0.01 * step, "lr": 1e-3,
        "mem_allocated_peak_bytes": 40 * GIB + step, "mem_reserved_peak_bytes": 50 * GIB + step,
        "device_mem_used_bytes": 60 * GIB + step * GIB // 10, "device_mem_total_bytes": mem_total,
    }


@dataclass
class StageSpec:
    """One stage to write. state: finished | failed | interrupted | running | pending (never launched)."""

    name: str
    steps: int = 20
    state: str = "finished"
    step_time_s: float = 2.0
    startup_s: float = 30.0  # launch -> init_stop
    save_s: float = 5.0
    resume_at: int | None = None  # a second attempt restarts at this step (re-logging the steps after it)
    device_name: str = "NVIDIA H200"
    device_type: str = "cuda"
    world_size: int = 2
    steps_planned: int | None = None
    partial_last_line: bool = False
    extra_lines: list[str] = field(default_factory=list)
    step_times: list[float] | None = None  # per step (1-based order); default: step_time_s for every step

    def time_of(self, step: int) -> float:
        return self.step_times[step - 1] if self.step_times else self.step_time_s


def _facts(spec: StageSpec, resumed_from: int) -> dict[str, Any]:
    return {
        "stage": spec.name, "world_size": spec.world_size, "nodes": 1, "micro_batch": 4, "grad_accum": 1,
        "global_batch": 4 * spec.world_size, "records": 1000, "steps_total": spec.steps_planned or spec.steps,
        "steps_planned": spec.steps_planned or spec.steps, "warmup_steps": 1, "zero_stage": 2,
        "offload_optimizer": 0.0, "gradient_checkpointing": True, "attn_implementation": "sdpa",
        "dtype": "bf16", "device_type": spec.device_type, "device_name": spec.device_name,
        "device_count": spec.world_size, "device_mem_total_bytes": 80 * GIB, "resumed_from_step": resumed_from,
        "versions": {"torch": "2.3.0", "deepspeed": "0.13.1", "transformers": "4.37.2", "flash_attn": None},
        "model": {**SMALL_MODEL, **STAGE_TRAINS.get(spec.name, STAGE_TRAINS["finetune"])},
    }


def write_stage(run_dir: Path, spec: StageSpec, t_launch: float, status: list[dict[str, Any]]) -> float:
    """Write <stage>/events.log and append the stage's status lines; returns the stage's end time (s)."""
    d = run_dir / spec.name
    status.append(_status(t_launch - 1, spec.name, "created"))
    if spec.state == "pending":
        return t_launch
    d.mkdir(parents=True, exist_ok=True)
    lines: list[str] = ["deepspeed banner: not an event", *spec.extra_lines]
    status.append(_status(t_launch, spec.name, "launched"))
    t = t_launch
    attempts = [(1, spec.steps if spec.resume_at is None else spec.resume_at + 3)]
    if spec.resume_at is not None:
        attempts.append((spec.resume_at + 1, spec.steps))
    for i, (first, last) in enumerate(attempts):
        if i:
            status.append(_status(t + 1, spec.name, "interrupted", "SIGTERM"))
            t += 10
            status.append(_status(t, spec.name, "launched"))
        ms = (t + 1) * 1000
        lines.append(mllog("init_start", {"stage": spec.name}, ms, "INTERVAL_START"))
        lines.append(mllog("kit_facts", _facts(spec, first - 1), ms + 10))
        t += spec.startup_s
        lines.append(mllog("init_stop", None, t * 1000, "INTERVAL_END"))
        lines.append(mllog("run_start", {"step": first}, t * 1000, "INTERVAL_START"))
        for k in range(first, last + 1):  # stamped with the step's end, as the case does
            t += spec.time_of(k)
            lines.append(mllog("kit_step", step_facts(k, spec.time_of(k)), t * 1000))
            if k % 10 == 0:
                lines.append(mllog("kit_checkpoint", {"step": k, "seconds": 1.5, "path": f"checkpoint/step{k}"}, t * 1000))
    if spec.state == "finished":
        lines.append(mllog("run_stop", {"steps": spec.steps}, t * 1000, "INTERVAL_END", {"status": "success"}))
        t += spec.save_s
        lines.append(mllog("kit_save", {"seconds": spec.save_s, "path": "mm_projector.bin", "bytes": 1234}, t * 1000))
        t += 1
        status.append(_status(t, spec.name, "finished"))
    elif spec.state in ("failed", "interrupted"):
        lines.append(mllog("run_stop", {"steps": spec.steps}, t * 1000, "INTERVAL_END", {"status": "aborted"}))
        t += 1
        status.append(_status(t, spec.name, spec.state, "test"))
    text = "\n".join(lines) + "\n"
    if spec.partial_last_line:
        text += mllog("kit_step", step_facts(spec.steps + 1), (t + 1) * 1000)[:-25]  # still being written
    (d / "events.log").write_text(text)
    return t


def _status(t: float, stage: str | None, state: str, detail: Any = None) -> dict[str, Any]:
    from datetime import datetime, timezone

    return {"time": datetime.fromtimestamp(t, timezone.utc).isoformat(), "t": t, "stage": stage,
            "state": state, "detail": detail}


def make_run(
    root: Path, stages: list[StageSpec] | None = None, *, run_id: str = "run-1", config: str = "H200x1x1",
    device: str = "H200", run_state: str | None = "auto", mmmu: Any = None, partial_status_line: bool = False,
) -> Path:
    """A run directory under `root`. run_state "auto": the run ends like its last launched stage
    (no run line while a stage is running); None: no run-level line."""
    stages = stages if stages is not None else [StageSpec("pretrain"), StageSpec("finetune")]
    rd = root / run_id
    rd.mkdir(parents=True)
    world = stages[0].world_size if stages else 1
    (rd / "run.json").write_text(json.dumps({
        "run_id": run_id, "case": "llava1_5_7b",
        "config": {"name": config, "device": device, "nodes": 1, "gpus_per_node": world},
        "stages": [s.name for s in stages], "nodes": 1, "gpus": world, "kit_version": "0.1.0",
    }))
    status: list[dict[str, Any]] = []
    t = T0
    written: list[StageSpec] = []
    for spec in stages:  # a stage that did not finish is the last one written (later ones: no lines)
        t = write_stage(rd, spec, t + 2, status)
        written.append(spec)
        if spec.state != "finished":
            break
    if run_state == "auto":
        last = written[-1].state if written else None
        run_state = None if last in (None, "running", "pending") else last
    if run_state:
        status.append(_status(t + 1, None, run_state))
    text = "".join(json.dumps(s) + "\n" for s in status)
    if partial_status_line:
        text += '{"time": "2023-11-14T22:13:20", "t": 1, "stage": "pretrain", "sta'
    (rd / "status.jsonl").write_text(text)
    if mmmu is not None:
        (rd / "eval" / "mmmu").mkdir(parents=True)
        (rd / "eval" / "mmmu" / "summary.json").write_text(json.dumps({"overall": mmmu}))
    return rd

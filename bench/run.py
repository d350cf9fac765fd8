"""Benchmark runner: each configuration of a plan through `kit run`, one JSON result per configuration.

    python bench/run.py bench/plans/h200.toml [--only NAME ...] [--out bench/results] [--results runs/bench]

A plan is TOML: one [[run]] table per configuration with name, config, stage, gpus, max_steps, the
`--set` overrides, and `expect` (the gain expected before measuring, kept beside the figure). Every
figure comes from the run's own summary (kit report's formulas); a run that fails (out of memory, say)
is recorded as failed with its error, not dropped.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kit import __version__  # noqa: E402
from kit.launchers.base import rank_failures  # noqa: E402
from kit.results.samples import monitor_summary  # noqa: E402
from kit.results.summary import write_summary  # noqa: E402
from kit.run.dir import RunDir  # noqa: E402
from kit.run.events import load_stage  # noqa: E402

FIELDS = ("tokens_per_s_per_gpu", "padded_tokens_per_s_per_gpu", "reference_method_tokens_per_s_per_gpu",
          "mfu_reference", "mfu_exact", "padding_waste", "startup_s", "loss_tail_mean", "steady_steps")  # fmt: skip


def _gib(n: float | None) -> float | None:
    return None if n is None else round(n / 2**30, 2)


def run_one(spec: dict, results: Path, phase_times: bool = False) -> dict:
    stage = spec["stage"]
    cmd = [
        sys.executable, "-m", "kit.cli", "run", spec.get("case", "llava1_5_7b"),
        "--config", spec["config"], "--stage", stage, "--gpus", str(spec.get("gpus", 1)),
        "--synthetic", "--native", "--no-save", "--max-steps", str(spec["max_steps"]),
        "--results", str(results),
    ]  # fmt: skip
    for item in spec.get("set", []):
        cmd += ["--set", item]
    before = set(results.glob("*/run.json")) if results.exists() else set()
    t0 = time.time()
    env = dict(os.environ)
    if phase_times:  # bench/phase_timer/sitecustomize.py times the engine's forward, backward and step
        env["KIT_PHASE_TIMES"] = "1"
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "bench" / "phase_timer"), env.get("PYTHONPATH")]))
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    runs = sorted(set(results.glob("*/run.json")) - before)
    out = {
        "name": spec["name"], "stage": stage, "config": spec["config"], "overrides": spec.get("set", []),
        "gpus": spec.get("gpus", 1), "max_steps": spec["max_steps"], "expect": spec.get("expect", ""),
        "command": " ".join(cmd[2:]), "exit_code": proc.returncode, "wall_s": time.time() - t0,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "kit_version": __version__,
    }  # fmt: skip
    if not runs:
        return {**out, "state": "failed", "error": (proc.stdout + proc.stderr)[-3000:]}
    run = runs[0].parent
    summary = write_summary(run, plots=False)
    st = summary["stages"].get(stage, {})
    events = load_stage(run / stage)
    facts = events.facts
    out.update(
        {
            "run_id": run.name,
            "state": st.get("state"),
            "device": facts.get("device_name"),
            "versions": facts.get("versions"),
            "attn_implementation": facts.get("attn_implementation"),
            "micro_batch": facts.get("micro_batch"),
            "grad_accum": facts.get("grad_accum"),
            "global_batch": facts.get("global_batch"),
            "stage_config": (resolved := RunDir(run).config()).get(stage),
            "levers": {
                "gradient_checkpointing": resolved[stage]["gradient_checkpointing"],
                "uncheckpointed_layers": resolved[stage].get("uncheckpointed_layers", 0),
                "uncheckpointed_max_positions": resolved[stage].get("uncheckpointed_max_positions", 0),
                "kernels": resolved["model"].get("kernels", "none"),
                "micro_batch_order": resolved[stage].get("micro_batch_order", "sampled"),
                "micro_batch_lengths": resolved[stage].get("micro_batch_lengths", "words"),
                "offload_optimizer": resolved[stage]["offload_optimizer"],
                "param_persistence": resolved[stage].get("param_persistence"),
                "reduce_bucket": resolved[stage].get("reduce_bucket"),
                "zero3_leaf_layers": resolved[stage].get("zero3_leaf_layers", False),
            },
            "records": facts.get("records"),  # the stage's data set: max_steps + 1 global batches since 2026-11-29
            "steps_done": st.get("steps_done"),
            # micro-batches over uncheckpointed_max_positions, every layer recomputed (all steps, all ranks)
            "fully_recomputed_micro_batches": sum(s.get("fully_recomputed_micro_batches", 0) for s in events.steps),
            "peak_mem_gib": st.get("mem_used_peak_gib"),
            "mem_total_gib": st.get("mem_total_gib"),
            "mem_reserved_peak_gib": st.get("mem_reserved_peak_gib"),
            # the whole host's memory in use at its peak (the monitor's /proc/meminfo samples): the optimizer offload
            # and everything else the run and the machine held, set against the fit's host estimate
            "host_mem_used_peak_gib": _gib((host := (monitor_summary(run / stage) or {}).get("host") or {})
                                           .get("mem_used_bytes_max")),  # fmt: skip
            "host_mem_total_gib": _gib(host.get("mem_total_bytes")),
            **{k: st.get(k) for k in FIELDS},
        }
    )
    if phase_times:
        from phase_times import parse  # noqa: E402 - bench/ is this script's directory

        log = run / stage / "logs" / "rank0.log"
        out["phase_times_s"] = parse(log.read_text(errors="replace")) if log.exists() else []
        out["phase_times_source"] = "bench/phase_timer (bench/run.py --phase-times), rank-0 log"
    if proc.returncode != 0:
        failures = rank_failures(run / stage)
        out["error"] = failures[0]["exception"] if failures else (proc.stdout + proc.stderr)[-3000:]
    return out


def _fmt(row: dict, key: str, spec: str = "{:.1%}") -> str:
    return "-" if row.get(key) is None else spec.format(row[key])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("plan", type=Path)
    ap.add_argument("--only", nargs="*", help="names of the plan's runs to do (default: all)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--results", type=Path, default=ROOT / "runs" / "bench")
    ap.add_argument("--phase-times", action="store_true", help="time forward/backward/step per step (phase_timer/)")
    ap.add_argument("--warmup", action="store_true",
                    help="first run the first selected configuration once more, unfiled: on a freshly started machine "
                         "the first run's steps ran slower (kernels compiled on first use; h200x1-finetune-keep4.json "
                         "and h200x1-finetune-keep8-bounded-first-run.json)")
    args = ap.parse_args()
    plan = tomllib.loads(args.plan.read_text())
    specs = [s for s in plan["run"] if not args.only or s["name"] in args.only]
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    if args.warmup and specs:
        spec = {**specs[0], "name": f"{specs[0]['name']} (warm-up, not filed)"}
        print(f"== {spec['name']}", flush=True)
        res = run_one(spec, args.results, args.phase_times)
        print(json.dumps({k: res.get(k) for k in ("state", "tokens_per_s_per_gpu", "error")}), flush=True)
    for spec in specs:
        print(f"== {spec['name']}: {spec.get('expect', '')}", flush=True)
        res = run_one(spec, args.results, args.phase_times)
        (args.out / f"{spec['name']}.json").write_text(json.dumps(res, indent=2) + "\n")
        rows.append(res)
        print(json.dumps({k: res.get(k) for k in ("state", "tokens_per_s_per_gpu", "mfu_reference", "mfu_exact",
                                                   "padding_waste", "peak_mem_gib", "error")}), flush=True)  # fmt: skip
    print(f"\n{'name':34} {'state':9} {'tok/s/gpu':>9} {'refMFU':>7} {'exMFU':>7} {'waste':>6} {'GiB':>6}")
    for r in rows:
        print(f"{r['name']:34} {str(r.get('state')):9} {_fmt(r, 'tokens_per_s_per_gpu', '{:.0f}'):>9} "
              f"{_fmt(r, 'mfu_reference'):>7} {_fmt(r, 'mfu_exact'):>7} {_fmt(r, 'padding_waste'):>6} "
              f"{_fmt(r, 'peak_mem_gib', '{:.1f}'):>6}")  # fmt: skip
    return 0 if all(r.get("state") == "finished" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

"""The first run on a fresh machine against a warm one: the same `kit run` twice, the Triton kernels it compiled.

    python bench/first_run.py --config H200x1x1 --steps 12 --out bench/results/first-run/NAME.json

1. The RoPE check (GPU with liger-kernel only): liger's RoPE on the batch-folded layout (cases' model.batch_folded)
   against liger's own call and transformers' reference, on micro-batches of several sizes and lengths: the largest
   difference, and how many `_triton_rope` variants each way compiled into an empty Triton cache.
2. Two runs of `kit run CASE --config CONFIG --synthetic --native --stage finetune --max-steps N --no-save`, both
   with TRITON_CACHE_DIR set to one folder that is empty before the first: the first compiles every kernel it
   meets, the second finds them. Per run: wall time, start-up, every step's time, the steady figures of
   `kit report`, and the kernel variants found in the cache after it.

What it writes is raw: the step times, the counts, the report's numbers; the verdict lines are computed from them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def kernel_variants(cache: Path) -> dict[str, int]:
    """Compiled Triton kernels in a cache folder, by kernel name: one folder per compiled variant, holding
    `<kernel>.json` metadata (group files `__grp__*.json` are not kernels)."""
    seen: Counter[str] = Counter()
    for meta in cache.glob("*/*.json"):
        if not meta.name.startswith("__grp__"):
            seen[meta.stem] += 1
    return dict(seen.most_common())


ROPE_CHECK = r"""
import json, os, sys, torch
sys.path.insert(0, sys.argv[1])
from liger_kernel.transformers.rope import liger_rotary_pos_emb
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb
from cases.llava1_5_7b.model import batch_folded
folded = sys.argv[2] == "folded"
rope = batch_folded(liger_rotary_pos_emb) if folded else liger_rotary_pos_emb
worst = 0.0
shapes = [(b, n) for b in (1, 3, 8, 16, 37) for n in (100, 2048)]
for b, n in shapes:
    g = torch.Generator(device="cuda").manual_seed(b * 7 + n)
    q = torch.randn(b, n, 32, 128, device="cuda", dtype=torch.bfloat16, generator=g).transpose(1, 2)
    k = torch.randn(b, n, 32, 128, device="cuda", dtype=torch.bfloat16, generator=g).transpose(1, 2)
    pos = torch.arange(n, device="cuda", dtype=torch.float32)
    inv = 1.0 / (10000 ** (torch.arange(0, 128, 2, device="cuda", dtype=torch.float32) / 128))
    emb = torch.cat([torch.outer(pos, inv)] * 2, dim=-1)
    cos = emb.cos()[None].expand(b, n, 128).to(torch.bfloat16).contiguous()
    sin = emb.sin()[None].expand(b, n, 128).to(torch.bfloat16).contiguous()
    want_q, want_k = apply_rotary_pos_emb(q.clone(), k.clone(), cos, sin)
    qq, kk = q.clone().requires_grad_(), k.clone().requires_grad_()
    got_q, got_k = rope(qq, kk, cos, sin)
    (got_q.float().sum() + got_k.float().sum()).backward()
    worst = max(worst, (got_q.float() - want_q.float()).abs().max().item(), (got_k.float() - want_k.float()).abs().max().item())
torch.cuda.synchronize()
print(json.dumps({"layout": sys.argv[2], "shapes": len(shapes), "max_abs_diff_vs_transformers": worst}))
"""


def rope_check(python: str, work: Path) -> dict:
    """The folded and the plain call of liger's RoPE, each into an empty Triton cache of its own."""
    out = {}
    for layout in ("plain", "folded"):
        cache = work / f"triton-rope-{layout}"
        env = {**os.environ, "TRITON_CACHE_DIR": str(cache)}
        t0 = time.time()
        r = subprocess.run([python, "-c", ROPE_CHECK, str(ROOT), layout], capture_output=True, text=True, env=env,
                           timeout=600)  # fmt: skip
        if r.returncode != 0:
            out[layout] = {"error": r.stderr.strip().splitlines()[-3:]}
            continue
        facts = json.loads(r.stdout.strip().splitlines()[-1])
        out[layout] = {**facts, "seconds": round(time.time() - t0, 1), "variants": kernel_variants(cache)}
    return out


def one_run(args: argparse.Namespace, results: Path, cache: Path, label: str) -> dict:
    env = {**os.environ, "TRITON_CACHE_DIR": str(cache), "COLUMNS": "160"}
    cmd = [args.python, "-m", "kit.cli", "run", args.case, "--config", args.config, "--synthetic", "--native",
           "--stage", "finetune", "--max-steps", str(args.steps), "--no-save", "--results", str(results), *args.set_]  # fmt: skip
    t0 = time.time()
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    wall = time.time() - t0
    runs = sorted(p for p in results.iterdir() if (p / "run.json").exists())
    run = runs[-1] if runs else None
    out: dict = {"run": label, "command": " ".join(cmd), "exit_code": r.returncode, "wall_s": round(wall, 1),
                 "variants_after": kernel_variants(cache)}  # fmt: skip
    if r.returncode != 0 or run is None:
        out["error"] = (r.stdout + r.stderr).strip().splitlines()[-15:]
        return out
    from kit.run.events import load_stage

    steps = load_stage(run / "finetune").steps
    times = [round(float(s["step_time_s"]), 3) for s in steps]
    rep = subprocess.run([args.python, "-m", "kit.cli", "report", str(run), "--format", "json"], cwd=ROOT,
                         capture_output=True, text=True, env=env)  # fmt: skip
    stage = json.loads(rep.stdout)["stages"]["finetune"] if rep.returncode == 0 else {}
    later = times[2:]
    med = statistics.median(later) if later else None
    out.update({
        "run_dir": run.name,
        "step_time_s": times,
        "mean_step_3_on_s": round(statistics.fmean(later), 3) if later else None,
        "median_step_3_on_s": med,
        "worst_step_3_on_over_median": round(max(later) / med - 1, 4) if later and med else None,
        "report": {k: stage.get(k) for k in ("tokens_per_s_per_gpu", "reference_method_tokens_per_s_per_gpu",
                                             "startup_s", "wall_s", "step_time_median_s", "step_time_cv",
                                             "steady_steps", "padding_waste", "mem_used_peak_gib", "notes")},
    })  # fmt: skip
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--case", default="llava1_5_7b")
    p.add_argument("--config", default="H200x1x1")
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--python", default=sys.executable)
    p.add_argument("--set", dest="set_", action="append", default=[], metavar="--set KEY=VALUE")
    p.add_argument("--no-rope-check", action="store_true")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    args.set_ = [x for kv in args.set_ for x in ("--set", kv)]
    work = Path(tempfile.mkdtemp(prefix="kit-first-run-"))
    result: dict = {
        "bench": "first-run",
        "date": time.strftime("%Y-%m-%d"),
        "setup": {"config": args.config, "steps": args.steps, "overrides": args.set_, "python": args.python,
                  "host": os.uname().nodename},  # fmt: skip
        "expect": ("with the batch folded into the sequence, liger's RoPE compiles once per layout instead of once per "
                   "micro-batch size; the first run's first step and wall time close to the warm run's"),
    }
    try:
        import torch

        result["setup"]["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
        result["setup"]["torch"] = torch.__version__
        if torch.cuda.is_available() and not args.no_rope_check:
            result["rope_check"] = rope_check(args.python, work)
    except ImportError:
        pass
    cache = work / "triton-cache"
    cache.mkdir()
    results = work / "runs"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result["runs"] = []
    for label in ("first (empty Triton cache)", "second (the cache the first filled)"):
        args.out.write_text(json.dumps(result, indent=1) + "\n")  # what is known so far, should the call be cut
        result["runs"].append(one_run(args, results, cache, label))
    first, second = result["runs"]
    if "error" not in first and "error" not in second:
        a, b = first["report"], second["report"]
        result["verdict"] = {
            "first_step_s": [first["step_time_s"][0], second["step_time_s"][0]],
            "wall_s": [first["wall_s"], second["wall_s"]],
            "steady_tokens_per_s": [a.get("tokens_per_s_per_gpu"), b.get("tokens_per_s_per_gpu")],
            "first_over_warm_steady": round(a["tokens_per_s_per_gpu"] / b["tokens_per_s_per_gpu"] - 1, 4)
            if a.get("tokens_per_s_per_gpu") and b.get("tokens_per_s_per_gpu") else None,
            "first_over_warm_seed_method": round(a["reference_method_tokens_per_s_per_gpu"]
                                                 / b["reference_method_tokens_per_s_per_gpu"] - 1, 4)
            if a.get("reference_method_tokens_per_s_per_gpu") and b.get("reference_method_tokens_per_s_per_gpu") else None,
            "worst_step_3_on_over_median": [first["worst_step_3_on_over_median"], second["worst_step_3_on_over_median"]],
            "new_variants_in_second_run": {k: v - first["variants_after"].get(k, 0)
                                           for k, v in second["variants_after"].items()
                                           if v != first["variants_after"].get(k, 0)},
        }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result.get("verdict") or result, indent=1))
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

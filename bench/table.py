"""The README's performance table, built from bench/results/*.json (every figure from a result file).

    python bench/table.py [bench/results]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The seed's A800 rows (cases/llava1_5_7b/reference.toml), for comparison.
REFERENCE = [
    ("seed: A800 1x8 (reference)", "pretrain", "ZeRO-2, micro 32, GAS 1", 4013, 0.1801, 74),
    ("seed: A800 1x8 (reference)", "finetune", "ZeRO-3, micro 16, GAS 1", 2937, 0.3957, 78),
]


def pct(v: float | None) -> str:
    return "-" if v is None else f"{v * 100:.1f}%"


def checkpointing(lv: dict) -> str:
    if not lv.get("gradient_checkpointing"):
        return "no checkpointing"
    kept = lv.get("uncheckpointed_layers", 0)
    if not kept:
        return "checkpointing"
    bound = lv.get("uncheckpointed_max_positions", 0)
    return f"checkpointing but the last {kept} decoder layers" + (
        f" in micro-batches of up to {bound:,} positions" if bound else ""
    )


def cut_by(lv: dict) -> str:  # files from before micro_batch_lengths existed were cut by word counts
    if lv.get("micro_batch_order", "sampled") == "sampled":
        return ""
    return " of exact lengths" if lv.get("micro_batch_lengths", "words") == "tokens" else " of word-count lengths"


def rows(results: Path) -> list[str]:
    out = [
        "| device | stage | setup | token/p/s | MFU (ref formula) | exact MFU | padding waste | peak GiB | result file |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, stage, setup, tps, mfu, mem in REFERENCE:
        out.append(f"| {name} | {stage} | {setup} | {tps} | {pct(mfu)} | - | - | {mem} (GB, nvidia-smi) | - |")
    for p in sorted(results.glob("*.json"), key=lambda q: (json.loads(q.read_text()).get("stage"), q.name)):
        r = json.loads(p.read_text())
        lv = r.get("levers", {})
        setup = (
            f"micro {r.get('micro_batch')} x GAS {r.get('grad_accum')}, "
            f"{checkpointing(lv)}, "
            f"kernels {lv.get('kernels')}, micro-batches {lv.get('micro_batch_order')}{cut_by(lv)}, "
            f"offload {lv.get('offload_optimizer')}"
        )
        sc = r.get("stage_config", {})
        if sc.get("zero_stage") == 3 and sc.get("param_persistence", 10) >= 1e4:
            setup += ", all parameters resident"
        if sc.get("reduce_bucket", 1.0) != 1.0:
            setup += f", reduce bucket {sc['reduce_bucket']:g} x hidden^2"
        if sc.get("zero_stage") == 3 and sc.get("zero3_leaf_layers"):
            setup += ", layers as ZeRO-3 leaf modules"
        if r.get("records") is None:  # before 2026-11-29: max_steps global batches of data, the last one leftover
            setup += ", data of exactly its steps (leftover last step)"
        if r.get("note"):
            setup += " (see the file's note)"
        device = f"{r.get('device') or '?'} x{r.get('gpus')}"
        if r.get("state") != "finished":
            out.append(f"| {device} | {r['stage']} | {setup} | {r.get('state')}: see file | | | | | `{p.name}` |")
            continue
        tps = r.get("tokens_per_s_per_gpu")
        mem = r.get("peak_mem_gib")
        out.append(
            f"| {device} | {r['stage']} | {setup} | {tps:,.0f} | {pct(r.get('mfu_reference'))} | "
            f"{pct(r.get('mfu_exact'))} | {pct(r.get('padding_waste'))} | {mem:.0f} | `{p.name}` |"
        )
    return out


if __name__ == "__main__":
    print("\n".join(rows(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "bench" / "results")))

"""Padding waste of each micro-batch cut on a run's data, without a GPU: what `padding_waste` will read.

    python bench/padding.py --config H200x1x1 --stage finetune --data runs/X/synthetic [--steps 2-4] [--gpus 1]

The sampler is the training run's own (same seed, sampler, global batch and GAS), the lengths are the ones the
model sees (each sample tokenized, image features spliced in, cut at max_length), so the figure for a cut equals
the run's `padding_waste` over the same steps. Steps are 1-based like the run's (`--steps 2-4`: the steady steps
of a 4-step bench run). Each variant is a micro_batch_order with the lengths it cuts by; `--set` overrides the
config as `kit run --set` does (for example finetune.micro_batch=8).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cases.llava1_5_7b import config as config_mod  # noqa: E402
from cases.llava1_5_7b.data import LlavaDataset, StepBatchSampler  # noqa: E402
from cases.llava1_5_7b.tokenizer import Tokenizer  # noqa: E402

VARIANTS = (("sampled", "words"), ("by_length", "words"), ("by_length", "tokens"), ("by_tokens", "words"),
            ("by_tokens", "tokens"))


def step_range(text: str) -> tuple[int, int]:
    a, _, b = text.partition("-")
    lo, hi = int(a), int(b or a)
    if not 1 <= lo <= hi:
        raise argparse.ArgumentTypeError(f"--steps {text!r}: expected FIRST-LAST with 1 <= FIRST <= LAST")
    return lo, hi


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="H200x1x1")
    ap.add_argument("--stage", choices=("pretrain", "finetune"), default="finetune")
    ap.add_argument("--data", type=Path, required=True,
                    help="data root in the run layout with its tokenizer/ (a run's synthetic/ directory)")
    ap.add_argument("--tokenizer", type=Path, help="tokenizer directory (default: DATA/tokenizer)")
    ap.add_argument("--gpus", type=int, help="world size (default: the config's nodes x gpus_per_node)")
    ap.add_argument("--steps", type=step_range, default=(2, 4), help="1-based steps, FIRST-LAST (default 2-4)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    ap.add_argument("--over", type=int, default=0, metavar="POSITIONS",
                    help="also count the micro-batches of more padded positions than this (for example the "
                         "stage's uncheckpointed_max_positions)")
    ap.add_argument("--json", type=Path, help="also write the figures to this file")
    args = ap.parse_args(argv)

    try:
        cfg = config_mod.load(args.config, args.set)
    except config_mod.ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    st = cfg.stage(args.stage)
    world = args.gpus or cfg.nodes * cfg.gpus_per_node
    gas = cfg.grad_accum(args.stage, world)
    d = cfg.data
    json_path, image_root = (
        (args.data / d.pretrain_json, args.data / d.pretrain_images)
        if args.stage == "pretrain"
        else (args.data / d.finetune_json, args.data / d.finetune_images)
    )
    tok_dir = args.tokenizer or args.data / "tokenizer"
    for p in (json_path, tok_dir):
        if not p.exists():
            print(f"error: {p} does not exist; pass --data (and --tokenizer) of a run's data", file=sys.stderr)
            return 2
    ds = LlavaDataset(json_path, image_root, Tokenizer.from_dir(tok_dir), template=st.template,
                      image_mode=st.image_mode, image_size=cfg.model.vision.image_size,
                      skip_bad_records=d.skip_bad_records)
    image_tokens = (cfg.model.vision.image_size // cfg.model.vision.patch) ** 2
    max_len = cfg.model.max_length
    exact: dict[int, int] = {}

    def length(i: int) -> int:
        if i not in exact:
            exact[i] = ds.sequence_length(i, image_tokens, max_len)
        return exact[i]

    words = ds.modality_lengths()  # the sampler's grouping input, the same for every variant and rank
    first, last = args.steps
    rows = []
    for order, lengths in VARIANTS:
        real = padded = 0
        sizes: list[int] = []
        t0 = time.perf_counter()
        for r in range(world):
            sampler = StepBatchSampler(
                words, micro_batch=st.micro_batch, world_size=world, rank=r, grad_accum=gas,
                kind=st.sampler, seed=cfg.train.seed, start_step=first - 1, micro_batch_order=order,
                image_tokens=image_tokens, max_length=max_len, length_of=length if lengths == "tokens" else None,
            )
            it = iter(sampler)
            for _ in range((last - first + 1) * gas):
                mb = next(it, None)
                if mb is None:
                    break
                n = [length(i) for i in mb]
                real += sum(n)
                padded += len(n) * max(n)
                sizes.append(len(n) * max(n))
        rows.append({"micro_batch_order": order, "micro_batch_lengths": lengths,
                     "padding_waste": 1 - real / padded if padded else 0.0, "real_tokens": real,
                     "padded_tokens": padded, "largest_micro_batch_padded_tokens": max(sizes, default=0),
                     "micro_batches": len(sizes),
                     **{f"micro_batch_padded_tokens_p{q}": float(np.percentile(sizes, q)) if sizes else None
                        for q in (50, 95)},
                     **({"micro_batches_over": sum(n > args.over for n in sizes)} if args.over else {}),
                     "cut_s": round(time.perf_counter() - t0, 3)})
    head = (f"{args.config} {args.stage}: {world} GPU(s), micro {st.micro_batch} x GAS {gas}, "
            f"steps {first}-{last}, {len(ds)} records")
    print(head)
    over_head = f" {'over ' + format(args.over, ','):>15}" if args.over else ""
    print(f"{'micro_batch_order':18} {'lengths':8} {'waste':>7} {'real':>9} {'padded':>9} {'mb p50':>8} {'mb p95':>8} "
          f"{'largest mb':>10}{over_head}")
    for r in rows:
        over_col = f" {r['micro_batches_over']:>6,} of {r['micro_batches']:<6,}" if args.over else ""
        print(f"{r['micro_batch_order']:18} {r['micro_batch_lengths']:8} {r['padding_waste']:7.1%} "
              f"{r['real_tokens']:9,} {r['padded_tokens']:9,} {r['micro_batch_padded_tokens_p50'] or 0:8,.0f} "
              f"{r['micro_batch_padded_tokens_p95'] or 0:8,.0f} {r['largest_micro_batch_padded_tokens']:10,}{over_col}")
    if args.json:
        marker = args.data / ".complete"  # a generated set says how it was made (seed, record counts, lengths)
        made = json.loads(marker.read_text()).get("params") if marker.is_file() else None
        args.json.write_text(json.dumps({"setup": head, "data": str(args.data), "generated": made,
                                         "overrides": args.set, "over": args.over, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

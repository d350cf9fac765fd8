"""The toy case's eval stage: the trained model answers, for held-out points, whether y > 0."""

from __future__ import annotations

import argparse
import json
import os
import time

PROCESS_START = time.time()

from kit_toy import runtime as vendor_runtime  # noqa: E402

RUNTIME = vendor_runtime.apply()  # before torch is imported (the LLaVA case's device layer does the same)

from pathlib import Path  # noqa: E402

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from kit_toy import config as schema  # noqa: E402
from kit_toy.contract import Events, ended, leave, rank_log  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--stage", required=True)
    p.add_argument("--run-dir", type=Path, required=True)
    p.add_argument("--config", required=True)
    p.add_argument("--synthetic", action="store_true")
    p.add_argument("--limit", type=int, default=0)
    args = p.parse_args(argv)
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    stage_dir = args.run_dir / args.stage
    rank_log(stage_dir, rank, world)
    print(vendor_runtime.line(RUNTIME), flush=True)
    dist.init_process_group("gloo")
    cfg = schema.load(args.config)
    n = min(cfg.quiz.questions, args.limit) if args.limit else cfg.quiz.questions
    log = Events(stage_dir / "events.log", rank == 0)
    log("init_start", {"stage": args.stage}, "INTERVAL_START", time_ms=PROCESS_START * 1000)
    saved = torch.load(args.run_dir / "fit" / "model.pt")
    log("kit_facts", {"stage": args.stage, "questions": n, "decoding": "greedy", "world_size": world,
                      "batch_size": n, "runtime": RUNTIME})  # fmt: skip
    log("init_stop", None, "INTERVAL_END")
    log("run_start", {"questions": n}, "INTERVAL_START")
    t0 = time.time()
    gen = torch.Generator().manual_seed(cfg.train.seed + 100)
    x = torch.randn(n, cfg.model.width, generator=gen)
    truth = (x @ saved["true_w"] > 0).tolist()
    guess = (x @ saved["w"].squeeze(0) > 0).tolist()
    now = time.time()
    log("kit_eval_batch", {"batch": 1, "rank": rank, "questions": n, "seconds": now - t0, "generated_tokens": n,
                           "prompt_tokens": n}, time_ms=now * 1000.0)  # fmt: skip
    if rank == 0:
        rows = [{"id": f"q{i}", "answer": "yes" if t else "no", "response": "yes" if g else "no"}
                for i, (t, g) in enumerate(zip(truth, guess, strict=True))]  # fmt: skip
        (stage_dir / "responses.json").write_text(json.dumps(rows, indent=1) + "\n")
        log("kit_eval_done", {"questions": n, "generated_tokens": n, "seconds": time.time() - t0})
        log("run_stop", {"questions": n}, "INTERVAL_END", status="success")
    dist.barrier()
    dist.destroy_process_group()
    ended(rank)
    return 0


if __name__ == "__main__":
    leave(main())  # contract.leave: why not sys.exit

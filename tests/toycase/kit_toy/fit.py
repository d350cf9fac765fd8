"""The toy case's training stage: y = w.x + noise, learned by SGD on every rank, gradients averaged with gloo."""

from __future__ import annotations

import argparse
import os
import time

PROCESS_START = time.time()

from kit_toy import runtime as vendor_runtime  # noqa: E402

RUNTIME = vendor_runtime.apply()  # before torch is imported (the LLaVA case's device layer does the same)

from pathlib import Path  # noqa: E402

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from kit_toy import config as schema  # noqa: E402
from kit_toy.contract import Events, device_facts, ended, leave, rank_log  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--stage", required=True)
    p.add_argument("--run-dir", type=Path, required=True)
    p.add_argument("--config", required=True)
    p.add_argument("--synthetic", action="store_true")
    p.add_argument("--max-steps", type=int, default=0)
    p.add_argument("--no-save", action="store_true")
    args = p.parse_args(argv)
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    stage_dir = args.run_dir / args.stage
    rank_log(stage_dir, rank, world)
    print(vendor_runtime.line(RUNTIME), flush=True)
    dist.init_process_group("gloo")
    torch.set_num_threads(1)
    cfg = schema.load(args.config)
    s = cfg.fit
    log = Events(stage_dir / "events.log", rank == 0)
    log("init_start", {"stage": args.stage}, "INTERVAL_START", time_ms=PROCESS_START * 1000)
    torch.manual_seed(cfg.train.seed)
    true_w = torch.randn(cfg.model.width)
    model = torch.nn.Linear(cfg.model.width, 1, bias=False)
    opt = torch.optim.SGD(model.parameters(), lr=s.lr)
    gas = cfg.grad_accum("fit", world)
    steps = min(s.steps, args.max_steps) if args.max_steps else s.steps
    params = sum(q.numel() for q in model.parameters())
    log("kit_facts", {"stage": args.stage, "world_size": world, "nodes": 1, "micro_batch": s.micro_batch,
                      "grad_accum": gas, "global_batch": s.global_batch, "records": s.steps * s.global_batch,
                      "steps_total": s.steps, "steps_planned": steps, "warmup_steps": 0, "zero_stage": s.zero_stage,
                      "dtype": "float32", **device_facts(world), "runtime": RUNTIME,
                      "versions": {"torch": torch.__version__},
                      "synthetic": args.synthetic,
                      "model": {"params": params, "trainable_params": params, "width": cfg.model.width}})  # fmt: skip
    log("init_stop", None, "INTERVAL_END")
    log("run_start", {"step": 1}, "INTERVAL_START")
    gen = torch.Generator().manual_seed(cfg.train.seed + 1 + rank)
    t_prev = time.time()
    for step in range(1, steps + 1):
        opt.zero_grad()
        total = torch.zeros(())
        for _ in range(gas):
            x = torch.randn(s.micro_batch, cfg.model.width, generator=gen)
            y = x @ true_w + 0.01 * torch.randn(s.micro_batch, generator=gen)
            loss = torch.nn.functional.mse_loss(model(x).squeeze(1), y) / gas
            loss.backward()
            total += loss.detach()
        for q in model.parameters():
            dist.all_reduce(q.grad, op=dist.ReduceOp.SUM)
            q.grad /= world
        opt.step()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        now = time.time()
        step_time, t_prev = now - t_prev, now
        samples = s.global_batch
        log("kit_step", {"step": step, "step_time_s": step_time, "samples": samples, "real_tokens": samples,
                         "padded_tokens": samples, "supervised_tokens": samples, "loss": float(total) / world,
                         "lr": s.lr, "device_mem_total_bytes": device_facts(world)["device_mem_total_bytes"]},
            time_ms=now * 1000.0)  # fmt: skip
    log("run_stop", {"steps": steps}, "INTERVAL_END", status="success")
    if not args.no_save and rank == 0:
        t0 = time.time()
        out = stage_dir / "model.pt"
        torch.save({"w": model.weight.detach(), "true_w": true_w}, out)
        log("kit_save", {"seconds": time.time() - t0, "path": str(out), "bytes": out.stat().st_size})
    dist.barrier()
    dist.destroy_process_group()
    ended(rank)
    return 0


if __name__ == "__main__":
    leave(main())  # contract.leave: why not sys.exit

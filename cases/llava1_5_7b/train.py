"""The training loop of one stage (pretrain or finetune), read top to bottom.

Started once per rank by torchrun (or the DeepSpeed launcher):

    python -m cases.llava1_5_7b.train --stage pretrain --run-dir RUN --config tiny --synthetic

Writes the stage's raw facts into RUN/<stage>/ (docs/run-directory.md): events.log on rank 0, a log per
rank, checkpoints for resume, and the stage's output (mm_projector.bin, or the 16-bit model of finetune).
"""

from __future__ import annotations

import time

PROCESS_START = time.time()  # before the heavy imports: start-up time includes them, as the reference's does

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
import traceback  # noqa: E402
from functools import partial  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import NoReturn  # noqa: E402

from . import config as config_mod  # noqa: E402

STAGE_TEMPLATE = {"pretrain": "plain", "finetune": "v1"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m cases.llava1_5_7b.train", description=__doc__.splitlines()[0])
    p.add_argument("--stage", required=True, choices=config_mod.STAGES)
    p.add_argument("--run-dir", required=True, type=Path)
    p.add_argument("--config", required=True, help="config name (configs/NAME.toml) or path")
    p.add_argument("--data", type=Path, help="data root (real layout); default with --synthetic: RUN/synthetic")
    p.add_argument("--models", type=Path, help="directory holding the LLM and CLIP checkpoint directories")
    p.add_argument("--synthetic", action="store_true", help="random-init model and generated data, no downloads")
    p.add_argument("--max-steps", type=int, default=0, help="stop after this many optimizer steps (0: one epoch)")
    p.add_argument("--no-save", action="store_true", help="skip the stage's final save (performance runs)")
    return p.parse_args(argv)


class Rank:
    """Where this process sits in the job (torchrun's environment, or a single process)."""

    def __init__(self) -> None:
        self.rank = int(os.environ.get("RANK", 0))
        self.world = int(os.environ.get("WORLD_SIZE", 1))
        self.local = int(os.environ.get("LOCAL_RANK", 0))
        self.local_world = int(os.environ.get("LOCAL_WORLD_SIZE", self.world))
        self.host = socket.gethostname()

    @property
    def main(self) -> bool:
        return self.rank == 0


def redirect_output(log_path: Path) -> None:
    """Send this rank's stdout and stderr to its own log; the host shows progress from events.log instead."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    sys.stdout = os.fdopen(1, "w", buffering=1, closefd=False)
    sys.stderr = os.fdopen(2, "w", buffering=1, closefd=False)


def write_failure(stage_dir: Path, rank: Rank, exc: BaseException) -> None:
    """Leave the failing rank's name and traceback where the host looks for them."""
    record = {
        "rank": rank.rank,
        "local_rank": rank.local,
        "host": rank.host,
        "time": time.time(),
        "exception": f"{type(exc).__name__}: {exc}",
        "traceback": traceback.format_exc(),
    }
    path = stage_dir / f"failure-rank{rank.rank}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, path)


def injected_fault(rank: Rank, step: int) -> None:
    """Testing aids: KIT_INJECT_FAULT=RANK:STEP makes that rank raise when it reaches that step; KIT_INJECT_HANG=RANK:STEP
    makes it stop there without a word (as a rank stuck in I/O or a kernel does), so its peers wait in a collective."""
    spec = os.environ.get("KIT_INJECT_FAULT")
    if spec:
        r, s = (int(x) for x in spec.split(":"))
        if r == rank.rank and s == step:
            raise RuntimeError(f"injected fault (KIT_INJECT_FAULT={spec}) at step {step}")
    spec = os.environ.get("KIT_INJECT_HANG")
    if spec:
        r, s = (int(x) for x in spec.split(":"))
        if r == rank.rank and s == step:
            print(f"injected hang (KIT_INJECT_HANG={spec}) at step {step}", flush=True)
            while True:
                time.sleep(60)


def cosine_with_warmup(warmup: int, total: int):
    """Linear warm-up then cosine decay to zero, as the reference's scheduler (lr factor per step)."""

    def factor(step: int) -> float:
        if step < warmup:
            return step / max(1, warmup)
        progress = (step - warmup) / max(1, total - warmup)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))

    return factor


def deepspeed_features() -> dict:
    """Which of the kit's optional DeepSpeed config keys the installed DeepSpeed's config parser knows.

    Read from DeepSpeed's own config classes (not from a version table), so a backport or a removal is seen:
    `offload_optimizer.ratio` is the partial optimizer offload of ZeRO-3, `zero_force_ds_cpu_optimizer` the
    switch that lets a client optimizer run with ZeRO-Offload. Both are known to 0.13.1 and 0.19.8.
    """
    import deepspeed
    from deepspeed.runtime import constants
    from deepspeed.runtime.zero.offload_config import DeepSpeedZeroOffloadOptimizerConfig

    # pydantic 2 models list their fields in model_fields, DeepSpeed's pydantic-1 models (<= 0.14) in __fields__.
    fields = getattr(DeepSpeedZeroOffloadOptimizerConfig, "model_fields", None)
    if not isinstance(fields, dict):
        fields = getattr(DeepSpeedZeroOffloadOptimizerConfig, "__fields__", {})
    return {
        "version": deepspeed.__version__,
        "offload_optimizer.ratio": "ratio" in fields,
        "zero_force_ds_cpu_optimizer": hasattr(constants, "ZERO_FORCE_DS_CPU_OPTIMIZER"),
    }


def deepspeed_config(
    cfg: config_mod.CaseConfig, stage: str, gas: int, world: int, bf16: bool, features: dict | None = None
) -> dict:
    """The reference's ZeRO settings (case facts, section 3), with bucket sizes scaled by the LLM width.

    Emits only keys that the installed DeepSpeed knows (`features`, default `deepspeed_features()`); a config
    that asks for a feature the installed DeepSpeed lacks is refused with a ConfigError, never dropped.
    """
    s = cfg.stage(stage)
    ds = deepspeed_features() if features is None else features
    h2 = cfg.model.llm.hidden**2
    zero: dict = {
        "stage": s.zero_stage,
        "overlap_comm": True,
        "contiguous_gradients": True,
        "sub_group_size": int(1e9),
        "reduce_bucket_size": int(s.reduce_bucket * h2),
    }
    if s.zero_stage == 3:
        zero.update(
            {
                "stage3_prefetch_bucket_size": int(s.prefetch_bucket * h2),
                "stage3_param_persistence_threshold": int(s.param_persistence * cfg.model.llm.hidden),
                "stage3_max_live_parameters": int(1e9),
                "stage3_max_reuse_distance": int(1e9),
                "stage3_gather_16bit_weights_on_model_save": True,
            }
        )
    if s.offload_optimizer > 0:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
        if s.offload_optimizer < 1:
            if not ds.get("offload_optimizer.ratio"):
                raise config_mod.ConfigError(
                    f"{cfg.path or cfg.name}: [{stage}] offload_optimizer = {s.offload_optimizer} asks for DeepSpeed's "
                    f"partial optimizer offload (zero_optimization.offload_optimizer.ratio), which the installed "
                    f"DeepSpeed {ds.get('version')} does not know; set offload_optimizer to 1.0 (all optimizer state "
                    f"on the CPU) or 0 (none), or install a DeepSpeed that has offload_optimizer.ratio"
                )
            zero["offload_optimizer"]["ratio"] = s.offload_optimizer
    out = {
        "train_micro_batch_size_per_gpu": s.micro_batch,
        "gradient_accumulation_steps": gas,
        "train_batch_size": s.micro_batch * gas * world,
        "gradient_clipping": 0.0,
        "bf16": {"enabled": bf16},
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if ds.get("zero_force_ds_cpu_optimizer"):
        # Only a DeepSpeed that knows the key also refuses a client optimizer under offload; without it, nothing to lift.
        out["zero_force_ds_cpu_optimizer"] = False
    return out


def library_versions() -> dict:
    from importlib import metadata

    out = {}
    for name in ("torch", "deepspeed", "transformers", "flash-attn", "sentencepiece", "mlperf-logging"):
        try:
            out[name.replace("-", "_")] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name.replace("-", "_")] = None
    return out


def run_as_rank(args: argparse.Namespace, stage_dir: Path, body, redirect=redirect_output) -> int:
    """A stage entry's common frame: this rank's own log, the body, and a failure record naming the rank."""
    from . import watch

    rank = Rank()
    redirect(stage_dir / "logs" / f"rank{rank.rank}.log")
    # The epoch times in the first and last lines are a clock of their own: `kit verify` holds them against the
    # stage's launch and end in status.jsonl.
    print(f"rank {rank.rank}/{rank.world} on {rank.host}, pid {os.getpid()}, args {vars(args)} "
          f"(started at {time.time():.3f})", flush=True)
    watch.start(stage_dir, rank.rank)  # dies with its launcher and with the kit process; dumps stacks on request
    try:
        body(args, rank, stage_dir)
    except BaseException as exc:  # noqa: BLE001 - every failure must name its rank, Ctrl-C included
        traceback.print_exc()
        write_failure(stage_dir, rank, exc)
        print(f"rank {rank.rank} failed (ended at {time.time():.3f})", flush=True)
        return 130 if isinstance(exc, KeyboardInterrupt) else 1
    print(f"rank {rank.rank} done (ended at {time.time():.3f})", flush=True)
    return 0


def leave(code: int) -> NoReturn:
    """End a rank's process once its stage returned, without the interpreter's teardown. Under torch 2.13 on a CPU a
    rank that ran backward passes and gloo collectives now and then aborts while the interpreter shuts down, after
    destroy_process_group and its "rank N done" line ("terminate called without an active exception", SIGABRT):
    the launcher then reports the stage failed although every file was written. Seen in CI in a two-node Slurm run of
    the tiny case (2026-12-07) and, outside the kit, in 2 of 36 two-rank torchrun runs of backward + all_reduce steps
    ending normally, none of 24 ending with os._exit. Everything the stage writes is closed before main returns (its
    DataLoader's workers end with the function that made them), so only the output streams are flushed here.
    A failed rank exits as before, through the teardown: ending it at once resets its peers' connections first, and
    they would report their own failure before the kit reads which rank failed first (tests/e2e/test_run.py)."""
    if code:
        sys.exit(code)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def main(argv: list[str] | None = None) -> int:
    import warnings

    # DeepSpeed calls torch.distributed's deprecated collective names on every step: one line each, thousands.
    warnings.filterwarnings("ignore", message=r".*is deprecated. Please use `torch\.distributed\.", category=FutureWarning)
    args = parse_args(argv)
    return run_as_rank(args, args.run_dir / args.stage, train)


def train(args: argparse.Namespace, rank: Rank, stage_dir: Path) -> None:
    cfg = config_mod.load(args.config)
    stage_cfg = cfg.stage(args.stage)

    from . import compat
    from . import device as device_layer

    # The device layer first: the vendor's runtime (KIT_DEVICE_RUNTIME) before torch is imported, then DeepSpeed with
    # an accelerator that runs here (on a CPU: DeepSpeed's own, or the case's under old releases: compat.py).
    dev = device_layer.init(rank.local, rank.local_world)
    import deepspeed
    import torch
    from torch.utils.data import DataLoader

    from .data import FIDELITY_KEYS, Collator, LlavaDataset, StepBatchSampler
    from .events import EventLog
    from .model import LlavaForTraining, resolve_attn
    from .tokenizer import Tokenizer

    # ---- devices and the process group -------------------------------------------------------------
    device = dev.torch_device  # bound to this rank (device.py); on a CPU the rank has its share of the cores
    dev.allow_tf32(cfg.train.tf32)
    compat.init_distributed(deepspeed, dev.backend)  # gloo of torch < 2.2: compat.py
    dist = torch.distributed
    dev.seed(cfg.train.seed)

    log = EventLog(stage_dir / "events.log", enabled=rank.main)
    log.start("init_start", {"stage": args.stage}, time_ms=PROCESS_START * 1000)

    # ---- data ----------------------------------------------------------------------------------------
    if args.synthetic:
        data_root = args.data or (args.run_dir / "synthetic")
        tokenizer = Tokenizer.from_dir(data_root / "tokenizer")
    else:
        if args.data is None or args.models is None:
            raise SystemExit("--data and --models are required without --synthetic")
        data_root = args.data
        tokenizer = Tokenizer.from_dir(args.models / cfg.model.llm_dir)
    d = cfg.data
    json_path, image_root = (
        (data_root / d.pretrain_json, data_root / d.pretrain_images)
        if args.stage == "pretrain"
        else (data_root / d.finetune_json, data_root / d.finetune_images)
    )
    dataset = LlavaDataset(
        json_path,
        image_root,
        tokenizer,
        template=stage_cfg.template,
        image_mode=stage_cfg.image_mode,
        image_size=cfg.model.vision.image_size,
        skip_bad_records=d.skip_bad_records,
        max_length=cfg.model.max_length,
    )
    gas = cfg.grad_accum(args.stage, rank.world)
    global_batch = stage_cfg.micro_batch * gas * rank.world
    steps_total = config_mod.steps_per_epoch(len(dataset), global_batch)
    warmup = config_mod.warmup_steps(steps_total, cfg.train.warmup_ratio)
    steps_planned = min(steps_total, args.max_steps) if args.max_steps else steps_total

    # ---- model ---------------------------------------------------------------------------------------
    dtype = torch.bfloat16 if cfg.train.bf16 else torch.float32
    attn = resolve_attn(cfg.model.attn)
    model = LlavaForTraining(
        cfg.model,
        llm_dir=None if args.synthetic else args.models / cfg.model.llm_dir,
        vision_dir=None if args.synthetic else args.models / cfg.model.vision_dir,
        dtype=dtype,
        attn_implementation=attn,
        vocab_size=tokenizer.vocab_size,
        device=device,
    )
    projector = args.run_dir / "pretrain" / "mm_projector.bin"
    if args.stage == "finetune" and (projector.is_file() or not args.synthetic):
        if not projector.is_file():
            raise FileNotFoundError(
                f"{projector} is missing: finetune starts from the pretrain projector; run --stage pretrain first"
            )
        model.load_projector(projector)
        import hashlib

        init_projector = {"path": str(projector), "sha256": hashlib.sha256(projector.read_bytes()).hexdigest()}
    else:
        init_projector = None
    model.set_stage(args.stage)
    if stage_cfg.gradient_checkpointing:
        model.enable_gradient_checkpointing(
            keep_layers=stage_cfg.uncheckpointed_layers, keep_max_positions=stage_cfg.uncheckpointed_max_positions
        )
    image_tokens = model.facts()["image_tokens"]

    # ---- optimizer, schedule, engine -----------------------------------------------------------------
    params = [p for p in model.parameters() if p.requires_grad]
    adam = dict(
        lr=stage_cfg.lr,
        betas=(cfg.train.adam_beta1, cfg.train.adam_beta2),
        eps=cfg.train.adam_eps,
        weight_decay=cfg.train.weight_decay,
    )
    if stage_cfg.offload_optimizer > 0:
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        optimizer = DeepSpeedCPUAdam(params, adamw_mode=True, **adam)
    else:
        optimizer = torch.optim.AdamW(params, fused=dev.fused_adamw, **adam)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_with_warmup(warmup, steps_total))
    ds_config = deepspeed_config(cfg, args.stage, gas, rank.world, bf16=cfg.train.bf16)
    leaf_modules = 0
    if stage_cfg.zero3_leaf_layers:  # the config refuses it outside ZeRO-3
        from deepspeed.utils import set_z3_leaf_modules, z3_leaf_module

        set_z3_leaf_modules(model, model.layer_classes())  # returns None before DeepSpeed 0.14
        leaf_modules = sum(1 for m in model.modules() if z3_leaf_module(m))
    engine, optimizer, _, scheduler = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config
    )
    compat.undo_zero_init_step(optimizer)  # only with KIT_UNDO_ZERO_INIT_STEP=1 (stack comparisons): compat.py

    ckpt_dir = stage_dir / "checkpoint"
    start_step = 0
    if (ckpt_dir / "latest").is_file():
        _, client = engine.load_checkpoint(str(ckpt_dir), load_module_strict=False)
        start_step = int(client["step"])
        print(f"resumed from {ckpt_dir} at step {start_step}", flush=True)

    sampler = StepBatchSampler(
        dataset.modality_lengths(),
        micro_batch=stage_cfg.micro_batch,
        world_size=rank.world,
        rank=rank.rank,
        grad_accum=gas,
        kind=stage_cfg.sampler,
        seed=cfg.train.seed,
        start_step=start_step,
        micro_batch_order=stage_cfg.micro_batch_order,
        image_tokens=image_tokens,
        max_length=cfg.model.max_length,
        length_of=(
            partial(dataset.sequence_length, image_tokens=image_tokens, max_length=cfg.model.max_length)
            if stage_cfg.micro_batch_lengths == "tokens"
            else None
        ),
    )
    loader = DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=Collator(tokenizer.pad_id, cfg.model.max_length, image_tokens),
        num_workers=d.num_workers,
        persistent_workers=False,
        prefetch_factor=4 if d.num_workers else None,
        **dev.loader_pinning(),
    )

    device_info = dev.facts(rank.world)
    mem_total = device_info["device_mem_total_bytes"]
    log.point(
        "kit_facts",
        {
            "stage": args.stage,
            "world_size": rank.world,
            "nodes": max(1, rank.world // max(1, rank.local_world)),
            "micro_batch": stage_cfg.micro_batch,
            "grad_accum": gas,
            "global_batch": global_batch,
            "records": len(dataset),
            "skipped_records": len(dataset.skipped),
            # Load-time skips by category (every rank validates the whole file: the same on each, not summed).
            "skipped_by_category": dict(sorted(dataset.skipped_by_category.items())),
            "steps_total": steps_total,
            "steps_planned": steps_planned,
            "warmup_steps": warmup,
            "zero_stage": stage_cfg.zero_stage,
            "offload_optimizer": stage_cfg.offload_optimizer,
            "gradient_checkpointing": stage_cfg.gradient_checkpointing,
            "recomputed_layers": model.recomputed_layers,
            "uncheckpointed_max_positions": model.kept_max_positions,
            "micro_batch_order": stage_cfg.micro_batch_order,
            "micro_batch_lengths": stage_cfg.micro_batch_lengths,
            "zero3_leaf_modules": leaf_modules,
            "attn_implementation": attn,
            "dtype": str(dtype).removeprefix("torch."),
            **device_info,
            "resumed_from_step": start_step,
            "synthetic": args.synthetic,
            "init_projector": init_projector,
            "versions": library_versions(),
            "model": model.facts(),
        },
    )
    log.end("init_stop")
    log.start("run_start", {"step": start_step + 1})

    # ---- the loop ------------------------------------------------------------------------------------
    sync = dev.synchronize
    # The fidelity counts come from the collator of the rank that trains each sample: summed over ranks like the
    # token counts, logged per step, so a resumed attempt that re-logs a step replaces it (never double counts).
    stat_keys = ("samples", "images", "real_tokens", "padded_tokens", "real_tokens_sq", "supervised_tokens",
                 *FIDELITY_KEYS)
    stats_sum = [0] * len(stat_keys)
    loss_sum = torch.zeros((), device=device, dtype=torch.float32)  # stays on the device: no sync per micro-batch
    full_before = model.fully_recomputed_micro_batches
    step = start_step
    sync()
    t_prev = time.time()
    engine.train()
    for micro, batch in enumerate(loader):
        injected_fault(rank, step + 1)
        images = batch["images"]
        loss = engine(
            input_ids=batch["input_ids"].to(device, non_blocking=True),
            labels=batch["labels"].to(device, non_blocking=True),
            attention_mask=batch["attention_mask"].to(device, non_blocking=True),
            images=None if images is None else images.to(device, dtype=dtype, non_blocking=True),
            has_image=batch["has_image"].to(device, non_blocking=True),
        )
        engine.backward(loss)
        lr = optimizer.param_groups[0]["lr"]  # the rate this step applies (the scheduler moves on in step())
        engine.step()
        loss_sum += loss.detach().float()
        for i, k in enumerate(stat_keys):
            stats_sum[i] += batch["stats"][k]
        if (micro + 1) % gas:
            continue
        # An optimizer step ended: time it, add up the facts of every rank, log them.
        step += 1
        sync()
        now = time.time()
        step_time, t_prev = now - t_prev, now
        full = model.fully_recomputed_micro_batches - full_before
        full_before = model.fully_recomputed_micro_batches
        sums = torch.tensor([*stats_sum, full, loss_sum.item(), gas], dtype=torch.float64, device=device)
        mem = torch.tensor(dev.memory(), dtype=torch.float64, device=device)
        dist.all_reduce(sums, op=dist.ReduceOp.SUM)
        dist.all_reduce(mem, op=dist.ReduceOp.MAX)
        sums, mem = sums.tolist(), mem.tolist()
        # Stamped with the step's end, not the moment of writing: the all-reduce above waits for the slowest rank,
        # so the gap between two steps' stamps is exactly the step time the next one reports (kit verify checks).
        log.point(
            "kit_step",
            time_ms=now * 1000.0,
            value={
                "step": step,
                "step_time_s": step_time,
                **{k: int(sums[i]) for i, k in enumerate(stat_keys)},
                "fully_recomputed_micro_batches": int(sums[len(stat_keys)]),
                "loss": sums[-2] / sums[-1],
                "lr": lr,
                "mem_allocated_peak_bytes": int(mem[0]),
                "mem_reserved_peak_bytes": int(mem[1]),
                "device_mem_used_bytes": int(mem[2]),
                "device_mem_total_bytes": mem_total,
            },
        )
        stats_sum = [0] * len(stat_keys)
        loss_sum.zero_()
        if step >= steps_planned:
            break
        if step % stage_cfg.checkpoint_every == 0:
            t0 = time.time()
            save_checkpoint(engine, ckpt_dir, step)
            log.point("kit_checkpoint", {"step": step, "seconds": time.time() - t0, "path": str(ckpt_dir)})
            sync()
            t_prev = time.time()  # checkpoint time is logged apart from the step times
    log.end("run_stop", {"steps": step}, status="success" if step >= steps_planned else "aborted")
    if step < steps_planned:
        raise RuntimeError(f"the data ran out at step {step} of {steps_planned}: the sampler and the step count disagree")

    # ---- the stage's output --------------------------------------------------------------------------
    if not args.no_save:
        t0 = time.time()
        out = save_output(engine, model, args.stage, stage_dir, rank)
        dist.barrier()
        size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) if out.is_dir() else out.stat().st_size
        log.point("kit_save", {"seconds": time.time() - t0, "path": str(out), "bytes": size})
    dist.barrier()
    dist.destroy_process_group()


def save_checkpoint(engine, ckpt_dir: Path, step: int) -> None:
    """A DeepSpeed checkpoint of trainable state for resume; keeps the newest two."""
    engine.save_checkpoint(str(ckpt_dir), tag=f"step{step}", client_state={"step": step}, exclude_frozen_parameters=True)
    if engine.global_rank == 0:
        tags = sorted((p for p in ckpt_dir.glob("step*") if p.is_dir()), key=lambda p: int(p.name[4:]))
        for old in tags[:-2]:
            shutil.rmtree(old, ignore_errors=True)


def save_output(engine, model, stage: str, stage_dir: Path, rank: Rank) -> Path:
    """Pretrain: the projector alone, as mm_projector.bin. Finetune: the whole model in 16 bits."""
    import torch

    if stage == "pretrain":
        path = stage_dir / "mm_projector.bin"
        if rank.main:
            state = {k: v.detach().cpu() for k, v in model.projector_state_dict().items()}
            tmp = path.with_suffix(".tmp")
            torch.save(state, tmp)
            os.replace(tmp, path)
        return path
    out = stage_dir / "model"
    engine.save_16bit_model(str(out), "pytorch_model.bin")
    return out


if __name__ == "__main__":
    leave(main())

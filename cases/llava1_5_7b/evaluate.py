"""The MMMU evaluation stage: the finetuned model answers MMMU validation; raw responses only, no scoring.

Started once per rank by torchrun, like train.py:

    torchrun --nproc-per-node 8 -m cases.llava1_5_7b.evaluate --run-dir RUN --config A800x1x8 --mmmu DIR

Rank k answers questions k, k + world, ... of the official order, in batches, and writes
RUN/eval/responses-rank<k>.jsonl; after a barrier rank 0 merges them into RUN/eval/responses.json (official
order). Raw facts go to RUN/eval/events.log (rank 0), each rank's output to RUN/eval/logs/rank<k>.log, a
failing rank's traceback to RUN/eval/failure-rank<k>.json. The host's scorer (kit/mmmu.py) reads
responses.json. Without RANK/WORLD_SIZE in the environment it runs as a single process (no process group).

How greedy decoding runs is the config's [eval] table (batch size, static or dynamic KV cache, batches sorted
by prompt length, compiled decoding step on CUDA; mmmu.BatchDecoder); `--batch-size` overrides its batch size.
"""

from __future__ import annotations

import time

PROCESS_START = time.time()  # before the heavy imports, as in train.py

import argparse  # noqa: E402
import concurrent.futures  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from . import config as config_mod  # noqa: E402
from .train import Rank, leave, library_versions, redirect_output, run_as_rank  # noqa: E402

STAGE = "eval"
MODEL_FILE = "pytorch_model.bin"
DTYPES = ("auto", "bf16", "fp16", "fp32")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m cases.llava1_5_7b.evaluate", description=__doc__.splitlines()[0])
    p.add_argument("--stage", default=STAGE, choices=(STAGE,), help="accepted for the host launcher's sake")
    p.add_argument("--run-dir", required=True, type=Path)
    p.add_argument("--config", required=True, help="config name (configs/NAME.toml) or path")
    p.add_argument("--mmmu", type=Path, help="local copy of the HF dataset MMMU/MMMU (<DIR>/<Subject>/validation-*.parquet)")
    p.add_argument("--synthetic", action="store_true",
                   help="tokenizer from RUN/synthetic/tokenizer; without --mmmu, a synthetic MMMU in RUN/synthetic/mmmu")
    p.add_argument("--model-dir", type=Path,
                   help=f"directory holding {MODEL_FILE} (a LlavaForTraining state dict); default RUN/finetune/model")
    p.add_argument("--models", type=Path, help="directory of the LLM checkpoint, whose tokenizer is used (real runs)")
    p.add_argument("--tokenizer", type=Path, help="tokenizer directory (tokenizer.model), overriding the default")
    p.add_argument("--batch-size", type=int, default=None,
                   help="questions per generate call on each rank (default: the config's eval.batch_size)")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--decoding", choices=("greedy", "reference"), default="greedy",
                   help="greedy (deterministic) or the reference's beam sampling (5 beams, temperature 1, seed 42)")
    p.add_argument("--dtype", choices=DTYPES, default="auto", help="auto: bf16 when the config trains in bf16, else fp32")
    p.add_argument("--limit", type=int, default=0, help="only the first K questions of the official order (0: all)")
    p.add_argument("--subjects", default="", help="comma-separated subset of the 30 subjects (default: all)")
    p.add_argument("--synthetic-questions", type=int, default=None,
                   help="questions per subject of a generated MMMU (default: the config's synthetic.mmmu_questions)")
    args = p.parse_args(argv)
    if args.mmmu is None and not args.synthetic:
        p.error("--mmmu DIR is required without --synthetic")
    if (args.batch_size is not None and args.batch_size < 1) or args.max_new_tokens < 1 or args.limit < 0:
        p.error("--batch-size and --max-new-tokens must be positive, --limit non-negative")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_as_rank(args, args.run_dir / STAGE, evaluate, redirect=redirect_output)


# ---------------------------------------------------------------------------------------------- helpers


def write_atomic(path: Path, text: str) -> None:
    """Write once, atomically (run-directory contract): a temporary file, then os.replace."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def resolve_dtype(name: str, cfg: config_mod.CaseConfig) -> Any:
    import torch

    if name == "auto":
        name = "bf16" if cfg.train.bf16 else "fp32"
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]


def decoding_plan(cfg: config_mod.CaseConfig, decoding: str, use_cuda: bool) -> dict[str, Any]:
    """What the [eval] settings become here: reference decoding and a transformers without the static path decode
    as before (dynamic cache, official order); compilation only on CUDA. `cache_fallback` says why when the config's
    static cache could not be had."""
    from .mmmu import static_cache_unsupported

    ev = cfg.eval
    if decoding != "greedy":
        return {"cache": "dynamic", "compile": False, "sort_by_length": False, "cache_fallback": None}
    cache, fallback = ev.cache, None
    if cache == "static" and (why := static_cache_unsupported()) is not None:
        cache, fallback = "dynamic", why
    return {"cache": cache, "compile": bool(ev.compile and use_cuda and cache == "static"),
            "sort_by_length": ev.sort_by_length, "cache_fallback": fallback}


def model_file(args: argparse.Namespace) -> Path:
    """The finetune output (RUN/finetune/model/pytorch_model.bin) or --model-dir's (a file path also works)."""
    d = args.model_dir if args.model_dir is not None else args.run_dir / "finetune" / "model"
    path = d if d.is_file() else d / MODEL_FILE
    if not path.is_file():
        hint = "pass --model-dir" if args.model_dir is None else "check --model-dir"
        raise FileNotFoundError(
            f"{path}: no finetuned model (a 16-bit LlavaForTraining state dict written by the finetune stage); "
            f"run the finetune stage first or {hint}"
        )
    return path


def tokenizer_dir(args: argparse.Namespace, cfg: config_mod.CaseConfig, weights: Path) -> Path:
    if args.tokenizer is not None:
        return args.tokenizer
    if args.synthetic:
        return args.run_dir / "synthetic" / "tokenizer"
    if args.models is not None:
        return args.models / cfg.model.llm_dir
    if (weights.parent / "tokenizer.model").is_file():
        return weights.parent
    raise SystemExit("no tokenizer: pass --models (the LLM checkpoint directory's parent) or --tokenizer DIR")


def load_state(model: Any, path: Path) -> None:
    """Load the finetune stage's state dict (keys: LlavaForTraining's own names) into a model of the same build."""
    import torch

    kwargs: dict[str, Any] = {"map_location": "cpu", "weights_only": True}
    try:
        state = torch.load(str(path), mmap=True, **kwargs)
    except (TypeError, RuntimeError):  # torch without mmap, or a legacy (non-zip) file
        state = torch.load(str(path), **kwargs)
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict, found {type(state).__name__}")
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    # Non-persistent buffers (e.g. CLIP's position_ids under some transformers releases) may be absent.
    params = {name for name, _ in model.named_parameters()}
    persistent_missing = [k for k in missing if k in params]
    if persistent_missing or unexpected:
        raise ValueError(
            f"{path}: the state dict does not fit the model built from the config: {len(persistent_missing)} "
            f"missing ({', '.join(persistent_missing[:4])}{', ...' if len(persistent_missing) > 4 else ''}), "
            f"{len(unexpected)} unexpected ({', '.join(unexpected[:4])}{', ...' if len(unexpected) > 4 else ''}); "
            f"use the config the run was trained with"
        )
    for k, t in state.items():
        if tuple(t.shape) != tuple(own[k].shape):
            raise ValueError(f"{path}: {k} has shape {tuple(t.shape)} but the model needs {tuple(own[k].shape)}")
    model.load_state_dict(state, strict=False)


# ---------------------------------------------------------------------------------------------- the stage


def evaluate(args: argparse.Namespace, rank: Rank, stage_dir: Path) -> None:
    cfg = config_mod.load(args.config)

    from . import device as device_layer

    dev = device_layer.init(rank.local, rank.local_world)  # the vendor's runtime first, then the device (device.py)
    import torch

    from .data import ImageProcessor
    from .events import EventLog
    from .mmmu import (
        REFERENCE_SEED,
        SUBJECTS,
        BatchDecoder,
        decode_response,
        generated_token_count,
        inline_image_refs,
        load_image,
        load_mmmu,
        plan_batches,
        prepare_text,
        question_key,
        response_record,
        spliced_length,
    )
    from .model import LlavaForTraining, resolve_attn
    from .tokenizer import Tokenizer

    device = dev.torch_device
    dist = None
    if rank.world > 1:
        import datetime

        dist = torch.distributed
        # Ranks finish their shares at different times; the merge waits at a barrier, so allow hours.
        dist.init_process_group(dev.backend, timeout=datetime.timedelta(hours=6))

    def barrier() -> None:
        if dist is not None:
            dist.barrier()

    stage_dir.mkdir(parents=True, exist_ok=True)
    log = EventLog(stage_dir / "events.log", enabled=rank.main)
    log.start("init_start", {"stage": STAGE}, time_ms=PROCESS_START * 1000)

    # ---- the questions -----------------------------------------------------------------------------
    try:
        import datasets

        datasets.disable_progress_bars()
    except ImportError as e:
        raise RuntimeError("the eval stage reads MMMU with the `datasets` package: pip install datasets pyarrow") from e
    subjects = tuple(s.strip() for s in args.subjects.split(",") if s.strip()) or SUBJECTS
    mmmu_root = args.mmmu
    if mmmu_root is None:  # --synthetic: generate once (rank 0), then every rank reads it
        from .synthetic import generate_mmmu

        mmmu_root = args.run_dir / "synthetic" / "mmmu"
        if rank.main:
            per_subject = args.synthetic_questions or getattr(cfg.synthetic, "mmmu_questions", 30)
            generate_mmmu(mmmu_root, per_subject, cfg.synthetic.seed)
        barrier()
    questions = load_mmmu(mmmu_root, subjects)
    if args.limit:
        questions = questions[: args.limit]
    mine = questions[rank.rank :: rank.world]
    n_questions = len(questions)
    multi_image = sum(1 for q in questions if any(q.get(f"image_{i}") is not None for i in range(2, 8)))
    inline_refs = sum(1 for q in questions if inline_image_refs(q))
    del questions  # each rank keeps only its share of the image bytes

    # ---- tokenizer and model -----------------------------------------------------------------------
    weights = model_file(args)
    tokenizer = Tokenizer.from_dir(tokenizer_dir(args, cfg, weights))
    dtype = resolve_dtype(args.dtype, cfg)
    attn = resolve_attn(cfg.model.attn)
    dev.seed(cfg.train.seed)
    plan = decoding_plan(cfg, args.decoding, use_cuda=dev.type == "cuda")
    # liger's fused kernels are a training lever, and do not compile under torch.compile (its RMSNorm failed there
    # on an H200: bench/results/eval): a compiled decoding step fuses the stock modules itself.
    model_cfg = dataclasses.replace(cfg.model, kernels="none") if plan["compile"] else cfg.model
    t0 = time.time()
    model = LlavaForTraining(model_cfg, dtype=dtype, attn_implementation=attn, vocab_size=tokenizer.vocab_size,
                             device=device)
    load_state(model, weights)
    model.eval()
    load_seconds = time.time() - t0
    processor = ImageProcessor(cfg.model.vision.image_size, "crop")  # MMMU: no padding to square

    # ---- the decoding plan: every prompt's length first, so batches and the static cache are fixed up front
    batch_size = args.batch_size or cfg.eval.batch_size
    texts = [prepare_text(q, tokenizer) for q in mine]
    lengths = [spliced_length(t, model.image_tokens, cfg.model.max_length) for t in texts]
    batches = plan_batches(lengths, batch_size, plan["sort_by_length"])
    static = plan["cache"] == "static"
    max_cache_len = max(lengths, default=0) + args.max_new_tokens if static else 0
    padded_rows = len(batches) * batch_size - len(mine) if static else 0

    versions = library_versions()
    for name in ("datasets", "pyarrow"):
        try:
            from importlib import metadata

            versions[name] = metadata.version(name)
        except Exception:  # noqa: BLE001 - a version is a fact, its absence too
            versions[name] = None
    log.point(
        "kit_facts",
        {
            "stage": STAGE,
            "decoding": args.decoding,
            "batch_size": batch_size,
            "cache": plan["cache"],
            "cache_fallback": plan["cache_fallback"],
            "compile": plan["compile"],
            "sort_by_length": plan["sort_by_length"],
            "padded_rows": padded_rows,
            "max_cache_len": max_cache_len,
            "max_new_tokens": args.max_new_tokens,
            "questions": n_questions,
            "subjects": list(subjects),
            "limit": args.limit,
            "multi_image_questions": multi_image,
            "inline_image_ref_questions": inline_refs,
            "world_size": rank.world,
            "nodes": max(1, rank.world // max(1, rank.local_world)),
            "mmmu": str(mmmu_root),
            "model_file": str(weights),
            "model_load_seconds": load_seconds,
            "synthetic": args.synthetic,
            "image_mode": "crop",
            "attn_implementation": attn,
            "dtype": str(dtype).removeprefix("torch."),
            **dev.facts(rank.world),
            "seed": REFERENCE_SEED if args.decoding == "reference" else None,
            "versions": versions,
            "model": model.facts(),
        },
    )
    log.end("init_stop")
    log.start("run_start", {"questions": n_questions})

    # ---- generation ----------------------------------------------------------------------------------
    if args.decoding == "reference":
        dev.seed(REFERENCE_SEED)  # the reference's seed; beam sampling stays non-deterministic on GPUs
    sync = dev.synchronize

    decoder = BatchDecoder(model, mode=args.decoding, batch_size=batch_size, max_new_tokens=args.max_new_tokens,
                           cache=plan["cache"], compile=plan["compile"], max_cache_len=max_cache_len,
                           eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id, bos_id=tokenizer.bos_id)

    def images_of(batch: list[int]) -> list[Any]:
        return [load_image(mine[i], processor) if texts[i]["has_image"] else None for i in batch]

    records: dict[int, str] = {}
    total_tokens = 0
    t_run = time.time()
    # The next batch's images are decoded on a worker thread while this one generates (PIL releases the GIL).
    with concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="mmmu-images") as pool:
        pending = pool.submit(images_of, batches[0]) if batches else None
        t_batch = t_run
        for b, batch in enumerate(batches):
            images = pending.result()
            pending = pool.submit(images_of, batches[b + 1]) if b + 1 < len(batches) else None
            t_gen = time.time()
            padded_before = decoder.padded_rows
            out = decoder([texts[i]["input_ids"] for i in batch], images)
            sync()
            now = time.time()
            counts = [generated_token_count(ids, args.max_new_tokens) for ids in out]
            total_tokens += sum(counts)
            for i, ids, n in zip(batch, out, counts, strict=True):
                rec = response_record(texts[i], decode_response(ids, tokenizer))
                records[i] = json.dumps({**rec, "rank": rank.rank, "generated_tokens": n}, ensure_ascii=False)
            # Stamped with the batch's end, and each batch timed from the end of the one before: the gap between
            # two stamps is exactly the next batch's seconds (kit verify checks).
            log.point(
                "kit_eval_batch",
                time_ms=now * 1000.0,
                value={
                    "batch": b + 1,
                    "rank": rank.rank,
                    "questions": len(batch),
                    "padded_rows": decoder.padded_rows - padded_before,
                    "seconds": now - t_batch,
                    "generate_seconds": now - t_gen,
                    "generated_tokens": sum(counts),
                    "prompt_tokens": sum(len(texts[i]["input_ids"]) for i in batch),
                    "longest_prompt_positions": max(lengths[i] for i in batch),
                },
            )
            print(f"batch {b + 1}/{len(batches)}: {len(batch)} questions, {sum(counts)} tokens, "
                  f"{now - t_batch:.2f} s", flush=True)
            t_batch = now
    if decoder.padded_rows != padded_rows:
        raise RuntimeError(f"{decoder.padded_rows} padded rows decoded, {padded_rows} planned")
    lines = [records[i] for i in range(len(mine))]  # the official order of this rank's share
    write_atomic(stage_dir / f"responses-rank{rank.rank}.jsonl", "".join(line + "\n" for line in lines))
    rank_seconds = time.time() - t_run

    # ---- merge (rank 0) ------------------------------------------------------------------------------
    barrier()
    if rank.main:
        merged: list[dict[str, Any]] = []
        tokens_all = 0
        for k in range(rank.world):
            path = stage_dir / f"responses-rank{k}.jsonl"
            for line in path.read_text(encoding="utf-8").splitlines():
                rec = json.loads(line)
                tokens_all += rec.pop("generated_tokens")
                rec.pop("rank")
                merged.append(rec)
        merged.sort(key=lambda r: question_key(r["id"]))
        if len(merged) != n_questions or len({r["id"] for r in merged}) != n_questions:
            raise RuntimeError(f"the ranks' files hold {len(merged)} responses for {n_questions} questions")
        out_path = stage_dir / "responses.json"
        write_atomic(out_path, json.dumps(merged, indent=1, ensure_ascii=False) + "\n")
        log.point("kit_eval_done", {"questions": len(merged), "generated_tokens": tokens_all,
                                    "seconds": time.time() - t_run, "rank0_seconds": rank_seconds,
                                    "path": str(out_path)})
        log.end("run_stop", {"questions": len(merged)}, status="success")
    barrier()
    if dist is not None:
        dist.destroy_process_group()


if __name__ == "__main__":
    leave(main())  # without the interpreter teardown that can abort a gloo rank (train.leave)

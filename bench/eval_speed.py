"""Speed of the eval stage's MMMU decoding: the plain path, the fast greedy path, reference decoding, plain HF Llava.

    python bench/eval_speed.py --config H200x1x1 --out bench/results/eval/h200x1-eval-speed.json
    python bench/eval_speed.py --smoke --out bench/results/cpu/eval-speed-smoke.json

One process, one GPU, random weights of the config's shape (its dtype, built straight on the device) and a
synthetic MMMU of 900 questions (cases/llava1_5_7b/synthetic.py generate_mmmu) with a tokenizer trained on its
text. Random weights rarely emit EOS, so nearly every answer runs to max_new_tokens: the worst case. Parts:

  a  the plain path (mmmu.generate: dynamic cache, batches of 8, official order) on its first few batches;
  b  the fast path (static cache, batches sorted by length, compiled decoding step on CUDA): first the eval stage
     itself (evaluate.evaluate, the config's batch size) over all the questions, model load from a saved state
     dict included; then batch sizes 32 and 128 on the first questions of the official order;
  c  reference decoding (5 beams, sampling, seed 42, dynamic cache) on a few batches;
  d  transformers' own LlavaForConditionalGeneration.generate on the same prompts and the same weights: dynamic
     cache at batch 8 and 32, static cache (which generate compiles) at batch 32 and 64, a few batches each.

Each measurement records wall time, generated tokens per second, milliseconds per decoding step and prefill time
(a generate of one new token on the same batch, timed apart), and how many of its answers equal part a's token for
token on the questions both answered (the stage writes text, so its comparison is of the decoded text). The first
batch of a compiled configuration is reported apart (it compiles); "steady" figures leave it out. The expectation
of each measurement is written into the output file before it runs. Parts not reached within --budget seconds
are recorded as skipped. --smoke runs every part on the tiny config on a CPU in about a minute.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import transformers  # noqa: E402

from cases.llava1_5_7b import config as config_mod  # noqa: E402
from cases.llava1_5_7b import evaluate as evaluate_mod  # noqa: E402
from cases.llava1_5_7b.data import SYSTEM_V1, ImageProcessor  # noqa: E402
from cases.llava1_5_7b.mmmu import (  # noqa: E402
    REFERENCE_SEED,
    BatchDecoder,
    decode_response,
    generate,
    generated_token_count,
    load_image,
    load_mmmu,
    plan_batches,
    prepare_text,
    spliced_length,
)
from cases.llava1_5_7b.model import IMAGE_TOKEN_INDEX, LlavaForTraining, resolve_attn  # noqa: E402
from cases.llava1_5_7b.tokenizer import Tokenizer, train_tokenizer  # noqa: E402

# Expectations, written before each measurement (the brief's H200 figures: plain path ~47 ms per step at batch 8,
# ~130 tok/s; HF's static cache 12.2 ms at batch 32 and 16.0 ms at batch 64).
EXPECT = {
    "a": "plain path: ~47 ms per decoding step at batch 8, ~130-170 generated tok/s (eager, dynamic cache)",
    "b_stage": "the stage at the config's batch size: 900 questions in <= 90 s with model load, >= 1,500 tok/s "
               "steady; its greedy answers equal part a's on the questions both answered (bf16: a few may differ)",
    "b32": "~12 ms per step at batch 32, ~2,000+ tok/s steady after a compile of tens of seconds",
    "b128": "~25 ms per step at batch 128, more tok/s than batch 64 if the GPU is not yet compute-bound",
    "c": "reference decoding: 5 beams x batch 8 rows, eager dynamic cache: ~50-60 ms per step, slower than a",
    "d_dynamic8": "HF Llava, dynamic cache, batch 8: about part a (the same eager decoding loop)",
    "d_dynamic32": "HF Llava, dynamic cache, batch 32: ~4x a's tok/s at a similar ms per step (launch-bound)",
    "d_static32": "HF Llava, static cache + compile, batch 32: ~12.2 ms per step, ~1,760 tok/s",
    "d_static64": "HF Llava, static cache + compile, batch 64: ~16.0 ms per step, ~2,260 tok/s",
}


# Seconds of the budget a measurement needs before it starts on a GPU (a compile takes tens of seconds).
RESERVE = {"a": 15, "b_stage": 110, "b32": 70, "b128": 70, "c": 20, "d_dynamic8": 15, "d_dynamic32": 20,
           "d_static32": 60, "d_static64": 60}


# ---------------------------------------------------------------------------------------------- plumbing


class Recorder:
    """The result file, rewritten after every change so that an expectation is on disk before its measurement."""

    def __init__(self, path: Path | None, setup: dict[str, Any]) -> None:
        self.path = path
        self.data: dict[str, Any] = {"setup": setup, "measurements": []}
        self.write()

    def begin(self, name: str, part: str, expect: str, **info: Any) -> dict[str, Any]:
        entry = {"name": name, "part": part, "expect": expect, "status": "running", **info}
        self.data["measurements"].append(entry)
        self.write()
        return entry

    def write(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.data, indent=1) + "\n")
        os.replace(tmp, self.path)


class Clock:
    def __init__(self, device: torch.device, budget: float) -> None:
        self.device = device
        self.t0 = time.perf_counter()
        self.budget = budget

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def now(self) -> float:
        self.sync()
        return time.perf_counter()

    def left(self) -> float:
        return self.budget - (time.perf_counter() - self.t0)


def commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype, device: torch.device) -> Iterator[None]:
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(old)


def fresh_compiler(device: torch.device) -> None:
    """Forget compiled graphs between configurations (no recompile limit reached, no stale CUDA-graph pools)."""
    torch._dynamo.reset()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def cut_eos(rows: list[list[int]], eos_id: int) -> list[list[int]]:
    return [r[: r.index(eos_id)] if eos_id in r else r for r in rows]


def summarize(batches: list[dict[str, Any]], compiled: bool) -> dict[str, Any]:
    """Overall and steady figures of a run's batches (steady: without the first batch of a compiled run)."""

    def figures(bs: list[dict[str, Any]]) -> dict[str, Any]:
        if not bs:
            return {}
        secs = sum(b["seconds"] for b in bs)
        tokens = sum(b["generated_tokens"] for b in bs)
        pre = [b for b in bs if b.get("prefill_seconds") is not None]
        prefill = sum(b["prefill_seconds"] for b in pre) / len(pre) if pre else None
        steps = [(b["seconds"] - prefill) / max(1, b["steps"] - 1) for b in bs] if prefill is not None else []
        return {
            "batches": len(bs),
            "questions": sum(b["questions"] for b in bs),
            "seconds": round(secs, 3),
            "generated_tokens": tokens,
            "tokens_per_s": round(tokens / secs, 1) if secs > 0 else None,
            "prefill_seconds": round(prefill, 4) if prefill is not None else None,
            "ms_per_step": round(1000 * sum(steps) / len(steps), 2) if steps else None,
            "ms_per_step_with_prefill": round(1000 * secs / max(1, sum(b["steps"] for b in bs)), 2),
        }

    out = {"all": figures(batches)}
    if compiled and len(batches) > 1:
        out["first_batch_seconds"] = round(batches[0]["seconds"], 3)
        out["steady"] = figures(batches[1:])
    else:
        out["steady"] = out["all"]
    return out


def compare(got: dict[str, list[int]], want: dict[str, list[int]]) -> dict[str, Any]:
    both = [q for q in got if q in want]
    same = [q for q in both if got[q] == want[q]]
    return {"compared": len(both), "equal": len(same), "differ": [q for q in both if got[q] != want[q]][:10]}


# ---------------------------------------------------------------------------------------------- runs


def run_batches(
    batches: Sequence[Sequence[int]],
    decode: Callable[[list[int], int], list[list[int]]],
    clock: Clock,
    ids_of: Callable[[int], str],
    max_new_tokens: int,
    prefill_on: set[int],
) -> tuple[list[dict[str, Any]], dict[str, list[int]], bool]:
    """Decode batch after batch (decode(indices, max_new_tokens) -> new ids); (per-batch facts, ids by question,
    whether the time budget cut the run short)."""
    facts: list[dict[str, Any]] = []
    answers: dict[str, list[int]] = {}
    for b, batch in enumerate(batches):
        if b and clock.left() < 0:
            return facts, answers, True
        prefill = None
        if b in prefill_on:
            t = clock.now()
            decode(list(batch), 1)
            prefill = clock.now() - t
        t = clock.now()
        out = decode(list(batch), max_new_tokens)
        secs = clock.now() - t
        counts = [generated_token_count(x, max_new_tokens) for x in out]
        for i, x in zip(batch, out, strict=True):
            answers[ids_of(i)] = x
        facts.append({"batch": b + 1, "questions": len(batch), "seconds": secs, "prefill_seconds": prefill,
                      "generated_tokens": sum(counts), "steps": max(counts)})
    return facts, answers, False


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.smoke = args.smoke
        overrides = list(args.set)
        self.cfg = config_mod.load("tiny" if args.smoke else args.config, overrides)
        self.device = torch.device("cuda", 0) if torch.cuda.is_available() and not args.cpu else torch.device("cpu")
        self.dtype = evaluate_mod.resolve_dtype("auto", self.cfg)
        self.attn = resolve_attn(self.cfg.model.attn)
        self.new = args.max_new_tokens
        self.work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="kit-eval-speed-"))
        self.clock = Clock(self.device, args.budget)
        setup = {
            "script": "bench/eval_speed.py",
            "argv": sys.argv[1:],
            "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "commit": commit(),
            "config": self.cfg.name,
            "overrides": overrides,
            "smoke": args.smoke,
            "device": self.device.type,
            "gpu": torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else None,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "dtype": str(self.dtype).removeprefix("torch."),
            "attn_implementation": self.attn,
            "kernels": self.cfg.model.kernels,
            "max_new_tokens": self.new,
            "eval_config": dataclasses.asdict(self.cfg.eval),
            "budget_seconds": args.budget,
        }
        self.rec = Recorder(args.out, setup)

    # ------------------------------------------------------------------------------------------ data, model
    def prepare(self) -> None:
        from cases.llava1_5_7b.synthetic import generate_mmmu

        t = time.perf_counter()
        self.mmmu_dir = self.work / "mmmu"
        generate_mmmu(self.mmmu_dir, self.args.questions_per_subject, self.cfg.synthetic.seed)
        self.questions = load_mmmu(self.mmmu_dir)
        texts = [f"{SYSTEM_V1} USER: Hi ASSISTANT: Hello</s>"] * 300
        texts += [q["question"] + " " + str(q["options"]) for q in self.questions]
        self.tok_dir = train_tokenizer(texts, self.work / "tokenizer", self.cfg.synthetic.tokenizer_vocab,
                                       model_max_length=self.cfg.model.max_length)
        self.tok = Tokenizer.from_dir(self.tok_dir)
        self.texts = [prepare_text(q, self.tok) for q in self.questions]
        data_seconds = time.perf_counter() - t

        t = self.clock.now()
        torch.manual_seed(self.cfg.train.seed)
        self.model = LlavaForTraining(self.cfg.model, dtype=self.dtype, attn_implementation=self.attn,
                                      vocab_size=self.tok.vocab_size, device=self.device).eval()
        build_seconds = self.clock.now() - t
        self.lengths = [spliced_length(x, self.model.image_tokens, self.cfg.model.max_length) for x in self.texts]
        self.processor = ImageProcessor(self.cfg.model.vision.image_size, "crop")
        save_seconds = None
        if not self.args.no_stage:
            t = time.perf_counter()
            (self.work / "model").mkdir(parents=True, exist_ok=True)
            torch.save(self.model.state_dict(), self.work / "model" / "pytorch_model.bin")
            save_seconds = time.perf_counter() - t
        self.rec.data["setup"].update({
            "questions": len(self.questions),
            "tokenizer_vocab": self.tok.vocab_size,
            "prompt_positions": {"min": min(self.lengths), "max": max(self.lengths),
                                 "mean": round(sum(self.lengths) / len(self.lengths), 1)},
            "image_tokens": self.model.image_tokens,
            "model": self.model.facts(),
            "data_seconds": round(data_seconds, 2),
            "model_build_seconds": round(build_seconds, 2),
            "state_dict_save_seconds": round(save_seconds, 2) if save_seconds is not None else None,
        })
        self.rec.write()

    def images(self, batch: Sequence[int]) -> list[Any]:
        return [load_image(self.questions[i], self.processor) if self.texts[i]["has_image"] else None for i in batch]

    def qid(self, i: int) -> str:
        return self.questions[i]["id"]

    # ------------------------------------------------------------------------------------------ parts
    def measure(self, name: str, part: str, fn: Callable[[dict[str, Any]], None], **info: Any) -> dict[str, Any]:
        """One measurement; skipped when less of the budget is left than it needs to start (RESERVE, GPU only)."""
        entry = self.rec.begin(name, part, EXPECT[name], **info)
        need = 0.0 if self.smoke else RESERVE.get(name, 0.0)
        if self.clock.left() < need:
            entry["status"] = f"skipped: {max(0.0, self.clock.left()):.0f} s of the budget left, {need:.0f} s needed"
            self.rec.write()
            return entry
        t = time.perf_counter()
        try:
            fn(entry)
            entry["status"] = entry.get("status_note") or "done"
        except Exception as e:  # noqa: BLE001 - a failed measurement is a result; the next ones still run
            entry["status"] = "failed"
            entry["error"] = f"{type(e).__name__}: {e}"
            entry["traceback"] = traceback.format_exc()[-4000:]
            print(entry["traceback"], file=sys.stderr)
        entry["part_seconds"] = round(time.perf_counter() - t, 2)
        entry.pop("status_note", None)
        self.rec.write()
        print(f"{name}: {entry['status']} in {entry['part_seconds']} s", flush=True)
        fresh_compiler(self.device)
        return entry

    def part_a(self, entry: dict[str, Any]) -> None:
        n = entry["batches_planned"]
        batches = plan_batches(self.lengths, 8, sort_by_length=False)[:n]

        def decode(batch: list[int], new: int) -> list[list[int]]:
            return generate(self.model, [self.texts[i]["input_ids"] for i in batch], self.images(batch), new,
                            eos_id=self.tok.eos_id, pad_id=self.tok.pad_id, bos_id=self.tok.bos_id)

        facts, self.a_answers, cut = run_batches(batches, decode, self.clock, self.qid, self.new, {1, 2})
        entry.update(self._figures(facts, compiled=False, cut=cut))

    def part_b_stage(self, entry: dict[str, Any]) -> None:
        """The eval stage itself, in this process: MMMU read, model build + load_state, decoding, responses."""
        run = self.work / "stage-run"
        shutil.rmtree(run, ignore_errors=True)
        cfg_path = self.work / "config.toml"
        cfg_path.write_text(config_mod.dumps(self.cfg))
        argv = ["--run-dir", str(run), "--config", str(cfg_path), "--mmmu", str(self.mmmu_dir),
                "--model-dir", str(self.work / "model"), "--tokenizer", str(self.tok_dir),
                "--max-new-tokens", str(self.new)]
        args = evaluate_mod.parse_args(argv)
        for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
            os.environ.pop(var, None)
        t = self.clock.now()
        evaluate_mod.evaluate(args, evaluate_mod.Rank(), run / "eval")
        wall = self.clock.now() - t
        events = [json.loads(line.split(":::MLLOG ", 1)[1])
                  for line in (run / "eval" / "events.log").read_text().splitlines() if ":::MLLOG " in line]
        facts = next(e["value"] for e in events if e["key"] == "kit_facts")
        batches = [{"questions": e["value"]["questions"], "seconds": e["value"]["generate_seconds"],
                    "generated_tokens": e["value"]["generated_tokens"], "steps": self.new, "prefill_seconds": None}
                   for e in events if e["key"] == "kit_eval_batch"]
        entry.update({
            "wall_seconds": round(wall, 2),
            "questions": facts["questions"],
            "model_load_seconds": round(facts["model_load_seconds"], 2),
            "batch_size": facts["batch_size"],
            "cache": facts["cache"],
            "cache_fallback": facts.get("cache_fallback"),
            "compile": facts["compile"],
            "sort_by_length": facts["sort_by_length"],
            "padded_rows": facts["padded_rows"],
            "max_cache_len": facts["max_cache_len"],
            "note": "wall: evaluate.evaluate in this process (not the interpreter's start and imports); steps "
                    "counted as max_new_tokens per batch, prefill not timed apart",
            **summarize(batches, compiled=facts["compile"]),
        })
        responses = json.loads((run / "eval" / "responses.json").read_text())
        text = {r["id"]: r["response"] for r in responses}
        want = {q: decode_response(ids, self.tok) for q, ids in getattr(self, "a_answers", {}).items()}
        both = [q for q in want if q in text]
        entry["matches_a"] = {"compared": len(both), "equal": sum(text[q] == want[q] for q in both),
                              "by": "decoded text (the stage writes no ids)"}

    def part_b(self, entry: dict[str, Any]) -> None:
        bs, n_q = entry["batch_size"], entry["questions_planned"]
        first = list(range(min(n_q, len(self.questions))))
        lengths = [self.lengths[i] for i in first]
        compile_ = self.device.type == "cuda" and self.cfg.eval.compile
        max_cache_len = max(lengths) + self.new
        decoder = BatchDecoder(self.model, batch_size=bs, max_new_tokens=self.new, cache="static", compile=compile_,
                               max_cache_len=max_cache_len, eos_id=self.tok.eos_id, pad_id=self.tok.pad_id,
                               bos_id=self.tok.bos_id)
        batches = plan_batches(lengths, bs, sort_by_length=True)

        def decode(batch: list[int], new: int) -> list[list[int]]:
            decoder.max_new_tokens = new
            return decoder([self.texts[i]["input_ids"] for i in batch], self.images(batch))

        facts, answers, cut = run_batches(batches, decode, self.clock, self.qid, self.new, {1, 2})
        entry.update({"cache": "static", "compile": compile_, "sort_by_length": True, "max_cache_len": max_cache_len,
                      "padded_rows_per_pass": len(batches) * bs - len(first)})
        entry.update(self._figures(facts, compiled=compile_, cut=cut))
        entry["matches_a"] = compare(answers, getattr(self, "a_answers", {}))

    def part_c(self, entry: dict[str, Any]) -> None:
        batches = plan_batches(self.lengths, 8, sort_by_length=False)[: entry["batches_planned"]]
        torch.manual_seed(REFERENCE_SEED)

        def decode(batch: list[int], new: int) -> list[list[int]]:
            return generate(self.model, [self.texts[i]["input_ids"] for i in batch], self.images(batch), new,
                            "reference", eos_id=self.tok.eos_id, pad_id=self.tok.pad_id, bos_id=self.tok.bos_id)

        facts, _, cut = run_batches(batches, decode, self.clock, self.qid, self.new, {1})
        entry.update({"cache": "dynamic", "beams": 5})
        entry.update(self._figures(facts, compiled=False, cut=cut))

    def hf_model(self) -> tuple[Any, int]:
        """LlavaForConditionalGeneration of the same shape holding the same weights; and its image token id."""
        from transformers import CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration

        v = self.cfg.model.vision
        used = {t for x in self.texts for t in x["input_ids"]}
        image_token = next(t for t in range(self.model.vocab - 1, -1, -1) if t not in used)  # a row no prompt uses
        vision = CLIPVisionConfig(hidden_size=v.hidden, intermediate_size=v.ffn, num_hidden_layers=v.layers,
                                  num_attention_heads=v.heads, image_size=v.image_size, patch_size=v.patch)
        text = copy.deepcopy(self.model.llm.config)
        config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=image_token,
                             image_seq_length=self.model.image_tokens, projector_hidden_act="gelu",
                             vision_feature_select_strategy="default", vision_feature_layer=v.select_layer,
                             multimodal_projector_bias=True, tie_word_embeddings=False)
        config._attn_implementation = self.attn
        config.text_config._attn_implementation = self.attn
        config.vision_config._attn_implementation = self.model.vision_attn_implementation
        with default_dtype(self.dtype, self.device):
            hf = LlavaForConditionalGeneration(config)
        hf.eval()
        own = hf.state_dict()
        prefixes = [("vision.", ["model.vision_tower.", "vision_tower."]),
                    ("projector.0.", ["model.multi_modal_projector.linear_1.", "multi_modal_projector.linear_1."]),
                    ("projector.2.", ["model.multi_modal_projector.linear_2.", "multi_modal_projector.linear_2."]),
                    ("llm.model.", ["model.language_model.", "language_model.model."]),
                    ("llm.lm_head.", ["lm_head.", "language_model.lm_head."])]
        mapped: dict[str, torch.Tensor] = {}
        for key, t in self.model.state_dict().items():
            for src, dests in prefixes:
                if key.startswith(src):
                    dest = next((d + key[len(src):] for d in dests if d + key[len(src):] in own), None)
                    if dest is None:
                        raise KeyError(f"{key}: no key of LlavaForConditionalGeneration takes it ({dests[0]}...)")
                    mapped[dest] = t
                    break
            else:
                raise KeyError(f"{key}: no mapping onto LlavaForConditionalGeneration")
        missing = [k for k in own if k not in mapped]
        # The vision layers past select_layer never reach the features (LlavaForTraining does not build them).
        unused = [k for k in missing if ".encoder.layers." in k
                  and int(k.split(".encoder.layers.")[1].split(".")[0]) >= self.model.vision_layers_run]
        if set(missing) - set(unused):
            raise KeyError(f"LlavaForConditionalGeneration keys left without weights: {sorted(set(missing) - set(unused))[:5]}")
        hf.load_state_dict(mapped, strict=False)
        return hf, image_token

    def part_d(self, entry: dict[str, Any], hf: Any, image_token: int) -> None:
        from transformers import CompileConfig, GenerationConfig

        bs, static = entry["batch_size"], entry["cache"] == "static"
        batches = plan_batches(self.lengths, bs, sort_by_length=False)[: entry["batches_planned"]]
        compile_ = static and self.device.type == "cuda"
        longest = max(self.lengths[i] for b in batches for i in b)

        def decode(batch: list[int], new: int) -> list[list[int]]:
            rows = []
            for i in batch:
                ids = []
                for t in self.texts[i]["input_ids"]:
                    ids += [image_token] * self.model.image_tokens if t == IMAGE_TOKEN_INDEX else [t]
                rows.append(ids)
            width = max(len(r) for r in rows)
            input_ids = torch.full((len(rows), width), self.tok.pad_id, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for k, r in enumerate(rows):
                input_ids[k, width - len(r):] = torch.tensor(r)
                mask[k, width - len(r):] = 1
            imgs = [x for x in self.images(batch) if x is not None]
            kwargs: dict[str, Any] = {}
            if imgs:
                kwargs["pixel_values"] = torch.stack(imgs).to(self.device, self.dtype)
            gen = dict(do_sample=False, num_beams=1, max_new_tokens=new, eos_token_id=self.tok.eos_id,
                       pad_token_id=self.tok.pad_id, bos_token_id=self.tok.bos_id, use_cache=True)
            if static:
                gen.update(cache_implementation="static", max_cache_len=longest + self.new,
                           disable_compile=not compile_)
                if compile_:
                    gen["compile_config"] = CompileConfig(fullgraph=False, dynamic=False)
            with torch.no_grad():
                out = hf.generate(input_ids=input_ids.to(self.device), attention_mask=mask.to(self.device),
                                  generation_config=GenerationConfig(**gen), **kwargs)
            return cut_eos(out[:, width:].tolist(), self.tok.eos_id)

        facts, answers, cut = run_batches(batches, decode, self.clock, self.qid, self.new, {1, 2})
        entry.update({"compile": compile_, "image_token_id": image_token})
        entry.update(self._figures(facts, compiled=compile_, cut=cut))
        entry["matches_a"] = compare(answers, getattr(self, "a_answers", {}))

    def _figures(self, facts: list[dict[str, Any]], compiled: bool, cut: bool) -> dict[str, Any]:
        out = {"batches": [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in f.items()} for f in facts],
               **summarize(facts, compiled)}
        out["wall_seconds"] = round(sum(f["seconds"] for f in facts), 2)
        if cut:
            out["status_note"] = "done (cut short by the time budget)"
        return out

    # ------------------------------------------------------------------------------------------ all
    def run(self) -> None:
        self.prepare()
        sm = self.smoke
        n_questions = len(self.questions)
        partial = 16 if sm else 256  # questions of the official order the extra batch sizes answer (b128: 384)
        self.measure("a", "a", self.part_a, batches_planned=2 if sm else 4, batch_size=8, cache="dynamic",
                     compile=False, sort_by_length=False)
        if not self.args.no_stage:
            self.measure("b_stage", "b", self.part_b_stage, questions_planned=n_questions,
                         batch_size=self.cfg.eval.batch_size)
        for bs, name in ((32, "b32"), (128, "b128")):
            size = 4 * bs // 32 if sm else bs
            self.measure(name, "b", self.part_b, batch_size=size, questions_planned=max(partial, 3 * size))
        self.measure("c", "c", self.part_c, batches_planned=2, batch_size=8)
        if self.clock.left() < 0:
            for name in ("d_dynamic8", "d_dynamic32", "d_static32", "d_static64"):
                self.measure(name, "d", lambda e: None)
            return
        t = self.clock.now()
        try:
            hf, image_token = self.hf_model()
        except Exception as e:  # noqa: BLE001
            self.rec.data["setup"]["hf_model_error"] = f"{type(e).__name__}: {e}"
            self.rec.write()
            print(traceback.format_exc(), file=sys.stderr)
            return
        self.rec.data["setup"]["hf_model_build_seconds"] = round(self.clock.now() - t, 2)
        scale = 4 if sm else 1  # the smoke test's batches: 8 -> 2, 32 -> 8, 64 -> 16
        for name, bs, cache, n in (("d_dynamic8", 8, "dynamic", 2), ("d_dynamic32", 32, "dynamic", 2),
                                   ("d_static32", 32, "static", 3), ("d_static64", 64, "static", 3)):
            self.measure(name, "d", lambda e: self.part_d(e, hf, image_token), batch_size=bs // scale, cache=cache,
                         batches_planned=n, sort_by_length=False)

    def table(self) -> str:
        head = f"{'run':<12} {'batch':>5} {'cache':>7} {'cmp':>4} {'q':>4} {'wall s':>7} {'tok/s':>7} " \
               f"{'ms/step':>8} {'prefill s':>9} {'= a':>7}  status"
        lines = [head, "-" * len(head)]
        for m in self.rec.data["measurements"]:
            st = m.get("steady") or {}
            match = m.get("matches_a")
            lines.append(
                f"{m['name']:<12} {m.get('batch_size', ''):>5} {m.get('cache', ''):>7} "
                f"{'yes' if m.get('compile') else 'no':>4} {st.get('questions', ''):>4} "
                f"{m.get('wall_seconds', ''):>7} {st.get('tokens_per_s') or '':>7} "
                f"{st.get('ms_per_step') or st.get('ms_per_step_with_prefill') or '':>8} "
                f"{st.get('prefill_seconds') or '':>9} "
                f"{(str(match['equal']) + '/' + str(match['compared'])) if match else '':>7}  {m['status']}"
            )
        return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="H200x1x1", help="case config name or path (default H200x1x1)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="config override as `kit run --set` takes it, e.g. model.kernels=none")
    ap.add_argument("--out", type=Path, help="result JSON (rewritten after each measurement)")
    ap.add_argument("--smoke", action="store_true", help="every part on the tiny config on a CPU, in about a minute")
    ap.add_argument("--cpu", action="store_true", help="stay on the CPU even where CUDA is available")
    ap.add_argument("--questions-per-subject", type=int, default=None, help="synthetic MMMU size (30: the real 900)")
    ap.add_argument("--max-new-tokens", type=int, default=None, help="default 128 (smoke: 16)")
    ap.add_argument("--budget", type=float, default=None,
                    help="seconds after which no new batch or part starts (default 510; smoke 90)")
    ap.add_argument("--no-stage", action="store_true", help="leave out part b's run of the eval stage itself")
    ap.add_argument("--work", help="working directory (default: a temporary one, removed at the end)")
    args = ap.parse_args(argv)
    if args.smoke:
        args.cpu = True
    args.questions_per_subject = args.questions_per_subject or (2 if args.smoke else 30)
    args.max_new_tokens = args.max_new_tokens or (16 if args.smoke else 128)
    args.budget = args.budget or (90.0 if args.smoke else 510.0)
    if args.smoke:
        torch.set_num_threads(max(1, os.cpu_count() or 1))
    bench = Bench(args)
    try:
        bench.run()
    finally:
        bench.rec.data["setup"]["total_seconds"] = round(time.perf_counter() - bench.clock.t0, 1)
        bench.rec.write()
        if not args.work:
            shutil.rmtree(bench.work, ignore_errors=True)
    print(bench.table())
    if args.out:
        print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

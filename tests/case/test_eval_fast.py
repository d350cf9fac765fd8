"""The eval stage's fast greedy path: the same new ids as the plain path, responses in the official order, [eval] keys.

On the tiny config in fp32 on a CPU: the static cache (no compilation off CUDA), batches sorted by spliced
prompt length and a last batch filled with copies of a real row must give, question for question, the tokens of
the plain path (dynamic cache, batch 8, official order) on a generated MMMU whose prompts differ in length.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from cases.llava1_5_7b import config as case_config  # noqa: E402
from cases.llava1_5_7b.data import SYSTEM_V1, ImageProcessor  # noqa: E402
from cases.llava1_5_7b.mmmu import (  # noqa: E402
    BatchDecoder,
    generate,
    load_image,
    plan_batches,
    prepare,
    prepare_text,
    question_key,
    spliced_length,
    static_cache_unsupported,
)
from cases.llava1_5_7b.model import LlavaForTraining  # noqa: E402
from cases.llava1_5_7b.tokenizer import Tokenizer, train_tokenizer  # noqa: E402

CFG = case_config.load("tiny")
QPS = 2  # questions per subject: 60 in all
NEW = 8  # new tokens per answer

needs_static = pytest.mark.skipif(static_cache_unsupported() is not None, reason=str(static_cache_unsupported()))


@pytest.fixture(scope="module")
def mmmu_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("datasets")
    pytest.importorskip("pyarrow")
    from cases.llava1_5_7b.synthetic import generate_mmmu

    out = tmp_path_factory.mktemp("mmmu-fast")
    generate_mmmu(out, questions_per_subject=QPS, seed=11)
    return out


@pytest.fixture(scope="module")
def questions(mmmu_dir: Path) -> list[dict]:
    from cases.llava1_5_7b.mmmu import load_mmmu

    return load_mmmu(mmmu_dir)


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory: pytest.TempPathFactory, questions: list[dict]) -> Path:
    """A tokenizer of the questions' own words, so prompts take 100-150 positions and differ in length."""
    texts = [f"{SYSTEM_V1} USER: hi ASSISTANT: ok"] * 50 + [q["question"] + " " + q["options"] for q in questions]
    return train_tokenizer(texts, tmp_path_factory.mktemp("tok-fast"), 512, model_max_length=CFG.model.max_length)


@pytest.fixture(scope="module")
def tok(tok_dir: Path) -> Tokenizer:
    return Tokenizer.from_dir(tok_dir)


def tiny_model(vocab_size: int) -> LlavaForTraining:
    torch.manual_seed(0)
    return LlavaForTraining(CFG.model, dtype=torch.float32, attn_implementation="sdpa", vocab_size=vocab_size).eval()


@pytest.fixture(scope="module")
def model(tok: Tokenizer) -> LlavaForTraining:
    return tiny_model(tok.vocab_size)


def todays_path(model: LlavaForTraining, prepared: list[dict], eos_id: int) -> list[list[int]]:
    """The plain path: dynamic cache, batches of 8 in the official order."""
    out: list[list[int]] = []
    for s in range(0, len(prepared), 8):
        chunk = prepared[s : s + 8]
        out += generate(model, [p["input_ids"] for p in chunk], [p["image"] for p in chunk], NEW, eos_id=eos_id)
    return out


def fast_path(model: LlavaForTraining, prepared: list[dict], eos_id: int, batch_size: int) -> tuple[list, BatchDecoder]:
    lengths = [spliced_length(p, model.image_tokens, CFG.model.max_length) for p in prepared]
    decoder = BatchDecoder(model, batch_size=batch_size, max_new_tokens=NEW, cache="static",
                           max_cache_len=max(lengths) + NEW, eos_id=eos_id)
    out: list = [None] * len(prepared)
    for batch in plan_batches(lengths, batch_size, sort_by_length=True):
        for i, ids in zip(batch, decoder([prepared[i]["input_ids"] for i in batch], [prepared[i]["image"] for i in batch]),
                          strict=True):
            out[i] = ids
    return out, decoder


@needs_static
def test_fast_path_gives_the_same_new_ids(questions: list[dict], tok: Tokenizer, model: LlavaForTraining) -> None:
    processor = ImageProcessor(CFG.model.vision.image_size, "crop")
    prepared = [prepare(q, tok, processor) for q in questions]
    lengths = [spliced_length(p, model.image_tokens, CFG.model.max_length) for p in prepared]
    assert len(set(lengths)) > 10 and max(lengths) < CFG.model.max_length  # sorting really regroups the rows
    want = todays_path(model, prepared, tok.eos_id)
    got, decoder = fast_path(model, prepared, tok.eos_id, batch_size=8)
    assert got == want
    assert decoder.padded_rows == 8 * 8 - len(prepared) == 4
    # A token the model often emits as EOS: rows stop at different steps, the padded copies with their row.
    counts: dict[int, int] = {}
    for ids in want:
        for t in ids[1:4]:
            counts[t] = counts.get(t, 0) + 1
    eos = max(counts, key=lambda t: counts[t])
    want_eos = todays_path(model, prepared, eos)
    assert sum(len(x) < NEW for x in want_eos) >= 5 and eos not in sum(want_eos, [])
    got_eos, decoder = fast_path(model, prepared, eos, batch_size=7)  # 9 batches, the last of 4 rows + 3 copies
    assert got_eos == want_eos and decoder.padded_rows == 3


def test_prepare_text_agrees_with_prepare(questions: list[dict], tok: Tokenizer) -> None:
    processor = ImageProcessor(CFG.model.vision.image_size, "crop")
    q = questions[0]
    full, text = prepare(q, tok, processor), prepare_text(q, tok)
    assert {k: v for k, v in full.items() if k != "image"} == text
    assert text["has_image"] and torch.equal(load_image(q, processor), full["image"])
    bare = {**q, "image_1": None}
    assert prepare_text(bare, tok)["has_image"] is False and load_image(bare, processor) is None
    assert prepare(bare, tok, processor)["prompt"] == prepare_text(bare, tok)["prompt"]
    ids = text["input_ids"]
    assert spliced_length(text, 16, 10_000) == len(ids) - 1 + 16
    assert spliced_length(text, 16, 20) == 20  # cut at model.max_length, as splice cuts


def test_plan_batches_sorts_longest_first_and_keeps_ties_in_order() -> None:
    lengths = [5, 9, 5, 7, 9, 1, 7]
    assert plan_batches(lengths, 3, sort_by_length=True) == [[1, 4, 3], [6, 0, 2], [5]]
    assert plan_batches(lengths, 3, sort_by_length=False) == [[0, 1, 2], [3, 4, 5], [6]]
    assert plan_batches([], 4, True) == []
    with pytest.raises(ValueError, match="batch size 0"):
        plan_batches(lengths, 0, True)


@needs_static
def test_batch_decoder_refuses_what_it_cannot_do(model: LlavaForTraining, questions: list[dict], tok: Tokenizer) -> None:
    with pytest.raises(ValueError, match="dynamic cache only"):
        BatchDecoder(model, mode="reference", batch_size=4, cache="static", max_cache_len=64)
    with pytest.raises(ValueError, match="needs max_cache_len"):
        BatchDecoder(model, batch_size=4, cache="static")
    with pytest.raises(ValueError, match="unknown cache 'paged'"):
        BatchDecoder(model, batch_size=4, cache="paged")
    p = prepare(questions[0], tok, ImageProcessor(CFG.model.vision.image_size, "crop"))
    n = spliced_length(p, model.image_tokens, CFG.model.max_length)
    small = BatchDecoder(model, batch_size=2, max_new_tokens=NEW, cache="static", max_cache_len=n + NEW - 1)
    with pytest.raises(ValueError, match=f"a prompt of {n} positions \\+ {NEW} new tokens does not fit the static cache"):
        small([p["input_ids"]], [p["image"]])
    with pytest.raises(ValueError, match="a batch of 3 prompts for batch size 2"):
        small([p["input_ids"]] * 3, [p["image"]] * 3)


# ---------------------------------------------------------------------------------------------- the stage


def _events(path: Path) -> list[dict]:
    return [json.loads(line.split(":::MLLOG ", 1)[1]) for line in path.read_text().splitlines() if ":::MLLOG " in line]


def _run_stage(tmp: Path, name: str, mmmu_dir: Path, tok_dir: Path, model: LlavaForTraining, eval_table: str,
               monkeypatch: pytest.MonkeyPatch, *extra: str) -> Path:
    from cases.llava1_5_7b import evaluate

    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(evaluate, "redirect_output", lambda p: None)
    text = (case_config.CONFIG_DIR / "tiny.toml").read_text()
    head, _, _ = text.partition("\n[eval]")
    cfg_path = tmp / f"{name}.toml"
    cfg_path.write_text(head.rstrip("\n") + "\n\n[eval]\n" + eval_table)
    run = tmp / name
    shutil.copytree(tok_dir, run / "synthetic" / "tokenizer")
    (run / "finetune" / "model").mkdir(parents=True)
    torch.save(model.state_dict(), run / "finetune" / "model" / "pytorch_model.bin")
    rc = evaluate.main(["--run-dir", str(run), "--config", str(cfg_path), "--synthetic", "--mmmu", str(mmmu_dir),
                        "--max-new-tokens", str(NEW), *extra])
    failure = run / "eval" / "failure-rank0.json"
    assert rc == 0, failure.read_text() if failure.exists() else rc
    return run


@needs_static
def test_stage_fast_path_writes_todays_responses_in_the_official_order(
    tmp_path: Path, mmmu_dir: Path, tok_dir: Path, model: LlavaForTraining, questions: list[dict],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    limit = 45  # batches of 8: the last holds 5 questions and 3 copies
    fast = _run_stage(tmp_path, "fast", mmmu_dir, tok_dir, model,
                      'batch_size = 8\ncache = "static"\nsort_by_length = true\ncompile = true\n', monkeypatch,
                      "--limit", str(limit))
    plain = _run_stage(tmp_path, "plain", mmmu_dir, tok_dir, model,
                       'batch_size = 8\ncache = "dynamic"\nsort_by_length = false\ncompile = false\n', monkeypatch,
                       "--limit", str(limit))
    got = json.loads((fast / "eval" / "responses.json").read_text())
    want = json.loads((plain / "eval" / "responses.json").read_text())
    assert got == want
    official = [q["id"] for q in sorted(questions, key=lambda q: question_key(q["id"]))][:limit]
    assert [r["id"] for r in got] == official  # every question once, no padded row written
    rank_file = [json.loads(line) for line in (fast / "eval" / "responses-rank0.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rank_file] == official

    events = _events(fast / "eval" / "events.log")
    facts = next(e["value"] for e in events if e["key"] == "kit_facts")
    assert (facts["cache"], facts["compile"], facts["sort_by_length"]) == ("static", False, True)  # no compile on CPU
    assert facts["padded_rows"] == 3 and facts["batch_size"] == 8 and facts["cache_fallback"] is None
    tok = Tokenizer.from_dir(tok_dir)
    lengths = [spliced_length(prepare_text(q, tok), model.image_tokens, CFG.model.max_length)
               for q in sorted(questions, key=lambda q: question_key(q["id"]))[:limit]]
    assert facts["max_cache_len"] == max(lengths) + NEW
    batches = [e["value"] for e in events if e["key"] == "kit_eval_batch"]
    assert [b["questions"] for b in batches] == [8] * 5 + [5]
    assert [b["padded_rows"] for b in batches] == [0] * 5 + [3]
    longest = [b["longest_prompt_positions"] for b in batches]
    assert longest == sorted(longest, reverse=True) and longest[0] == max(lengths)
    plain_facts = next(e["value"] for e in _events(plain / "eval" / "events.log") if e["key"] == "kit_facts")
    assert (plain_facts["cache"], plain_facts["padded_rows"], plain_facts["max_cache_len"]) == ("dynamic", 0, 0)


def test_stage_batch_size_flag_overrides_the_config(
    tmp_path: Path, mmmu_dir: Path, tok_dir: Path, model: LlavaForTraining, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = _run_stage(tmp_path, "flag", mmmu_dir, tok_dir, model,
                     'batch_size = 8\ncache = "dynamic"\n', monkeypatch, "--limit", "5", "--batch-size", "2")
    events = _events(run / "eval" / "events.log")
    assert next(e["value"] for e in events if e["key"] == "kit_facts")["batch_size"] == 2
    assert [e["value"]["questions"] for e in events if e["key"] == "kit_eval_batch"] == [2, 2, 1]


def test_reference_decoding_and_old_transformers_decode_dynamic(monkeypatch: pytest.MonkeyPatch) -> None:
    from cases.llava1_5_7b import evaluate, mmmu

    plan = evaluate.decoding_plan(CFG, "reference", use_cuda=True)
    assert plan == {"cache": "dynamic", "compile": False, "sort_by_length": False, "cache_fallback": None}
    if static_cache_unsupported() is None:
        assert evaluate.decoding_plan(CFG, "greedy", use_cuda=False)["compile"] is False
        assert evaluate.decoding_plan(CFG, "greedy", use_cuda=True)["compile"] is True
    # transformers 4.37 (the reference's pin) cannot be installed beside 5.x here: its answer is stood in for.
    monkeypatch.setattr(mmmu, "static_cache_unsupported", lambda: "transformers 4.37.2 has no static-cache path")
    plan = evaluate.decoding_plan(CFG, "greedy", use_cuda=True)
    assert plan["cache"] == "dynamic" and plan["compile"] is False and "4.37.2" in plan["cache_fallback"]


# ---------------------------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("eval.batch_size=0", "eval.batch_size must be positive, got 0"),
        ("eval.batch_size=2.5", "eval.batch_size must be an integer, got 2.5"),
        ("eval.cache=paged", "eval.cache = 'paged' is not one of 'static', 'dynamic'"),
        ("eval.sort_by_length=1", "eval.sort_by_length must be true or false, got 1"),
        ("eval.compile=yes", "eval.compile must be true or false, got 'yes'"),
        ("eval.beams=5", "unknown key eval.beams; allowed keys: batch_size, cache, compile, sort_by_length"),
        ("eval=4", "eval is a table of settings"),
    ],
)
def test_bad_eval_values_are_named_with_their_key(override: str, message: str) -> None:
    with pytest.raises(case_config.ConfigError, match=message.replace(".", r"\.").replace("(", r"\(")) as e:
        case_config.load("tiny", [override])
    assert "tiny.toml" in str(e.value)


def test_eval_table_defaults_and_round_trip(tmp_path: Path) -> None:
    for name in case_config.available():
        ev = case_config.load(name).eval
        assert (ev.cache, ev.sort_by_length, ev.compile) == ("static", True, True)
        assert ev.batch_size == (8 if name == "tiny" else 64)
    cfg = case_config.load("H200x1x1", ["eval.batch_size=32", "eval.cache=dynamic"])
    path = tmp_path / "resolved.toml"
    path.write_text(case_config.dumps(cfg))  # what a run directory's config.toml holds
    again = case_config.load(path)
    assert again.eval == cfg.eval and again.eval.batch_size == 32 and again.eval.cache == "dynamic"
    bare = tmp_path / "no-eval.toml"
    bare.write_text((case_config.CONFIG_DIR / "tiny.toml").read_text().partition("\n[eval]")[0] + "\n")
    assert case_config.load(bare).eval == case_config.EvalConfig()  # a config without [eval]: the defaults

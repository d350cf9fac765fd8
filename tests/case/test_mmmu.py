"""MMMU evaluation on the case side: loader, prompts, tokenized prompts, batched generation, the eval stage."""

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
    SUBJECTS,
    MMMUError,
    build_prompt,
    conversation_prompt,
    decode_response,
    encode_prompt,
    generate,
    prepare,
    question_key,
)
from cases.llava1_5_7b.model import IMAGE_TOKEN_INDEX, LlavaForTraining  # noqa: E402

from .conftest import P  # noqa: E402

CFG = case_config.load("tiny")
QPS = 3  # questions per subject of the generated set: 90 in all


def _needs_datasets() -> None:
    pytest.importorskip("datasets")
    pytest.importorskip("pyarrow")


@pytest.fixture(scope="module")
def mmmu_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    _needs_datasets()
    from cases.llava1_5_7b.synthetic import generate_mmmu

    out = tmp_path_factory.mktemp("mmmu")
    summary = generate_mmmu(out, questions_per_subject=QPS, seed=7)
    assert summary["questions"] == QPS * 30 and summary["open"] >= 1
    return out


@pytest.fixture(scope="module")
def questions(mmmu_dir: Path) -> list[dict]:
    from cases.llava1_5_7b.mmmu import load_mmmu

    return load_mmmu(mmmu_dir)


def tiny_model(vocab_size: int | None = None) -> LlavaForTraining:
    torch.manual_seed(0)
    return LlavaForTraining(CFG.model, dtype=torch.float32, attn_implementation="sdpa", vocab_size=vocab_size).eval()


# ---------------------------------------------------------------------------------------------- loader


def test_generated_layout_is_the_hf_layout(mmmu_dir: Path) -> None:
    import pyarrow.parquet as pq

    assert sorted(p.name for p in mmmu_dir.iterdir() if p.is_dir()) == sorted(SUBJECTS)
    path = mmmu_dir / "Art_Theory" / "validation-00000-of-00001.parquet"
    assert path.is_file()
    table = pq.read_table(path)
    assert table.column_names[:4] == ["id", "question", "options", "explanation"]
    assert b"huggingface" in table.schema.metadata  # the Image features travel with the file, as in the real one
    row = table.slice(0, 1).to_pylist()[0]
    assert row["id"] == "validation_Art_Theory_1"
    assert row["image_1"]["bytes"][:8] == b"\x89PNG\r\n\x1a\n"
    assert all(row[f"image_{i}"] is None for i in range(2, 8))


def test_loader_fields_order_and_mix(questions: list[dict]) -> None:
    assert len(questions) == QPS * 30
    assert [q["id"] for q in questions[: QPS + 1]] == [f"validation_Accounting_{n}" for n in range(1, QPS + 1)] + [
        "validation_Agriculture_1"
    ]
    assert [q["subject"] for q in questions[::QPS]] == list(SUBJECTS)
    assert questions == sorted(questions, key=lambda q: question_key(q["id"]))
    fields = {"id", "question", "options", "answer", "question_type", "subfield", "img_type", "topic_difficulty",
              "explanation", *(f"image_{i}" for i in range(1, 8))}
    assert fields <= set(questions[0])
    kinds = {q["question_type"] for q in questions}
    assert kinds == {"multiple-choice", "open"}
    assert sum(q["question_type"] == "open" for q in questions) < len(questions) // 4
    assert isinstance(questions[0]["image_1"], dict) and questions[0]["image_1"]["bytes"]


def test_loader_numeric_order_beyond_nine(tmp_path: Path) -> None:
    _needs_datasets()
    from cases.llava1_5_7b.mmmu import load_mmmu
    from cases.llava1_5_7b.synthetic import generate_mmmu

    generate_mmmu(tmp_path, questions_per_subject=11, seed=1)
    ids = [q["id"] for q in load_mmmu(tmp_path, subjects=("Math",))]
    assert ids == [f"validation_Math_{n}" for n in range(1, 12)]  # 10 and 11 after 9, not after 1


def test_loader_names_every_missing_subject(mmmu_dir: Path, tmp_path: Path) -> None:
    from cases.llava1_5_7b.mmmu import load_mmmu

    copy = tmp_path / "partial"
    shutil.copytree(mmmu_dir, copy)
    shutil.rmtree(copy / "Biology")
    shutil.rmtree(copy / "Sociology")
    (copy / "Music" / "validation-00000-of-00001.parquet").unlink()
    with pytest.raises(MMMUError) as e:
        load_mmmu(copy)
    msg = str(e.value)
    assert "Biology, Music, Sociology" in msg and "3 of 30" in msg
    assert "<Subject>/validation-*.parquet" in msg
    with pytest.raises(MMMUError, match="unknown MMMU subject"):
        load_mmmu(copy, subjects=("Alchemy",))


# ---------------------------------------------------------------------------------------------- prompts


MC = {
    "id": "validation_Math_3",
    "question": "Which curve is shown in <image 1>?",
    "options": "['Parabola', 'Circle', \"It's a line\"]",
    "answer": "B",
    "question_type": "multiple-choice",
}
OPEN = {"id": "validation_Physics_12", "question": "What is the speed in <image 1>?", "options": "[]",
        "answer": "12", "question_type": "open"}


def test_multiple_choice_prompt() -> None:
    prompt, letters, index2ans = build_prompt(MC)
    assert prompt == (
        "Which curve is shown in <image 1>?\n"
        "(A) Parabola\n(B) Circle\n(C) It's a line\n"
        "\n"
        "Answer with the option's letter from the given choices directly."
    )
    assert letters == ["A", "B", "C"]
    assert index2ans == {"A": "Parabola", "B": "Circle", "C": "It's a line"}


def test_open_prompt() -> None:
    prompt, letters, index2ans = build_prompt(OPEN)
    assert prompt == "What is the speed in <image 1>?\nAnswer the question using a single word or phrase."
    assert (letters, index2ans) == ([], {})


def test_conversation_prompt_is_vicuna_v1_with_the_assistant_turn_open() -> None:
    text = conversation_prompt("Q?\nAnswer the question using a single word or phrase.")
    assert text == (
        SYSTEM_V1 + " USER: <image>\nQ?\nAnswer the question using a single word or phrase. ASSISTANT:"
    )
    assert conversation_prompt("Q?", has_image=False) == SYSTEM_V1 + " USER: Q? ASSISTANT:"


def test_bad_options_are_named() -> None:
    with pytest.raises(MMMUError, match="validation_Math_3"):
        build_prompt({**MC, "options": "['a', 'b'"})
    with pytest.raises(MMMUError, match="unknown question_type"):
        build_prompt({**MC, "question_type": "essay"})


def test_tokenized_prompt_ends_with_the_assistant_turn_open(tok_nl) -> None:
    text = conversation_prompt("look at this")
    ids = encode_prompt(text, tok_nl)
    assert ids[0] == tok_nl.bos_id
    assert ids.count(IMAGE_TOKEN_INDEX) == 1
    assert tok_nl.eos_id not in ids
    # ... USER: <image> \n look at this ASSISTANT:  -- the newline is byte-fallback <0x0A>, the prompt ends at ":".
    tail = ids[ids.index(IMAGE_TOKEN_INDEX) :]
    assert tok_nl.decode(tail[1:]).endswith("look at this ASSISTANT:")
    assert tail[-1] == P(tok_nl, ":")[0]
    assert "".join(tok_nl.id_to_piece(i) for i in ids[-3:]).replace("\u2581", " ").endswith("ASSISTANT:")


def test_prepare_uses_image_1_without_padding(questions: list[dict], tok) -> None:
    proc = ImageProcessor(CFG.model.vision.image_size, "crop")
    q = questions[0]
    p = prepare(q, tok, proc)
    assert p["prompt"].startswith(SYSTEM_V1 + " USER: <image>\n" + q["question"] + "\n(A) ")
    assert p["prompt"].endswith("directly. ASSISTANT:") or p["prompt"].endswith("phrase. ASSISTANT:")
    assert "<image 1>" in p["prompt"]  # MMMU's inline reference stays text
    assert p["input_ids"].count(IMAGE_TOKEN_INDEX) == 1
    from cases.llava1_5_7b.mmmu import open_image

    want = proc(open_image(q["image_1"]))
    assert torch.equal(p["image"], want)
    assert p["image"].shape == (3, CFG.model.vision.image_size, CFG.model.vision.image_size)


# ---------------------------------------------------------------------------------------------- generation


def _prompts(n_rows: int = 4) -> tuple[list[list[int]], list]:
    g = torch.Generator().manual_seed(3)
    s = CFG.model.vision.image_size
    ids, images = [], []
    for i, n in enumerate((5, 17, 2, 9, 11)[:n_rows]):
        body = torch.randint(3, CFG.model.llm.vocab, (n,), generator=g).tolist()
        if i == 2:  # one text-only prompt in the batch
            ids.append([1, *body])
            images.append(None)
        else:
            ids.append([1, body[0], IMAGE_TOKEN_INDEX, *body[1:]])
            images.append(torch.randn(3, s, s, generator=g))
    return ids, images


def test_left_padded_batch_equals_one_by_one_greedy() -> None:
    model = tiny_model()
    ids, images = _prompts()
    alone = [generate(model, [i], [im], max_new_tokens=12)[0] for i, im in zip(ids, images, strict=True)]
    batched = generate(model, ids, images, max_new_tokens=12)
    assert batched == alone
    assert all(len(x) == 12 for x in alone)  # no EOS from a random model here
    # Make a token that one sample emits early the EOS: that sample stops there, the others go on unchanged.
    eos = alone[1][3]
    alone_eos = [generate(model, [i], [im], 12, eos_id=eos)[0] for i, im in zip(ids, images, strict=True)]
    batched_eos = generate(model, ids, images, 12, eos_id=eos)
    assert batched_eos == alone_eos
    assert len(batched_eos[1]) <= 3 and eos not in batched_eos[1]


def test_reference_decoding_runs_and_stays_in_bounds() -> None:
    model = tiny_model()
    ids, images = _prompts(3)
    torch.manual_seed(42)
    out = generate(model, ids, images, max_new_tokens=6, mode="reference")
    assert len(out) == 3 and all(0 < len(x) <= 6 for x in out)
    with pytest.raises(ValueError, match="unknown decoding"):
        generate(model, ids, images, 4, mode="beam")


def test_decode_drops_special_ids(tok) -> None:
    ids = tok.encode("red ball", bos=False)
    assert decode_response([tok.bos_id, *ids, tok.unk_id, tok.eos_id], tok) == "red ball"


# ---------------------------------------------------------------------------------------------- the stage


def test_eval_stage_end_to_end(mmmu_dir: Path, tmp_path: Path, tok_dir: Path, monkeypatch) -> None:
    from cases.llava1_5_7b import evaluate
    from cases.llava1_5_7b.tokenizer import Tokenizer

    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    # Keep pytest's own stdout: record where the rank log would go instead of redirecting this process.
    logs: list[Path] = []
    monkeypatch.setattr(evaluate, "redirect_output", lambda p: logs.append(p))
    run = tmp_path / "run"
    shutil.copytree(tok_dir, run / "synthetic" / "tokenizer")
    tok = Tokenizer.from_dir(run / "synthetic" / "tokenizer")
    model = tiny_model(vocab_size=tok.vocab_size)
    (run / "finetune" / "model").mkdir(parents=True)
    torch.save(model.state_dict(), run / "finetune" / "model" / "pytorch_model.bin")  # as save_16bit_model writes it

    limit = QPS + 2  # all of Accounting and the first two of Agriculture
    rc = evaluate.main(["--run-dir", str(run), "--config", "tiny", "--synthetic", "--mmmu", str(mmmu_dir),
                        "--limit", str(limit), "--batch-size", "2", "--max-new-tokens", "5"])
    failure = run / "eval" / "failure-rank0.json"
    assert rc == 0, failure.read_text() if failure.exists() else rc
    assert logs == [run / "eval" / "logs" / "rank0.log"]
    out = json.loads((run / "eval" / "responses.json").read_text())
    assert [r["id"] for r in out] == [f"validation_Accounting_{n}" for n in range(1, QPS + 1)] + [
        "validation_Agriculture_1", "validation_Agriculture_2"]
    for r in out:
        assert set(r) == {"id", "subject", "question_type", "answer", "all_choices", "index2ans", "response", "prompt"}
        assert r["subject"] == r["id"].split("_")[1]
        assert isinstance(r["response"], str)
        assert r["prompt"].startswith(SYSTEM_V1 + " USER: <image>\n") and r["prompt"].endswith(" ASSISTANT:")
        if r["question_type"] == "multiple-choice":
            assert r["all_choices"] == [chr(65 + i) for i in range(len(r["index2ans"]))] and r["answer"] in r["all_choices"]
        else:
            assert (r["all_choices"], r["index2ans"]) == ([], {})
    assert (run / "eval" / "responses-rank0.jsonl").is_file()

    events = [json.loads(line.split(":::MLLOG ", 1)[1]) for line in (run / "eval" / "events.log").read_text().splitlines()
              if ":::MLLOG " in line]
    keys = [e["key"] for e in events]
    assert keys[0] == "init_start" and keys[-1] == "run_stop"
    facts = next(e["value"] for e in events if e["key"] == "kit_facts")
    assert facts["stage"] == "eval" and facts["decoding"] == "greedy" and facts["questions"] == limit
    assert facts["world_size"] == 1 and facts["batch_size"] == 2 and "torch" in facts["versions"]
    batches = [e["value"] for e in events if e["key"] == "kit_eval_batch"]
    assert [b["questions"] for b in batches] == [2, 2, 1]
    assert all(b["seconds"] >= 0 and 0 < b["generated_tokens"] <= 5 * b["questions"] for b in batches)
    assert events[-1]["metadata"]["status"] == "success"


def test_eval_stage_without_a_model_names_the_file(tmp_path: Path, mmmu_dir: Path, monkeypatch) -> None:
    from cases.llava1_5_7b import evaluate

    for var in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(evaluate, "redirect_output", lambda p: None)
    run = tmp_path / "run"
    rc = evaluate.main(["--run-dir", str(run), "--config", "tiny", "--mmmu", str(mmmu_dir), "--limit", "1"])
    assert rc == 1
    failure = json.loads((run / "eval" / "failure-rank0.json").read_text())
    assert "finetune/model/pytorch_model.bin" in failure["exception"]

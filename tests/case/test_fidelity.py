"""The records where a literal reading of the reference pipeline and the kit could part ways, each checked
against a direct transcription of the reference's code (haotian-liu/LLaVA train.py preprocess_v1 and
DataCollatorForSupervisedDataset, llava_arch.py prepare_inputs_labels_for_multimodal, llava_trainer.py's
samplers), run with the kit's tokenizer on the test vocabulary.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from cases.llava1_5_7b import config as case_config
from cases.llava1_5_7b import data as D
from cases.llava1_5_7b.data import (
    SYSTEM_V1,
    Collator,
    LlavaDataset,
    modality_grouped_order,
    reference_v1_labels,
    round_correction,
    tokenizer_image_token,
)
from cases.llava1_5_7b.model import LlavaForTraining
from cases.llava1_5_7b.records import CATEGORIES
from cases.llava1_5_7b.tokenizer import Tokenizer, train_tokenizer

from .conftest import G, H, write_json

IGN, IMG = D.IGNORE_INDEX, D.IMAGE_TOKEN_INDEX


def _jpeg(path: Path, colour: tuple[int, int, int] = (200, 40, 40)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (40, 30), colour).save(path, "JPEG")


# ---------------------------------------------------------------------------------------------- transcriptions


def ref_prompt_v1(conversations: list[dict[str, str]], has_image: bool) -> str:
    """preprocess_multimodal + conv_vicuna_v1.get_prompt (SeparatorStyle.TWO), as the reference writes them."""
    messages = []
    for turn in conversations:
        value = turn["value"]
        if has_image and "<image>" in value:
            value = value.replace("<image>", "").strip()
            value = ("<image>" + "\n" + value).strip()
        messages.append(("USER" if turn["from"] == "human" else "ASSISTANT", value))
    seps = [" ", "</s>"]
    ret = SYSTEM_V1 + seps[0]
    for i, (role, message) in enumerate(messages):
        ret += role + ": " + message + seps[i % 2] if message else role + ":"
    return ret


def ref_preprocess_v1(
    conversations: list[dict[str, str]], tok: Tokenizer, has_image: bool, max_length: int, correction: int
) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """preprocess_v1's tokenization and masking, line by line (torch tensors, the reference's slicing).

    `correction` is the reference's `if i != 0 and not tokenizer.legacy and IS_TOKENIZER_GREATER_THAN_0_14`
    term: 1 on LLaMA's vocabulary with legacy=False, 0 with legacy=True.
    """
    conversation = ref_prompt_v1(conversations, has_image)
    if has_image:
        input_ids = torch.tensor(tokenizer_image_token(conversation, tok))
    else:
        input_ids = torch.tensor(tok.encode(conversation)[:max_length])  # truncation=True, max_length
    target = input_ids.clone()
    sep = " " + "ASSISTANT" + ": "
    total_len = int(target.ne(tok.pad_id).sum())
    rounds = conversation.split("</s>")
    cur_len = 1
    target[:cur_len] = IGN
    for i, rou in enumerate(rounds):
        if rou == "":
            break
        parts = rou.split(sep)
        if len(parts) != 2:
            break
        parts[0] += sep
        if has_image:
            round_len = len(tokenizer_image_token(rou, tok))
            instruction_len = len(tokenizer_image_token(parts[0], tok)) - 2
        else:
            round_len = len(tok.encode(rou))
            instruction_len = len(tok.encode(parts[0])) - 2
        if i != 0 and correction:
            round_len -= correction
            instruction_len -= correction
        target[cur_len : cur_len + instruction_len] = IGN
        cur_len += round_len
    target[cur_len:] = IGN
    mismatch = cur_len < max_length and cur_len != total_len
    if mismatch:
        target[:] = IGN
    return input_ids, target, mismatch


def ref_collate_and_splice(
    samples: list[tuple[list[int], list[int], torch.Tensor | None]], pad_id: int, max_length: int, embed: Any
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """DataCollatorForSupervisedDataset, then prepare_inputs_labels_for_multimodal's splice and truncation.

    Each sample carries its own projected image features (None: a text-only sample). Returns, per sample, the
    embeddings and labels the language model sees.
    """
    ids = torch.nn.utils.rnn.pad_sequence([torch.tensor(s[0]) for s in samples], batch_first=True,
                                          padding_value=pad_id)
    labels = torch.nn.utils.rnn.pad_sequence([torch.tensor(s[1]) for s in samples], batch_first=True,
                                             padding_value=IGN)
    ids, labels = ids[:, :max_length], labels[:, :max_length]
    mask = ids.ne(pad_id)
    out = []
    for cur_ids, cur_labels, m, (_, _, feats) in zip(ids, labels, mask, samples, strict=True):
        cur_ids, cur_labels = cur_ids[m], cur_labels[m]
        if int((cur_ids == IMG).sum()) == 0:
            e = embed(cur_ids)
            if feats is not None:
                e = torch.cat([e, feats[0:0]])
            out.append((e[:max_length], cur_labels[:max_length]))
            continue
        j = int(torch.where(cur_ids == IMG)[0][0])
        e = torch.cat([embed(cur_ids[:j]), feats, embed(cur_ids[j + 1 :])])
        lab = torch.cat([cur_labels[:j], torch.full((feats.shape[0],), IGN), cur_labels[j + 1 :]])
        out.append((e[:max_length], lab[:max_length]))
    return out


def ref_split_to_even_chunks(indices: list[int], lengths: list[int], num_chunks: int) -> list[list[int]]:
    if len(indices) % num_chunks != 0:
        return [indices[i::num_chunks] for i in range(num_chunks)]
    per = len(indices) // num_chunks
    chunks: list[list[int]] = [[] for _ in range(num_chunks)]
    chunks_lengths = [0 for _ in range(num_chunks)]
    for index in indices:
        shortest = chunks_lengths.index(min(chunks_lengths))
        chunks[shortest].append(index)
        chunks_lengths[shortest] += lengths[index]
        if len(chunks[shortest]) == per:
            chunks_lengths[shortest] = float("inf")
    return chunks


def ref_length_grouped(lengths: list[int], batch_size: int, world_size: int, g: torch.Generator) -> list[int]:
    indices = torch.randperm(len(lengths), generator=g)
    mb = world_size * batch_size
    megabatches = [indices[i : i + mb].tolist() for i in range(0, len(lengths), mb)]
    megabatches = [sorted(m, key=lambda i: lengths[i], reverse=True) for m in megabatches]
    split = [ref_split_to_even_chunks(m, lengths, world_size) for m in megabatches]
    return [i for m in split for batch in m for i in batch]


def ref_modality_grouped(lengths: list[int], batch_size: int, world_size: int, g: torch.Generator) -> list[int]:
    """get_modality_length_grouped_indices. The reference draws every permutation from one stream (its
    generator is None: the global torch RNG) in this order, so one seeded generator stands for it."""
    assert all(v != 0 for v in lengths)
    if all(v > 0 for v in lengths) or all(v < 0 for v in lengths):
        return ref_length_grouped(lengths, batch_size, world_size, g)
    mm_indices, mm_lengths = zip(*[(i, v) for i, v in enumerate(lengths) if v > 0], strict=True)
    lang_indices, lang_lengths = zip(*[(i, -v) for i, v in enumerate(lengths) if v < 0], strict=True)
    mm_shuffle = [mm_indices[i] for i in ref_length_grouped(list(mm_lengths), batch_size, world_size, g)]
    lang_shuffle = [lang_indices[i] for i in ref_length_grouped(list(lang_lengths), batch_size, world_size, g)]
    mb = world_size * batch_size
    mm_megabatches = [mm_shuffle[i : i + mb] for i in range(0, len(mm_shuffle), mb)]
    lang_megabatches = [lang_shuffle[i : i + mb] for i in range(0, len(lang_shuffle), mb)]
    additional = mm_megabatches[-1] + lang_megabatches[-1]
    megabatches = mm_megabatches[:-1] + lang_megabatches[:-1]
    perm = torch.randperm(len(megabatches), generator=g)
    megabatches = [megabatches[i] for i in perm]
    if len(additional) > 0:
        megabatches.append(sorted(additional))
    return [i for m in megabatches for i in m]


# ---------------------------------------------------------------------------------------------- item 1


def _late(human_words: int, gpt_words: int) -> dict[str, Any]:
    """The placeholder in a later human turn, after many tokens of earlier turns (words of 1-3 pieces)."""
    return {"id": "late", "image": "images/late.jpg", "conversations": [
        H(" ".join(["red ball"] * (human_words // 2))),
        G(" ".join(["blue box, 12"] * (gpt_words // 4))),
        H("<image>\nAnd this picture?"),
        G("A cat."),
    ]}


def test_late_placeholder_issue_record_trains_its_first_2048_text_tokens(tmp_path: Path, tok: Tokenizer) -> None:
    _jpeg(tmp_path / "images" / "late.jpg")
    ds = LlavaDataset(write_json(tmp_path / "d.json", [_late(200, 1700)]), tmp_path, tok, "v1", "pad", 28,
                      max_length=2048)
    item = ds[0]
    ids = item["input_ids"].tolist()
    assert ids.index(IMG) >= 2048  # the issue's precondition: the placeholder lies past 2048 text tokens
    out = Collator(tok.pad_id, 2048, image_tokens=576)([item])
    assert out["has_image"].tolist() == [False] and out["images"] is None
    assert out["input_ids"][0].tolist() == ids[:2048] and IMG not in out["input_ids"][0].tolist()
    assert out["labels"][0].tolist() == item["labels"].tolist()[:2048]
    assert out["stats"]["images_dropped_by_truncation"] == 1 and out["stats"]["real_tokens"] == 2048
    assert ds.sequence_length(0, 576, 2048) == 2048


def test_late_placeholder_trains_as_the_reference_in_the_model(tmp_path: Path, tok: Tokenizer) -> None:
    cfg = case_config.load("tiny").model  # max_length 192: the same record, scaled to the tiny model
    _jpeg(tmp_path / "images" / "late.jpg")
    recs = [_late(20, 170), {"id": "ok", "image": "images/late.jpg", "conversations": [H("<image>\nlook"),
                                                                                          G("red ball")]}]
    ds = LlavaDataset(write_json(tmp_path / "d.json", recs), tmp_path, tok, "v1", "pad", cfg.vision.image_size,
                      max_length=cfg.max_length)
    samples = [ds[0], ds[1]]
    assert samples[0]["input_ids"].tolist().index(IMG) >= cfg.max_length
    torch.manual_seed(0)
    model = LlavaForTraining(cfg, dtype=torch.float32, attn_implementation="sdpa", vocab_size=tok.vocab_size)
    model.set_stage("finetune")
    batch = Collator(tok.pad_id, cfg.max_length, model.image_tokens)(samples)
    assert batch["has_image"].tolist() == [False, True] and batch["images"].shape[0] == 1
    assert batch["stats"]["images_dropped_by_truncation"] == 1
    keys = ("input_ids", "labels", "attention_mask", "images", "has_image")
    loss = model(**{k: batch[k] for k in keys})  # no "0 image placeholders but has_image" error
    assert torch.isfinite(loss)

    # The reference: every sample's image through the projector, the dropped one spliced as zero rows.
    with torch.no_grad():
        feats = model.encode_images(torch.stack([s["image"] for s in samples]))
        ref = ref_collate_and_splice([(s["input_ids"].tolist(), s["labels"].tolist(), feats[k])
                                      for k, s in enumerate(samples)], tok.pad_id, cfg.max_length,
                                     model.llm.get_input_embeddings())
        sp = model.splice(batch["input_ids"], batch["labels"], batch["attention_mask"],
                          model.encode_images(batch["images"]), batch["has_image"])
    for i, (e, lab) in enumerate(ref):
        assert sp.lengths[i] == e.shape[0]
        torch.testing.assert_close(sp.embeds[i, : e.shape[0]], e)
        assert torch.equal(sp.labels[i, : e.shape[0]], lab)
    assert sp.lengths[0] == cfg.max_length  # the first max_length text tokens, no image

    # A batch straight to the model with the image still flagged: consumed, zero rows spliced (no error).
    flagged = dict(batch, has_image=torch.tensor([True, True]), images=torch.stack([s["image"] for s in samples]))
    sp2 = model.splice(flagged["input_ids"], flagged["labels"], flagged["attention_mask"], feats,
                       flagged["has_image"])
    torch.testing.assert_close(sp2.embeds, sp.embeds)


# ---------------------------------------------------------------------------------------------- item 2

CONTROL = {
    "answer with </s>": [H("what colour"), G("It is </s> here")],
    "question with </s>": [H("What does </s> mean?"), G("red")],
    "question with <unk>": [H("What is <unk>?"), G("red")],
    "answer with both roles": [H("what colour"), G("USER: ASSISTANT: hi")],
    "question with the separator": [H("Say ASSISTANT: now"), G("blue")],
}
NORMAL = {
    "one turn": [H("hello world"), G("green box")],
    "two turns": [H("hello world"), G("green box"), H("what colour"), G("blue")],
    "three turns": [H("look at this"), G("red ball"), H("what colour"), G("blue"), H("hello"), G("green")],
}


@pytest.mark.parametrize("legacy", [True, False])
@pytest.mark.parametrize("image", [False, True])
@pytest.mark.parametrize("name", list(CONTROL) + list(NORMAL))
def test_reference_mismatch_rule_masks_what_the_reference_masks(
    tmp_path: Path, tok: Tokenizer, tok_nl: Tokenizer, legacy: bool, image: bool, name: str
) -> None:
    t = tok if legacy else tok_nl
    conv = [dict(c) for c in (CONTROL | NORMAL)[name]]
    rec: dict[str, Any] = {"id": name, "conversations": conv}
    if image:
        conv[0]["value"] = "<image>\n" + conv[0]["value"]
        rec["image"] = "img/0.jpg"
        _jpeg(tmp_path / "img" / "0.jpg")
    ds = LlavaDataset(write_json(tmp_path / "d.json", [rec]), tmp_path, t, "v1", "pad", 28, max_length=2048)
    item = ds[0]
    assert round_correction(t) == 0  # "▁USER" and "USER" are single pieces of the test vocabulary
    ref_ids, ref_labels, mismatch = ref_preprocess_v1(conv, t, image, 2048, correction=0)
    assert item["input_ids"].tolist() == ref_ids.tolist()
    assert item["labels"].tolist() == ref_labels.tolist()
    assert mismatch == (name in CONTROL)
    assert item["flags"]["masked_by_reference_rule"] == int(name in CONTROL)
    stats = Collator(t.pad_id, 2048, 16)([item])["stats"]
    assert stats["masked_by_reference_rule"] == int(name in CONTROL)
    if name in CONTROL:
        assert stats["supervised_tokens"] == 0  # no supervised </s> in the middle of an answer


def test_a_fake_round_inside_an_answer_is_labelled_by_the_reference_arithmetic(tmp_path: Path, tok: Tokenizer) -> None:
    """An answer that holds a whole round ("</s>USER: ... ASSISTANT: ..."): the reference's walk finds no
    mismatch, masks the fake question as an instruction and trains the rest; the kit trains exactly that."""
    conv = [H("what colour"), G("red</s>USER: hello world ASSISTANT: blue")]
    ds = LlavaDataset(write_json(tmp_path / "d.json", [{"id": "f", "conversations": conv}]), tmp_path, tok, "v1",
                      "pad", 28, max_length=2048)
    item = ds[0]
    ids, exact, why = D.tokenize_conversation(conv, "v1", tok, False)
    _, ref_labels, mismatch = ref_preprocess_v1(conv, tok, False, 2048, correction=0)
    assert why is None and not mismatch and ref_labels.tolist() != exact
    assert item["labels"].tolist() == ref_labels.tolist()
    assert item["flags"] == {"masked_by_reference_rule": 0, "relabelled_by_reference_rule": 1,
                             "skipped_unreadable_images": 0}


def test_past_max_length_the_reference_checks_nothing(tok: Tokenizer) -> None:
    """A walk that ends at or past max_length is never a mismatch; within the kept tokens its labels are the
    kit's (what lies past the walk's end is cut by the collator anyway)."""
    conv = [H(" ".join(["red ball"] * 40)), G("It is </s> here " + " ".join(["blue box"] * 40))]
    prompt = ref_prompt_v1(conv, False)
    ids, labels, why = D.tokenize_conversation(conv, "v1", tok, False)
    _, ref_labels, mismatch = ref_preprocess_v1(conv, tok, False, 60, correction=0)
    kit_labels, kit_mismatch = reference_v1_labels(prompt, ids, tok, False, 60)
    assert why is None and len(ids) > 60
    assert not mismatch and not kit_mismatch and kit_labels == ref_labels.tolist() == labels[:60]
    _, _, short_mismatch = ref_preprocess_v1(conv, tok, False, 2048, correction=0)
    assert short_mismatch and reference_v1_labels(prompt, ids, tok, False, 2048)[1]


def test_round_correction_is_the_references_one_on_a_llama_like_vocabulary(tmp_path: Path) -> None:
    """A vocabulary like LLaMA's, where "USER" is a piece but "▁USER" is not: the reference's -1 for every
    round after the first (legacy=False) is exactly what keeps ordinary multi-turn records unmasked."""
    corpus = [SYSTEM_V1 + " hello world ASSISTANT: green box</s>USER: what colour ASSISTANT: blue</s>USER: red"] * 80
    t = Tokenizer.from_dir(train_tokenizer(corpus, tmp_path / "tok", 400))
    assert t.legacy is False
    assert [t.id_to_piece(i) for i in t.encode("USER", bos=False)] == ["▁", "USER"]
    assert round_correction(t) == 1
    conv = NORMAL["two turns"]
    ids, labels, why = D.tokenize_conversation(conv, "v1", t, False)
    prompt = ref_prompt_v1(conv, False)
    assert why is None and prompt == "".join(s for s, _ in D.build_segments(conv, "v1", False))
    _, ref_labels, mismatch = ref_preprocess_v1(conv, t, False, 2048, correction=1)  # the reference's -1
    assert not mismatch and ref_labels.tolist() == labels
    assert reference_v1_labels(prompt, ids, t, False, 2048) == (labels, False)
    _, _, uncorrected = ref_preprocess_v1(conv, t, False, 2048, correction=0)
    assert uncorrected  # without the term the arithmetic is off by one a round
    t.legacy = True
    assert round_correction(t) == 0


# ---------------------------------------------------------------------------------------------- item 3


def test_unk_in_a_caption_vanishes_as_in_the_reference(tmp_path: Path, tok: Tokenizer) -> None:
    _jpeg(tmp_path / "img" / "0.jpg")
    recs = [{"id": "u", "image": "img/0.jpg", "conversations": [H("<image>"), G("an <unk> token red ball")]},
            {"id": "v", "image": "img/0.jpg", "conversations": [H("<image>"), G("red ball")]}]
    ds = LlavaDataset(write_json(tmp_path / "d.json", recs), tmp_path, tok, "plain", "crop", 28, max_length=64)
    items = [ds[0], ds[1]]
    raw = items[0]["input_ids"].tolist()
    assert raw.count(tok.unk_id) == 1 and items[0]["flags"]["masked_by_reference_rule"] == 0  # plain: no rule
    out = Collator(tok.pad_id, 64, image_tokens=4)(items)
    assert out["stats"]["pad_tokens_removed"] == 1
    row = out["input_ids"][0][out["attention_mask"][0]].tolist()
    assert row == [i for i in raw if i != tok.unk_id]  # one position shorter, nothing else moved
    lab = out["labels"][0][out["attention_mask"][0]].tolist()
    assert lab == [v for i, v in zip(raw, items[0]["labels"].tolist(), strict=True) if i != tok.unk_id]
    assert ds.sequence_length(0, 4, 64) == len(raw) - 1 + 3
    # The same positions as the reference's collator and splice.
    embed = torch.nn.Embedding(tok.vocab_size, 8)
    feats = torch.randn(2, 4, 8)
    ref = ref_collate_and_splice([(s["input_ids"].tolist(), s["labels"].tolist(), feats[k])
                                  for k, s in enumerate(items)], tok.pad_id, 64, embed)
    assert [r[1].tolist() for r in ref] == [D.spliced_labels(out["input_ids"][r][out["attention_mask"][r]],
                                                             out["labels"][r][out["attention_mask"][r]], 4, 64).tolist()
                                            for r in range(2)]


def test_unk_in_a_v1_question_is_masked_and_removed(tmp_path: Path, tok: Tokenizer) -> None:
    path = write_json(tmp_path / "d.json", [{"id": "q", "conversations": CONTROL["question with <unk>"]}])
    item = LlavaDataset(path, tmp_path, tok, "v1", "pad", 28, max_length=2048)[0]
    stats = Collator(tok.pad_id, 2048, 16)([item])["stats"]
    assert stats["masked_by_reference_rule"] == 1 and stats["pad_tokens_removed"] == 1
    assert stats["real_tokens"] == len(item["input_ids"]) - 1 and stats["supervised_tokens"] == 0


# ---------------------------------------------------------------------------------------------- item 4

BAD_BY_CATEGORY = {
    "schema": {"id": "s", "conversations": "hi"},
    "empty-turn": {"id": "e", "conversations": [H("a"), G("  ")]},
    "gpt-first": {"id": "g", "conversations": [G("a"), H("b"), G("c")]},
    "turn-order": {"id": "t", "conversations": [H("a"), H("b"), G("c"), G("d")]},
    "odd-turns": {"id": "o", "conversations": [H("a"), G("b"), H("c")]},
    "gpt-image": {"id": "gi", "image": "img/0.jpg", "conversations": [H("<image>"), G("<image> b")]},
    "placeholders": {"id": "p", "image": "img/0.jpg", "conversations": [H("a"), G("b")]},
    "text-image": {"id": "ti", "conversations": [H("<image> a"), G("b")]},
    "missing-image": {"id": "m", "image": "img/nope.jpg", "conversations": [H("<image>"), G("b")]},
}


def test_skipped_records_are_counted_by_category(tmp_path: Path, tok: Tokenizer) -> None:
    assert set(BAD_BY_CATEGORY) - {"missing-image"} <= set(CATEGORIES)
    _jpeg(tmp_path / "img" / "0.jpg")
    good = {"id": "ok", "image": "img/0.jpg", "conversations": [H("<image>\nlook"), G("red ball")]}
    recs = [good, *BAD_BY_CATEGORY.values(), dict(good, id="ok2")]
    ds = LlavaDataset(write_json(tmp_path / "d.json", recs), tmp_path, tok, "v1", "pad", 28,
                      skip_bad_records=len(BAD_BY_CATEGORY))
    assert ds.skipped_by_category == dict.fromkeys(BAD_BY_CATEGORY, 1) and len(ds) == 2
    plain = [good, {"id": "pl", "image": "img/0.jpg", "conversations": [H("<image>"), G("a"), H("b"), G("c")]}]
    ds = LlavaDataset(write_json(tmp_path / "p.json", plain), tmp_path, tok, "plain", "crop", 28, skip_bad_records=1)
    assert ds.skipped_by_category == {"plain-shape": 1}


def test_unreadable_image_skip_reaches_the_step_counts(tmp_path: Path, tok: Tokenizer) -> None:
    for i in range(3):
        _jpeg(tmp_path / "img" / f"{i}.jpg")
    (tmp_path / "img" / "1.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    recs = [{"id": f"r{i}", "image": f"img/{i}.jpg", "conversations": [H("<image>"), G("red")]} for i in range(3)]
    ds = LlavaDataset(write_json(tmp_path / "d.json", recs), tmp_path, tok, "plain", "crop", 28, skip_bad_records=1)
    first = Collator(tok.pad_id, 64, 4)([ds[0], ds[1]])["stats"]
    again = Collator(tok.pad_id, 64, 4)([ds[1], ds[2]])["stats"]
    assert first["skipped_unreadable_images"] == 1 and again["skipped_unreadable_images"] == 0  # once
    assert ds.skipped_by_category == {"unreadable-image": 1}


# ---------------------------------------------------------------------------------------------- item 5


@pytest.mark.parametrize("kind", ["text-only", "image", "mixed"])
@pytest.mark.parametrize(("micro", "chunks"), [(2, 4), (3, 2), (4, 1)])
def test_modality_grouped_order_is_the_references(kind: str, micro: int, chunks: int) -> None:
    n = 101
    sizes = [5 + (i * 37) % 90 for i in range(n)]
    lengths = {
        "text-only": [-v for v in sizes],
        "image": sizes,
        "mixed": [v if i % 6 else -v for i, v in enumerate(sizes)],
    }[kind]
    for seed in (0, 7):
        kit = modality_grouped_order(lengths, micro, chunks, torch.Generator().manual_seed(seed))
        ref = ref_modality_grouped(lengths, micro, chunks, torch.Generator().manual_seed(seed))
        assert kit == ref and sorted(kit) == list(range(n))
    if kind == "text-only":  # signed lengths: each megabatch starts with its shortest sample
        order = modality_grouped_order(lengths, 4, 1, torch.Generator().manual_seed(0))
        assert sizes[order[0]] == min(sizes[i] for i in order[:4])


# ---------------------------------------------------------------------------------------------- facts


def test_counts_reach_the_summary_and_the_report_once_per_step(tmp_path: Path) -> None:
    from kit.results import render_report as report
    from kit.results.summary import write_summary
    from tests.host.rundir_factory import StageSpec, make_run

    rd = make_run(tmp_path, [StageSpec("finetune", steps=10, resume_at=6)])
    log = rd / "finetune" / "events.log"
    lines = []
    for line in log.read_text().splitlines():
        head, marker, body = line.partition(":::MLLOG ")
        if not marker:  # a line that is not an event stays as it is
            lines.append(line)
            continue
        event = json.loads(body)
        if event["key"] == "kit_step":  # the resumed attempt re-logs steps 7..: the same counts again
            event["value"].update(masked_by_reference_rule=1, pad_tokens_removed=2,
                                  images_dropped_by_truncation=int(event["value"]["step"] == 3))
        if event["key"] == "kit_facts":
            event["value"].update(skipped_records=3, skipped_by_category={"odd-turns": 2, "missing-image": 1})
        lines.append(head + ":::MLLOG " + json.dumps(event))
    log.write_text("\n".join(lines) + "\n")
    s = write_summary(rd, plots=False)
    data = s["stages"]["finetune"]["data"]
    assert s["stages"]["finetune"]["steps_relogged"] > 0
    assert data["masked_by_reference_rule"] == 10 and data["pad_tokens_removed"] == 20
    assert data["images_dropped_by_truncation"] == 1 and data["relabelled_by_reference_rule"] is None
    assert data["skipped_records"] == 3 and data["skipped_by_category"] == {"odd-turns": 2, "missing-image": 1}
    text = report.render(s, "table")
    flat = " ".join(text.split())  # a long footnote may fold over two lines of the table
    assert ("[finetune] data as the reference trains it (docs/fidelity.md): 10 samples fully masked (reference "
            "mismatch rule), 20 <unk> tokens removed, 1 images dropped by truncation, 3 records skipped at load "
            "(missing-image 1, odd-turns 2)") in flat
    assert json.loads(report.render(s, "json"))["stages"]["finetune"]["data"] == data
    clean = write_summary(make_run(tmp_path, [StageSpec("pretrain")], run_id="clean"), plots=False)
    assert "as the reference trains it" not in report.render(clean, "table")
    assert clean["stages"]["pretrain"]["data"]["masked_by_reference_rule"] is None  # an old log: unknown


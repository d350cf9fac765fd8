"""Data pipeline: label masks derived by hand, bad-record errors, image preprocessing, sampler, collator."""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from PIL import Image

from cases.llava1_5_7b import data as D
from cases.llava1_5_7b.data import (
    Collator,
    DataError,
    ImageProcessor,
    LlavaDataset,
    StepBatchSampler,
    spliced_labels,
    tokenize_conversation,
)
from cases.llava1_5_7b.tokenizer import Tokenizer

from .conftest import SYSTEM_PIECES, G, H, P, write_json

IGN, IMG = D.IGNORE_INDEX, D.IMAGE_TOKEN_INDEX
_opens: list[str] | None = None  # where audit_opens collects, while one is active


def _audit(event: str, args: tuple) -> None:
    if _opens is not None and event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
        _opens.append(os.fsdecode(args[0]))


sys.addaudithook(_audit)  # for good (hooks cannot be removed): it does nothing outside audit_opens


@contextmanager
def audit_opens(into: list[str]) -> Iterator[None]:
    """Every file this process opens meanwhile (Python's "open" audit event: open(), os.open(), Pillow's reads)."""
    global _opens
    _opens = into
    try:
        yield
    finally:
        _opens = None


def masked(ids: list[int]) -> list[int]:
    return [IGN] * len(ids)


# ---------------------------------------------------------------------------------------------- masks


def test_plain_template_by_hand(tok: Tokenizer) -> None:
    ids, labels, why = tokenize_conversation([H("look at this\n<image>"), G("red ball")], "plain", tok, True)
    caption = P(tok, "▁red", "▁ball", "<0x0A>")  # caption + "\n" supervised, no EOS
    assert why is None
    assert ids == [1, IMG, *caption]
    assert labels == [IGN, IGN, *caption]


@pytest.mark.parametrize("legacy", [True, False])
def test_v1_multi_turn_by_hand(tok: Tokenizer, tok_nl: Tokenizer, legacy: bool) -> None:
    t = tok if legacy else tok_nl
    conv = [H("hello world"), G("green box"), H("what colour"), G("blue")]
    ids, labels, why = tokenize_conversation(conv, "v1", t, has_image=False)
    # "</s>USER": the dummy prefix after a special token exists only with legacy=True.
    user2 = "▁USER" if legacy else "USER"
    segments = [
        ([1], False),
        (P(t, *SYSTEM_PIECES, "▁USER", ":", "▁hello", "▁world", "▁ASSISTANT", ":"), False),
        (P(t, "▁green", "▁box", "</s>"), True),
        (P(t, user2, ":", "▁what", "▁colour", "▁ASSISTANT", ":"), False),
        (P(t, "▁blue", "</s>"), True),
    ]
    assert why is None
    assert ids == [i for seg, _ in segments for i in seg]
    assert labels == [i for seg, sup in segments for i in (seg if sup else masked(seg))]


def test_v1_image_in_middle_of_turn_moves_to_front(tok: Tokenizer) -> None:
    conv = [H("look <image>at this"), G("red ball"), H("what colour"), G("blue")]
    ids, labels, why = tokenize_conversation(conv, "v1", tok, has_image=True)
    # Prompt "... USER: <image>\nlook at this ASSISTANT: red ball</s>USER: ...": the chunk before the image
    # ends in a lone "▁"; the chunk after it is a fresh encode, so its "\n" gets the dummy prefix "▁" and
    # "look" follows a byte, not a space.
    head = P(tok, *SYSTEM_PIECES, "▁USER", ":", "▁")
    after = P(tok, "▁", "<0x0A>", "look", "▁at", "▁this", "▁ASSISTANT", ":")
    ans1 = P(tok, "▁red", "▁ball", "</s>")
    q2 = P(tok, "▁USER", ":", "▁what", "▁colour", "▁ASSISTANT", ":")
    ans2 = P(tok, "▁blue", "</s>")
    assert why is None
    assert ids == [1, *head, IMG, *after, *ans1, *q2, *ans2]
    assert labels == [IGN, *masked(head), IGN, *masked(after), *ans1, *masked(q2), *ans2]


def test_image_placeholder_moves_in_later_turn_and_text_only(tok: Tokenizer) -> None:
    assert D.move_image_to_front("look <image>at this") == "<image>\nlook at this"
    assert D.move_image_to_front("look at this\n<image>") == "<image>\nlook at this"
    assert D.move_image_to_front("<image>") == "<image>"
    # Text-only records are tokenized as they stand: no placeholder, image None.
    ids, labels, _ = tokenize_conversation([H("hello world"), G("red")], "v1", tok, has_image=False)
    assert IMG not in ids and labels[-2:] == P(tok, "▁red", "</s>")


def test_segment_whole_string_mismatch_names_record(tmp_path: Path, tok: Tokenizer, monkeypatch) -> None:
    path = write_json(tmp_path / "d.json", [{"id": "rec-7", "conversations": [H("hello"), G("red")]}])
    ds = LlavaDataset(path, tmp_path, tok, "v1", "pad", 28)
    real = D.tokenizer_image_token
    monkeypatch.setattr(D, "tokenizer_image_token", lambda p, t: real(p, t) + [2])
    with pytest.raises(DataError) as e:
        ds[0]
    msg = str(e.value)
    assert str(path) in msg and "rec-7" in msg and "label masking" in msg


# ---------------------------------------------------------------------------------------------- records


def _image(path: Path, size: tuple[int, int] = (40, 30), colour: tuple[int, int, int] = (200, 40, 40)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path, "JPEG")


def _good(i: int) -> dict:
    return {"id": f"good-{i}", "image": f"img/{i}.jpg", "conversations": [H("<image>\nlook"), G("red ball")]}


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    for i in range(4):
        _image(tmp_path / "img" / f"{i}.jpg")
    return tmp_path


BAD = {
    "missing image": ({"id": "b1", "image": "img/nope.jpg", "conversations": [H("<image>"), G("x")]}, "img/nope.jpg"),
    "no conversations": ({"id": "b2", "image": "img/0.jpg"}, "conversations"),
    "wrong value type": ({"id": "b3", "image": "img/0.jpg", "conversations": [H("<image>"), G(5)]}, "turn 1"),
    "wrong role": ({"id": "b4", "conversations": [H("a"), {"from": "bot", "value": "b"}]}, "turn 1"),
    "conversations not a list": ({"id": "b5", "conversations": "hi"}, "conversations"),
    "non-alternating": ({"id": "b6", "conversations": [H("a"), H("b"), G("c"), G("d")]}, "alternate"),
    "leading gpt": ({"id": "b7", "conversations": [G("a"), H("b"), G("c")]}, "alternate"),
    "unanswered": ({"id": "b8", "conversations": [H("a"), G("b"), H("c")]}, "no gpt answer"),
    "empty value": ({"id": "b9", "conversations": [H("a"), G("  ")]}, "empty"),
    "no placeholder": ({"id": "b10", "image": "img/0.jpg", "conversations": [H("a"), G("b")]}, "exactly one"),
    "text-only placeholder": ({"id": "b11", "conversations": [H("<image> a"), G("b")]}, "text-only"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_record_names_file_and_record(root: Path, tok: Tokenizer, name: str) -> None:
    rec, words = BAD[name]
    path = write_json(root / "d.json", [_good(0), rec, _good(1)])
    with pytest.raises(DataError) as e:
        LlavaDataset(path, root, tok, "v1", "pad", 28)
    msg = str(e.value)
    assert str(path) in msg and f"id {rec['id']!r}" in msg and "record #1" in msg
    assert words in msg and "skip_bad_records" in msg


# Records that name files outside the data root, as a hostile or broken record file could.
ESCAPING = ["../../../../etc/passwd", "/etc/hostname", "coco/../../../../../../proc/self/environ", "../secret.jpg"]


@pytest.mark.parametrize("image", ESCAPING)
def test_an_image_path_out_of_the_data_root_is_named_and_never_opened(tmp_path: Path, tok: Tokenizer,
                                                                      image: str) -> None:  # fmt: skip
    root = tmp_path / "data"
    _image(root / "img" / "0.jpg")
    _image(tmp_path / "secret.jpg")  # a real image outside the root: the loader would have trained on it
    rec = {"id": "esc", "image": image, "conversations": [H("<image>\nlook"), G("red ball")]}
    path = write_json(root / "d.json", [_good(0), rec])
    with pytest.raises(DataError) as e:
        LlavaDataset(path, root, tok, "v1", "pad", 28)
    assert str(e.value).startswith(f"{path}: record #1 (id 'esc'): image path escapes the data root: {image!r}")
    assert "skip_bad_records" in str(e.value)
    opened: list[str] = []
    with audit_opens(opened):  # within the budget it is skipped as a schema error, and nothing outside is opened
        ds = LlavaDataset(path, root, tok, "v1", "pad", 28, skip_bad_records=1)
        items = [ds[i] for i in range(len(ds))]
    assert [x["id"] for x in items] == ["good-0"] and ds.skipped_by_category == {"schema": 1}
    target = os.path.realpath(os.path.join(root, image))
    assert opened and not [p for p in opened if os.path.realpath(p) == target]


def test_image_paths_that_stay_inside_are_records_as_before() -> None:
    from cases.llava1_5_7b.records import image_path_problem

    for ok in ("coco/train2017/1.jpg", "coco/../gqa/images/1.jpg", "./00000/000000001.jpg", "a..b/c.jpg"):
        assert image_path_problem(ok) is None, ok
    assert image_path_problem("..") and image_path_problem("x/../..") and image_path_problem("a\0.jpg")


def test_malformed_record_without_id_and_bad_json(root: Path, tok: Tokenizer) -> None:
    path = write_json(root / "d.json", [_good(0), ["not", "a", "record"]])
    with pytest.raises(DataError, match=r"record #1 .*JSON object"):
        LlavaDataset(path, root, tok, "v1", "pad", 28)
    (root / "bad.json").write_text('[{"id": "x", ')
    with pytest.raises(DataError, match=r"bad\.json: not valid JSON"):
        LlavaDataset(root / "bad.json", root, tok, "v1", "pad", 28)
    with pytest.raises(DataError, match=r"missing\.json: file not found"):
        LlavaDataset(root / "missing.json", root, tok, "v1", "pad", 28)


def test_plain_template_needs_image_and_two_turns(root: Path, tok: Tokenizer) -> None:
    rec = {"id": "p1", "image": "img/0.jpg", "conversations": [H("<image>"), G("a"), H("b"), G("c")]}
    path = write_json(root / "d.json", [rec])
    with pytest.raises(DataError, match=r"d\.json: record #0 \(id 'p1'\): the plain template"):
        LlavaDataset(path, root, tok, "plain", "crop", 28)


def test_corrupt_image_at_load_names_file_record_and_image(root: Path, tok: Tokenizer) -> None:
    (root / "img" / "1.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    path = write_json(root / "d.json", [_good(0), _good(1), _good(2)])
    ds = LlavaDataset(path, root, tok, "plain", "crop", 28)  # existence checks pass: decoding is lazy
    assert ds[0]["image"].shape == (3, 28, 28)
    with pytest.raises(DataError) as e:
        ds[1]
    msg = str(e.value)
    assert str(path) in msg and "'good-1'" in msg and str(root / "img" / "1.jpg") in msg


def test_skip_bad_records_counts_reports_and_limits(root: Path, tok: Tokenizer, capsys) -> None:
    recs = [_good(0), BAD["missing image"][0], _good(1), BAD["non-alternating"][0], _good(2)]
    path = write_json(root / "d.json", recs)
    ds = LlavaDataset(path, root, tok, "v1", "pad", 28, skip_bad_records=2)
    assert len(ds) == 3 and [r["id"] for r in ds.records] == ["good-0", "good-1", "good-2"]
    assert [rid for rid, _ in ds.skipped] == ["b1", "b6"]
    assert "img/nope.jpg" in ds.skipped[0][1]
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all(line.startswith("warning: ") and str(path) in line for line in err)
    with pytest.raises(DataError) as e:
        LlavaDataset(path, root, tok, "v1", "pad", 28, skip_bad_records=1)
    msg = str(e.value)
    assert "'b6'" in msg and "1 records were already skipped" in msg and "raise data.skip_bad_records" in msg


def test_corrupt_image_within_budget_is_replaced_by_next_record(root: Path, tok: Tokenizer, capsys) -> None:
    (root / "img" / "1.jpg").write_bytes(b"garbage")
    path = write_json(root / "d.json", [_good(0), _good(1), _good(2)])
    ds = LlavaDataset(path, root, tok, "plain", "crop", 28, skip_bad_records=1)
    assert ds[1]["id"] == "good-2"
    assert [rid for rid, _ in ds.skipped] == ["good-1"]
    assert "next good record" in capsys.readouterr().err
    assert ds[1]["id"] == "good-2" and len(ds.skipped) == 1  # known bad: replaced again, not counted again
    (root / "img" / "2.jpg").write_bytes(b"garbage")  # a second, distinct bad record is over the budget of one
    with pytest.raises(DataError, match="over the limit"):
        ds[2]


def _truncated(path: Path) -> None:
    """A real JPEG cut in half: its header opens, its pixels do not decode."""
    _image(path, size=(64, 48))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_two_adjacent_corrupt_images_fit_a_budget_of_two(root: Path, tok: Tokenizer, capsys) -> None:
    # Records 1 and 2 are neighbours: the replacement drawn for record 1 is record 2, itself bad. Each is
    # counted once, however often it is drawn or tried as a replacement.
    _image(root / "img" / "4.jpg")
    _truncated(root / "img" / "1.jpg")
    (root / "img" / "2.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    path = write_json(root / "d.json", [_good(i) for i in range(5)])
    ds = LlavaDataset(path, root, tok, "plain", "crop", 28, skip_bad_records=2)
    for _ in range(3):  # every epoch draws every index again
        got = [ds[i]["id"] for i in range(len(ds))]
        assert got == ["good-0", "good-3", "good-3", "good-3", "good-4"]
    assert sorted(rid for rid, _ in ds.skipped) == ["good-1", "good-2"] and len(ds.skipped) == 2
    assert set(ds.bad_at_load) == {1, 2}
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("warning: ")]
    assert len(err) == 2 and all("data.skip_bad_records" in ln for ln in err)


def test_a_third_distinct_bad_record_over_a_budget_of_two_is_named(root: Path, tok: Tokenizer) -> None:
    for i in (1, 2, 3):
        _truncated(root / "img" / f"{i}.jpg")
    path = write_json(root / "d.json", [_good(i) for i in range(4)])
    ds = LlavaDataset(path, root, tok, "plain", "crop", 28, skip_bad_records=2)
    assert ds[0]["id"] == "good-0"
    with pytest.raises(DataError) as e:
        ds[1]  # 1 and 2 are counted; 3, tried as their replacement, is the third
    msg = str(e.value)
    assert f"{path}: record #3 (id 'good-3')" in msg and str(root / "img" / "3.jpg") in msg and "cannot be read" in msg
    assert "distinct bad record 3" in msg and "'good-1', 'good-2'" in msg
    assert "data.skip_bad_records = 2" in msg


def test_dataset_items_and_modality_lengths(root: Path, tok: Tokenizer) -> None:
    recs = [_good(0), {"id": "t", "conversations": [H("hello world"), G("red ball box")]}]
    ds = LlavaDataset(write_json(root / "d.json", recs), root, tok, "v1", "pad", 28)
    assert ds.modality_lengths() == [1 + 1 + 2, -(2 + 3)]  # "<image>\nlook" is two words
    item = ds[1]
    assert item["id"] == "t" and item["image"] is None
    assert item["input_ids"].dtype == torch.long and item["labels"].shape == item["input_ids"].shape
    assert ds[0]["image"].dtype == torch.float32


# ---------------------------------------------------------------------------------------------- images


def _norm(rgb: tuple[int, int, int]) -> torch.Tensor:
    return (torch.tensor(rgb) / 255.0 - torch.tensor(D.CLIP_MEAN)) / torch.tensor(D.CLIP_STD)


def test_pad_mode_pads_with_mean_colour() -> None:
    assert D.PAD_COLOR == (122, 116, 104)
    img = Image.new("RGB", (80, 40), (200, 40, 40))  # wide: padded above and below
    out = ImageProcessor(40, "pad")(img)
    assert out.shape == (3, 40, 40) and out.dtype == torch.float32
    assert torch.allclose(out[:, 2, 20], _norm(D.PAD_COLOR), atol=1e-3)
    assert torch.allclose(out[:, 37, 20], _norm(D.PAD_COLOR), atol=1e-3)
    assert torch.allclose(out[:, 20, 20], _norm((200, 40, 40)), atol=1e-3)


def test_crop_mode_resizes_shortest_side_and_crops_centre() -> None:
    img = Image.new("RGB", (90, 30), (0, 200, 0))
    img.paste((200, 0, 0), (30, 0, 60, 30))  # red centre third
    out = ImageProcessor(20, "crop")(img.convert("L"))  # grey input still yields 3 channels
    assert out.shape == (3, 20, 20)
    out = ImageProcessor(20, "crop")(img)
    assert torch.allclose(out[:, 10, 10], _norm((200, 0, 0)), atol=1e-3)
    assert torch.allclose(out[:, 10, 0], out[:, 10, 19], atol=0.2)  # edges of the red third only


# ---------------------------------------------------------------------------------------------- sampler


def _global(lengths, micro, world, gas, kind, seed=3) -> tuple[list[list[int]], list[StepBatchSampler]]:
    """Rebuild the global micro-batch order from the ranks: micro-batch b is rank b % world's b // world."""
    ranks = [StepBatchSampler(lengths, micro, world, r, gas, kind, seed) for r in range(world)]
    per = [list(s) for s in ranks]
    assert len({len(p) for p in per}) == 1
    return [per[b % world][b // world] for b in range(world * len(per[0]))], ranks


@pytest.mark.parametrize("kind", ["random", "modality_length"])
def test_sampler_covers_every_index_and_wraps_around(kind: str) -> None:
    lengths = [(i % 7) + 1 if i % 5 else -((i % 11) + 1) for i in range(103)]
    batches, ranks = _global(lengths, micro=4, world=2, gas=3, kind=kind)
    steps = math.ceil(103 / 24)
    assert ranks[0].steps == steps and len(ranks[0]) == steps * 3
    order = [i for b in batches for i in b]
    assert all(len(b) == 4 for b in batches) and len(order) == steps * 24
    assert sorted(order[:103]) == list(range(103))
    assert order[103:] == order[: steps * 24 - 103]  # the last global batch is filled from the start


@pytest.mark.parametrize("kind", ["random", "modality_length"])
def test_sampler_is_deterministic_and_seeded(kind: str) -> None:
    lengths = [i + 1 if i % 3 else -(i + 1) for i in range(50)]
    a, _ = _global(lengths, 2, 2, 2, kind, seed=1)
    b, _ = _global(lengths, 2, 2, 2, kind, seed=1)
    c, _ = _global(lengths, 2, 2, 2, kind, seed=2)
    assert a == b and a != c


def test_modality_length_purity_and_balance() -> None:
    micro, world, gas = 2, 2, 2
    mega = micro * world * gas
    n_mm, n_lang = 45, 19  # neither a multiple of the megabatch: two partial leftovers
    lengths = [10 + (i * 37) % 90 for i in range(n_mm)] + [-(5 + (i * 13) % 200) for i in range(n_lang)]
    batches, _ = _global(lengths, micro, world, gas, "modality_length")
    full = n_mm // mega + n_lang // mega  # the shuffled one-modality megabatches
    for b in batches[: full * mega // micro]:
        assert len({lengths[i] > 0 for i in b}) == 1, b
    tail = {i for b in batches[full * mega // micro :] for i in b}
    assert {lengths[i] > 0 for i in tail} == {True, False}  # the leftovers are mixed, as in LLaVA
    for m in range(full):
        chunks = batches[m * mega // micro : (m + 1) * mega // micro]  # chunk j -> rank j % world
        loads = [sum(abs(lengths[i]) for i in c) for c in chunks]
        top = max(abs(lengths[i]) for c in chunks for i in c)
        assert max(loads) - min(loads) <= top  # greedy to the lightest chunk
        first = sorted((abs(lengths[i]) for c in chunks for i in c), reverse=True)[: len(chunks)]
        assert sorted((abs(lengths[c[0]]) for c in chunks), reverse=True) == first  # longest seed each chunk


@pytest.mark.parametrize("kind", ["random", "modality_length"])
def test_start_step_skips_whole_steps(kind: str) -> None:
    lengths = [i + 1 if i % 4 else -(i + 1) for i in range(70)]
    for rank in range(2):
        full = list(StepBatchSampler(lengths, 3, 2, rank, 2, kind, 5))
        resumed = StepBatchSampler(lengths, 3, 2, rank, 2, kind, 5, start_step=4)
        assert list(resumed) == full[4 * 2 :] and len(resumed) == len(full) - 8


def test_sampler_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="non-zero"):
        StepBatchSampler([1, 0, -2], 1, 1, 0, 1, "modality_length", 0)
    with pytest.raises(ValueError, match="start_step"):
        StepBatchSampler([1, 2], 1, 1, 0, 1, "random", 0, start_step=3)


# ---------------------------------------------------------------------------------------------- collator


def _sample(sid: str, ids: list[int], labels: list[int], image: bool) -> dict:
    return {
        "id": sid,
        "input_ids": torch.tensor(ids),
        "labels": torch.tensor(labels),
        "image": torch.zeros(3, 14, 14) if image else None,
    }


def test_collator_pads_and_counts_by_hand() -> None:
    a = _sample("a", [1, IMG, 5, 6, 2], [IGN, IGN, 5, 6, 2], True)
    b = _sample("b", [1, 7, 8], [IGN, IGN, 8], False)
    out = Collator(pad_id=0, max_length=7, image_tokens=4)([a, b])
    # a spliced: bos, 4 image positions, 5, 6, 2 = 8 -> cut at 7 (drops the supervised 2); b: 3 tokens.
    assert out["input_ids"].tolist() == [[1, IMG, 5, 6], [1, 7, 8, 0]]
    assert out["labels"].tolist() == [[IGN, IGN, 5, 6], [IGN, IGN, 8, IGN]]
    assert out["attention_mask"].tolist() == [[True] * 4, [True, True, True, False]]
    assert out["images"].shape == (1, 3, 14, 14) and out["has_image"].tolist() == [True, False]
    assert out["ids"] == ["a", "b"]
    assert out["stats"] == {
        "samples": 2, "images": 1, "real_tokens": 7 + 3, "padded_tokens": 2 * 7,
        "real_tokens_sq": 49 + 9, "supervised_tokens": 2 + 1, **dict.fromkeys(D.FIDELITY_KEYS, 0),
    }
    assert spliced_labels(a["input_ids"], a["labels"], 4, 7).tolist() == [IGN] * 5 + [5, 6]


def test_collator_truncates_a_real_sample_at_the_limit(tok: Tokenizer) -> None:
    conv = [H("look at this <image>"), G("red ball")]
    ids, labels, _ = tokenize_conversation(conv, "v1", tok, has_image=True)
    s = _sample("r", ids, labels, True)
    n = len(ids) - 1 + 5  # spliced length with 5 image tokens; the last 3 are "▁red ▁ball </s>"
    full = Collator(0, n, 5)([s])["stats"]
    assert full["real_tokens"] == n and full["supervised_tokens"] == 3
    cut = Collator(0, n - 2, 5)([s])
    assert cut["stats"]["real_tokens"] == n - 2 and cut["stats"]["supervised_tokens"] == 1
    assert cut["input_ids"].shape[1] == len(ids) - 2
    assert spliced_labels(s["input_ids"], s["labels"], 5, n - 2).tolist()[-1] == P(tok, "▁red")[0]
    none = Collator(0, 8, 5)([_sample("t", [1, 7, 8], [IGN, IGN, 8], False)])
    assert none["images"] is None and none["stats"]["images"] == 0


def test_sequence_length_is_what_the_collator_counts(root: Path, tok: Tokenizer) -> None:
    long_text = " ".join(["red ball box"] * 9)
    recs = [_good(0), {"id": "t", "conversations": [H("hello world"), G(long_text)]},
            {"id": "i", "image": "img/1.jpg", "conversations": [H("look <image> at this"), G(long_text)]}]
    ds = LlavaDataset(write_json(root / "d.json", recs), root, tok, "v1", "pad", 28)
    for max_length in (2048, 40):
        for i in range(len(recs)):
            real = Collator(tok.pad_id, max_length, 16)([ds[i]])["stats"]["real_tokens"]
            assert ds.sequence_length(i, 16, max_length) == real
    assert ds.sequence_length(2, 16, 40) == 40  # cut at max_length, as the model cuts

"""MMMU validation as LLaVA-1.5 answers it: the data, the prompts and batched generation (raw responses only).

Scoring lives on the host side (kit/mmmu.py); this module stops at the model's text. What follows the
reference (MMMU's own `run_llava.py` with its `llava1.5.yaml` prompt config, case facts section 5):

- Multiple-choice prompt: question, "\\n", one line "(A) text" per option, a blank line, then "Answer with the
  option's letter from the given choices directly."; open prompt: question, "\\n", "Answer the question using
  a single word or phrase." Options come from their string form with `ast.literal_eval`.
- The MMMU placeholders inside questions and options ("<image 1>", "<image 2>", ...) stay as plain text, as
  the reference leaves them: they are not `<image>`, so `tokenizer_image_token` does not split on them.
- Only image_1 is used, CLIP-preprocessed without padding (shortest side to the size, centre crop).
- Vicuna v1 template with the assistant turn open: SYSTEM + " USER: <image>\\n" + prompt + " ASSISTANT:".
- Generation: 128 new tokens, stop at EOS. Default greedy (deterministic); `mode="reference"` is the
  reference's beam sampling (do_sample, temperature 1, 5 beams, top_p off, top_k 50 as transformers' default).

Batched generation left-pads the spliced input embeddings; position ids then come from the attention mask
(transformers computes cumsum(mask) - 1 for every decoder-only model when none are passed), so each sample
sees the positions 0..n-1 it would see alone.

The fast greedy path (`BatchDecoder`, the config's [eval] table) changes how, never what, the model decodes:
prompts sorted by spliced length into batches (less left padding), one static KV cache sized once for the
whole share (longest spliced prompt + max_new_tokens), every batch filled to the full batch size with copies of
a real row whose outputs are dropped, so that the decoding step keeps one shape and `generate` compiles it once
(torch.compile with CUDA graphs, CUDA only). Reference decoding keeps the dynamic cache and the official order.
"""

from __future__ import annotations

import ast
import contextlib
import io
import os
import re
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from .data import IMAGE_TOKEN, SYSTEM_V1, ImageProcessor, tokenizer_image_token
from .tokenizer import Tokenizer

# The official order (MMMU's CAT_SHORT2LONG / the HF configs, alphabetical).
SUBJECTS = (
    "Accounting", "Agriculture", "Architecture_and_Engineering", "Art", "Art_Theory", "Basic_Medical_Science",
    "Biology", "Chemistry", "Clinical_Medicine", "Computer_Science", "Design",
    "Diagnostics_and_Laboratory_Medicine", "Economics", "Electronics", "Energy_and_Power", "Finance", "Geography",
    "History", "Literature", "Manage", "Marketing", "Materials", "Math", "Mechanical_Engineering", "Music",
    "Pharmacy", "Physics", "Psychology", "Public_Health", "Sociology",
)
IMAGE_FIELDS = tuple(f"image_{i}" for i in range(1, 8))
FIELDS = ("id", "question", "options", "explanation", *IMAGE_FIELDS, "img_type", "answer", "topic_difficulty",
          "question_type", "subfield")
SPLIT = "validation"
FILE_PATTERN = "{root}/{subject}/validation-*.parquet"
MC_INSTRUCTION = "Answer with the option's letter from the given choices directly."
OPEN_INSTRUCTION = "Answer the question using a single word or phrase."
DECODING = ("greedy", "reference")
CACHES = ("static", "dynamic")
REFERENCE_SEED = 42


class MMMUError(ValueError):
    """The MMMU copy or one of its questions cannot be used; the message names the path or the id."""


# ---------------------------------------------------------------------------------------------- data


def subject_files(root: str | os.PathLike[str], subject: str) -> list[Path]:
    """The validation parquet shards of one subject config (HF layout: <root>/<Subject>/validation-*.parquet)."""
    return sorted((Path(root) / subject).glob("validation-*.parquet"))


def question_key(qid: str) -> tuple[int, int]:
    """Official order: subject position, then the numeric suffix of `validation_<Subject>_<n>`."""
    head, _, n = qid.rpartition("_")
    subject = head.removeprefix(SPLIT + "_")
    if subject not in SUBJECTS or not n.isdigit():
        raise MMMUError(f"question id {qid!r} is not of the form {SPLIT}_<Subject>_<n> with a known subject")
    return SUBJECTS.index(subject), int(n)


def subject_of(qid: str) -> str:
    return SUBJECTS[question_key(qid)[0]]


def load_mmmu(
    root: str | os.PathLike[str],
    subjects: Sequence[str] = SUBJECTS,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
) -> list[dict[str, Any]]:
    """Read MMMU validation from a local copy of the `MMMU/MMMU` layout, in the official order.

    Every subject is checked before anything is read, so an incomplete copy names all its gaps at once.
    Images stay undecoded ({"bytes", "path"} dicts; `open_image` decodes one) so 900 questions cost their
    bytes, not their pixels. `datasets` builds its Arrow cache in `cache_dir` (default: a temporary directory
    removed afterwards), so a read-only home or a shared HF cache is never touched.
    """
    unknown = [s for s in subjects if s not in SUBJECTS]
    if unknown:
        raise MMMUError(f"unknown MMMU subject(s) {', '.join(unknown)}; the subjects are {', '.join(SUBJECTS)}")
    root = Path(root)
    files: list[str] = []
    missing: list[str] = []
    for s in subjects:
        found = subject_files(root, s)
        if found:
            files += [str(f) for f in found]
        else:
            missing.append(s)
    if missing:
        raise MMMUError(
            f"{root}: the MMMU copy lacks {len(missing)} of {len(subjects)} subjects: {', '.join(missing)}; "
            f"expected {FILE_PATTERN.format(root=root, subject='<Subject>')} for each (the layout of the Hugging "
            f"Face dataset MMMU/MMMU, e.g. {root}/{missing[0]}/validation-00000-of-00001.parquet)"
        )
    import datasets

    with tempfile.TemporaryDirectory(prefix="kit-mmmu-") if cache_dir is None else contextlib.nullcontext(cache_dir) as cache:
        ds = datasets.load_dataset("parquet", data_files={SPLIT: files}, split=SPLIT, cache_dir=str(cache))
        absent = [f for f in FIELDS if f not in ds.column_names]
        if absent:
            raise MMMUError(f"{root}: the parquet files lack the MMMU field(s) {', '.join(absent)}; found {ds.column_names}")
        for col in IMAGE_FIELDS:
            if isinstance(ds.features[col], datasets.Image):
                ds = ds.cast_column(col, datasets.Image(decode=False))
        rows = [{k: row[k] for k in FIELDS} for row in ds]
    wanted = set(subjects)
    for row in rows:
        subject = subject_of(row["id"])
        if subject not in wanted:
            raise MMMUError(f"{root}: question {row['id']} lies in the files of another subject than {subject}")
        row["subject"] = subject
    rows.sort(key=lambda r: question_key(r["id"]))
    seen: set[str] = set()
    for row in rows:
        if row["id"] in seen:
            raise MMMUError(f"{root}: question id {row['id']} occurs twice")
        seen.add(row["id"])
    return rows


def open_image(value: Any, root: str | os.PathLike[str] | None = None) -> Image.Image | None:
    """Decode an MMMU image field: a PIL image, a {"bytes", "path"} dict, raw bytes, or None."""
    if value is None:
        return None
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, (bytes, bytearray)):
        data = bytes(value)
    elif isinstance(value, dict):
        data = value.get("bytes")
        if data is None:
            path = value.get("path")
            if not path:
                return None
            p = Path(path) if root is None or os.path.isabs(path) else Path(root) / path
            data = p.read_bytes()
    else:
        raise MMMUError(f"cannot read an image from a {type(value).__name__}")
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


# ---------------------------------------------------------------------------------------------- prompts


def parse_options(sample: dict[str, Any]) -> list[str]:
    """The options list from its string form ("['a', 'b']"), as the reference's eval() reads it (safely)."""
    raw = sample.get("options")
    if isinstance(raw, list):
        return [str(o) for o in raw]
    try:
        options = ast.literal_eval(raw) if raw else []
    except (ValueError, SyntaxError) as e:
        raise MMMUError(f"question {sample.get('id')}: options {str(raw)[:80]!r} are not a Python list ({e})") from None
    if not isinstance(options, (list, tuple)):
        raise MMMUError(f"question {sample.get('id')}: options {str(raw)[:80]!r} are not a list")
    return [str(o) for o in options]


def build_prompt(sample: dict[str, Any]) -> tuple[str, list[str], dict[str, str]]:
    """The MMMU prompt of the LLaVA-1.5 recipe, with the letters and the letter -> option map.

    Open questions get no letters: ([], {}) for all_choices and index2ans.
    """
    question = sample["question"]
    qtype = sample["question_type"]
    if qtype == "multiple-choice":
        options = parse_options(sample)
        if not options:
            raise MMMUError(f"question {sample.get('id')}: a multiple-choice question without options")
        letters = [chr(ord("A") + i) for i in range(len(options))]
        lines = "".join(f"({c}) {o}\n" for c, o in zip(letters, options, strict=True))
        return f"{question}\n{lines}\n{MC_INSTRUCTION}", letters, dict(zip(letters, options, strict=True))
    if qtype == "open":
        return f"{question}\n{OPEN_INSTRUCTION}", [], {}
    raise MMMUError(f"question {sample.get('id')}: unknown question_type {qtype!r} (multiple-choice or open)")


def conversation_prompt(prompt: str, has_image: bool = True) -> str:
    """Vicuna v1 with one user turn and the assistant turn open (LLaVA's conv.get_prompt with message None)."""
    body = f"{IMAGE_TOKEN}\n{prompt}" if has_image else prompt
    return f"{SYSTEM_V1} USER: {body} ASSISTANT:"


def encode_prompt(text: str, tok: Tokenizer) -> list[int]:
    """The reference's tokenizer_image_token: one BOS, `<image>` as IMAGE_TOKEN_INDEX."""
    return tokenizer_image_token(text, tok)


def image_present(value: Any) -> bool:
    """Whether `open_image(value)` yields an image, told without decoding it (None, or a dict of neither bytes nor path)."""
    if value is None:
        return False
    if isinstance(value, dict):
        return value.get("bytes") is not None or bool(value.get("path"))
    return True


def prepare_text(sample: dict[str, Any], tok: Tokenizer) -> dict[str, Any]:
    """One question's ids and the fields responses.json keeps, its image undecoded (`load_image` decodes it).

    Lets a stage know every prompt's length (batches sorted by length, the static cache's size) before it
    decodes a single image.
    """
    prompt, letters, index2ans = build_prompt(sample)
    has_image = image_present(sample.get("image_1"))
    text = conversation_prompt(prompt, has_image=has_image)
    return {
        "id": sample["id"],
        "subject": sample.get("subject") or subject_of(sample["id"]),
        "question_type": sample["question_type"],
        "answer": sample["answer"],
        "all_choices": letters,
        "index2ans": index2ans,
        "prompt": text,
        "input_ids": encode_prompt(text, tok),
        "has_image": has_image,
    }


def load_image(sample: dict[str, Any], processor: ImageProcessor) -> Any:
    """image_1 preprocessed ([3, S, S]), or None for a question without one."""
    img = open_image(sample.get("image_1"))
    if img is None:
        return None
    return processor(img)


def prepare(sample: dict[str, Any], tok: Tokenizer, processor: ImageProcessor) -> dict[str, Any]:
    """One question ready for the model: ids, preprocessed image_1 and the fields responses.json keeps."""
    out = prepare_text(sample, tok)
    out["image"] = load_image(sample, processor)
    return out


def spliced_length(prepared: dict[str, Any], image_tokens: int, max_length: int) -> int:
    """Positions the prompt takes in the LLM: its `<image>` replaced by the image features, cut at max_length."""
    n = len(prepared["input_ids"])
    if prepared["has_image"]:
        n += image_tokens - 1
    return min(n, max_length)


# ---------------------------------------------------------------------------------------------- generation


def generation_config(mode: str, max_new_tokens: int, eos_id: int, pad_id: int, bos_id: int,
                      compile: bool = False) -> Any:
    """Greedy, or the reference's beam sampling (temperature 1, 5 beams, top_p off, top_k 50).

    `compile`: let generate compile the decoding step (it does so only with a static cache on CUDA); shapes are
    fixed by the caller, so the graph is compiled for them alone (dynamic=False), never for symbolic sizes.
    """
    from transformers import GenerationConfig

    if mode not in DECODING:
        raise ValueError(f"unknown decoding {mode!r}: expected one of {', '.join(DECODING)}")
    common: dict[str, Any] = dict(max_new_tokens=max_new_tokens, eos_token_id=eos_id, pad_token_id=pad_id,
                                  bos_token_id=bos_id, use_cache=True)
    if static_cache_unsupported() is None:  # transformers 5.x knows these; 4.37 would keep them as unknown keys
        common["disable_compile"] = not compile
        if compile:
            from transformers import CompileConfig

            common["compile_config"] = CompileConfig(fullgraph=False, dynamic=False)
    if mode == "greedy":
        return GenerationConfig(do_sample=False, num_beams=1, **common)
    # The reference passes top_p=None over Vicuna's generation_config (top_p 0.6), which switches it off;
    # top_k keeps transformers' default of 50.
    return GenerationConfig(do_sample=True, temperature=1.0, num_beams=5, top_p=1.0, top_k=50, **common)


def splice_left_padded(model: Any, input_ids_list: Sequence[Sequence[int]], images: Sequence[Any]) -> tuple[Any, Any, list[int]]:
    """Input embeddings with the image features spliced in (model.splice), left-padded for generation.

    Returns (embeds [B, T, H], attention_mask [B, T] long, spliced lengths).
    """
    import torch

    from .model import IGNORE_INDEX, IMAGE_TOKEN_INDEX

    if len(input_ids_list) != len(images):
        raise ValueError(f"{len(input_ids_list)} prompts but {len(images)} image entries")
    device = model.projector[0].weight.device
    bsz = len(input_ids_list)
    width = max(len(x) for x in input_ids_list)
    ids = torch.zeros((bsz, width), dtype=torch.long)
    mask = torch.zeros((bsz, width), dtype=torch.bool)
    for i, row in enumerate(input_ids_list):
        ids[i, : len(row)] = torch.tensor(list(row), dtype=torch.long)
        mask[i, : len(row)] = True
    has_image = torch.tensor([img is not None for img in images], dtype=torch.bool)
    for i, flag in enumerate(has_image.tolist()):
        n = int((ids[i] == IMAGE_TOKEN_INDEX).sum())
        if n != int(flag):
            raise ValueError(f"prompt {i} has {n} image placeholders but {'an' if flag else 'no'} image")
    present = [img for img in images if img is not None]
    feats = None
    if present:
        pixels = torch.stack(list(present)).to(device=device, dtype=model.vision.dtype)
        feats = model.encode_images(pixels)
    ids, mask, has_image = ids.to(device), mask.to(device), has_image.to(device)
    sp = model.splice(ids, torch.full_like(ids, IGNORE_INDEX), mask, feats, has_image)
    longest = max(sp.lengths)
    embeds = sp.embeds.new_zeros((bsz, longest, sp.embeds.shape[-1]))
    attn = torch.zeros((bsz, longest), dtype=torch.long, device=sp.embeds.device)
    for i, n in enumerate(sp.lengths):
        embeds[i, longest - n :] = sp.embeds[i, :n]
        attn[i, longest - n :] = 1
    return embeds, attn, list(sp.lengths)


def generate(
    model: Any,
    input_ids_list: Sequence[Sequence[int]],
    images: Sequence[Any],
    max_new_tokens: int = 128,
    mode: str = "greedy",
    *,
    eos_id: int = 2,
    pad_id: int = 0,
    bos_id: int = 1,
    cache: Any = None,
    compile: bool = False,
) -> list[list[int]]:
    """Batched generation on a LlavaForTraining: new token ids per sample, cut before the first EOS.

    `images[i]` is sample i's preprocessed image [3, S, S] or None (then its prompt holds no `<image>`).
    The caller seeds the generator for `mode="reference"` (sampling); greedy needs no seed. `cache`: a
    transformers StaticCache to decode into (reset here first; `static_cache`), else the dynamic cache.
    """
    import torch
    from transformers import LogitsProcessorList

    gen_cfg = generation_config(mode, max_new_tokens, eos_id, pad_id, bos_id, compile=compile)
    prefix = _PrefixWidth()
    extra: dict[str, Any] = {}
    if cache is not None:
        cache.reset()
        extra["past_key_values"] = cache
    with torch.no_grad():
        embeds, attn, _ = splice_left_padded(model, input_ids_list, images)
        out = model.llm.generate(inputs_embeds=embeds, attention_mask=attn, generation_config=gen_cfg,
                                 logits_processor=LogitsProcessorList([prefix]), **extra)
    result = []
    for row in out[:, prefix.width or 0 :].tolist():
        result.append(row[: row.index(eos_id)] if eos_id in row else row)
    return result


def static_cache_unsupported() -> str | None:
    """None where this transformers decodes into a StaticCache passed to generate; else why it cannot.

    transformers 5.x builds StaticCache(config=, max_cache_len=) lazily at the first batch and resets it in
    place; 4.37 (the reference's pin) has no StaticCache, so the stage decodes with the dynamic cache there.
    """
    import transformers

    if int(transformers.__version__.split(".")[0]) < 5:
        return f"transformers {transformers.__version__} has no static-cache generate path with a cache passed in (5.x has)"
    try:
        from transformers import StaticCache  # noqa: F401
    except ImportError:
        return f"transformers {transformers.__version__} has no StaticCache"
    return None


def static_cache(model: Any, max_cache_len: int) -> Any:
    """One StaticCache for the LLM, sized once; its tensors are made at the first batch and reused after."""
    from transformers import StaticCache

    return StaticCache(config=model.llm.config, max_cache_len=max_cache_len)


def plan_batches(lengths: Sequence[int], batch_size: int, sort_by_length: bool) -> list[list[int]]:
    """Indices of the questions per batch: in the given order, or by spliced length, longest first.

    Longest first: the first batch meets the largest prefill and cache (a memory problem shows at once);
    questions of equal length keep their official order (a stable sort).
    """
    if batch_size < 1:
        raise ValueError(f"batch size {batch_size}: must be at least 1")
    order = list(range(len(lengths)))
    if sort_by_length:
        order.sort(key=lambda i: -lengths[i])
    return [order[s : s + batch_size] for s in range(0, len(order), batch_size)]


class BatchDecoder:
    """Decodes batch after batch with the [eval] settings; with the static cache, at one shape throughout.

    Static: a batch of fewer rows than `batch_size` is filled with copies of its first row, whose outputs are
    dropped (`padded_rows` counts them), and every batch decodes into the same cache of `max_cache_len`
    positions, so the compiled decoding step and its CUDA graphs are made once, at the first batch.
    Reference decoding, and greedy with cache "dynamic", run exactly as `generate` always did.
    """

    def __init__(
        self,
        model: Any,
        *,
        mode: str = "greedy",
        batch_size: int,
        max_new_tokens: int = 128,
        cache: str = "static",
        compile: bool = False,
        max_cache_len: int = 0,
        eos_id: int = 2,
        pad_id: int = 0,
        bos_id: int = 1,
    ) -> None:
        if cache not in CACHES:
            raise ValueError(f"unknown cache {cache!r}: expected one of {', '.join(CACHES)}")
        if cache == "static" and mode != "greedy":
            raise ValueError(f"decoding {mode!r} runs with the dynamic cache only (beam search reorders its rows)")
        if cache == "static" and max_cache_len < 1:
            raise ValueError("the static cache needs max_cache_len: the longest spliced prompt + max_new_tokens")
        self.model = model
        self.mode = mode
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.cache = cache
        self.compile = compile and cache == "static"
        self.max_cache_len = max_cache_len if cache == "static" else 0
        self.ids = {"eos_id": eos_id, "pad_id": pad_id, "bos_id": bos_id}
        self.padded_rows = 0
        self._cache = static_cache(model, max_cache_len) if cache == "static" else None

    def __call__(self, input_ids_list: Sequence[Sequence[int]], images: Sequence[Any]) -> list[list[int]]:
        n = len(input_ids_list)
        if not 0 < n <= self.batch_size:
            raise ValueError(f"a batch of {n} prompts for batch size {self.batch_size}")
        ids, imgs = list(input_ids_list), list(images)
        if self._cache is not None:
            longest = max(spliced_length({"input_ids": i, "has_image": im is not None}, self.model.image_tokens,
                                         self.model.cfg.max_length) for i, im in zip(ids, imgs, strict=True))
            if longest + self.max_new_tokens > self.max_cache_len:
                raise ValueError(f"a prompt of {longest} positions + {self.max_new_tokens} new tokens does not fit "
                                 f"the static cache of {self.max_cache_len}: size it for the longest prompt")
        if self._cache is not None and n < self.batch_size:
            fill = self.batch_size - n
            ids += [ids[0]] * fill
            imgs += [imgs[0]] * fill
            self.padded_rows += fill
        out = generate(self.model, ids, imgs, self.max_new_tokens, self.mode, cache=self._cache,
                       compile=self.compile, **self.ids)
        return out[:n]


class _PrefixWidth:
    """A pass-through logits processor that records how many ids precede the first new token.

    With inputs_embeds alone, transformers 4.37 starts the output ids with one BOS column while 5.x starts
    empty; reading the width at the first step strips either without a version table.
    """

    def __init__(self) -> None:
        self.width: int | None = None

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        if self.width is None:
            self.width = int(input_ids.shape[1])
        return scores


def generated_token_count(ids: Sequence[int], max_new_tokens: int) -> int:
    """Tokens the model produced for one sample: the kept ones plus the EOS that stopped it, if any."""
    return len(ids) + (1 if len(ids) < max_new_tokens else 0)


def decode_response(ids: Iterable[int], tok: Tokenizer) -> str:
    """Text as the reference's batch_decode(skip_special_tokens=True): BOS, EOS and UNK (= pad) dropped."""
    special = {tok.bos_id, tok.eos_id, tok.unk_id, tok.pad_id}
    # Ids past the tokenizer's last piece come only from an embedding larger than the tokenizer (a synthetic
    # tokenizer of a few hundred pieces beside the 32,000-row embedding of random weights): they name no text.
    return tok.decode([i for i in ids if i not in special and 0 <= i < tok.vocab_size])


def response_record(prepared: dict[str, Any], response: str) -> dict[str, Any]:
    """One entry of responses.json (what the host's scorer reads)."""
    return {
        "id": prepared["id"],
        "subject": prepared["subject"],
        "question_type": prepared["question_type"],
        "answer": prepared["answer"],
        "all_choices": prepared["all_choices"],
        "index2ans": prepared["index2ans"],
        "response": response,
        "prompt": prepared["prompt"],
    }


_INLINE_IMAGE = re.compile(r"<image \d+>")


def inline_image_refs(sample: dict[str, Any]) -> list[str]:
    """The "<image k>" references a question and its options carry (left as text; reported for audit)."""
    return _INLINE_IMAGE.findall(sample.get("question", "") + " " + str(sample.get("options", "")))

"""The case's data pipeline: records -> (input_ids, labels, image) -> micro-batches, as LLaVA-1.5 builds them.

What the reference does and where the kit differs on purpose (docs/fidelity.md has the record-by-record account):
- Prompts, `<image>` handling and label masks follow LLaVA's `preprocess_plain` / `preprocess_v1` and
  `tokenizer_image_token`. The kit builds ids and labels segment by segment and checks that they equal the
  whole-string tokenization (a disagreement is a kit error). It then runs the reference's own round arithmetic
  (`reference_v1_labels`): where the reference reports "tokenization mismatch" the sample is fully masked, as
  the reference trains it, and counted.
- The collator applies the reference's collation: text cut at max_length, then every pad-id token (`<unk>`,
  id 0) dropped (the reference's attention mask is `input_ids != pad`), then an image whose placeholder did not
  survive the cut is dropped (the reference splices zero features for it). Each is counted per micro-batch.
- Bad records (malformed, non-alternating, missing or unreadable image) stop the run with a message that
  names the file, the record and the fix, unless `skip_bad_records` allows skipping a counted few (counted per
  category, records.CATEGORIES). A conversation that starts with a gpt turn is a bad record here; LLaVA
  silently drops that first turn.
- Sequences are not truncated after splicing here: the model truncates after splicing the image features
  (as the reference); the collator only drops raw tokens that cannot survive that truncation.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image

# The record validator is standard library only, so `kit check-host --deep` applies the same rules.
from .records import IMAGE_TOKEN, record_issue
from .tokenizer import Tokenizer

IGNORE_INDEX = -100
IMAGE_TOKEN_INDEX = -200
SYSTEM_V1 = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
TEMPLATES = ("plain", "v1")
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
PAD_COLOR = tuple(int(m * 255) for m in CLIP_MEAN)  # (122, 116, 104), as LLaVA's expand2square
_SKIP_HINT = (
    "fix or remove the record, or set data.skip_bad_records (the config's [data] table, or "
    "--set data.skip_bad_records=N) to skip a counted few"
)


class DataError(ValueError):
    """Bad training data: the message names the file, the record and what to do."""


# ---------------------------------------------------------------------------------------------- templates


def tokenizer_image_token(prompt: str, tok: Tokenizer) -> list[int]:
    """The reference's whole-string tokenization: `<image>`-split chunks, each a fresh encode, one BOS."""
    chunks = prompt.split(IMAGE_TOKEN)
    ids = tok.encode(chunks[0])
    for chunk in chunks[1:]:
        ids.append(IMAGE_TOKEN_INDEX)
        ids += tok.encode(chunk, bos=False)
    return ids


def move_image_to_front(value: str) -> str:
    """LLaVA's preprocess_multimodal: drop `<image>` where it stands, put `<image>\\n` before the rest."""
    if IMAGE_TOKEN not in value:
        return value
    return (IMAGE_TOKEN + "\n" + value.replace(IMAGE_TOKEN, "").strip()).strip()


def build_segments(conversations: Sequence[dict[str, str]], template: str, has_image: bool) -> list[tuple[str, bool]]:
    """Cut the prompt into (text, supervised) segments whose concatenation is the reference's prompt."""
    values = [move_image_to_front(c["value"]) if has_image else c["value"] for c in conversations]
    if template == "plain":
        # The human turn becomes the image alone; caption + "\n" (the plain separator) is supervised.
        return [(IMAGE_TOKEN, False), (values[1] + "\n", True)]
    if template != "v1":
        raise ValueError(f"unknown template {template!r}: expected one of {', '.join(TEMPLATES)}")
    segments: list[tuple[str, bool]] = []
    for r in range(0, len(values), 2):
        head = SYSTEM_V1 + " " if r == 0 else ""
        # The space after "ASSISTANT:" starts the answer's first token, so it belongs to the answer.
        segments.append((f"{head}USER: {values[r]} ASSISTANT:", False))
        segments.append((f" {values[r + 1]}</s>", True))
    return segments


def encode_segments(segments: Sequence[tuple[str, bool]], tok: Tokenizer) -> tuple[list[int], list[int]]:
    """Encode each segment in its context (prefix rules of the whole string); label supervised ones."""
    ids, labels = [tok.bos_id], [IGNORE_INDEX]
    state = "start"
    for text, supervised in segments:
        for k, chunk in enumerate(text.split(IMAGE_TOKEN)):
            if k:
                ids.append(IMAGE_TOKEN_INDEX)
                labels.append(IGNORE_INDEX)
                state = "start"  # every `<image>`-split chunk is a fresh encode
            part, state = tok.encode_continuation(chunk, state)
            ids += part
            labels += part if supervised else [IGNORE_INDEX] * len(part)
    return ids, labels


def tokenize_conversation(
    conversations: Sequence[dict[str, str]], template: str, tok: Tokenizer, has_image: bool
) -> tuple[list[int], list[int], str | None]:
    """Return input_ids, labels and, when the segments disagree with the whole string, why."""
    segments = build_segments(conversations, template, has_image)
    ids, labels = encode_segments(segments, tok)
    whole = tokenizer_image_token("".join(t for t, _ in segments), tok)
    if ids == whole:
        return ids, labels, None
    at = next((i for i, (a, b) in enumerate(zip(ids, whole, strict=False)) if a != b), min(len(ids), len(whole)))

    def show(x: list[int]) -> str:
        return " ".join("<image>" if i < 0 else tok.id_to_piece(i) for i in x[max(0, at - 3) : at + 3])

    why = f"segment tokens differ from whole-string tokens at position {at}: [{show(ids)}] vs [{show(whole)}]"
    return ids, labels, why


V1_SEP = " ASSISTANT: "  # the reference's `conv.sep + conv.roles[1] + ": "`
V1_SEP2 = "</s>"  # the reference's `conv.sep2`: it cuts the prompt into rounds


def round_correction(tok: Tokenizer) -> int:
    """Tokens the role word "USER" has more at a string's start than right after `</s>`.

    The reference subtracts 1 from every round after the first when the tokenizer is not legacy (LLaMA's
    vocabulary: "▁US" "ER" at a start, "USER" after `</s>` with legacy=False; equal with legacy=True). Computed
    here from the tokenizer, it is that 1 (or 0) on LLaMA's tokenizer, and right for any other vocabulary.
    """
    start, _ = tok.encode_continuation("USER", "start")
    after, _ = tok.encode_continuation("USER", "special")
    return len(start) - len(after)


def reference_v1_labels(
    prompt: str, ids: Sequence[int], tok: Tokenizer, has_image: bool, max_length: int
) -> tuple[list[int], bool]:
    """The reference's preprocess_v1 masking of one prompt: (its labels, whether it reports a mismatch).

    Its rule, step by step: the prompt is cut at `</s>` into rounds and each round at " ASSISTANT: " into
    instruction and answer (a round that does not cut in two ends the walk); each round advances by the length
    of its own fresh tokenization, the instruction is masked by its fresh length minus 2; everything after the
    walk is masked. When the walk ends short of max_length and its length differs from the count of non-pad
    tokens, the reference prints "tokenization mismatch" and masks the whole sample. Text-only ids are cut at
    max_length first (the reference tokenizes them with truncation). Labels are those of the (cut) ids.
    """
    enc: Callable[[str], list[int]] = (lambda s: tokenizer_image_token(s, tok)) if has_image else tok.encode
    input_ids = list(ids) if has_image else list(ids[:max_length])
    target = list(input_ids)
    total_len = sum(1 for t in input_ids if t != tok.pad_id)
    correction = round_correction(tok)
    cur_len = 1
    target[:1] = [IGNORE_INDEX] * len(target[:1])
    for i, rou in enumerate(prompt.split(V1_SEP2)):
        if rou == "":
            break
        parts = rou.split(V1_SEP)
        if len(parts) != 2:
            break
        round_len = len(enc(rou))
        instruction_len = len(enc(parts[0] + V1_SEP)) - 2
        if i != 0:
            round_len -= correction
            instruction_len -= correction
        span = target[cur_len : cur_len + instruction_len]
        target[cur_len : cur_len + instruction_len] = [IGNORE_INDEX] * len(span)
        cur_len += round_len
    target[cur_len:] = [IGNORE_INDEX] * len(target[cur_len:])
    return target, cur_len < max_length and cur_len != total_len


# ---------------------------------------------------------------------------------------------- images


class ImageProcessor:
    """CLIP preprocessing: "crop" = shortest side to S (bicubic) + centre crop; "pad" = square first."""

    def __init__(self, image_size: int, mode: str) -> None:
        if mode not in ("crop", "pad"):
            raise ValueError(f"unknown image mode {mode!r}: expected 'crop' or 'pad'")
        self.size = image_size
        self.mode = mode
        self.mean = np.array(CLIP_MEAN, dtype=np.float32)
        self.std = np.array(CLIP_STD, dtype=np.float32)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        img = image.convert("RGB")
        if self.mode == "pad":
            img = expand_to_square(img)
        w, h = img.size
        s = self.size
        short, long = (w, h) if w <= h else (h, w)
        new_long = int(s * long / short)  # transformers' get_resize_output_image_size
        img = img.resize((s, new_long) if w <= h else (new_long, s), resample=Image.BICUBIC)
        w, h = img.size
        top, left = (h - s) // 2, (w - s) // 2
        img = img.crop((left, top, left + s, top + s))
        arr = (np.asarray(img, dtype=np.float32) / 255.0 - self.mean) / self.std
        return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


def expand_to_square(img: Image.Image) -> Image.Image:
    """Pad to a square with the CLIP mean colour, image centred (LLaVA's expand2square)."""
    w, h = img.size
    if w == h:
        return img
    side = max(w, h)
    out = Image.new(img.mode, (side, side), PAD_COLOR)
    out.paste(img, ((side - w) // 2, (side - h) // 2))
    return out


# ---------------------------------------------------------------------------------------------- dataset


class LlavaDataset(torch.utils.data.Dataset):
    """One LLaVA JSON file: validated up front (schema, turn order, image files exist), tokenized lazily.

    An image that fails to decode is only found at load time; within the skip budget it is replaced by the
    next record not known to be bad. Each bad record is counted once (load-time ones are remembered by index,
    so a later draw of the same record, or a replacement, never counts it again); the budget counts distinct
    records. Each DataLoader worker holds its own copy, so load-time skips are counted per process; the sample
    that replaces one carries the count (`flags`) to the collator, which adds it to the step's facts.

    `max_length` is the reference's `tokenizer.model_max_length` (the config's model.max_length): the v1
    mismatch rule and the text-only truncation use it.
    """

    def __init__(
        self,
        json_path: str | os.PathLike[str],
        image_root: str | os.PathLike[str],
        tokenizer: Tokenizer,
        template: str,
        image_mode: str,
        image_size: int,
        skip_bad_records: int = 0,
        max_length: int | None = None,
    ) -> None:
        if template not in TEMPLATES:
            raise ValueError(f"unknown template {template!r}: expected one of {', '.join(TEMPLATES)}")
        self.json_path = str(json_path)
        self.image_root = str(image_root)
        self.tokenizer = tokenizer
        self.template = template
        self.processor = ImageProcessor(image_size, image_mode)
        self.skip_limit = skip_bad_records
        self.max_length = max_length or tokenizer.model_max_length
        self.skipped: list[tuple[str, str]] = []
        self.skipped_by_category: dict[str, int] = {}  # records.CATEGORIES, "missing-image", "unreadable-image"
        self._warned_masked = 0
        self.records: list[dict[str, Any]] = []
        self.positions: list[int] = []  # each kept record's index in the JSON file, for messages
        self.bad_at_load: dict[int, str] = {}  # indices into self.records whose image failed to load, and why
        for index, rec in enumerate(self._read_json()):
            issue = record_issue(rec, template)
            if issue is None and "image" in rec:
                path = os.path.join(self.image_root, rec["image"])
                if not os.path.isfile(path):
                    issue = "missing-image", f"image {path} does not exist (image root {self.image_root})"
            if issue is None:
                self.records.append(rec)
                self.positions.append(index)
            else:
                rid = str(rec.get("id")) if isinstance(rec, dict) else "?"
                self._skip(index, rid, issue[1], category=issue[0])
        if not self.records:
            raise DataError(f"{self.json_path}: no usable records; check the file and the image root {self.image_root}")

    def _read_json(self) -> list[Any]:
        try:
            with open(self.json_path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            raise DataError(f"{self.json_path}: file not found; download the data or generate it with --synthetic") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DataError(f"{self.json_path}: not valid JSON ({e}); the file may be truncated, download it again") from None
        if not isinstance(data, list):
            raise DataError(f"{self.json_path}: expected a JSON list of records, got {type(data).__name__}")
        return data

    def _skip(self, index: int, rid: str, why: str, then: str = "", category: str = "schema") -> None:
        """Count a bad record, or raise when the budget is spent: never silent."""
        where = f"{self.json_path}: record #{index} (id {rid!r})"
        n, limit = len(self.skipped), self.skip_limit
        if n >= limit:
            if limit == 0:
                raise DataError(f"{where}: {why}; {_SKIP_HINT}")
            earlier = ", ".join(repr(r) for r, _ in self.skipped[:5]) + (f" and {n - 5} more" if n > 5 else "")
            raise DataError(
                f"{where}: {why}; this is distinct bad record {n + 1}, over the limit: {n} records were already "
                f"skipped (ids {earlier}; data.skip_bad_records = {limit}). "
                f"Fix the data or raise data.skip_bad_records above {limit}"
            )
        self.skipped.append((rid, why))
        self.skipped_by_category[category] = self.skipped_by_category.get(category, 0) + 1
        print(f"warning: {where} skipped (bad record {n + 1} of at most {limit}, data.skip_bad_records): {why}{then}",
              file=sys.stderr)

    def __len__(self) -> int:
        return len(self.records)

    def modality_lengths(self) -> list[int]:
        """Whitespace word counts over all turns, negative for text-only (LLaVA's `modality_lengths`).

        LLaVA's other list, `lengths`, adds 128 for image samples; it feeds only `group_by_length`, which
        the reference does not use, so it is not reproduced.
        """
        out = []
        for rec in self.records:
            n = sum(len(t["value"].split()) for t in rec["conversations"])
            out.append(n if "image" in rec else -n)
        return out

    def sequence_length(self, i: int, image_tokens: int, max_length: int) -> int:
        """Positions record i takes in the model, as the collator counts them: its tokens cut at `max_length`,
        pad-id tokens dropped, each image placeholder spliced to `image_tokens` positions, cut at `max_length`.
        Tokenizes the text only; the image is not read."""
        rec = self.records[i]
        ids, labels, _ = tokenize_conversation(rec["conversations"], self.template, self.tokenizer, "image" in rec)
        view = reference_view(torch.tensor(ids), torch.tensor(labels), self.tokenizer.pad_id, max_length)
        return splice_plan(view.input_ids, view.labels, image_tokens, max_length)[1]

    def __getitem__(self, i: int) -> dict[str, Any]:
        before = len(self.skipped)
        for attempt in range(len(self.records)):
            j = (i + attempt) % len(self.records)
            if j in self.bad_at_load:  # known bad: already counted, never drawn as a replacement
                continue
            rec = self.records[j]
            image, why = None, None
            if "image" in rec:
                image, why = self._load_image(rec)
            if why is None:
                return self._tokenize(self.positions[j], rec, image, replaced=len(self.skipped) - before)
            self.bad_at_load[j] = why
            self._skip(self.positions[j], str(rec["id"]), why, "; the next good record takes its place",
                       category="unreadable-image")
        raise DataError(
            f"{self.json_path}: no record could be loaded: all {len(self.records)} records that passed validation "
            "failed to load their image; check the image root"
        )

    def _load_image(self, rec: dict[str, Any]) -> tuple[torch.Tensor | None, str | None]:
        path = os.path.join(self.image_root, rec["image"])
        try:
            with Image.open(path) as img:
                img.load()
                return self.processor(img), None
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            return None, f"image {path} cannot be read ({type(e).__name__}: {e})"

    def _tokenize(self, index: int, rec: dict[str, Any], image: torch.Tensor | None, replaced: int = 0) -> dict[str, Any]:
        """Ids and labels of one record; `flags` counts what the reference rule did to it (and, in
        `skipped_unreadable_images`, the newly skipped records it replaces)."""
        has_image = "image" in rec
        ids, labels, why = tokenize_conversation(rec["conversations"], self.template, self.tokenizer, has_image)
        where = f"{self.json_path}: record #{index} (id {str(rec['id'])!r})"
        if why is not None:
            raise DataError(
                f"{where}: label masking failed, {why}. "
                "This is a kit bug for this tokenizer and text: report it with the record"
            )
        flags = {"masked_by_reference_rule": 0, "relabelled_by_reference_rule": 0,
                 "skipped_unreadable_images": replaced}
        if self.template == "v1":
            prompt = "".join(t for t, _ in build_segments(rec["conversations"], "v1", has_image))
            ref, mismatch = reference_v1_labels(prompt, ids, self.tokenizer, has_image, self.max_length)
            if mismatch:
                # The reference trains this sample with every label ignored (its "tokenization mismatch").
                labels = [IGNORE_INDEX] * len(labels)
                flags["masked_by_reference_rule"] = 1
                if self._warned_masked < 5:
                    self._warned_masked += 1
                    print(f"warning: {where}: fully masked, as the reference masks it (its round arithmetic "
                          "disagrees with the tokens: the text holds a template control string such as </s>, "
                          "<unk> or ' ASSISTANT: '); counted in the step facts (masked_by_reference_rule)",
                          file=sys.stderr)
            elif ref != labels[: len(ref)]:
                # The walk agreed on the length but not on the rounds (a whole fake round inside a turn): the
                # reference trains its own arithmetic's labels.
                labels = ref + labels[len(ref):]
                flags["relabelled_by_reference_rule"] = 1
        return {
            "id": str(rec["id"]),
            "input_ids": torch.tensor(ids, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long),
            "image": image,
            "flags": flags,
        }


# ---------------------------------------------------------------------------------------------- sampler


def _split_to_even_chunks(indices: list[int], lengths: Sequence[int], num_chunks: int) -> list[list[int]]:
    """LLaVA's split: each next (longest-first) index goes to the lightest chunk that still has room."""
    if len(indices) % num_chunks:
        return [indices[i::num_chunks] for i in range(num_chunks)]
    per_chunk = len(indices) // num_chunks
    chunks: list[list[int]] = [[] for _ in range(num_chunks)]
    load = [0.0] * num_chunks
    for index in indices:
        k = load.index(min(load))
        chunks[k].append(index)
        load[k] += lengths[index]
        if len(chunks[k]) == per_chunk:
            load[k] = math.inf
    return chunks


def _length_grouped(lengths: Sequence[int], megabatch: int, num_chunks: int, g: torch.Generator) -> list[int]:
    """LLaVA's get_length_grouped_indices: shuffle, cut megabatches, sort each longest first, split."""
    perm = torch.randperm(len(lengths), generator=g).tolist()
    out: list[int] = []
    for s in range(0, len(perm), megabatch):
        mb = sorted(perm[s : s + megabatch], key=lambda i: lengths[i], reverse=True)
        for chunk in _split_to_even_chunks(mb, lengths, num_chunks):
            out += chunk
    return out


def modality_grouped_order(lengths: Sequence[int], micro_batch: int, num_chunks: int, g: torch.Generator) -> list[int]:
    """LLaVA's get_modality_length_grouped_indices (num_chunks = world size x GAS, as the reference passes).

    Megabatches hold one modality; they are shuffled together and the two partial leftovers (the last image
    and the last text-only megabatch) form one mixed megabatch at the end, sorted by index. A set of one
    modality is grouped on its signed lengths, as the reference does: all text-only, each megabatch is sorted
    shortest first and split_to_even_chunks balances negative loads.
    """
    if any(v == 0 for v in lengths):
        raise ValueError("modality lengths must be non-zero (positive: image, negative: text-only)")
    megabatch = micro_batch * num_chunks
    if all(v > 0 for v in lengths) or all(v < 0 for v in lengths):
        return _length_grouped(list(lengths), megabatch, num_chunks, g)
    mm = [(i, v) for i, v in enumerate(lengths) if v > 0]
    lang = [(i, -v) for i, v in enumerate(lengths) if v < 0]
    mm_order = [mm[j][0] for j in _length_grouped([v for _, v in mm], megabatch, num_chunks, g)]
    lang_order = [lang[j][0] for j in _length_grouped([v for _, v in lang], megabatch, num_chunks, g)]
    mm_mbs = [mm_order[i : i + megabatch] for i in range(0, len(mm_order), megabatch)]
    lang_mbs = [lang_order[i : i + megabatch] for i in range(0, len(lang_order), megabatch)]
    leftover = mm_mbs[-1] + lang_mbs[-1]
    mbs = mm_mbs[:-1] + lang_mbs[:-1]
    mbs = [mbs[i] for i in torch.randperm(len(mbs), generator=g).tolist()]
    if leftover:
        mbs.append(sorted(leftover))
    return [i for mb in mbs for i in mb]


class StepBatchSampler(torch.utils.data.Sampler[list[int]]):
    """One rank's micro-batches of one epoch, step-aligned so a resume can skip whole optimizer steps.

    The global order (random, or LLaVA's modality-length grouping) is wrapped around from its start to fill
    `steps` full global batches; micro-batch b of it goes to rank b % world_size, as accelerate shards it.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        micro_batch: int,
        world_size: int,
        rank: int,
        grad_accum: int,
        kind: str,
        seed: int,
        start_step: int = 0,
        micro_batch_order: str = "sampled",
        image_tokens: int = 576,
        max_length: int | None = None,
        length_of: Callable[[int], int] | None = None,
    ) -> None:
        n = len(lengths)
        if n == 0:
            raise ValueError("no samples to draw from")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world size {world_size}")
        self.micro_batch = micro_batch
        self.world_size = world_size
        self.rank = rank
        self.grad_accum = grad_accum
        self.global_batch = micro_batch * world_size * grad_accum
        self.steps = -(-n // self.global_batch)
        if not 0 <= start_step <= self.steps:
            raise ValueError(f"start_step {start_step} is outside the epoch's {self.steps} steps")
        self.start_step = start_step
        g = torch.Generator().manual_seed(seed)
        if kind == "random":
            order = torch.randperm(n, generator=g).tolist()
        elif kind == "modality_length":
            order = modality_grouped_order(lengths, micro_batch, world_size * grad_accum, g)
        else:
            raise ValueError(f"unknown sampler {kind!r}: expected 'random' or 'modality_length'")
        total = self.steps * self.global_batch
        order = (order * (-(-total // n)))[:total]
        # Estimated sequence length: text words, plus the spliced image features for image samples (at most
        # max_length: longer samples are truncated to it).
        cap = max_length or 1 << 62
        self._est = [min(cap, abs(v) + (image_tokens if v > 0 else 0)) for v in lengths]
        # With `length_of` (a sample's exact length in positions), by_length and by_tokens cut each step by exact
        # lengths instead, computed for a step's samples as it is reached and kept.
        self._length_of = length_of
        self._exact: dict[int, int] = {}
        self._order = order
        self.micro_batch_order = micro_batch_order
        if micro_batch_order not in ("sampled", "by_length", "by_tokens"):
            raise ValueError(
                f"unknown micro_batch_order {micro_batch_order!r}: expected 'sampled', 'by_length' or 'by_tokens'"
            )

    def _step_micro_batches(self, s: int) -> list[list[int]]:
        """Step s's micro-batches of every rank, laid out as the sampler's usual order (b belongs to rank b % W)."""
        step = self._order[s * self.global_batch :][: self.global_batch]
        if self.micro_batch_order != "sampled":
            est: Sequence[int] | dict[int, int] = self._est
            if self._length_of is not None:
                for i in step:
                    if i not in self._exact:
                        self._exact[i] = self._length_of(i)
                est = self._exact
            if self.micro_batch_order == "by_tokens":
                return self._by_tokens(step, est)
            step = self._by_length(step, est)
        return [step[b : b + self.micro_batch] for b in range(0, len(step), self.micro_batch)]

    def _by_length(self, step: list[int], est: Sequence[int] | dict[int, int]) -> list[int]:
        """One step's samples re-cut into micro-batches of similar length, spread so ranks get similar loads.

        The step trains on the same samples; only which of them share a micro-batch changes, so little padding
        is computed. Each micro-batch's cost is its padded size (size x longest); the costliest goes to the
        least-loaded rank that still has a free micro-step. The result is laid out as the sampler's usual
        order: micro-batch b of the step belongs to rank b % world_size.
        """
        ranked = sorted(step, key=lambda i: -est[i])
        micro = [ranked[b : b + self.micro_batch] for b in range(0, len(ranked), self.micro_batch)]
        load = [0] * self.world_size
        slots: list[list[list[int]]] = [[] for _ in range(self.world_size)]
        for mb in micro:  # longest first (the list is sorted)
            r = min((r for r in range(self.world_size) if len(slots[r]) < self.grad_accum), key=lambda r: load[r])
            slots[r].append(mb)
            load[r] += len(mb) * max(est[i] for i in mb)
        return [i for a in range(self.grad_accum) for r in range(self.world_size) for i in slots[r][a]]

    def _by_tokens(self, step: list[int], est: Sequence[int] | dict[int, int]) -> list[list[int]]:
        """One step's samples cut into micro-batches of unequal size and about equal padded tokens.

        Sorted by length, the step is split into W x G contiguous groups (the same number of micro-batches as
        always, so gradient accumulation is unchanged). First the smallest cap on a group's padded tokens
        (size x longest) that W x G groups can keep is found (binary search over the possible costs, a greedy
        count for each); then, under that cap, the cut with the least padding (dynamic programming). Many short
        samples then share one micro-batch and a few long ones another; the largest micro-batch is never larger
        than the equal-size cut's (`by_length`), so peak memory does not grow.

        Balance matters more than padding alone: cutting for the least padding without it gave micro-batches of
        1 to 39 samples, and the small ones left the GPU waiting on the host's fixed work per forward call (24%
        slower on an H200, bench/results/h200x1-finetune-bytokens.json). Groups go to ranks as in `_by_length`.
        """
        k = self.world_size * self.grad_accum
        ranked = sorted(step, key=lambda i: -est[i])
        n = len(ranked)
        size = [est[i] for i in ranked]
        cap = max(len(ranked[b : b + self.micro_batch]) * size[b] for b in range(0, n, self.micro_batch))

        def groups_within(c: int) -> int:  # greedy: the fewest contiguous groups that each pad to at most c
            count, a = 0, 0
            while a < n:
                if size[a] > c:
                    return n + 1
                b = a + 1
                while b < n and (b + 1 - a) * size[a] <= c:
                    b += 1
                count, a = count + 1, b
            return count

        # Balance first: the smallest cap that k groups can keep (every micro-batch then costs about the same, so
        # none leaves the GPU waiting on the per-call host work), then the least padding under that cap.
        costs = sorted({(b - a) * size[a] for a in range(n) for b in range(a + 1, n + 1) if (b - a) * size[a] <= cap})
        lo, hi = 0, len(costs) - 1
        while lo < hi:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if groups_within(costs[mid]) <= k else (mid + 1, hi)
        cap = costs[lo]
        inf = float("inf")
        # best[j][i]: least padded tokens for the first i samples in j groups; a group ranked[a:i] pads to size[a].
        best = [[inf] * (n + 1) for _ in range(k + 1)]
        cut = [[0] * (n + 1) for _ in range(k + 1)]
        best[0][0] = 0
        for j in range(1, k + 1):
            prev, cur, where = best[j - 1], best[j], cut[j]
            for i in range(j, n - (k - j) + 1):
                for a in range(i - 1, j - 2, -1):  # the group grows leftwards: its cost only rises
                    c = (i - a) * size[a]
                    if c > cap:
                        break
                    v = prev[a] + c
                    if v < cur[i]:
                        cur[i], where[i] = v, a
        bounds, i = [], n
        for j in range(k, 0, -1):
            a = cut[j][i]
            bounds.append((a, i))
            i = a
        groups = [ranked[a:b] for a, b in reversed(bounds)]
        load = [0] * self.world_size
        slots: list[list[list[int]]] = [[] for _ in range(self.world_size)]
        for mb in sorted(groups, key=lambda g: -len(g) * max(est[i] for i in g)):
            r = min((r for r in range(self.world_size) if len(slots[r]) < self.grad_accum), key=lambda r: load[r])
            slots[r].append(mb)
            load[r] += len(mb) * max(est[i] for i in mb)
        return [slots[r][a] for a in range(self.grad_accum) for r in range(self.world_size)]

    def __iter__(self):
        """This rank's micro-batches from start_step on, computed a step at a time (by_tokens costs ~0.1 s a step)."""
        for s in range(self.start_step, self.steps):
            yield from self._step_micro_batches(s)[self.rank :: self.world_size]

    def __len__(self) -> int:
        return (self.steps - self.start_step) * self.grad_accum


# ---------------------------------------------------------------------------------------------- collator


class ReferenceView(NamedTuple):
    """One sample as the reference's collator and splice see it, and what that view removed."""

    input_ids: torch.Tensor
    labels: torch.Tensor
    pad_tokens_removed: int  # pad-id (`<unk>`) tokens inside the first max_length text tokens
    image_dropped: bool  # there was an image but its placeholder lies past the first max_length text tokens


def reference_view(
    input_ids: torch.Tensor, labels: torch.Tensor, pad_id: int, max_length: int, has_image: bool = False
) -> ReferenceView:
    """The reference's collation of one sample before its splice: the text ids cut at max_length (the
    collator's `input_ids[:, :model_max_length]`), then every pad-id token dropped with its label (its attention
    mask is `input_ids != pad_id`, and prepare_inputs_labels_for_multimodal keeps only masked-in positions).

    pad = unk = 0 in LLaVA, so a literal `<unk>` in the text vanishes. An image sample whose placeholder did not
    survive the cut trains on its text alone: the reference splices zero rows of that image's features.
    """
    ids, lab = input_ids[:max_length], labels[:max_length]
    keep = ids != pad_id
    removed = int((~keep).sum())
    if removed:
        ids, lab = ids[keep], lab[keep]
    dropped = has_image and not bool((ids == IMAGE_TOKEN_INDEX).any())
    return ReferenceView(ids, lab, removed, dropped)


def splice_plan(input_ids: torch.Tensor, labels: torch.Tensor, image_tokens: int, max_length: int) -> tuple[int, int, int]:
    """(raw tokens to keep, spliced length after truncation, supervised targets) for one sample.

    Each image placeholder becomes `image_tokens` positions, then the sequence is cut at `max_length`, as the
    model does. Supervised targets are positions t >= 1 whose label is not ignored (next-token targets).
    """
    width = torch.where(input_ids == IMAGE_TOKEN_INDEX, image_tokens, 1)
    start = torch.cumsum(width, 0) - width
    keep = int((start < max_length).sum())
    length = min(int(width.sum()), max_length)
    supervised = int(((labels != IGNORE_INDEX) & (start >= 1) & (start < max_length)).sum())
    return keep, length, supervised


def spliced_labels(input_ids: torch.Tensor, labels: torch.Tensor, image_tokens: int, max_length: int) -> torch.Tensor:
    """Labels as the model sees them: each placeholder widened to `image_tokens` ignored positions, then cut."""
    width = torch.where(input_ids == IMAGE_TOKEN_INDEX, image_tokens, 1)
    return torch.repeat_interleave(labels, width)[:max_length]


# Counts of the reference's own behaviour on the samples of a micro-batch (kit_step facts, docs/fidelity.md).
FIDELITY_KEYS = (
    "masked_by_reference_rule",  # samples fully masked: the reference reports "tokenization mismatch"
    "relabelled_by_reference_rule",  # samples whose reference labels differ from the exact ones, no mismatch
    "pad_tokens_removed",  # `<unk>` (pad id) tokens dropped from the sequence, as the reference's mask does
    "images_dropped_by_truncation",  # image samples whose placeholder lay past max_length text tokens
    "skipped_unreadable_images",  # records skipped (data.skip_bad_records) because their image did not decode
)


class Collator:
    """Right-pads a list of samples as the reference collates them and counts what the model will compute on."""

    def __init__(self, pad_id: int, max_length: int, image_tokens: int) -> None:
        self.pad_id = pad_id
        self.max_length = max_length
        self.image_tokens = image_tokens

    def __call__(self, samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        views = [
            reference_view(s["input_ids"], s["labels"], self.pad_id, self.max_length, s["image"] is not None)
            for s in samples
        ]
        plans = [splice_plan(v.input_ids, v.labels, self.image_tokens, self.max_length) for v in views]
        width = max(keep for keep, _, _ in plans)
        b = len(samples)
        input_ids = torch.full((b, width), self.pad_id, dtype=torch.long)
        labels = torch.full((b, width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((b, width), dtype=torch.bool)
        for row, (v, (keep, _, _)) in enumerate(zip(views, plans, strict=True)):
            input_ids[row, :keep] = v.input_ids[:keep]
            labels[row, :keep] = v.labels[:keep]
            mask[row, :keep] = True
        with_image = [s["image"] is not None and not v.image_dropped for s, v in zip(samples, views, strict=True)]
        images = [s["image"] for s, keep in zip(samples, with_image, strict=True) if keep]
        lengths = [length for _, length, _ in plans]
        counts = dict.fromkeys(FIDELITY_KEYS, 0)
        for s, v in zip(samples, views, strict=True):
            for k, n in (s.get("flags") or {}).items():
                counts[k] = counts.get(k, 0) + int(n)
            counts["pad_tokens_removed"] += v.pad_tokens_removed
            counts["images_dropped_by_truncation"] += int(v.image_dropped)
        return {
            "input_ids": input_ids,
            "labels": labels,
            "attention_mask": mask,
            "images": torch.stack(images) if images else None,
            "has_image": torch.tensor(with_image, dtype=torch.bool),
            "ids": [s["id"] for s in samples],
            "stats": {
                "samples": b,
                "images": len(images),
                "real_tokens": sum(lengths),
                "padded_tokens": b * max(lengths),
                "real_tokens_sq": sum(n * n for n in lengths),
                "supervised_tokens": sum(sup for _, _, sup in plans),
                **counts,
            },
        }

"""Synthetic LLaVA data in the real formats and layout, so every code path runs without the 600k+ records.

The text has learnable structure (a fixed made-up vocabulary with Zipf frequencies; caption and answer words
that name the colours, shapes and positions drawn in the image), so a tiny model's loss visibly falls.
Lengths follow the real data (case facts, section 3), scaled to the config's max_length. A `.complete`
marker, written last, tells a finished directory from an interrupted one.

    python -m cases.llava1_5_7b.synthetic --config tiny --out /tmp/synth
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from .config import SyntheticConfig
from .data import SYSTEM_V1
from .tokenizer import train_tokenizer

FORMAT_VERSION = 1
PRETRAIN_JSON = "LLaVA-Pretrain/blip_laion_cc_sbu_558k.json"
PRETRAIN_IMAGES = "LLaVA-Pretrain/images"
FINETUNE_JSON = "llava_v1_5_mix665k.json"
# (folder under the data root, share of finetune image records, kind of stem)
FINETUNE_FOLDERS = (
    ("coco/train2017", 0.55, "coco"),
    ("gqa/images", 0.11, "num"),
    ("ocr_vqa/images", 0.12, "num"),
    ("textvqa/train_images", 0.04, "hex"),
    ("vg/VG_100K", 0.10, "num"),
    ("vg/VG_100K_2", 0.08, "num"),
)
OWNED = (".complete", ".generating", "LLaVA-Pretrain", FINETUNE_JSON, "coco", "gqa", "ocr_vqa", "textvqa", "vg", "tokenizer")

COLOURS = {
    "red": (200, 40, 40), "green": (40, 160, 60), "blue": (40, 70, 200), "yellow": (230, 210, 50),
    "purple": (130, 60, 160), "orange": (240, 140, 30), "white": (235, 235, 235), "black": (25, 25, 25),
}
SHAPES = ("square", "circle", "bar")
POSITIONS = ("left", "right", "top", "bottom", "centre")
PRETRAIN_PROMPTS = (
    "<image>\nRender a clear and concise summary of the photo.",
    "Write a terse but informative summary of the picture.\n<image>",
    "<image>\nGive a brief description of the image.",
    "Share a concise interpretation of the image provided.\n<image>",
    "<image>\nDescribe the image concisely.",
    "Provide a brief description of the given image.\n<image>",
)
SHORT_ANSWER = "Answer the question using a single word or phrase."


def _made_up_vocab(n: int = 1500) -> list[str]:
    """A fixed vocabulary (independent of the seed) so every generated corpus shares its words."""
    rng = np.random.default_rng(20240101)
    onsets = "b c d f g h k l m n p r s t v z br kr st tr pl".split()
    vowels = "a e i o u ai ou".split()
    words: list[str] = []
    seen: set[str] = set()
    while len(words) < n:
        syl = int(rng.choice([1, 2, 2, 3]))
        w = "".join(str(rng.choice(onsets)) + str(rng.choice(vowels)) for _ in range(syl))
        w += str(rng.choice(["", "", "n", "s", "r", "l"]))
        if w not in seen:
            seen.add(w)
            words.append(w)
    return words


VOCAB = _made_up_vocab()


def _zipf_cdf(n_words: int) -> np.ndarray:
    weights = 1.0 / (np.arange(n_words) + 2.7)
    return np.cumsum(weights / weights.sum())


class _Writer:
    """Text and image content drawn from one seeded generator."""

    def __init__(self, rng: np.random.Generator, max_length: int, tokenizer_vocab: int) -> None:
        self.rng = rng
        self.scale = max_length / 2048  # lengths follow the real data at 2048, scaled to the config
        # Words in use: about what the tokenizer can learn as single pieces, so a word stays 1-2 tokens.
        self.cdf = _zipf_cdf(int(np.clip(tokenizer_vocab // 16, 32, len(VOCAB))))

    def pick(self, seq: Any) -> Any:
        return seq[int(self.rng.integers(len(seq)))]

    def filler(self, n_words: int) -> str:
        """Zipf-distributed made-up words in sentences of 4-14 words."""
        idx = np.searchsorted(self.cdf, self.rng.random(n_words))
        words = [VOCAB[min(i, len(self.cdf) - 1)] for i in idx]
        out, i = [], 0
        while i < len(words):
            k = int(self.rng.integers(4, 15))
            sent = words[i : i + k]
            out.append(" ".join([sent[0].capitalize(), *sent[1:]]) + ".")
            i += k
        return " ".join(out)

    def scene(self) -> dict[str, Any]:
        names = list(COLOURS)
        bg = self.pick(names)
        objs = []
        for _ in range(int(self.rng.integers(1, 4))):
            colour = self.pick([c for c in names if c != bg])
            objs.append({"colour": colour, "shape": self.pick(SHAPES), "pos": self.pick(POSITIONS),
                         "size": self.pick(("small", "large"))})
        return {"bg": bg, "objects": objs}

    def describe(self, scene: dict[str, Any]) -> str:
        parts = [f"a {o['size']} {o['colour']} {o['shape']} at the {o['pos']}" for o in scene["objects"]]
        return ", ".join(parts) + f" on a {scene['bg']} background"

    def caption(self, scene: dict[str, Any]) -> str:
        """Pretrain caption: about 8-40 words (10-60 tokens), content words first."""
        text = self.describe(scene).capitalize()
        extra = int(self.rng.integers(0, 16))
        return text + ("" if extra < 3 else ". " + self.filler(extra))

    def qa(self, scene: dict[str, Any]) -> tuple[str, str]:
        o = self.pick(scene["objects"])
        kind = int(self.rng.integers(5))
        if kind == 0:
            return f"What colour is the {o['shape']} at the {o['pos']}?", o["colour"].capitalize()
        if kind == 1:
            colour = self.pick(list(COLOURS))
            present = any(x["colour"] == colour and x["shape"] == o["shape"] for x in scene["objects"])
            article = "an" if colour[0] in "aeiou" else "a"
            return f"Is there {article} {colour} {o['shape']} in the image?", "Yes" if present else "No"
        if kind == 2:
            return "How many shapes are there?", str(len(scene["objects"]))
        if kind == 3:
            return "What colour is the background?", scene["bg"].capitalize()
        return f"Where is the {o['colour']} {o['shape']}?", o["pos"].capitalize()

    def words(self, lo: float, hi: float, floor: int) -> int:
        return max(floor, int(self.rng.uniform(lo, hi) * self.scale))


def _image(rng: np.random.Generator, scene: dict[str, Any], w: int, h: int, noise: np.ndarray) -> Image.Image:
    """Colour blocks on a noisy background: cheap to draw, and the caption's words are in the pixels."""
    y0, x0 = int(rng.integers(0, noise.shape[0] - h + 1)), int(rng.integers(0, noise.shape[1] - w + 1))
    arr = np.clip(np.asarray(COLOURS[scene["bg"]], np.int16) + noise[y0 : y0 + h, x0 : x0 + w], 0, 255)
    img = Image.fromarray(arr.astype(np.uint8))
    draw = ImageDraw.Draw(img)
    centres = {"left": (0.25, 0.5), "right": (0.75, 0.5), "top": (0.5, 0.25), "bottom": (0.5, 0.75), "centre": (0.5, 0.5)}
    for o in scene["objects"]:
        cx, cy = centres[o["pos"]]
        r = (0.22 if o["size"] == "large" else 0.1) * min(w, h)
        box = (cx * w - r, cy * h - (r / 3 if o["shape"] == "bar" else r), cx * w + r, cy * h + (r / 3 if o["shape"] == "bar" else r))
        (draw.ellipse if o["shape"] == "circle" else draw.rectangle)(box, fill=COLOURS[o["colour"]])
    return img


def _stem(rng: np.random.Generator, kind: str, serial: int) -> str:
    if kind == "coco":
        return f"{serial:012d}"
    if kind == "hex":
        return "".join(f"{int(b):02x}" for b in rng.integers(0, 256, 8))
    return str(serial)


def _pretrain(w: _Writer, n: int) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    ids = w.rng.choice(10**9 - 10**7, size=n, replace=False) + 10**7  # 9 digits, unique
    out = []
    for x in ids:
        rid = f"{int(x):09d}"
        scene = w.scene()
        rec = {"id": rid, "image": f"{rid[:5]}/{rid}.jpg", "conversations": [
            {"from": "human", "value": w.pick(PRETRAIN_PROMPTS)},
            {"from": "gpt", "value": w.caption(scene)},
        ]}
        out.append((rec, scene))
    return out


def _finetune(w: _Writer, n: int, text_only_fraction: float) -> list[tuple[dict[str, Any], dict[str, Any] | None]]:
    n_text = int(round(n * text_only_fraction))
    is_text = np.zeros(n, bool)
    is_text[w.rng.choice(n, size=n_text, replace=False)] = True
    shares = np.array([s for _, s, _ in FINETUNE_FOLDERS])
    folders = w.rng.choice(len(FINETUNE_FOLDERS), size=n, p=shares / shares.sum())
    serials = w.rng.choice(10**7, size=n, replace=False) + 1
    out: list[tuple[dict[str, Any], dict[str, Any] | None]] = []
    for i in range(n):
        if is_text[i]:
            rid = "".join(w.pick("abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ0123456789") for _ in range(7))
            out.append(({"id": f"{rid}_{int(w.rng.integers(10))}", "conversations": _chat(w)}, None))
            continue
        folder, _, kind = FINETUNE_FOLDERS[folders[i]]
        stem = _stem(w.rng, kind, int(serials[i]))
        scene = w.scene()
        conv = _image_conversation(w, scene, coco=kind == "coco")
        out.append(({"id": stem, "image": f"{folder}/{stem}.jpg", "conversations": conv}, scene))
    return out


def _image_conversation(w: _Writer, scene: dict[str, Any], coco: bool) -> list[dict[str, str]]:
    """Short VQA rounds, a multi-turn conversation, or one long description (coco only for the latter two)."""
    style = int(w.rng.integers(3)) if coco else 0
    turns: list[tuple[str, str]] = []
    if style == 0:  # VQA: several single-word answers
        for _ in range(int(w.rng.integers(1, 7))):
            q, a = w.qa(scene)
            turns.append((f"{q}\n{SHORT_ANSWER}", a))
    elif style == 1:  # conversation: answers of 25-100 words at 2048
        for _ in range(int(w.rng.integers(2, 5))):
            q, a = w.qa(scene)
            turns.append((q, f"{a}. {w.filler(w.words(25, 100, 4))}"))
    else:  # detailed description: 100-300 words at 2048
        turns.append(("Describe the following image in detail.",
                      w.describe(scene).capitalize() + ". " + w.filler(w.words(100, 300, 8))))
    conv: list[dict[str, str]] = []
    for j, (q, a) in enumerate(turns):
        if j == 0:
            q = f"<image>\n{q}" if w.rng.random() < 0.5 else f"{q}\n<image>"
        conv += [{"from": "human", "value": q}, {"from": "gpt", "value": a}]
    return conv


def _chat(w: _Writer) -> list[dict[str, str]]:
    """ShareGPT-like text-only chat: long, several rounds; about one in ten runs beyond max_length."""
    total = max(12, int(2048 * w.scale * float(np.exp(w.rng.normal(np.log(0.3), 0.8)))))
    rounds = int(w.rng.integers(1, 5))
    conv: list[dict[str, str]] = []
    for _ in range(rounds):
        q = w.filler(max(3, total // (rounds * 5)))
        conv += [{"from": "human", "value": q}, {"from": "gpt", "value": w.filler(max(4, total // rounds - len(q.split())))}]
    return conv


def _params(cfg: SyntheticConfig, pretrain_records: int, finetune_records: int, max_length: int) -> dict[str, Any]:
    p = asdict(cfg)
    p.update(pretrain_records=pretrain_records, finetune_records=finetune_records, max_length=max_length,
             format_version=FORMAT_VERSION)
    return p


def _prepare_dir(out: Path) -> None:
    """Clear what an earlier (interrupted or different) generation left; refuse to touch foreign content."""
    if out.exists():
        entries = set(os.listdir(out))
        if entries and not entries & {".complete", ".generating"}:
            raise FileExistsError(f"{out} is not empty and holds no synthetic data; choose an empty or new directory")
        for name in OWNED:
            p = out / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    out.mkdir(parents=True, exist_ok=True)
    (out / ".generating").write_text(f"pid {os.getpid()}\n")


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def generate(
    out_dir: str | os.PathLike[str],
    cfg: SyntheticConfig,
    *,
    pretrain_records: int | None = None,
    finetune_records: int | None = None,
    max_length: int = 2048,
) -> dict[str, Any]:
    """Write both JSON files, their JPEG images and a trained tokenizer under `out_dir`; return a summary.

    A directory completed earlier with the same parameters is reused as it is.
    """
    out = Path(out_dir)
    n_pre = cfg.pretrain_records if pretrain_records is None else pretrain_records
    n_ft = cfg.finetune_records if finetune_records is None else finetune_records
    params = _params(cfg, n_pre, n_ft, max_length)
    marker = out / ".complete"
    if marker.is_file():
        done = json.loads(marker.read_text())
        if done.get("params") == params:
            return {**done, **_paths(out), "reused": True}  # the directory may have moved since
    t0 = time.monotonic()
    _prepare_dir(out)
    seeds = np.random.SeedSequence(cfg.seed).spawn(3)  # separate streams: pretrain, finetune, pixels
    pre = _pretrain(_Writer(np.random.default_rng(seeds[0]), max_length, cfg.tokenizer_vocab), n_pre)
    ft = _finetune(_Writer(np.random.default_rng(seeds[1]), max_length, cfg.tokenizer_vocab), n_ft, cfg.text_only_fraction)
    pix = np.random.default_rng(seeds[2])
    side = cfg.image_max_side
    noise = pix.integers(-18, 19, size=(side + 64, side + 64, 3), dtype=np.int16)
    images = 0
    for root, items in ((out / PRETRAIN_IMAGES, pre), (out, ft)):
        made: set[Path] = set()
        for rec, scene in items:
            if scene is None:
                continue
            path = root / rec["image"]
            if path.parent not in made:
                path.parent.mkdir(parents=True, exist_ok=True)
                made.add(path.parent)
            w, h = (int(v) for v in pix.integers(cfg.image_min_side, cfg.image_max_side + 1, size=2))
            _image(pix, scene, w, h, noise).save(path, "JPEG", quality=85)
            images += 1
    _write_json(out / PRETRAIN_JSON, [r for r, _ in pre])
    _write_json(out / FINETUNE_JSON, [r for r, _ in ft])
    train_tokenizer(_tokenizer_corpus(pre, ft), out / "tokenizer", cfg.tokenizer_vocab, model_max_length=max_length)
    summary = {
        **_paths(out),
        "pretrain_records": n_pre,
        "finetune_records": n_ft,
        "text_only_records": sum(1 for _, s in ft if s is None),
        "images": images,
        "seconds": round(time.monotonic() - t0, 3),
        "params": params,
    }
    _write_json(marker, summary)
    (out / ".generating").unlink()
    return {**summary, "reused": False}


def _paths(out: Path) -> dict[str, str]:
    return {
        "out_dir": str(out),
        "pretrain_json": str(out / PRETRAIN_JSON),
        "pretrain_images": str(out / PRETRAIN_IMAGES),
        "finetune_json": str(out / FINETUNE_JSON),
        "finetune_images": str(out),
        "tokenizer": str(out / "tokenizer"),
    }


def _tokenizer_corpus(pre: list, ft: list, limit_words: int = 400_000) -> list[str]:
    """The generated turns plus the v1 scaffold (system prompt, "USER:", "</s>USER") 300 times.

    Enough for a small vocabulary to give the scaffold whole-word pieces, not so much (it is not repeated
    per record) that the content words lose theirs.
    """
    scaffold = f"{SYSTEM_V1} USER: Hi ASSISTANT: Hello</s>USER: Yes ASSISTANT: No</s>"
    texts = [scaffold] * 300
    words = 0
    for rec, _ in pre + ft:
        for turn in rec["conversations"]:
            text = turn["value"].replace("<image>", "")
            texts.append(text)
            words += len(text.split())
        if words > limit_words:
            break
    return texts


MMMU_OPEN_SHARE = 53 / 900  # the real validation split: 847 multiple-choice, 53 open questions
MMMU_DIFFICULTY = ("Easy", "Medium", "Hard")
MMMU_IMG_TYPES = ("['Diagrams']", "['Photographs']", "['Tables']", "['Plots and Charts']")


def _mmmu_question(w: _Writer, scene: dict[str, Any], open_question: bool) -> tuple[str, list[str], str]:
    """A question about the drawn scene, with its "<image 1>" reference inline as MMMU writes them."""
    q, a = w.qa(scene)
    q = q.replace("the image", "<image 1>") if "the image" in q else f"{q} Refer to <image 1>."
    if open_question:
        return q, [], a
    if a in ("Yes", "No"):
        pool = ["Yes", "No"]
    elif a.isdigit():
        pool = [str(k) for k in range(1, 6)]
    elif a.lower() in COLOURS:
        pool = [c.capitalize() for c in COLOURS]
    else:
        pool = [p.capitalize() for p in POSITIONS]
    others = [x for x in pool if x != a]
    k = min(len(others), int(w.rng.integers(1, 5)))
    options = [a, *(others[int(i)] for i in w.rng.choice(len(others), size=k, replace=False))]
    order = w.rng.permutation(len(options))
    options = [options[int(i)] for i in order]
    return q, options, chr(ord("A") + options.index(a))


def generate_mmmu(
    out_dir: str | os.PathLike[str],
    questions_per_subject: int = 30,
    seed: int = 1234,
    *,
    image_min_side: int = 48,
    image_max_side: int = 160,
) -> dict[str, Any]:
    """Write a synthetic MMMU validation split in the Hugging Face layout of `MMMU/MMMU`.

    One folder per subject with `validation-00000-of-00001.parquet` (written through `datasets`, so the parquet
    schema carries the Image features as the real files do); ids `validation_<Subject>_<n>`, options as the
    string of a Python list, image_1 = {"bytes": PNG, "path": name}, image_2..7 None, and about the real split's
    847:53 multiple-choice to open ratio. A directory completed earlier with the same parameters is reused.
    """
    import datasets

    from .mmmu import FIELDS, IMAGE_FIELDS, SUBJECTS

    out = Path(out_dir)
    params = {"questions_per_subject": questions_per_subject, "seed": seed, "image_min_side": image_min_side,
              "image_max_side": image_max_side, "format_version": FORMAT_VERSION}
    marker = out / ".complete"
    if marker.is_file():
        done = json.loads(marker.read_text())
        if done.get("params") == params:
            return {**done, "out_dir": str(out), "reused": True}
    if questions_per_subject < 1:
        raise ValueError("questions_per_subject must be at least 1")
    t0 = time.monotonic()
    out.mkdir(parents=True, exist_ok=True)
    marker.unlink(missing_ok=True)
    text_rng, pix = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    w = _Writer(text_rng, 2048, 4000)
    total = questions_per_subject * len(SUBJECTS)
    n_open = max(1, int(round(total * MMMU_OPEN_SHARE)))
    is_open = np.zeros(total, bool)
    is_open[text_rng.choice(total, size=n_open, replace=False)] = True
    noise = pix.integers(-18, 19, size=(image_max_side + 64, image_max_side + 64, 3), dtype=np.int16)
    features = datasets.Features(
        {f: (datasets.Image() if f in IMAGE_FIELDS else datasets.Value("string")) for f in FIELDS}
    )
    k = 0
    for subject in SUBJECTS:
        rows: dict[str, list[Any]] = {f: [] for f in FIELDS}
        for n in range(1, questions_per_subject + 1):
            qid = f"validation_{subject}_{n}"
            scene = w.scene()
            question, options, answer = _mmmu_question(w, scene, bool(is_open[k]))
            k += 1
            side_w, side_h = (int(v) for v in pix.integers(image_min_side, image_max_side + 1, size=2))
            buf = io.BytesIO()
            _image(pix, scene, side_w, side_h, noise).save(buf, "PNG")
            row = {
                "id": qid,
                "question": question,
                "options": str(options),
                "explanation": "",
                "image_1": {"bytes": buf.getvalue(), "path": f"{qid}_1.png"},
                "img_type": w.pick(MMMU_IMG_TYPES),
                "answer": answer,
                "topic_difficulty": w.pick(MMMU_DIFFICULTY),
                "question_type": "open" if options == [] else "multiple-choice",
                "subfield": f"Synthetic {subject.replace('_', ' ')}",
            }
            for f in IMAGE_FIELDS[1:]:
                row[f] = None
            for f in FIELDS:
                rows[f].append(row[f])
        path = out / subject / "validation-00000-of-00001.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        datasets.Dataset.from_dict(rows, features=features).to_parquet(str(tmp))
        os.replace(tmp, path)
    summary = {"out_dir": str(out), "subjects": len(SUBJECTS), "questions": total, "open": n_open,
               "multiple_choice": total - n_open, "seconds": round(time.monotonic() - t0, 3), "params": params}
    _write_json(marker, summary)
    return {**summary, "reused": False}


def main(argv: list[str] | None = None) -> int:
    from .config import ConfigError, load

    ap = argparse.ArgumentParser(prog="python -m cases.llava1_5_7b.synthetic", description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="tiny", help="config name (configs/NAME.toml) or path")
    ap.add_argument("--out", required=True, help="output directory (created; reused when complete and identical)")
    ap.add_argument("--pretrain-records", type=int, default=None)
    ap.add_argument("--finetune-records", type=int, default=None)
    ap.add_argument("--mmmu", action="store_true", help="write a synthetic MMMU validation split (HF layout) into --out instead")
    ap.add_argument("--mmmu-questions", type=int, default=None,
                    help="questions per subject with --mmmu (default: the config's synthetic.mmmu_questions)")
    args = ap.parse_args(argv)
    try:
        cfg = load(args.config)
        if args.mmmu:
            per_subject = args.mmmu_questions or getattr(cfg.synthetic, "mmmu_questions", 30)
            print(json.dumps(generate_mmmu(args.out, per_subject, cfg.synthetic.seed), indent=2))
            return 0
        summary = generate(args.out, cfg.synthetic, pretrain_records=args.pretrain_records,
                           finetune_records=args.finetune_records, max_length=cfg.model.max_length)
    except (ConfigError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

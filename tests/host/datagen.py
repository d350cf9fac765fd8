"""A small data directory in the real layout (both record files, real JPEGs in the real folders, MMMU parquet files,
checkpoint folders with real safetensors), optionally with planted faults, for `kit data verify` and `kit data fix`.

Every planted fault is named in `Planted` (path, record index and id), so a test checks that the report names it.
"""

from __future__ import annotations

import io
import json
import random
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

PRETRAIN_JSON = "LLaVA-Pretrain/blip_laion_cc_sbu_558k.json"
FINETUNE_JSON = "llava_v1_5_mix665k.json"


@dataclass
class Planted:
    root: Path
    pretrain: list[dict[str, Any]] = field(default_factory=list)
    finetune: list[dict[str, Any]] = field(default_factory=list)
    faults: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> {path, index, id, stage, ...}
    images: list[str] = field(default_factory=list)  # every image file written, relative to the root


def _pixels(rng: random.Random, w: int, h: int, noise: float = 0.35) -> Image.Image:
    """A gradient with noise and a rectangle: compresses like a small photo, differs per seed."""
    base = Image.linear_gradient("L").resize((w, h)).convert("RGB")
    img = Image.blend(base, Image.frombytes("RGB", (w, h), rng.randbytes(w * h * 3)), noise)
    x0, y0 = rng.randrange(w // 2), rng.randrange(h // 2)
    img.paste((rng.randrange(256), rng.randrange(256), rng.randrange(256)), (x0, y0, x0 + w // 3, y0 + h // 3))
    return img


def jpeg(path: Path, rng: random.Random, w: int = 48, h: int = 40) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    _pixels(rng, w, h).save(path, "JPEG", quality=90)


def gif_two_frames(path: Path, rng: random.Random) -> None:
    """A two-frame GIF (the first frame is what a fix keeps), under whatever name it is given."""
    path.parent.mkdir(parents=True, exist_ok=True)
    a = _pixels(rng, 40, 32, noise=0.0).quantize(64)
    b = Image.new("RGB", (40, 32), (250, 10, 10)).quantize(64)
    a.save(path, "GIF", save_all=True, append_images=[b], duration=100)


def _conv(prompt: str, answer: str) -> list[dict[str, str]]:
    return [{"from": "human", "value": prompt}, {"from": "gpt", "value": answer}]


def _image_rec(rid: str, image: str) -> dict[str, Any]:
    return {"id": rid, "image": image, "conversations": _conv("<image>\nWhat is in the picture?", "Shapes and a gradient.")}


def write_parquet_mmmu(root: Path) -> bool:
    """One tiny validation parquet per MMMU subject (real parquet through pyarrow); False without pyarrow."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        return False
    from cases.llava1_5_7b.plugin.scoring import SUBJECTS

    for s in SUBJECTS:
        (root / s).mkdir(parents=True, exist_ok=True)
        table = pa.table({"id": [f"validation_{s}_1"], "question": ["Which shape?"], "answer": ["A"]})
        pq.write_table(table, root / s / "validation-00000-of-00001.parquet")
    return True


def safetensors_file(path: Path, tensors: dict[str, tuple[str, list[int]]]) -> None:
    """A real safetensors file (through the safetensors package when it is there, else its documented layout:
    an 8-byte little-endian header length, the JSON header, the tensor bytes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import numpy as np
        from safetensors.numpy import save_file

        save_file({k: np.arange(int(np.prod(shape)), dtype=np.float32).reshape(shape) for k, (_, shape) in tensors.items()},
                  str(path))
        return
    except ImportError:
        pass
    header, blobs, offset = {}, [], 0
    for k, (_, shape) in tensors.items():
        n = 4
        for d in shape:
            n *= d
        header[k] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + n]}
        blobs.append(bytes(n))
        offset += n
    h = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def write_models(root: Path) -> None:
    """Tiny checkpoint folders in the layout `kit run --models` reads: a sharded LLM with its index and tokenizer,
    a one-file CLIP."""
    llm = root / "vicuna-7b-v1.5"
    llm.mkdir(parents=True, exist_ok=True)
    (llm / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "hidden_size": 8}))
    (llm / "tokenizer.model").write_bytes(b"\x0a\x05hello" * 8)
    safetensors_file(llm / "model-00001-of-00002.safetensors", {"a.weight": ("F32", [4, 8])})
    safetensors_file(llm / "model-00002-of-00002.safetensors", {"b.weight": ("F32", [8, 2]), "c.bias": ("F32", [8])})
    index = {"metadata": {"total_size": 4 * (32 + 16 + 8)},
             "weight_map": {"a.weight": "model-00001-of-00002.safetensors",
                            "b.weight": "model-00002-of-00002.safetensors",
                            "c.bias": "model-00002-of-00002.safetensors"}}  # fmt: skip
    (llm / "model.safetensors.index.json").write_text(json.dumps(index))
    clip = root / "clip-vit-large-patch14-336"
    clip.mkdir(parents=True, exist_ok=True)
    (clip / "config.json").write_text(json.dumps({"architectures": ["CLIPModel"]}))
    safetensors_file(clip / "model.safetensors", {"v.weight": ("F32", [3, 3])})


def make(root: Path, faults: bool = True, mmmu: bool = True, seed: int = 7) -> Planted:
    """The data directory; with `faults`, one of each: a missing image, a truncated JPEG, a GIF named .jpg, a PNG
    only under .png where the record names .jpg, an empty file, and malformed records of several categories."""
    rng = random.Random(seed)
    p = Planted(root)
    root.mkdir(parents=True, exist_ok=True)

    def img(rel: str) -> str:
        jpeg(root / rel, rng)
        p.images.append(rel)
        return rel

    # Pretrain: plain-template captions under LLaVA-Pretrain/images.
    for i in range(5):
        rel = f"00000/00000{i:04d}.jpg"
        img(f"LLaVA-Pretrain/images/{rel}")
        p.pretrain.append({"id": f"00000{i:04d}", "image": rel, "conversations": _conv("<image>\nDescribe.", f"Caption {i}.")})
    # Finetune: every source of the reference, a text-only record, and one image named by two records.
    layout = [("coco/train2017/000000000001.jpg", 2), ("coco/train2017/000000000002.jpg", 1),
              ("gqa/images/1.jpg", 1), ("gqa/images/2.jpg", 1), ("ocr_vqa/images/100.jpg", 1),
              ("textvqa/train_images/0a1b2c3d.jpg", 1), ("vg/VG_100K/1.jpg", 1), ("vg/VG_100K_2/1.jpg", 1)]  # fmt: skip
    for rel, times in layout:
        img(rel)
        for t in range(times):
            p.finetune.append(_image_rec(f"{Path(rel).stem}-{t}", rel))
    p.finetune.append({"id": "text-1", "conversations": _conv("Say a colour.", "Blue.")})
    if faults:
        def plant(name: str, rec: dict[str, Any], stage: str = "finetune", **extra: Any) -> None:
            recs = p.finetune if stage == "finetune" else p.pretrain
            p.faults[name] = {"stage": stage, "index": len(recs), "id": rec.get("id"), **extra}
            recs.append(rec)

        plant("missing", _image_rec("coco-missing", "coco/train2017/000000000099.jpg"),
              path="coco/train2017/000000000099.jpg", source="coco")
        trunc = root / "gqa/images/3.jpg"
        jpeg(trunc, rng, 160, 120)
        trunc.write_bytes(trunc.read_bytes()[: trunc.stat().st_size // 2])
        plant("truncated", _image_rec("gqa-truncated", "gqa/images/3.jpg"), path="gqa/images/3.jpg", source="gqa")
        gif_two_frames(root / "ocr_vqa/images/200.jpg", rng)
        plant("gif", _image_rec("ocr-gif", "ocr_vqa/images/200.jpg"), path="ocr_vqa/images/200.jpg", source="ocr_vqa")
        (root / "ocr_vqa/images").mkdir(parents=True, exist_ok=True)
        _pixels(rng, 36, 30, noise=0.0).save(root / "ocr_vqa/images/300.png", "PNG")
        plant("png-only", _image_rec("ocr-png", "ocr_vqa/images/300.jpg"), path="ocr_vqa/images/300.jpg",
              source="ocr_vqa", sibling="ocr_vqa/images/300.png")
        (root / "vg/VG_100K/2.jpg").write_bytes(b"")
        plant("empty", _image_rec("vg-empty", "vg/VG_100K/2.jpg"), path="vg/VG_100K/2.jpg", source="vg")
        plant("schema", {"id": "bad-schema", "image": "coco/train2017/000000000001.jpg"}, category="schema")
        plant("gpt-first", {"id": "bad-order", "conversations": [{"from": "gpt", "value": "Hi."},
                                                                 {"from": "human", "value": "Hello?"}]},
              category="gpt-first")  # fmt: skip
        plant("placeholders", {"id": "bad-two-images", "image": "gqa/images/1.jpg",
                               "conversations": _conv("<image>\n<image>\nTwice?", "Yes.")}, category="placeholders")
        plant("text-image", {"id": "bad-text-image", "conversations": _conv("<image>\nNo image here.", "Right.")},
              category="text-image")
        plant("plain-shape", {"id": "bad-plain", "image": "00000/000000000.jpg",
                              "conversations": _conv("<image>\nDescribe.", "One.") + _conv("More?", "Two.")},
              stage="pretrain", category="plain-shape")  # fmt: skip
    (root / "LLaVA-Pretrain").mkdir(exist_ok=True)
    (root / PRETRAIN_JSON).write_text(json.dumps(p.pretrain, indent=2))
    (root / FINETUNE_JSON).write_text(json.dumps(p.finetune, indent=2))
    if mmmu:
        write_parquet_mmmu(root / "MMMU")
    return p


def first_frame_rgb(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as im:
        im.seek(0)
        return im.convert("RGB")

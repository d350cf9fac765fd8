"""This case's data as the host sees it (`CASE.data`, the protocol of kit/case/data.py): where the records, images,
weights and MMMU lie, the record validator, the sources of the per-source counts, and what a run needs of a host.

Standard library only (the host imports it without torch): the validator is ../records.py, the one the loaders run;
the layout's defaults are ../config.py's; the counts of a complete copy are in ../data-sources.toml, nowhere else.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from kit.case.data import Checkpoint, EvalSet, Need, StageData

from .. import config as config_schema
from ..records import CATEGORIES, ESCAPES, image_path_problem, record_issue, record_problem
from . import fit
from .scoring import SUBJECTS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 in the image
    import tomli as tomllib

SOURCES = Path(__file__).resolve().parent.parent / "data-sources.toml"
SOURCES_TOML = SOURCES  # the name the first plug-in used
TRAINING = ("pretrain", "finetune")
TEXT_ONLY, INVALID = "text-only", "invalid"  # the per-source labels of records without a usable image path
# train.py builds its DataLoader with prefetch_factor=4: each worker keeps 4 batches in flight.
PREFETCH_FACTOR = 4
# An upper bound per synthetic JPEG (sides 200-640 px, quality 85), for the run directory's synthetic data.
SYNTHETIC_JPEG_BYTES = 200_000

__all__ = [
    "CATEGORIES", "ESCAPES", "SOURCES", "SOURCES_TOML", "checkpoints", "count_records", "disk_need", "eval_set",
    "image_of", "image_path_problem", "image_source", "memory_need", "model_sizes", "record_file", "record_id",
    "record_issue", "record_key", "record_problem", "results_need", "shm_need", "source_of", "source_stage", "stages",
    "synthetic_weights",
]  # fmt: skip


def _get(cfg: Any, *keys: str) -> Any:
    """A config value by its keys, from a typed config (CaseConfig) or its dict (run.json's `config`)."""
    v = cfg
    for k in keys:
        v = v[k] if isinstance(v, dict) else getattr(v, k)
    return v


@cache
def _reference_folders() -> tuple[str, ...]:
    """The finetune image folders a complete copy holds: the keys of data-sources.toml's [reference.folders]."""
    try:
        return tuple(tomllib.loads(SOURCES.read_text()).get("reference", {}).get("folders", {}))
    except (OSError, tomllib.TOMLDecodeError):
        return ()  # kit/data/sources.py names what is wrong with the file where the counts are read


@cache
def _default() -> Any:
    """The config `kit run` takes without --config: its layout is the reference's."""
    return config_schema.load(config_schema.default_for(1, None))


def stages(cfg: Any | None) -> tuple[StageData, ...]:
    """Pretrain reads the LAION-CC-SBU captions and their images (one source); finetune reads mix665k, whose images
    come from five sources under the data root."""
    if cfg is None:
        cfg = _default()
    templates = {s: _get(cfg, s, "template") for s in TRAINING}
    files = {s: _get(cfg, "data", f"{s}_json") for s in TRAINING}
    images = {s: _get(cfg, "data", f"{s}_images") for s in TRAINING}
    return (
        StageData("pretrain", files["pretrain"], images["pretrain"], templates["pretrain"], record_key("pretrain"),
                  records_source="pretrain-json", images_source="pretrain-images"),
        StageData("finetune", files["finetune"], images["finetune"], templates["finetune"], record_key("finetune"),
                  folders=_reference_folders(), records_source="finetune-json"),
    )  # fmt: skip


def record_file(cfg: Any, stage: str) -> str:
    """The stage's record file, relative to the data root (config data.<stage>_json)."""
    return _get(cfg, "data", f"{stage}_json")


def record_key(stage: str) -> str:
    return f"data.{stage}_json"


def record_id(rec: Any) -> str | None:
    if isinstance(rec, dict) and isinstance(rec.get("id"), (str, int)) and not isinstance(rec.get("id"), bool):
        return str(rec["id"])
    return None


def image_of(rec: Any) -> str | None:
    """`image`: a path relative to the stage's image folder; a record without one is text-only."""
    image = rec.get("image") if isinstance(rec, dict) else None
    return image if isinstance(image, str) and image else None


def source_of(stage: StageData, rec: Any) -> str:
    """Finetune: the first component of the image path (coco, gqa, ocr_vqa, textvqa, vg), or text-only; pretrain: one
    source. These are the labels of data-sources.toml's [reference.finetune_by_source]."""
    if stage.stage == "pretrain":
        return "pretrain"
    if not isinstance(rec, dict):
        return INVALID
    if "image" not in rec:
        return TEXT_ONLY
    image = image_of(rec)
    return image_source(stage, image) if image else INVALID


def image_source(stage: StageData, image: str) -> str:
    return "pretrain" if stage.stage == "pretrain" else image.split("/", 1)[0]


def source_stage(source: str) -> str:
    """The pretrain records name the LLaVA-Pretrain images alone; every other source is finetune's."""
    return "pretrain" if source == "pretrain" else "finetune"


def count_records(path: Path, chunk: int = 1 << 24) -> int:
    """Records of a LLaVA JSON file without parsing it (665K records are ~1 GB): each has one "conversations" key,
    and inside string values that text would be escaped (\\"conversations\\")."""
    needle = b'"conversations"'
    n, tail = 0, b""
    with open(path, "rb") as f:
        while block := f.read(chunk):
            buf = tail + block
            n += buf.count(needle)
            tail = buf[-(len(needle) - 1) :]  # too short to hold a whole needle: nothing counts twice
    return n


def checkpoints(cfg: Any | None) -> tuple[Checkpoint, ...]:
    """Vicuna-7B (with its SentencePiece tokenizer) and CLIP ViT-L/14-336, in Hugging Face format."""
    cfg = _default() if cfg is None else cfg
    return (
        Checkpoint("llm", "LLM weights", _get(cfg, "model", "llm_dir"), ("config.json", "tokenizer.model"), "vicuna"),
        Checkpoint("vision", "CLIP weights", _get(cfg, "model", "vision_dir"), ("config.json",), "clip"),
    )


def eval_set() -> EvalSet:
    """MMMU validation: a folder per subject holding its validation parquet files."""
    return EvalSet("MMMU", "MMMU", tuple(SUBJECTS), "validation-*.parquet", "subjects", "mmmu")


def synthetic_weights(cfg: Any) -> tuple[int, tuple[str, ...]]:
    """Random initial weights from train.seed; synthetic.py trains the tokenizer the run reads into tokenizer/."""
    return int(_get(cfg, "train", "seed")), ("tokenizer",)


# ---- what a run needs of a host ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    llm: int
    vision: int
    projector: int

    @property
    def trainable_finetune(self) -> int:  # the LLM and the projector; CLIP stays frozen
        return self.llm + self.projector


def model_sizes(cfg: Any) -> Sizes:
    """Parameter counts from the config's shape (7B: LLM 6.74e9, CLIP 0.30e9, projector 21e6)."""
    m, v = cfg.model.llm, cfg.model.vision
    head = m.hidden // m.heads
    layer = 2 * m.hidden * m.hidden + 2 * m.hidden * m.kv_heads * head + 3 * m.hidden * m.ffn + 2 * m.hidden
    llm = 2 * m.vocab * m.hidden + m.layers * layer + m.hidden
    positions = (v.image_size // v.patch) ** 2 + 1
    vlayer = 4 * v.hidden * v.hidden + 4 * v.hidden + 2 * v.hidden * v.ffn + v.ffn + v.hidden + 4 * v.hidden
    vision = v.layers * vlayer + 3 * v.patch * v.patch * v.hidden + positions * v.hidden
    projector = v.hidden * m.hidden + m.hidden * m.hidden + 2 * m.hidden
    return Sizes(llm, vision, projector)


def _human(n: float) -> str:
    return f"{n / 1000**3:.1f} GB" if n >= 1000**3 else f"{n / 1024**2:.0f} MiB"


def results_need(cfg: Any, synthetic: bool = True) -> Need:
    """Checkpoints, the 16-bit model, synthetic data. Finetune checkpoints hold the trainable parameters (LLM +
    projector) as bf16 weights + fp32 master weights + two fp32 Adam moments = 14 bytes each; train.py keeps the
    newest two and writes a third before deleting the oldest. Pretrain trains only the projector. The finetune
    output is the 16-bit model."""
    sz = model_sizes(cfg)
    ckpt_ft = 14 * sz.trainable_finetune
    ckpt_pt = 14 * sz.projector
    model16 = 2 * (sz.llm + sz.vision + sz.projector)
    synth = (cfg.synthetic.pretrain_records + cfg.synthetic.finetune_records) * SYNTHETIC_JPEG_BYTES if synthetic else 0
    how = (
        f"finetune checkpoint {_human(ckpt_ft)} (14 B x {sz.trainable_finetune / 1e9:.2f}e9 trainable params) x 3 "
        f"in flight, 16-bit model {_human(model16)}, synthetic data <= {_human(synth)}"
    )
    return Need(3 * (ckpt_ft + ckpt_pt) + model16 + synth, how, minimum=ckpt_ft + ckpt_pt + model16)


def disk_need(cfg: Any, request: dict[str, Any]) -> tuple[int, int, str] | None:
    """The finetune checkpoints and the 16-bit model dominate; a run without finetune, or a short --no-save run that
    reaches no checkpoint, writes nothing large (pretrain checkpoints hold the projector alone: tens of MB at 7B)."""
    if "finetune" not in (request.get("stages") or []):
        return None
    max_steps = int(request.get("max_steps") or 0)
    checkpoints = max_steps == 0 or max_steps >= cfg.finetune.checkpoint_every
    if not (request.get("save", True) or checkpoints):
        return None
    need = results_need(cfg, bool(request.get("synthetic")))
    return need.bytes, need.minimum, need.how


def memory_need(cfg: Any) -> Need:
    """The 16-bit LLM is held in host memory while it loads; a stage that offloads optimizer state needs the fit's
    host estimate instead (fit.host_gib: the offloaded state plus what a rank and the machine hold beside it, measured
    on one H100 with H100x1x1), the larger of the two."""
    sz = model_sizes(cfg)
    load = 2 * sz.llm
    stage, gib = max(fit.host_need_gib(cfg.to_dict()).items(), key=lambda kv: kv[1])
    if gib * fit.GIB <= load:
        return Need(load, f"the 16-bit LLM ({_human(load)}) while loading",
                    fix="use a host with more memory")  # fmt: skip
    offload = getattr(cfg, stage).offload_optimizer
    how = (f"{stage} keeps {offload:g} of its fp32 optimizer state on the host: about {gib:.0f} GiB per node with "
           "what the ranks hold beside it")
    return Need(int(gib * fit.GIB), how, fix=f"use a host with at least {gib:.0f} GiB, or more devices, which shard the "
                "offloaded state: `kit configs new --from REFERENCE --device NAME --gpus G --host-memory-gib N` "
                "derives a config that fits this host (docs/vendors.md)")


def shm_need(cfg: Any) -> Need:
    """Workers hand batches to the rank through shared memory: gpus x workers x prefetch batches are in flight, each
    micro batch x (one fp32 image 3xSxS + input ids, labels and mask of max_length tokens)."""
    w = cfg.data.num_workers
    micro = max(cfg.pretrain.micro_batch, cfg.finetune.micro_batch)
    s = cfg.model.vision.image_size
    per_sample = 3 * s * s * 4 + cfg.model.max_length * (8 + 8 + 1)
    how = (
        f"{cfg.gpus_per_node} GPUs x {w} DataLoader workers x {PREFETCH_FACTOR} prefetched batches x micro batch "
        f"{micro} x {per_sample / 1024**2:.2f} MiB per sample (fp32 {s}x{s} image + tokens)"
    )
    return Need(cfg.gpus_per_node * w * PREFETCH_FACTOR * micro * per_sample, how)

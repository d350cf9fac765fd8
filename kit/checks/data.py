"""Data and weights in the layout the case reads (docs/data.md, "The layout"), checked before a run is launched.

A missing file found here costs seconds; found by the training job, it costs a container start, a model load
and a confusing traceback. Record counts are compared with the reference data sets so a truncated download
or a different version shows before hours of training.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from . import Check

# The reference data sets (LLaVA-1.5): LAION-CC-SBU 558K captions, the mix665k instructions.
REFERENCE_RECORDS = {"pretrain": 558_128, "finetune": 665_298}
# The finetune images' folders under the data root (docs/data.md; cases/llava1_5_7b/synthetic.py).
FINETUNE_FOLDERS = ("coco/train2017", "gqa/images", "ocr_vqa/images", "textvqa/train_images", "vg/VG_100K", "vg/VG_100K_2")
WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.safetensors.index.json", "*.bin.index.json")
MMMU_SUBJECTS = 30
SYNTHETIC_HINT = "or run with --synthetic, which needs no data and no weights"
SHOWN = 5  # problems a --deep check names in its detail; the rest are counted
NO_PILLOW = "cannot decode without Pillow (pip install pillow)"


def count_records(path: Path, chunk: int = 1 << 24) -> int:
    """Records of a LLaVA JSON file without parsing it (665K records are ~1 GB): each has one
    "conversations" key, and inside string values that text would be escaped (\\"conversations\\")."""
    needle = b'"conversations"'
    n, tail = 0, b""
    with open(path, "rb") as f:
        while block := f.read(chunk):
            buf = tail + block
            n += buf.count(needle)
            tail = buf[-(len(needle) - 1):]  # too short to hold a whole needle: nothing counts twice
    return n


def _record(i: int, rec: Any) -> str:
    """How a problem names a record: its index in the file and its id."""
    return f"#{i} (id {rec['id']!r})" if isinstance(rec, dict) and "id" in rec else f"#{i} (no id)"


def _listed(problems: list[str]) -> str:
    more = len(problems) - SHOWN
    return "; ".join(problems[:SHOWN]) + (f"; and {more:,} more" if more > 0 else "")


def _image_problem(path: Path, pil: Any) -> str | None:
    """Why the run could not use this image file (missing, or Pillow cannot decode it), or None."""
    if not path.is_file():
        return "not found"
    if pil is None:  # no Pillow: presence only
        return None
    try:
        with pil.open(path) as img:
            img.load()  # decode the pixels, as the case's data loader does: a truncated file fails only here
    except Exception as e:  # noqa: BLE001 - any decoding error makes the record unusable; it is reported
        return f"cannot be decoded ({type(e).__name__}: {e})"
    return None


def _deep_checks(name: str, path: Path, records: list[Any], images_root: Path, template: str) -> list[Check]:
    """Every record through the case's own validator, and every image it names opened and decoded."""
    from cases.llava1_5_7b.records import record_problem  # standard library only: no torch on the host

    try:
        from PIL import Image as pil
    except ImportError:
        pil = None  # presence only, and the images check warns
    n = len(records)
    bad = [f"{_record(i, r)}: {why}" for i, r in enumerate(records) if (why := record_problem(r, template))]
    checks = [Check("data", f"{name} records", "ok", f"all {n:,} records are well-formed ({template} template)")]
    if bad:
        checks[0] = Check(
            "data", f"{name} records", "fail",
            f"{len(bad):,} of {n:,} records in {path} cannot be used ({template} template): {_listed(bad)}",
            "fix or remove these records: `kit run` stops at the first one (data.skip_bad_records skips a counted few)",
            {"bad": len(bad), "first": bad[:20]},
        )  # fmt: skip
    # Images: every non-empty string `image` (a non-string one is a bad record above), each file decoded once.
    named = [(i, r, r["image"]) for i, r in enumerate(records) if isinstance(r, dict) and isinstance(r.get("image"), str) and r["image"]]
    files = sorted({images_root / image for _, _, image in named})
    with ThreadPoolExecutor(max_workers=min(32, os.cpu_count() or 4)) as pool:  # Pillow decodes without the GIL
        why_of = dict(zip(files, pool.map(lambda f: _image_problem(f, pil), files), strict=True))
    problems = [f"{_record(i, r)} {images_root / image}: {why}" for i, r, image in named if (why := why_of[images_root / image])]
    missing = sum(why_of[images_root / image] == "not found" for _, _, image in named)
    data = {"images": len(named), "files": len(files), "bad": len(problems), "missing": missing, "first": problems[:20],
            "decoded": pil is not None}  # fmt: skip
    if problems:
        checks.append(Check(
            "data", f"{name} images", "fail",
            f"{len(problems):,} of {len(named):,} records name an image under {images_root} that "
            f"{'is missing or does not decode' if pil else 'is missing'}: {_listed(problems)}"
            + ("" if pil else f" (the others not decoded: {NO_PILLOW})"),
            f"download the missing or broken images into {images_root} again", data,
        ))  # fmt: skip
    elif pil is None:
        checks.append(Check("data", f"{name} images", "warn", f"all {len(files):,} images of {n:,} records are present; {NO_PILLOW}",
                            "pip install pillow, then run `kit check-host --deep` again", data))
    else:
        checks.append(Check("data", f"{name} images", "ok", f"all {len(files):,} images of {n:,} records are present and decode",
                            data=data))
    return checks


def _json_check(name: str, path: Path, stage: str, deep: bool, images_root: Path, template: str) -> list[Check]:
    ref = REFERENCE_RECORDS[stage]
    if not path.is_file():
        return [Check("data", name, "fail", f"missing: {path}", f"download it to {path} ({SYNTHETIC_HINT})", {"path": str(path)})]
    checks = []
    if deep:
        try:
            records = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            return [Check("data", name, "fail", f"{path}: not valid JSON ({e})", "download the file again", {"path": str(path)})]
        if not isinstance(records, list):
            return [Check("data", name, "fail", f"{path}: expected a JSON list of records, got {type(records).__name__}",
                          "download the file again", {"path": str(path)})]
        n = len(records)
    else:
        records, n = None, count_records(path)
    data = {"path": str(path), "records": n, "reference": ref}
    if n == ref:
        checks.append(Check("data", name, "ok", f"{n:,} records, as the reference", data=data))
    else:
        diff = n - ref
        checks.append(Check(
            "data", name, "warn",
            f"{n:,} records, {abs(diff):,} {'more' if diff > 0 else 'fewer'} than the reference's {ref:,} "
            f"({diff / ref:+.2%}): results will not compare one to one",
            "download the reference version of the file (a truncated download is the usual cause)", data,
        ))  # fmt: skip
    if records is not None:
        checks += _deep_checks(name, path, records, images_root, template)
    return checks


def _dir_check(name: str, path: Path) -> Check:
    if not path.is_dir():
        return Check("data", name, "fail", f"missing folder: {path}", f"download and unpack the images into {path} ({SYNTHETIC_HINT})",
                     {"path": str(path)})
    return Check("data", name, "ok", str(path), data={"path": str(path)})


def data_checks(cfg: Any, data: Path | None, deep: bool = False) -> list[Check]:
    """Both JSON files with their record counts, and the image folders; MMMU when its folder exists."""
    if data is None:
        return [Check("data", "data", "skip", f"--data not given; pass --data DIR to check the data ({SYNTHETIC_HINT})")]
    root = Path(data)
    if not root.is_dir():
        return [Check("data", "data", "fail", f"--data {root}: no such directory",
                      f"pass the directory that holds {cfg.data.pretrain_json} and {cfg.data.finetune_json}")]
    ft_images = root / cfg.data.finetune_images
    checks = [
        *_json_check("pretrain JSON", root / cfg.data.pretrain_json, "pretrain", deep, root / cfg.data.pretrain_images,
                     cfg.pretrain.template),
        _dir_check("pretrain images", root / cfg.data.pretrain_images),
        *_json_check("finetune JSON", root / cfg.data.finetune_json, "finetune", deep, ft_images, cfg.finetune.template),
    ]
    missing = [f for f in FINETUNE_FOLDERS if not (ft_images / f).is_dir()]
    if missing:
        checks.append(Check(
            "data", "finetune images", "fail", f"missing under {ft_images}: {', '.join(missing)}",
            f"download and unpack them into {ft_images} ({SYNTHETIC_HINT})", {"missing": missing},
        ))  # fmt: skip
    else:
        checks.append(Check("data", "finetune images", "ok", f"{len(FINETUNE_FOLDERS)} folders under {ft_images}"))
    if (root / "MMMU").is_dir():
        checks.append(mmmu_check(root / "MMMU"))
    checks.append(manifest_check(root))
    return checks


def manifest_check(root: Path) -> Check:
    """What the last `kit data verify` found, from the manifest it wrote into the data root (a few stats, no decoding)."""
    from ..data import manifest as data_manifest

    where = data_manifest.path(root)
    verify_cmd = f"kit data verify --data {root}"
    try:
        m = data_manifest.read(root)
    except data_manifest.ManifestError as e:
        return Check("data", "data manifest", "warn", str(e), f"run `{verify_cmd}` again to rewrite it", {"path": str(where)})
    if m is None:
        return Check("data", "data manifest", "warn", f"no {where.name}: the images have not been verified",
                     f"run `{verify_cmd}`: it decodes every image the records name and writes the manifest",
                     {"path": str(where)})  # fmt: skip
    ident = data_manifest.identity(m)
    data = {"path": str(where), **ident}
    if stale := data_manifest.stale(root, m):
        return Check("data", "data manifest", "warn",
                     f"{', '.join(stale)} changed since `kit data verify` ({m.get('written', '?')})",
                     f"run `{verify_cmd}` again", {**data, "stale": stale})  # fmt: skip
    found = ident.get("problems") or {}
    problems = {f"{kind} image": n for kind, n in (found.get("images") or {}).items() if n}
    if bad := sum(n for n in (found.get("bad_records") or {}).values() if isinstance(n, int)):
        problems["unusable record"] = bad
    when = m.get("written", "?")
    if not ident.get("ok"):
        listed = ", ".join(f"{v:,} {k}{'s' if v != 1 else ''}" for k, v in sorted(problems.items())) or "problems"
        return Check("data", "data manifest", "fail", f"`kit data verify` ({when}) found {listed}",
                     f"run `kit data fix --data {root}` (and `--write-filtered` for records whose images cannot be had)",
                     data)  # fmt: skip
    images = (ident.get("images") or {}).get("referenced")
    count = f"{images:,}" if isinstance(images, int) else "all"
    return Check("data", "data manifest", "ok", f"verified {when}: {count} images decode; digest {str(ident.get('digest'))[:16]}",
                 data=data)  # fmt: skip


def mmmu_check(path: Path) -> Check:
    """MMMU validation data: one folder per subject holding parquet files."""
    subjects = sorted(d.name for d in path.iterdir() if d.is_dir() and any(d.rglob("*.parquet")))
    data = {"path": str(path), "subjects": len(subjects)}
    if len(subjects) == MMMU_SUBJECTS:
        return Check("data", "MMMU", "ok", f"{len(subjects)} subjects with parquet files", data=data)
    return Check(
        "data", "MMMU", "warn" if subjects else "fail",
        f"{len(subjects)} of {MMMU_SUBJECTS} subjects with parquet files under {path}",
        f"download MMMU (all {MMMU_SUBJECTS} subjects, validation split) into {path}, one folder per subject", data,
    )  # fmt: skip


def model_checks(cfg: Any, models: Path | None) -> list[Check]:
    """The LLM and CLIP checkpoint directories: config.json, weights, and the LLM's tokenizer.model."""
    if models is None:
        return [Check("data", "weights", "skip", f"--models not given; pass --models DIR to check the weights ({SYNTHETIC_HINT})")]
    root = Path(models)
    if not root.is_dir():
        return [Check("data", "weights", "fail", f"--models {root}: no such directory",
                      f"pass the directory that holds {cfg.model.llm_dir}/ and {cfg.model.vision_dir}/ ({SYNTHETIC_HINT})")]
    checks = []
    for name, sub, tokenizer in (("LLM weights", cfg.model.llm_dir, True), ("CLIP weights", cfg.model.vision_dir, False)):
        d = root / sub
        need = ["config.json", *(["tokenizer.model"] if tokenizer else [])]
        missing = [f for f in need if not (d / f).is_file()]
        weights = sorted({p.name for pat in WEIGHT_PATTERNS for p in d.glob(pat)}) if d.is_dir() else []
        if not weights:
            missing.append("weights (*.safetensors or *.bin)")
        if not d.is_dir():
            checks.append(Check("data", name, "fail", f"missing folder: {d}",
                                f"download the Hugging Face checkpoint into {d} ({SYNTHETIC_HINT})", {"path": str(d)}))
        elif missing:
            checks.append(Check("data", name, "fail", f"{d}: missing {', '.join(missing)}",
                                f"download the complete Hugging Face checkpoint into {d}", {"path": str(d), "missing": missing}))
        else:
            checks.append(Check("data", name, "ok", f"{d} ({len(weights)} weight files)", data={"path": str(d), "weights": weights}))
    return checks

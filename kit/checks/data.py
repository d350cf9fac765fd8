"""Data and weights in the layout the case reads (docs/data.md, "The layout"), checked before a run is launched.

A missing file found here costs seconds; found by the training job, it costs a container start, a model load
and a confusing traceback. Record counts are compared with the reference data sets so a truncated download
or a different version shows before hours of training.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kit.checks import Check

# The reference data sets (LLaVA-1.5): LAION-CC-SBU 558K captions, the mix665k instructions.
REFERENCE_RECORDS = {"pretrain": 558_128, "finetune": 665_298}
# The finetune images' folders under the data root (docs/data.md; cases/llava1_5_7b/synthetic.py).
FINETUNE_FOLDERS = ("coco/train2017", "gqa/images", "ocr_vqa/images", "textvqa/train_images", "vg/VG_100K", "vg/VG_100K_2")
WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.safetensors.index.json", "*.bin.index.json")
MMMU_SUBJECTS = 30
SYNTHETIC_HINT = "or run with --synthetic, which needs no data and no weights"
SHOWN = 5  # problems a --deep check names in its detail; the rest are counted
CASE = "llava1_5_7b"  # the case whose data-sources.toml holds the reference counts (kit/data/sources.py)


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


def verify_checks(cfg: Any, root: Path, models: Path | None = None, progress: Any = None) -> list[Check]:
    """`--deep`: `kit data verify` itself (every record through the case's validator, every image decoded on all
    cores, the manifest written), its findings as check rows. Its progress goes to stderr as verify's does (minutes
    of decoding are never silent); the rows and --json go to stdout."""
    from kit.data import audit as data_verify
    from kit.data import sources
    from kit.data.progress import PhaseProgress

    layout = data_verify.Layout.from_config(root, cfg)
    display = progress if progress is not None else PhaseProgress()
    try:
        v = data_verify.verify(layout, sources.for_case(CASE).reference, case=CASE, models=models, progress=display)
    except data_verify.VerifyError as e:
        return [Check("data", "data verify", "fail", str(e), "pip install pillow" if "Pillow" in str(e) else "")]
    finally:
        if isinstance(display, PhaseProgress):
            display.close()
    rows, folders = [], []
    for f in v.result["findings"]:
        if f["what"] in ("pretrain records", "finetune records") or f["detail"].startswith("not checked"):
            continue  # the record counts are the rows above; weights and MMMU have rows of their own
        if f["what"].startswith("folder ") and f["level"] == "info":
            folders.append(f"{f['what'][7:]} {f['detail']}")
            continue
        examples = f.get("examples") or []
        detail = f["detail"] + (f": {_listed(examples)}" if examples else "")
        status = {"fail": "fail", "warn": "warn"}.get(f["level"], "ok")
        rows.append(Check("data", f"verify: {f['what']}", status, detail, f.get("fix", ""),
                          {k: v for k, v in f.items() if k not in ("level", "what", "detail", "fix")}))  # fmt: skip
    if folders:
        rows.append(Check("data", "verify: image folders", "ok", "; ".join(folders)))
    return rows


def _listed(problems: list[str]) -> str:
    more = len(problems) - SHOWN
    return "; ".join(problems[:SHOWN]) + (f"; and {more:,} more" if more > 0 else "")


def _json_check(name: str, path: Path, stage: str) -> list[Check]:
    ref = REFERENCE_RECORDS[stage]
    if not path.is_file():
        return [Check("data", name, "fail", f"missing: {path}", f"download it to {path} ({SYNTHETIC_HINT})", {"path": str(path)})]
    n = count_records(path)
    data = {"path": str(path), "records": n, "reference": ref}
    if n == ref:
        return [Check("data", name, "ok", f"{n:,} records, as the reference", data=data)]
    diff = n - ref
    return [Check(
        "data", name, "warn",
        f"{n:,} records, {abs(diff):,} {'more' if diff > 0 else 'fewer'} than the reference's {ref:,} "
        f"({diff / ref:+.2%}): results will not compare one to one",
        "download the reference version of the file (a truncated download is the usual cause)", data,
    )]  # fmt: skip


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
        *_json_check("pretrain JSON", root / cfg.data.pretrain_json, "pretrain"),
        _dir_check("pretrain images", root / cfg.data.pretrain_images),
        *_json_check("finetune JSON", root / cfg.data.finetune_json, "finetune"),
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
    # --deep runs the verifier, which writes the manifest; the manifest row then says what it found.
    if deep:
        checks += verify_checks(cfg, root)
    checks.append(manifest_check(root))
    return checks


def manifest_check(root: Path) -> Check:
    """What the last `kit data verify` found, from the manifest it wrote into the data root (a few stats, no decoding)."""
    from kit.data import manifest as data_manifest

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

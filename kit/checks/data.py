"""Data and weights in the layout the case reads (docs/data.md, "The layout"), checked before a run is launched.

A missing file found here costs seconds; found by the training job, it costs a container start, a model load
and a confusing traceback. Record counts are compared with the reference data sets so a truncated download
or a different version shows before hours of training. Where the files lie, how records are counted and what the
reference holds, the case says (kit/case/data.py); the counts are in its data-sources.toml, nowhere else.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kit.case import data as case_data
from kit.checks import Check
from kit.data import audit as data_verify
from kit.data import manifest as data_manifest
from kit.data.progress import PhaseProgress

WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.safetensors.index.json", "*.bin.index.json")
SYNTHETIC_HINT = "or run with --synthetic, which needs no data and no weights"
SHOWN = 5  # problems a --deep check names in its detail; the rest are counted


def verify_checks(cfg: Any, root: Path, models: Path | None = None, progress: Any = None, case: Any = None) -> list[Check]:
    """`--deep`: `kit data verify` itself (every record through the case's validator, every image decoded on all
    cores, the manifest written), its findings as check rows. Its progress goes to stderr as verify's does (minutes
    of decoding are never silent); the rows and --json go to stdout."""

    c = case or case_data.of_config(cfg)
    layout = data_verify.Layout.from_config(root, cfg, c)
    display = progress if progress is not None else PhaseProgress()
    try:
        v = data_verify.verify(layout, case_data.reference(c), models=models, progress=display)
    except data_verify.VerifyError as e:
        return [Check("data", "data verify", "fail", str(e), "pip install pillow" if "Pillow" in str(e) else "")]
    finally:
        if isinstance(display, PhaseProgress):
            display.close()
    counted = {f"{sd.stage} records" for sd in layout.stages}
    rows, folders = [], []
    for f in v.result["findings"]:
        if f["what"] in counted or f["detail"].startswith("not checked"):
            continue  # the record counts are the rows above; weights and the eval set have rows of their own
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


def _json_check(name: str, path: Path, ref: int | None, count: Any) -> list[Check]:
    """A record file, its records counted by the case (without parsing) against the reference's count."""
    if not path.is_file():
        return [Check("data", name, "fail", f"missing: {path}", f"download it to {path} ({SYNTHETIC_HINT})", {"path": str(path)})]
    n = count(path)
    data = {"path": str(path), "records": n, "reference": ref}
    if ref is None:
        return [Check("data", name, "ok", f"{n:,} records (no reference count)", data=data)]
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


def _folders_check(name: str, images: Path, folders: tuple[str, ...]) -> Check:
    missing = [f for f in folders if not (images / f).is_dir()]
    if missing:
        return Check("data", name, "fail", f"missing under {images}: {', '.join(missing)}",
                     f"download and unpack them into {images} ({SYNTHETIC_HINT})", {"missing": missing})  # fmt: skip
    return Check("data", name, "ok", f"{len(folders)} folders under {images}")


def data_checks(cfg: Any, data: Path | None, deep: bool = False, case: Any = None) -> list[Check]:
    """Each training stage's record file with its record count and its image folders; the eval set when its folder
    exists. `case`: the case whose layout this is (default: the one whose config schema made `cfg`)."""
    if data is None:
        return [Check("data", "data", "skip", f"--data not given; pass --data DIR to check the data ({SYNTHETIC_HINT})")]
    c = case or case_data.of_config(cfg)
    stages = case_data.stages(c, cfg)
    root = Path(data)
    if not root.is_dir():
        return [Check("data", "data", "fail", f"--data {root}: no such directory",
                      f"pass the directory that holds {' and '.join(sd.records for sd in stages)}")]
    reference = case_data.reference(c).records
    checks: list[Check] = []
    for sd in stages:
        checks += _json_check(f"{sd.stage} JSON", root / sd.records, reference.get(sd.stage), c.data.count_records)
        if sd.folders:
            checks.append(_folders_check(f"{sd.stage} images", root / sd.images, sd.folders))
        else:
            checks.append(_dir_check(f"{sd.stage} images", root / sd.images))
    ev = c.data.eval_set()
    if ev is not None and (root / ev.folder).is_dir():
        checks.append(eval_check(root / ev.folder, ev, root))
    # --deep runs the verifier, which writes the manifest; the manifest row then says what it found.
    if deep:
        checks += verify_checks(cfg, root, case=c)
    checks.append(manifest_check(root))
    return checks


def manifest_check(root: Path) -> Check:
    """What the last `kit data verify` found, from the manifest it wrote into the data root (a few stats, no decoding)."""

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


def eval_check(path: Path, ev: Any, data: Path | None = None) -> Check:
    """The eval set: one folder per group holding its files (a quick look; `kit data verify` checks each whole)."""
    groups = sorted(d.name for d in path.iterdir() if d.is_dir() and any(d.rglob(ev.files)))
    kind = Path(ev.files).suffix.lstrip(".") or "data"
    n = len(ev.groups)
    info = {"path": str(path), "groups": len(groups)}
    if len(groups) >= n:
        return Check("data", ev.name, "ok", f"{len(groups)} {ev.group_word} with {kind} files", data=info)
    fetch = f"kit data fetch --data {data} --only {ev.source}" if data is not None and ev.source else ""
    return Check(
        "data", ev.name, "warn" if groups else "fail",
        f"{len(groups)} of {n} {ev.group_word} with {kind} files under {path}",
        f"download {ev.name} into {path} (all {n} {ev.group_word}, a folder each)" + (f": {fetch}" if fetch else ""),
        info,
    )  # fmt: skip


def model_checks(cfg: Any, models: Path | None, case: Any = None) -> list[Check]:
    """The checkpoint folders the case loads: the files each must hold (config.json, a tokenizer) and weights."""
    if models is None:
        return [Check("data", "weights", "skip", f"--models not given; pass --models DIR to check the weights ({SYNTHETIC_HINT})")]
    c = case or case_data.of_config(cfg)
    parts = c.data.checkpoints(cfg)
    root = Path(models)
    if not root.is_dir():
        held = " and ".join(f"{cp.folder}/" for cp in parts)
        return [Check("data", "weights", "fail", f"--models {root}: no such directory",
                      f"pass the directory that holds {held} ({SYNTHETIC_HINT})")]
    checks = []
    for cp in parts:
        d = root / cp.folder
        missing = [f for f in cp.needs if not (d / f).is_file()]
        weights = sorted({p.name for pat in WEIGHT_PATTERNS for p in d.glob(pat)}) if d.is_dir() else []
        if not weights:
            missing.append("weights (*.safetensors or *.bin)")
        if not d.is_dir():
            checks.append(Check("data", cp.label, "fail", f"missing folder: {d}",
                                f"download the Hugging Face checkpoint into {d} ({SYNTHETIC_HINT})", {"path": str(d)}))
        elif missing:
            checks.append(Check("data", cp.label, "fail", f"{d}: missing {', '.join(missing)}",
                                f"download the complete Hugging Face checkpoint into {d}", {"path": str(d), "missing": missing}))
        else:
            checks.append(Check("data", cp.label, "ok", f"{d} ({len(weights)} weight files)", data={"path": str(d), "weights": weights}))
    return checks

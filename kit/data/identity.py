"""What a run trained and evaluated on, by content: the record files, the image folders, the weights, MMMU.

`kit run` writes `inputs.json` into the run directory before the first stage (docs/run-directory.md): the sha256
and size of every record file, checkpoint file and MMMU parquet, and the file count and bytes of each image
folder. The rules (cases/<case>/rules.toml) and `kit verify` read it; two submissions that name the same digests
trained on the same bytes. Hashing a 7B checkpoint takes about a minute, so digests are cached by path, size and
modification time under the results directory.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

INPUTS_SCHEMA = "kit.inputs/1"
CACHE_NAME = ".kit-sha256-cache.json"
CHUNK = 8 << 20
# Files of a Hugging Face checkpoint directory that define the weights and the tokenizer.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".json", ".model", ".txt", ".pt", ".pth", ".msgpack", ".h5")


class HashCache:
    """sha256 by (absolute path, size, mtime_ns), kept in one JSON file; a damaged cache is ignored."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.entries: dict[str, list[Any]] = {}
        self.dirty = False
        if path is not None and path.is_file():
            try:
                data = json.loads(path.read_text())
                self.entries = data if isinstance(data, dict) else {}
            except (OSError, ValueError):
                self.entries = {}

    def sha256(self, path: Path) -> tuple[str, int]:
        st = path.stat()
        key = str(path.resolve())
        hit = self.entries.get(key)
        if isinstance(hit, list) and len(hit) == 3 and hit[0] == st.st_size and hit[1] == st.st_mtime_ns:
            return str(hit[2]), st.st_size
        digest = sha256_file(path)
        self.entries[key] = [st.st_size, st.st_mtime_ns, digest]
        self.dirty = True
        return digest, st.st_size

    def save(self) -> None:
        if self.path is None or not self.dirty:
            return
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps(self.entries))
            os.replace(tmp, self.path)
        except OSError:
            tmp.unlink(missing_ok=True)  # a read-only results directory: no cache, same digests


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def digest_of(files: dict[str, dict[str, Any]]) -> str:
    """One sha256 over the sorted (relative path, sha256) pairs: equal digests, equal bytes."""
    h = hashlib.sha256()
    for rel in sorted(files):
        h.update(f"{rel}\0{files[rel]['sha256']}\n".encode())
    return h.hexdigest()


def folder_census(path: Path, sizes: bool = True) -> dict[str, Any]:
    """Files and bytes under an image folder (stat only, like a mount check): catches missing or truncated sets.
    Without `sizes`, from directory entries alone (no stat per file; bytes None): a count of 700,000 files."""
    files = total = 0
    stack = [path]
    while stack:
        d = stack.pop()
        try:
            with os.scandir(d) as it:
                for e in it:
                    if e.is_dir(follow_symlinks=True):
                        stack.append(Path(e.path))
                    elif e.is_file(follow_symlinks=True):
                        files += 1
                        if sizes:
                            total += e.stat().st_size
        except OSError:
            continue
    return {"files": files, "bytes": total if sizes else None}


def _hash_files(paths: list[tuple[str, Path]], cache: HashCache) -> dict[str, dict[str, Any]]:
    out = {}
    for rel, p in paths:
        digest, size = cache.sha256(p)
        out[rel] = {"sha256": digest, "bytes": size}
    return out


def data_identity(data_root: Path, stages: list[str], data_cfg: dict[str, Any], cache: HashCache) -> dict[str, Any]:
    """The record files (hashed) and image folders (counted) each training stage reads."""
    out: dict[str, Any] = {"root": str(data_root), "stages": {}}
    files: dict[str, dict[str, Any]] = {}
    for stage in stages:
        rel_json, rel_images = data_cfg[f"{stage}_json"], data_cfg[f"{stage}_images"]
        json_path = data_root / rel_json
        entry: dict[str, Any] = {"records_file": rel_json, "images": rel_images}
        if json_path.is_file():
            digest, size = cache.sha256(json_path)
            files[rel_json] = {"sha256": digest, "bytes": size}
            entry.update(sha256=digest, bytes=size)
            if (provenance := filter_provenance(json_path, digest)) is not None:
                entry["filter"] = provenance
        else:
            entry["missing"] = True
        images = data_root / rel_images
        if stage == "finetune" and rel_images in (".", ""):
            # The finetune image root is the data root itself: count the reference's folders under it.
            entry["image_folders"] = {
                sub: folder_census(images / sub)
                for sub in ("coco/train2017", "gqa/images", "ocr_vqa/images", "textvqa/train_images",
                            "vg/VG_100K", "vg/VG_100K_2")
                if (images / sub).is_dir()
            }  # fmt: skip
            if not entry["image_folders"]:  # a generated set: its folders are whatever it made
                entry["image_folders"] = {
                    p.name: folder_census(p) for p in sorted(images.iterdir()) if p.is_dir() and p.name not in ("tokenizer", ".kit-data")
                } if images.is_dir() else {}  # fmt: skip
        else:
            entry["image_folders"] = {rel_images: folder_census(images)} if images.is_dir() else {}
        out["stages"][stage] = entry
    out["files"] = files
    out["digest"] = digest_of(files) if files else None
    return out


FILTER_SCHEMA = "kit.data-filter/1"
FILTER_SUFFIX = ".kit-filter.json"


def filter_provenance(json_path: Path, sha256: str) -> dict[str, Any] | None:
    """What `kit data fix --write-filtered` dropped to make this record file, from its sidecar, or None.

    The sidecar names the original file and its sha256 and every dropped record with its reason. It describes this
    file only when its output sha256 is this file's: a sidecar left beside an edited file is reported, not believed.
    """
    side = json_path.with_name(json_path.name + FILTER_SUFFIX)
    if not side.is_file():
        return None
    try:
        data = json.loads(side.read_text())
    except (OSError, ValueError) as e:
        return {"sidecar": side.name, "valid": False, "problem": f"cannot be read ({e})"}
    if not isinstance(data, dict) or data.get("schema") != FILTER_SCHEMA:
        return {"sidecar": side.name, "valid": False, "problem": f"not a {FILTER_SCHEMA} file"}
    source, output = data.get("source") or {}, data.get("output") or {}
    counts = data.get("counts") if isinstance(data.get("counts"), dict) else {}
    out = {
        "sidecar": side.name, "valid": output.get("sha256") == sha256,
        "source_file": source.get("file"), "source_sha256": source.get("sha256"), "source_records": source.get("records"),
        "records": output.get("records"), "dropped": sum(v for v in counts.values() if isinstance(v, int)),
        "counts": counts, "written": data.get("written"),
    }  # fmt: skip
    if not out["valid"]:
        out["problem"] = f"its output sha256 {str(output.get('sha256'))[:16]} is not this file's {sha256[:16]}"
    return out


def manifest_identity(data_root: Path | None) -> dict[str, Any] | None:
    """The data manifest that `kit data verify` wrote into the data root, in short, or None when there is none.

    Stale (a record file changed since the verify) and damaged manifests are recorded as such: the identity of data
    that was verified is only claimed while the files are those that were verified.
    """
    if data_root is None:
        return None
    from kit.data import manifest as data_manifest

    try:
        m = data_manifest.read(data_root)
    except data_manifest.ManifestError as e:
        return {"path": str(data_manifest.path(data_root)), "valid": False, "problem": str(e)}
    if m is None:
        return None
    out = {"path": str(data_manifest.path(data_root)), "valid": True, **data_manifest.identity(m)}
    if stale := data_manifest.stale(data_root, m):
        out.update(valid=False, stale=stale, problem=f"changed since `kit data verify`: {', '.join(stale)}")
    return out


def tree_identity(root: Path, cache: HashCache, suffixes: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Every file of a directory tree (a checkpoint, MMMU's parquet files), hashed, and one digest over them."""
    if not root.is_dir():
        return {"root": str(root), "missing": True, "files": {}, "digest": None}
    picked = sorted(
        (str(p.relative_to(root)), p)
        for p in root.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
        and (suffixes is None or p.suffix in suffixes)
    )  # fmt: skip
    files = _hash_files(picked, cache)
    return {"root": str(root), "files": files, "digest": digest_of(files) if files else None}


def collect(
    *, data: Path | None, models: Path | None, mmmu: Path | None, synthetic_dir: Path | None, stages: list[str],
    config: dict[str, Any], cache_path: Path | None,
) -> dict[str, Any]:
    """inputs.json's content. With --synthetic the generated set (records, tokenizer) is what the run read."""
    cache = HashCache(cache_path)
    training = [s for s in stages if s in ("pretrain", "finetune")]
    synthetic = synthetic_dir is not None
    data_root = synthetic_dir if synthetic else data
    out: dict[str, Any] = {"schema": INPUTS_SCHEMA, "synthetic": synthetic}
    out["data"] = data_identity(data_root, training, config["data"], cache) if data_root and training else None
    if out["data"] is not None and not synthetic:
        out["data"]["manifest"] = manifest_identity(data_root)
    model_cfg = config["model"]
    if synthetic:
        out["weights"] = {"random_init": True, "seed": config["train"]["seed"], "digest": None,
                          "tokenizer": tree_identity(synthetic_dir / "tokenizer", cache)}  # fmt: skip
    elif models is not None:
        llm = tree_identity(models / model_cfg["llm_dir"], cache, WEIGHT_SUFFIXES)
        vision = tree_identity(models / model_cfg["vision_dir"], cache, WEIGHT_SUFFIXES)
        both = {f"llm/{k}": v for k, v in llm["files"].items()} | {f"vision/{k}": v for k, v in vision["files"].items()}
        out["weights"] = {"random_init": False, "llm": llm, "vision": vision,
                          "digest": digest_of(both) if both else None}  # fmt: skip
    else:
        out["weights"] = None
    if "eval" in stages:
        if mmmu is not None:
            out["mmmu"] = tree_identity(mmmu, cache, (".parquet",))
        elif synthetic:
            out["mmmu"] = {"generated": True, "digest": None}
        else:
            out["mmmu"] = None
    cache.save()
    return out

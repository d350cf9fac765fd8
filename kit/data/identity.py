"""What a run trained and evaluated on, by content: the record files, the image folders, the weights, the eval set.

`kit run` writes `inputs.json` into the run directory before the first stage (docs/run-directory.md): the sha256
and size of every record file, checkpoint file and eval-set file, and the file count and bytes of each image
folder. Which files those are, the case declares (`case.data`, kit/case/data.py): its training stages' record files
and image folders, its checkpoint folders, its eval set. The rules (the case's rules.toml) and `kit verify` read
it; two submissions that name the same digests trained on the same bytes. Hashing a 7B checkpoint takes about a
minute, so digests are cached by path, size and modification time under the results directory.

inputs.json's parts are `data`, `weights` and `eval_data` (`PARTS`). kit.inputs/1 files, written before the case
seam, named the eval set's part after the eval set; `part()` reads both.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from kit import case as cases
from kit.case import data as case_data
from kit.case.data import StageData
from kit.data import manifest as data_manifest

INPUTS_SCHEMA = "kit.inputs/2"
PARTS = ("data", "weights", "eval_data")  # what a run read, by content; each with a `digest`
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


def _census_folders(data_root: Path, sd: StageData) -> dict[str, Any]:
    """The stage's image folders, counted (files, bytes): those a complete copy holds (the case names them) where
    any is there; else the stage's whole image folder, or, when that is the data root itself, each folder in it."""
    images = data_root / sd.images
    found = {sub: folder_census(images / sub) for sub in sd.folders if (images / sub).is_dir()}
    if found:
        return found
    if not images.is_dir():
        return {}
    if os.path.normpath(sd.images) == ".":  # a generated set: its folders are whatever it made
        return {p.name: folder_census(p) for p in sorted(images.iterdir()) if p.is_dir() and not p.name.startswith(".")}
    return {sd.images: folder_census(images)}


def data_identity(data_root: Path, stages: tuple[StageData, ...] | list[StageData], cache: HashCache) -> dict[str, Any]:
    """The record files (hashed) and image folders (counted) each training stage reads, as the case lays them out."""
    out: dict[str, Any] = {"root": str(data_root), "stages": {}}
    files: dict[str, dict[str, Any]] = {}
    for sd in stages:
        json_path = data_root / sd.records
        entry: dict[str, Any] = {"records_file": sd.records, "images": sd.images}
        if json_path.is_file():
            digest, size = cache.sha256(json_path)
            files[sd.records] = {"sha256": digest, "bytes": size}
            entry.update(sha256=digest, bytes=size)
            if (provenance := filter_provenance(json_path, digest)) is not None:
                entry["filter"] = provenance
        else:
            entry["missing"] = True
        entry["image_folders"] = _census_folders(data_root, sd)
        out["stages"][sd.stage] = entry
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
    """Every file of a directory tree (a checkpoint, the eval set's files), hashed, and one digest over them."""
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
    *, data: Path | None, models: Path | None, synthetic_dir: Path | None, stages: list[str], config: dict[str, Any],
    cache_path: Path | None, eval_data: Path | None = None, case: Any = None, mmmu: Path | None = None,
) -> dict[str, Any]:
    """inputs.json's content: what the case declares that a run of these stages reads (its training stages' record
    files and image folders, its checkpoints, its eval set), by content. With --synthetic the generated set
    (records, tokenizer) is what the run read. `config` is the resolved config (run.json's `config`); `case` a
    registered case or its name (default: the only one registered). `mmmu` is eval_data's name before the seam."""
    c = case_data.choose(case) if case is None or isinstance(case, str) else case
    eval_data = eval_data if eval_data is not None else mmmu
    cache = HashCache(cache_path)
    training = [sd for sd in c.data.stages(config) if sd.stage in stages and sd.stage in cases.training(c)]
    synthetic = synthetic_dir is not None
    data_root = synthetic_dir if synthetic else data
    out: dict[str, Any] = {"schema": INPUTS_SCHEMA, "synthetic": synthetic}
    out["data"] = data_identity(data_root, training, cache) if data_root and training else None
    if out["data"] is not None and not synthetic:
        out["data"]["manifest"] = manifest_identity(data_root)
    if synthetic:
        seed, generated = c.data.synthetic_weights(config)
        out["weights"] = {"random_init": True, "seed": seed, "digest": None,
                          **{name: tree_identity(synthetic_dir / name, cache) for name in generated}}  # fmt: skip
    elif models is not None:
        parts = {cp.part: tree_identity(models / cp.folder, cache, WEIGHT_SUFFIXES) for cp in c.data.checkpoints(config)}
        every = {f"{part}/{k}": v for part, t in parts.items() for k, v in t["files"].items()}
        out["weights"] = {"random_init": False, **parts, "digest": digest_of(every) if every else None}
    else:
        out["weights"] = None
    if any(s in stages for s in cases.evaluating(c)):
        ev = c.data.eval_set()
        if eval_data is not None and ev is not None:
            out["eval_data"] = tree_identity(Path(eval_data), cache, (Path(ev.files).suffix,) if Path(ev.files).suffix else None)
        elif synthetic:
            out["eval_data"] = {"generated": True, "digest": None}
        else:
            out["eval_data"] = None
    cache.save()
    return out


def part(inputs: dict[str, Any] | None, name: str) -> Any:
    """One part of an inputs.json (`PARTS`), whichever kit wrote it. A kit.inputs/1 file named the eval set's part
    after the eval set: the one key beside schema, synthetic, data and weights."""
    if not isinstance(inputs, dict):
        return None
    if name in inputs or name != "eval_data" or inputs.get("schema") != "kit.inputs/1":
        return inputs.get(name)
    other = [k for k in inputs if k not in ("schema", "synthetic", "data", "weights")]
    return inputs[other[0]] if len(other) == 1 else None


def digests(inputs: dict[str, Any] | None) -> dict[str, str | None]:
    """Each part's digest (`PARTS`), or what stood in for it: random initial weights, a generated eval set."""
    out: dict[str, str | None] = {}
    for name in PARTS:
        d = part(inputs, name)
        d = d if isinstance(d, dict) else {}
        if d.get("digest"):
            out[name] = str(d["digest"])
        elif d.get("random_init"):
            out[name] = f"random init (seed {d.get('seed')})"
        elif d.get("generated"):
            out[name] = "generated"
        else:
            out[name] = None
    return out

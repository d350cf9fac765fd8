"""The data manifest: what `kit data verify` found in a data directory, kept in that directory.

`kit run` records its identity (`identity()`) in the run directory and `kit submit` carries it, so a result names
the records and the image list it trained on; `kit check-host --data` reads it instead of decoding again. Two copies
whose manifests have the same `digest` hold the same record files (by sha256 and count) and the same image list
(by relative path and size). `stale()` says in a few stats whether the record files changed since it was written.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

MANIFEST_NAME = "kit-data-manifest.json"
SCHEMA = "kit.data-manifest/1"


class ManifestError(ValueError):
    """A manifest that cannot be used: the message names the file and the reason."""


def path(data_root: str | Path) -> Path:
    """Where the manifest of a data directory lives (its root)."""
    return Path(data_root) / MANIFEST_NAME


def read(data_root: str | Path) -> dict[str, Any] | None:
    """The manifest, or None when there is none; ManifestError when it is damaged or of another schema."""
    p = path(data_root)
    try:
        text = p.read_text()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise ManifestError(f"{p}: cannot be read ({e.strerror or e}); run `kit data verify --data {p.parent}`") from e
    try:
        doc = json.loads(text)
    except ValueError as e:
        raise ManifestError(f"{p}: not valid JSON ({e}); delete it and run `kit data verify --data {p.parent}`") from e
    if not isinstance(doc, dict):
        raise ManifestError(f"{p}: expected a JSON object; delete it and run `kit data verify --data {p.parent}`")
    if doc.get("schema") != SCHEMA:
        raise ManifestError(
            f"{p}: schema {doc.get('schema')!r}, expected {SCHEMA!r} (written by another kit version); "
            f"run `kit data verify --data {p.parent}` to write it again"
        )
    for key in ("stages", "images", "digest"):
        if key not in doc:
            raise ManifestError(f"{p}: lacks {key!r}; run `kit data verify --data {p.parent}` to write it again")
    return doc


def write(data_root: str | Path, manifest: dict[str, Any]) -> Path | None:
    """Write the manifest atomically (a temporary file renamed over it); None when the directory is read-only."""
    p = path(data_root)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w") as f:
            json.dump(manifest, f, indent=2, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except OSError:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        return None
    return p


def digest_of(stages: dict[str, Any], images: dict[str, Any]) -> str:
    """sha256 over the canonical JSON of what defines the data: per stage the record file's sha256 and record count,
    and the image list's digest and count. Paths and times are left out, so two copies compare by content."""
    core = {
        "stages": {s: {"sha256": v.get("sha256"), "records": v.get("records")} for s, v in sorted(stages.items())},
        "images": {"digest": images.get("digest"), "unique": images.get("unique")},
    }
    return hashlib.sha256(json.dumps(core, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def stale(data_root: str | Path, manifest: dict[str, Any]) -> list[str]:
    """The record files (relative paths) whose size or mtime differ from the manifest's, or that are gone: those of
    every stage the manifest describes."""
    root = Path(data_root)
    out = []
    stages = manifest.get("stages") if isinstance(manifest.get("stages"), dict) else {}
    for _stage, entry in sorted(stages.items()):
        if not isinstance(entry, dict) or not entry.get("file"):
            continue
        try:
            st = (root / entry["file"]).stat()
        except OSError:
            out.append(entry["file"])
            continue
        if st.st_size != entry.get("bytes") or st.st_mtime_ns != entry.get("mtime_ns"):
            out.append(entry["file"])
    return out


def identity(manifest: dict[str, Any]) -> dict[str, Any]:
    """The compact identity a run directory records and a submission carries."""
    images = manifest.get("images") or {}
    problems = images.get("problems") or {}
    stages = {}
    for stage, entry in sorted((manifest.get("stages") or {}).items()):
        stages[stage] = {
            "file": entry.get("file"),
            "sha256": entry.get("sha256"),
            "records": entry.get("records"),
            "bad_records": sum((entry.get("bad_records") or {}).values()),
        }
    return {
        "schema": SCHEMA,
        "digest": manifest.get("digest"),
        "written": manifest.get("written"),
        "ok": bool(manifest.get("ok")),
        "stages": stages,
        "images": {"digest": images.get("digest"), "unique": images.get("unique"), "referenced": images.get("referenced")},
        "problems": {
            "bad_records": {s: v["bad_records"] for s, v in stages.items()},
            "images": {kind: (v.get("total", 0) if isinstance(v, dict) else v) for kind, v in sorted(problems.items())},
        },
    }

"""`kit data fix`: repair what can be repaired in a data directory, and set aside what cannot, never losing a byte.

Two repairs, both of images a record names `<stem>.jpg`:

- The file holds GIF or PNG (or other non-JPEG) bytes, as many OCR-VQA covers do: it is rewritten as a JPEG
  (first frame, RGB, quality 95). The new file is written beside it under a temporary name and fsynced, the original
  is kept under `DATA/.kit-data/originals/<relative path>` (a hard link where the filesystem allows, else a
  fsynced copy), then the new file is renamed into place. A journal names the files in flight, so an interrupted fix
  is completed (or cleanly redone) by the next one.
- Only `<stem>.gif`, `.png`, `.jpeg` or `.JPG` exists: a JPEG is written at the `.jpg` name; the other file is
  left as it is.

Records whose images still cannot be had, and records the case's validator rejects, are listed; with
`write_filtered` a `<stem>.filtered.json` without them is written beside the record file (never in place), with a
sidecar that says what was dropped and why.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from kit.data import manifest as manifest_mod
from kit.data.audit import FATAL, STATE_DIR, Layout, Progress, Ticker, Verification, _sibling, iter_records

JPEG_QUALITY = 95
TMP_SUFFIX = ".kit-fix.tmp"
JOURNAL = "fix-journal.json"
ORIGINALS = "originals"
FILTER_SCHEMA = "kit.data-filter/1"
FILTERED_SUFFIX = ".filtered.json"
SIDECAR_SUFFIX = ".kit-filter.json"
JPEG_FORMATS = ("JPEG", "MPO")


class FixError(Exception):
    """A fix that must not go ahead (it would overwrite a file kit did not write); the message says what to do."""


@dataclass
class Action:
    kind: str  # rewrite (non-JPEG bytes under .jpg) | from-sibling (only <stem>.png etc. exists)
    key: str  # the image the records name, relative to the data root
    source: str  # the file the JPEG is made from (the same key for rewrite)
    fmt: str = ""
    done: bool = False
    error: str = ""
    kept: str = ""  # where the original is kept (rewrite)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": self.key, "from": self.source, "format": self.fmt, "done": self.done,
                "error": self.error, "original_kept": self.kept}  # fmt: skip


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def jpeg_bytes(path: Path) -> tuple[bytes, str]:
    """The image as JPEG bytes (its first frame, in RGB, as the case's loader converts it) and its source format.
    A file that is a JPEG already is copied byte for byte: no second lossy encoding."""
    from PIL import Image

    with Image.open(path) as img:
        fmt = img.format or ""
        if fmt in JPEG_FORMATS:
            return path.read_bytes(), fmt
        img.seek(0)
        rgb = img.convert("RGB")
    buf = io.BytesIO()
    rgb.save(buf, "JPEG", quality=JPEG_QUALITY, subsampling=0)  # 4:4:4: covers are text, keep its colour edges
    return buf.getvalue(), fmt


def plan(v: Verification) -> list[Action]:
    """What fix would change, from a verification: wrong-format .jpg files, and .jpg names with a sibling."""
    root = v.layout.root
    out = []
    for key in sorted(v.statuses):
        size, _mtime, status, _detail, fmt = v.statuses[key]
        if status == "wrong-format" and key.lower().endswith((".jpg", ".jpeg")):
            out.append(Action("rewrite", key, key, fmt))
        elif status == "missing" and (sib := _sibling(root, key)):
            out.append(Action("from-sibling", key, sib))
    return out


def _keep_original(root: Path, key: str) -> Path:
    """Keep the original under .kit-data/originals/<key> (a hard link, else a fsynced copy): it stays until the user
    deletes it. A different file kept there earlier is not replaced: this one gets the next free .N name."""
    src = root / key
    dest = root / STATE_DIR / ORIGINALS / key
    dest.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    while dest.exists():
        if dest.stat().st_size == src.stat().st_size and dest.read_bytes() == src.read_bytes():
            return dest  # kept already (an interrupted fix)
        n += 1
        dest = root / STATE_DIR / ORIGINALS / f"{key}.{n}"
    try:
        os.link(src, dest)
    except OSError:
        tmp = dest.with_name(dest.name + TMP_SUFFIX)
        shutil.copyfile(src, tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    _fsync_dir(dest.parent)
    return dest


def apply(root: Path, action: Action) -> None:
    """Carry out one action; errors are recorded on it, the data stays as it was."""
    target = root / action.key
    tmp = target.with_name(target.name + TMP_SUFFIX)
    try:
        data, fmt = jpeg_bytes(root / action.source)
        action.fmt = action.fmt or fmt
        _write_synced(tmp, data)
        if action.kind == "rewrite":
            action.kept = str(_keep_original(root, action.key).relative_to(root))
            os.replace(tmp, target)
        else:
            os.link(tmp, target)  # fails rather than replace a file that appeared meanwhile
            tmp.unlink()
        _fsync_dir(target.parent)
        action.done = True
    except Exception as e:  # noqa: BLE001 - one image that cannot be converted is reported; the rest go on
        action.error = f"{type(e).__name__}: {e}"
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass


def _journal_path(root: Path) -> Path:
    return root / STATE_DIR / JOURNAL


def recover(root: Path) -> list[str]:
    """Finish what an interrupted fix left: a new file written but not renamed into place is moved there when its
    original is kept (or the name is free); otherwise it is removed and the image is fixed again."""
    jp = _journal_path(root)
    try:
        entries = json.loads(jp.read_text()).get("entries", [])
    except (OSError, ValueError, AttributeError):
        return []
    done = []
    for e in entries:
        key = e.get("path", "")
        target = root / key
        tmp = target.with_name(target.name + TMP_SUFFIX)
        if not tmp.is_file():
            continue
        kept = root / STATE_DIR / ORIGINALS / key
        if not target.exists() and (e.get("kind") == "from-sibling" or kept.is_file()):
            os.replace(tmp, target)
            done.append(key)
        else:
            tmp.unlink()
    jp.unlink(missing_ok=True)
    return done


def unusable(v: Verification, actions: list[Action] | None = None) -> dict[str, list[dict[str, Any]]]:
    """Per stage, the records a run cannot use: rejected by the validator (by category), or whose image is missing,
    empty or unreadable (and not about to be fixed). Sorted by record index."""
    fixed = {a.key for a in actions or [] if a.kind == "from-sibling" and (a.done or not a.error)}
    out: dict[str, list[dict[str, Any]]] = {}
    for sp in v.layout.stages:
        rows: dict[int, dict[str, Any]] = {}
        for i, rid, cat, why in v.bad.get(sp.stage, []):
            rows[i] = {"index": i, "id": rid, "reason": cat, "detail": why}
        for i, rid, key in v.refs.get(sp.stage, []):
            st = v.statuses[key]
            if i not in rows and st[2] in FATAL and key not in fixed:
                rows[i] = {"index": i, "id": rid, "reason": st[2], "detail": f"{key}: {st[3]}", "path": key}
        out[sp.stage] = [rows[i] for i in sorted(rows)]
    return out


def filtered_name(records_rel: str) -> str:
    p = Path(records_rel)
    stem = p.name[: -len(".json")] if p.name.endswith(".json") else p.name
    return str(p.with_name(stem + FILTERED_SUFFIX))


def write_filtered(root: Path, records_rel: str, dropped: list[dict[str, Any]], dry_run: bool = False,
                   progress: Progress | None = None) -> dict[str, Any]:  # fmt: skip
    """`<stem>.filtered.json` beside the record file without the dropped records, and its sidecar; the original
    record file is read, never written. Streamed record by record (a 1 GB file is neither held whole nor silent),
    into a temporary file that is renamed into place once complete; the bytes are those of
    `json.dumps(kept, ensure_ascii=False, indent=1)` and a newline."""
    src = root / records_rel
    out_rel = filtered_name(records_rel)
    out = root / out_rel
    sidecar = out.with_name(out.name + SIDECAR_SUFFIX)
    if out.exists() and not sidecar.is_file():
        raise FixError(f"{out} exists and was not written by kit data fix (no {sidecar.name} beside it): "
                       "move it away, then run kit data fix --write-filtered again")
    drop = {d["index"] for d in dropped}
    src_sha, out_sha = hashlib.sha256(), hashlib.sha256()
    read = records = kept = 0
    size = src.stat().st_size
    tick = Ticker(progress, f"{'reading' if dry_run else 'writing'} {out_rel}", size, "bytes")
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    side_tmp = sidecar.with_name(f".{sidecar.name}.{os.getpid()}.tmp")
    sink = None

    def took(data: bytes) -> None:
        nonlocal read
        src_sha.update(data)
        read += len(data)
        tick(min(read, size - 1), f"{kept:,} records kept")  # ends with the last record written

    def emit(data: bytes) -> None:
        out_sha.update(data)
        if sink is not None:
            sink.write(data)

    try:  # whatever stops it (an error, a signal), no temporary file is left
        sink = None if dry_run else open(tmp, "wb")  # closed below, on every path
        with open(src, "rb") as f:
            emit(b"[")
            for i, rec in enumerate(iter_records(f, took)):
                records += 1
                if i in drop:
                    continue
                text = json.dumps(rec, ensure_ascii=False, indent=1).replace("\n", "\n ")  # one level deeper
                emit((b",\n " if kept else b"\n ") + text.encode())
                kept += 1
            emit(b"\n]\n" if kept else b"]\n")
        if sink is not None:
            sink.flush()
            os.fsync(sink.fileno())
            sink.close()
        tick(size, f"{kept:,} records kept", force=True)
        counts: dict[str, int] = {}
        for d in dropped:
            counts[d["reason"]] = counts.get(d["reason"], 0) + 1
        doc = {
            "schema": FILTER_SCHEMA,
            "source": {"file": records_rel, "sha256": src_sha.hexdigest(), "records": records},
            "output": {"file": out_rel, "sha256": out_sha.hexdigest(), "records": kept},
            "dropped": [{"index": d["index"], "id": d["id"], "reason": d["reason"], "detail": d["detail"]}
                        for d in dropped],
            "counts": dict(sorted(counts.items())),
            "written": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }  # fmt: skip
        if not dry_run:
            # The sidecar first: stopped in between, the next fix finds a sidecar and may replace the file; the other
            # way round it would find a filtered file without one, and refuse to touch it.
            _write_synced(side_tmp, json.dumps(doc, indent=2).encode() + b"\n")
            os.replace(side_tmp, sidecar)
            os.replace(tmp, out)
            _fsync_dir(out.parent)
    finally:
        if sink is not None and not sink.closed:
            sink.close()
        tmp.unlink(missing_ok=True)  # renamed into place already, unless something above failed
        side_tmp.unlink(missing_ok=True)
    return {"file": out_rel, "sidecar": str(Path(out_rel).with_name(sidecar.name)), "records": kept,
            "dropped": len(dropped), "counts": doc["counts"], "written": not dry_run}  # fmt: skip


def fix(
    layout: Layout, run_verify: Any, *, write_filtered_files: bool = False, dry_run: bool = False,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """The whole fix: recover an interrupted one, verify, repair, verify the repaired images again, list (and
    optionally filter out) what still cannot be used. `run_verify(write_state)` returns a Verification."""
    root = layout.root
    recovered = [] if dry_run else recover(root)
    v: Verification = run_verify(not dry_run)
    actions = plan(v)
    if actions and not dry_run:
        if not v.writable:
            raise FixError(f"{root} is read-only: kit data fix writes the repaired images there and keeps the "
                           "originals under .kit-data/originals; run it as a user who may write there")
        jp = _journal_path(root)
        _write_synced(jp, json.dumps({"entries": [{"path": a.key, "kind": a.kind} for a in actions]}).encode())
        tick = Ticker(progress, "writing images as JPEG", len(actions), "images")
        for j, a in enumerate(actions):
            tick(j, a.key)
            apply(root, a)
        tick(len(actions), force=True)
        jp.unlink(missing_ok=True)
        v = run_verify(True)  # the changed images decode again; the rest come from the cache
    listing = unusable(v, actions if dry_run else None)
    filtered: dict[str, Any] = {}
    if write_filtered_files:
        for sp in layout.stages:
            entry = v.result["stages"][sp.stage]
            if listing.get(sp.stage) and entry.get("present") and not entry.get("error"):
                filtered[sp.stage] = write_filtered(root, sp.records, listing[sp.stage], dry_run, progress)
                filtered[sp.stage]["set"] = f"--set {sp.setting}={filtered[sp.stage]['file']}"
    return {
        "schema": "kit.data-fix/1", "data_root": str(root), "dry_run": dry_run, "recovered": recovered,
        "actions": [a.to_dict() for a in actions], "unusable": listing, "filtered": filtered,
        "manifest": v.result.get("manifest"), "ok": v.ok, "verification": v.result,
        "manifest_identity": manifest_mod.identity(manifest_mod.read(root)) if not dry_run and v.result.get(
            "manifest", {}).get("written") else None,
    }  # fmt: skip

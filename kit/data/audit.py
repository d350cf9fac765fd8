"""`kit data verify`: a data directory checked record by record and image by image, before hours of training.

Every record of each training stage's record file goes through the validator the case trains with (`case.data`,
kit/case/data.py); every image a record names is opened and decoded with Pillow as a loader does (`img.load()`: a
truncated file fails only there), in worker processes over all cores, a chunk of paths per task. The case says
where its files lie, which source each record and image belongs to, and the counts of a complete copy; this module
knows none of them. What it finds is written
into the data directory as the data manifest (kit/data/manifest.py), and what it decoded into a cache under
`DATA/.kit-data/` keyed by size and mtime, so a second verify of unchanged data only stats files.
"""

from __future__ import annotations

import codecs
import ctypes
import hashlib
import json
import os
import re
import resource
import signal
import stat
import struct
import sys
import time
import warnings
import zipfile
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from kit import __version__
from kit.case.data import Checkpoint, EvalSet, StageData
from kit.data import manifest as manifest_mod
from kit.data.identity import HashCache, folder_census
from kit.data.sources import Reference

STATE_DIR = ".kit-data"
CACHE_SCHEMA = "kit.data-verify-cache/1"  # the images' cache
# The record files' cache: /2 since a path out of the image folder is a bad record (a /1 entry named it as an image).
RECORDS_CACHE_SCHEMA = "kit.data-verify-records/2"
RESULT_SCHEMA = "kit.data-verify/1"
FIRST = 20  # examples kept per category in the result
SHOWN = 5  # examples printed per finding
KINDS = ("missing", "empty", "unreadable", "wrong-format")
FATAL = ("missing", "empty", "unreadable")  # a run stops on these (the loader cannot read the image)
# What Pillow must report for a file of each extension; MPO is a JPEG with extra frames (camera files).
EXPECTED_FORMATS = {
    ".jpg": ("JPEG", "MPO"), ".jpeg": ("JPEG", "MPO"), ".png": ("PNG",), ".gif": ("GIF",), ".bmp": ("BMP",),
    ".webp": ("WEBP",), ".tif": ("TIFF",), ".tiff": ("TIFF",),
}  # fmt: skip
# Where the image a record names as <stem>.jpg may lie instead, under another extension (`kit data fix` uses it).
SIBLING_SUFFIXES = (".gif", ".png", ".jpeg", ".JPG", ".JPEG", ".PNG", ".GIF")


class Progress(Protocol):
    """What the verification is doing, for a display: `what` (a phase: reading a record file, finding the changed
    images, decoding, counting folders), `done` of `total` in `unit` (bytes, images, folders; total 0: unknown), and a
    short `detail` ("312,000 records"). A call with done == total ends the phase. Called at most every few hundred
    milliseconds, so that no phase is silent for long (a 1 GB record file takes tens of seconds to read)."""

    def __call__(self, what: str, done: int, total: int, unit: str = "", detail: str = "") -> None: ...


PROGRESS_EVERY_S = 0.25  # the least time between two calls of one phase (the end is always reported)


class Ticker:
    """Calls `progress` for one phase, at most every PROGRESS_EVERY_S, always for the first and the last call."""

    def __init__(self, progress: Progress | None, what: str, total: int, unit: str) -> None:
        self.progress, self.what, self.total, self.unit = progress, what, total, unit
        self.last = 0.0

    def __call__(self, done: int, detail: str = "", force: bool = False) -> None:
        if self.progress is None:
            return
        now = time.monotonic()
        if force or done >= self.total or now - self.last >= PROGRESS_EVERY_S:
            self.progress(self.what, done, self.total, self.unit, detail)
            self.last = now


class VerifyError(Exception):
    """The request cannot be verified at all (no such directory, no Pillow): exit 2, the message says why."""


@dataclass(frozen=True)
class Layout:
    """Where a config lays out the case's data and weights, as the case declares them (kit/case/data.py), and the
    case's data protocol that validates the records and names their sources."""

    root: Path
    stages: tuple[StageData, ...]
    checkpoints: tuple[Checkpoint, ...]
    eval_set: EvalSet | None
    data: Any  # `case.data` (kit/case/data.py CaseData)
    case: str

    @classmethod
    def from_config(cls, root: Path, cfg: Any, case: Any) -> Layout:
        d = case.data
        return cls(Path(root), tuple(d.stages(cfg)), tuple(d.checkpoints(cfg)), d.eval_set(), d, case.name)

    def default_records(self, stage: str) -> str:
        """The stage's record file in the case's own layout (the reference's file name)."""
        return next((sd.records for sd in self.data.stages(None) if sd.stage == stage), "")


@dataclass
class Verification:
    """The result (JSON-able, `result`) and what `kit data fix` needs beyond it: every image's status, every
    record that names an image, every bad record."""

    layout: Layout
    result: dict[str, Any]
    statuses: dict[str, tuple[int, int, str, str, str]] = field(default_factory=dict)
    refs: dict[str, list[tuple[int, str | None, str]]] = field(default_factory=dict)  # stage -> (index, id, key)
    bad: dict[str, list[tuple[int, str | None, str, str]]] = field(default_factory=dict)  # stage -> (i, id, cat, why)
    writable: bool = True

    @property
    def ok(self) -> bool:
        return bool(self.result["ok"])


# ---- images ---------------------------------------------------------------------------------------------------


def _short(e: BaseException, limit: int = 160) -> str:
    text = f"{type(e).__name__}: {e}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_image(path: str) -> tuple[int, int, str, str, str]:
    """(size, mtime_ns, status, detail, format) of one image, decoded as the case's loader decodes it.

    status: ok | missing | empty | unreadable | wrong-format (decodes, but not as what its extension says).
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return -1, 0, "missing", "not found", ""
    except OSError as e:
        return -1, 0, "unreadable", _short(e), ""
    if not stat.S_ISREG(st.st_mode):
        return -1, 0, "unreadable", "not a regular file", ""
    if st.st_size == 0:
        return 0, st.st_mtime_ns, "empty", "0 bytes", ""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # palette transparency and large-image warnings: not our finding
            with Image.open(path) as img:
                fmt = img.format or ""
                img.load()  # the pixels, as the loader decodes them: a truncated file fails only here
    except Exception as e:  # noqa: BLE001 - whatever Pillow raises, the loader could not use the image
        return st.st_size, st.st_mtime_ns, "unreadable", _short(e), ""
    ext = os.path.splitext(path)[1].lower()
    want = EXPECTED_FORMATS.get(ext)
    if want and fmt not in want:
        return st.st_size, st.st_mtime_ns, "wrong-format", f"{fmt} bytes under a {ext} name", fmt
    return st.st_size, st.st_mtime_ns, "ok", "", fmt


def _check_chunk(root: str, keys: list[str]) -> tuple[list[tuple[int, int, str, str, str]], float]:
    """One task of the pool: a chunk of images, and the CPU seconds the worker spent on them."""
    t0 = time.process_time()
    out = [check_image(os.path.join(root, k)) for k in keys]
    return out, time.process_time() - t0


PR_SET_PDEATHSIG = 1


def _worker_setup(parent: int) -> None:
    """A decoding worker's first act: Ctrl-C is the parent's to handle (it stops the workers), SIGTERM and SIGHUP end
    the worker at once (not the parent's handlers, inherited through fork), and the kernel sends SIGKILL when the
    parent dies however it dies (Linux), so no worker is left behind, reparented to init and waiting forever."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # the parent died before the line above took effect
        os._exit(1)


def stop_pool(pool: ProcessPoolExecutor, grace: float = 5.0) -> None:
    """End a pool's workers now: queued work is dropped, each worker gets SIGTERM (SIGKILL after `grace`), and the
    pool reaps them. A plain shutdown would wait for every queued chunk to be decoded first."""
    procs = list((getattr(pool, "_processes", None) or {}).values())  # Python < 3.14 has no terminate_workers()
    for p in procs:
        if p.exitcode is None:
            p.terminate()
    deadline = time.monotonic() + grace
    while any(p.exitcode is None and p.is_alive() for p in procs) and time.monotonic() < deadline:
        time.sleep(0.05)
    for p in procs:
        if p.exitcode is None and p.is_alive():
            p.kill()
    pool.shutdown(wait=True, cancel_futures=True)


def default_jobs() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _chunk_size(n: int, jobs: int) -> int:
    """Enough tasks per worker for an even finish (about 16 each), few enough that a task's cost is negligible."""
    return max(4, min(256, n // max(1, jobs * 16) or 1))


def decode_images(
    root: Path, keys: list[str], jobs: int, progress: Progress | None = None
) -> tuple[dict[str, tuple[int, int, str, str, str]], dict[str, Any]]:
    """Decode these images (paths relative to root) over `jobs` processes; their statuses, and how it went."""
    out: dict[str, tuple[int, int, str, str, str]] = {}
    n = len(keys)
    stats: dict[str, Any] = {"decoded": n, "jobs": jobs, "wall_s": 0.0, "workers_cpu_s": 0.0}
    if not n:
        return out, stats
    t0 = time.monotonic()
    size = _chunk_size(n, jobs)
    chunks = [keys[i : i + size] for i in range(0, n, size)]
    done = 0
    tick = Ticker(progress, "decoding images", n, "images")
    if jobs <= 1:
        tick(0, force=True)
        cpu = 0.0
        for chunk in chunks:
            res, spent = _check_chunk(str(root), chunk)
            cpu += spent
            out.update(zip(chunk, res, strict=True))
            done += len(chunk)
            tick(done)
        stats["workers_cpu_s"] = cpu
    else:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        workers = min(jobs, len(chunks))
        pool = ProcessPoolExecutor(max_workers=workers, initializer=_worker_setup, initargs=(os.getpid(),))
        try:
            pending = {pool.submit(_check_chunk, str(root), chunk): chunk for chunk in chunks}
            tick(0, force=True)  # after the workers are forked: a progress display's thread must not be copied into them
            while pending:
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in finished:
                    chunk = pending.pop(fut)
                    res, _spent = fut.result()
                    out.update(zip(chunk, res, strict=True))
                    done += len(chunk)
                tick(done)
        except BaseException:  # Ctrl-C, SIGTERM/SIGHUP (raised as guard.Stop), a broken worker: none outlives this
            stop_pool(pool)
            raise
        pool.shutdown(wait=True)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the workers, reaped at the pool's shutdown
        stats["workers_cpu_s"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        stats["jobs"] = workers
    stats["wall_s"] = time.monotonic() - t0
    return out, stats


# ---- state under DATA/.kit-data ---------------------------------------------------------------------------------


def _state_writable(root: Path) -> bool:
    """Whether kit may keep its state (cache, manifest) in the data directory: a real write is attempted."""
    probe = root / STATE_DIR / f".probe.{os.getpid()}"
    try:
        (root / STATE_DIR).mkdir(exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
        test = root / f".{manifest_mod.MANIFEST_NAME}.probe.{os.getpid()}"
        test.write_bytes(b"")
        test.unlink()
    except OSError:
        return False
    return True


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _save_json(path: Path, doc: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(doc, separators=(",", ":")))
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)


# ---- records ----------------------------------------------------------------------------------------------------


def image_key(images_rel: str, image: str) -> str:
    """The image's path relative to the data root (the loader joins the stage's image root and the record's path)."""
    return os.path.normpath(os.path.join(images_rel, image)).replace(os.sep, "/")


READ_CHUNK = 4 << 20  # bytes of a record file read at a time (a real one is 1 GB: its progress moves by this)
_WS = re.compile(r"[ \t\n\r]*")
_NUMBER_CHARS = frozenset("0123456789.eE+-")


class _Text:
    """A UTF-8 file's text, held a window at a time for `iter_records`: positions count characters from the file's
    start (`base` + an index into `buf`), lines are counted as the window moves, for json's "line L column C"."""

    def __init__(self, f: BinaryIO, on_bytes: Callable[[bytes], None] | None) -> None:
        self.f, self.on_bytes = f, on_bytes
        self.utf8 = codecs.getincrementaldecoder("utf-8")()
        self.buf, self.pos, self.base, self.lines, self.eof = "", 0, 0, 0, False
        self.line_start = 0  # where the current line starts in the file, for the column of an error

    def more(self) -> bool:
        """Read on (at least a chunk, or as much as the window holds: a record longer than a chunk costs no rescans
        beyond a doubling); False at the end of the file."""
        if self.eof:
            return False
        data = self.f.read(max(READ_CHUNK, len(self.buf) - self.pos))
        if self.on_bytes is not None:
            self.on_bytes(data)
        dropped = self.buf[: self.pos]
        if (n := dropped.count("\n")) > 0:
            self.lines += n
            self.line_start = self.base + dropped.rfind("\n") + 1
        self.base += len(dropped)
        self.buf = self.buf[self.pos :] + self.utf8.decode(data, final=not data)
        self.pos = 0
        self.eof = not data
        return True

    def skip_ws(self) -> str:
        """The next character that is not whitespace ('' at the end of the file), not consumed."""
        while True:
            self.pos = _WS.match(self.buf, self.pos).end()
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self.more():
                return ""

    def error(self, msg: str, at: int) -> ValueError:
        """`msg: line L column C (char N)`, as json.load says it, for an index into the window."""
        line = self.lines + self.buf.count("\n", 0, at) + 1
        nl = self.buf.rfind("\n", 0, at)
        col = at - nl if nl >= 0 else self.base + at - self.line_start + 1
        return ValueError(f"{msg}: line {line} column {col} (char {self.base + at})")


def iter_records(f: BinaryIO, on_bytes: Callable[[bytes], None] | None = None) -> Iterator[Any]:
    """The records of a record file (a JSON list) one by one, as it is read: a 1 GB file is parsed with progress and
    without holding all its records at once. Every byte read is passed to `on_bytes` (its hash, the progress).
    ValueError with json's reason and place when the file is not one JSON list; the records before it were yielded."""
    t = _Text(f, on_bytes)
    dec = json.JSONDecoder()
    first = t.skip_ws()
    if first != "[":
        if not first:
            raise t.error("Expecting value", t.pos)
        while t.more():  # a JSON document, not a list: say what it is, as the loader would
            pass
        try:
            doc = json.loads(t.buf[t.pos :])
        except json.JSONDecodeError as e:
            raise t.error(e.msg, t.pos + e.pos) from None
        raise ValueError(f"expected a JSON list of records, got {type(doc).__name__}")
    t.pos += 1
    if t.skip_ws() == "]":
        t.pos += 1
    else:
        while True:
            t.skip_ws()
            try:
                rec, end = dec.raw_decode(t.buf, t.pos)
            except json.JSONDecodeError as e:
                if t.more():
                    continue  # the record runs on past the window: read on and parse it again
                raise t.error(e.msg, e.pos) from None
            if (not t.eof and isinstance(rec, (int, float)) and not isinstance(rec, bool)
                    and all(ch in _NUMBER_CHARS for ch in t.buf[end : end + 32]) and t.more()):
                continue  # a number at the window's end ("6." of "6.5e3") may go on in the next chunk
            yield rec
            t.pos = end
            c = t.skip_ws()
            t.pos += 1
            if c == "]":
                break
            if c != ",":
                raise t.error("Expecting ',' delimiter", t.pos - 1)
    if t.skip_ws():
        raise t.error("Extra data", t.pos)


def load_records(path: Path) -> list[Any]:
    """A record file: a JSON list. ValueError with the reason when it is not one."""
    with open(path, "rb") as f:
        return list(iter_records(f))


def _remember(hashes: HashCache, path: Path, st: os.stat_result, digest: str) -> str:
    """The digest computed while the file was read, kept in the hash cache as `HashCache.sha256` keeps its own
    (by resolved path, size and mtime): the file is read once, not once for the hash and once for the records."""
    hashes.entries[str(path.resolve())] = [st.st_size, st.st_mtime_ns, digest]
    hashes.dirty = True
    return digest


def _check_records(
    root: Path, sp: StageData, reference: Reference, hashes: HashCache, state: Path, save: bool,
    progress: Progress | None, data: Any,
) -> tuple[dict[str, Any], list[tuple[int, str | None, str]], list[tuple[int, str | None, str, str]]]:
    """One stage's record file: read once (hashed, parsed and validated record by record as the bytes come, with
    progress), or taken from the cache when its size and mtime are unchanged; the stage's entry, the records that
    name images, the bad records. `data` is the case's data protocol: its validator, ids, images and sources. A stage
    whose images come from several sources gets its records counted per source."""
    path = root / sp.records
    ref_count = reference.records.get(sp.stage)
    entry: dict[str, Any] = {"file": sp.records, "images_root": sp.images, "template": sp.template,
                             "reference": ref_count, "present": False}  # fmt: skip
    try:
        st = path.stat()
    except OSError:
        entry["error"] = "missing"
        return entry, [], []
    entry.update(present=True, bytes=st.st_size, mtime_ns=st.st_mtime_ns)
    cache_path = state / f"records-{sp.stage}.json"
    cached = _load_json(cache_path)
    key = {"schema": RECORDS_CACHE_SCHEMA, "file": sp.records, "bytes": st.st_size, "mtime_ns": st.st_mtime_ns,
           "template": sp.template, "images": sp.images}  # fmt: skip
    if isinstance(cached, dict) and all(cached.get(k) == v for k, v in key.items()):
        entry.update(cached["entry"], from_cache=True)
        refs = [(int(i), rid, k) for i, rid, k in cached["refs"]]
        bad = [(int(i), rid, cat, why) for i, rid, cat, why in cached["bad"]]
        return entry, refs, bad
    refs: list[tuple[int, str | None, str]] = []
    bad: list[tuple[int, str | None, str, str]] = []
    by_source: dict[str, int] = {}
    sha = hashlib.sha256()
    read = n = 0
    tick = Ticker(progress, f"reading the {sp.stage} records ({sp.records})", st.st_size, "bytes")

    def took(data: bytes) -> None:
        nonlocal read
        sha.update(data)
        read += len(data)
        tick(min(read, st.st_size - 1), f"{n:,} records")  # the phase ends once its last records are checked too

    try:
        with open(path, "rb") as f:
            tick(0, force=True)
            for n, rec in enumerate(iter_records(f, took), 1):  # `took` shows n, the records so far
                i = n - 1
                issue = data.record_issue(rec, sp.template)
                if issue is not None:
                    bad.append((i, data.record_id(rec), issue[0], issue[1]))
                image = data.image_of(rec)
                if image is not None and data.image_path_problem(image) is None:  # out of the folder: never opened
                    refs.append((i, data.record_id(rec), image_key(sp.images, image)))
                if not sp.images_source:
                    src = data.source_of(sp, rec)
                    by_source[src] = by_source.get(src, 0) + 1
    except (OSError, ValueError) as e:  # JSON, UTF-8 (UnicodeDecodeError) or the disk
        tick(st.st_size, "not a record file", force=True)
        entry["sha256"], _ = hashes.sha256(path)
        entry["error"] = f"not a record file: {_short(e, 240)}"
        return entry, [], []
    tick(st.st_size, f"{n:,} records", force=True)
    entry["sha256"] = _remember(hashes, path, st, sha.hexdigest())
    counts: dict[str, int] = {}
    for _, _, cat, _ in bad:
        counts[cat] = counts.get(cat, 0) + 1
    parsed = {"sha256": entry["sha256"], "records": n, "bad_records": counts,
              "images_referenced": len(refs)}  # fmt: skip
    if not sp.images_source:
        parsed["by_source"] = dict(sorted(by_source.items()))
    entry.update(parsed, from_cache=False)
    if save:
        _save_json(cache_path, {**key, "entry": parsed, "refs": refs, "bad": bad})
    return entry, refs, bad


# ---- weights and the eval set -----------------------------------------------------------------------------------


def safetensors_problem(path: Path) -> str | None:
    """Why a .safetensors file is not whole (its header must parse and its data end at the file's end), or None."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return f"{size} bytes: too short for a safetensors header"
            (n,) = struct.unpack("<Q", head)
            if n > 100 << 20 or 8 + n > size:
                return f"the header length ({n:,} bytes) runs past the file's {size:,} bytes"
            header = json.loads(f.read(n))
    except (OSError, ValueError) as e:
        return f"the header does not parse ({_short(e)})"
    if not isinstance(header, dict):
        return "the header is not a JSON object"
    end = 0
    for name, t in header.items():
        if name == "__metadata__":
            continue
        offsets = t.get("data_offsets") if isinstance(t, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
            return f"tensor {name!r} has no valid data_offsets"
        end = max(end, offsets[1])
    want = 8 + n + end
    if want != size:
        return f"the header says {want:,} bytes, the file holds {size:,} ({'truncated' if size < want else 'extra bytes'})"
    return None


def bin_problem(path: Path) -> str | None:
    """Why a torch .bin file is not whole: a zip archive (torch >= 1.6) must have its central directory at the end;
    an older pickle can only be checked for being non-empty."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        return f"cannot be read ({_short(e)})"
    if size == 0:
        return "0 bytes"
    if magic != b"PK\x03\x04":
        return None  # a legacy pickle: nothing more to check without torch
    try:
        with zipfile.ZipFile(path) as z:
            z.infolist()
    except (zipfile.BadZipFile, OSError) as e:
        return f"a truncated zip archive ({_short(e)})"
    return None


def check_checkpoint(d: Path, needs: tuple[str, ...] = ("config.json",)) -> dict[str, Any]:
    """A Hugging Face checkpoint directory: the files the case says it needs (a .json one must be a JSON object,
    any other not empty), the weight files (whole), the index's shards."""
    out: dict[str, Any] = {"path": str(d), "problems": [], "files": 0, "bytes": 0}
    problems: list[str] = out["problems"]
    if not d.is_dir():
        problems.append(f"missing folder {d}")
        return out
    for name in needs:
        p = d / name
        if name.endswith(".json"):
            try:
                if not isinstance(json.loads(p.read_text()), dict):
                    problems.append(f"{name} is not a JSON object")
            except FileNotFoundError:
                problems.append(f"{name} is missing")
            except (OSError, ValueError) as e:
                problems.append(f"{name} does not parse ({_short(e)})")
        elif not p.is_file():
            problems.append(f"{name} is missing")
        elif p.stat().st_size == 0:
            problems.append(f"{name} is empty")
    weights = sorted(p for p in d.iterdir() if p.suffix in (".safetensors", ".bin") and p.is_file())
    for index in sorted(d.glob("*.index.json")):
        try:
            wmap = json.loads(index.read_text()).get("weight_map")
            shards = sorted(set(wmap.values()))
        except (OSError, ValueError, AttributeError) as e:
            problems.append(f"{index.name} does not parse as a weight index ({_short(e)})")
            continue
        gone = [s for s in shards if not (d / s).is_file()]
        if gone:
            problems.append(f"{index.name} names {len(gone)} missing shard(s): {', '.join(gone[:SHOWN])}")
    if not weights:
        problems.append("no weight files (*.safetensors or *.bin)")
    for w in weights:
        why = safetensors_problem(w) if w.suffix == ".safetensors" else bin_problem(w)
        if why:
            problems.append(f"{w.name}: {why}")
        out["files"] += 1
        out["bytes"] += w.stat().st_size
    out["weights"] = [w.name for w in weights]
    return out


def check_eval_set(root: Path, ev: EvalSet) -> dict[str, Any]:
    """The eval set: every group's folder with its files (ev.files), each whole (a parquet file: PAR1 at both ends)."""
    out: dict[str, Any] = {"path": str(root), "groups": 0, "expected": len(ev.groups), "files": 0, "problems": []}
    if not root.is_dir():
        out["problems"].append(f"missing folder {root}")
        return out
    missing = []
    for group in ev.groups:
        files = sorted((root / group).glob(ev.files))
        if not files:
            missing.append(group)
            continue
        out["groups"] += 1
        for p in files:
            out["files"] += 1
            if p.suffix == ".parquet" and (why := parquet_problem(p)):
                out["problems"].append(f"{group}/{p.name}: {why}")
    if missing:
        out["problems"].insert(0, f"{len(missing)} of {len(ev.groups)} {ev.group_word} have no {ev.files}: "
                                  f"{', '.join(missing[:SHOWN])}{' ...' if len(missing) > SHOWN else ''}")
    return out


def parquet_problem(p: Path) -> str | None:
    """Why a parquet file is not whole (it starts and ends with PAR1), or None."""
    try:
        size = p.stat().st_size
        with open(p, "rb") as f:
            head = f.read(4)
            f.seek(max(0, size - 4))
            tail = f.read(4)
    except OSError as e:
        return f"cannot be read ({_short(e)})"
    if size < 12 or head != b"PAR1" or tail != b"PAR1":
        return (f"not a whole parquet file ({size:,} bytes, no PAR1 "
                f"{'at the start' if head != b'PAR1' else 'at the end: truncated'})")  # fmt: skip
    return None


def count_files(path: Path) -> int | None:
    """Files under a folder, recursively, from directory entries alone (no stat per file); None when absent."""
    return folder_census(path, sizes=False)["files"] if path.is_dir() else None


# ---- the whole verification -------------------------------------------------------------------------------------


def _sibling(root: Path, key: str) -> str | None:
    """For a missing <stem>.jpg: another file with the same stem that `kit data fix` can turn into it."""
    if not key.endswith(".jpg"):
        return None
    stem = key[: -len(".jpg")]
    for suffix in SIBLING_SUFFIXES:
        if (root / (stem + suffix)).is_file():
            return stem + suffix
    return None


def _finding(level: str, what: str, detail: str, fix: str = "", examples: list[str] | None = None, **data: Any) -> dict:
    return {"level": level, "what": what, "detail": detail, "fix": fix, "examples": examples or [], **data}


def _source_of_key(key: str, sp: StageData, data: Any) -> str:
    """The source of an image (a path under the data root), as the case says for its path under the stage's folder."""
    prefix = os.path.normpath(sp.images).replace(os.sep, "/")
    rel = key if prefix == "." or not key.startswith(prefix + "/") else key[len(prefix) + 1 :]
    return data.image_source(sp, rel)


def _image_problems(
    layout: Layout, refs: dict[str, list[tuple[int, str | None, str]]],
    statuses: dict[str, tuple[int, int, str, str, str]],
) -> dict[str, Any]:
    """Problems by kind and by source: files, records, and the first examples (stage, record index, id, path)."""
    out: dict[str, Any] = {}
    seen_files: set[tuple[str, str]] = set()
    for sp in layout.stages:
        for index, rid, key in refs.get(sp.stage, []):
            status, detail = statuses[key][2], statuses[key][3]
            if status == "ok":
                continue
            src = _source_of_key(key, sp, layout.data)
            kind = out.setdefault(status, {"total": 0, "records": 0, "by_source": {}})
            s = kind["by_source"].setdefault(src, {"files": 0, "records": 0, "first": []})
            kind["records"] += 1
            s["records"] += 1
            if (status, key) in seen_files:
                continue
            seen_files.add((status, key))
            kind["total"] += 1
            s["files"] += 1
            sib = _sibling(layout.root, key) if status == "missing" else None
            if sib:
                s["fixable"] = s.get("fixable", 0) + 1
                detail = f"not found; {sib} exists (kit data fix writes the .jpg from it)"
            if len(s["first"]) < FIRST:
                s["first"].append({"stage": sp.stage, "index": index, "id": rid, "path": key, "detail": detail})
    return out


def verify(
    layout: Layout,
    reference: Reference,
    *,
    models: Path | None = None,
    eval_data: Path | None = None,
    jobs: int | None = None,
    full: bool = False,
    progress: Progress | None = None,
    write_state: bool = True,
) -> Verification:
    """Verify the data directory; with write_state, keep the caches and write the manifest (when writable). The
    weights under `models` and the eval set (`eval_data`, else its folder under the data root) when given."""
    root = layout.root
    if not root.is_dir():
        raise VerifyError(f"--data {root}: no such directory; pass the directory `kit data fetch --data` filled")
    try:
        import PIL  # noqa: F401
    except ImportError:
        raise VerifyError("kit data verify decodes every image with Pillow, which is not installed: pip install pillow") from None
    jobs = jobs or default_jobs()
    t0 = time.monotonic()
    writable = _state_writable(root) if write_state else os.access(root, os.W_OK)
    save = write_state and writable  # the caches are read whenever they are there, written only with save
    state = root / STATE_DIR
    hashes = HashCache(state / "sha256.json")
    result: dict[str, Any] = {"schema": RESULT_SCHEMA, "case": layout.case, "data_root": str(root), "kit_version": __version__,
                              "stages": {}, "findings": []}  # fmt: skip
    findings: list[dict[str, Any]] = result["findings"]
    refs: dict[str, list[tuple[int, str | None, str]]] = {}
    bad: dict[str, list[tuple[int, str | None, str, str]]] = {}
    for sp in layout.stages:
        entry, refs[sp.stage], bad[sp.stage] = _check_records(root, sp, reference, hashes, state, save, progress,
                                                              layout.data)  # fmt: skip
        first: dict[str, list[dict[str, Any]]] = {}
        for i, rid, cat, why in bad[sp.stage]:
            if len(first.setdefault(cat, [])) < FIRST:
                first[cat].append({"index": i, "id": rid, "why": why})
        entry["bad_first"] = first
        result["stages"][sp.stage] = entry
    if save:
        hashes.save()

    # Every image once, however many records name it.
    keys = sorted({k for stage_refs in refs.values() for _, _, k in stage_refs})
    cache_path = state / "images.json"
    cached = _load_json(cache_path)
    entries: dict[str, list[Any]] = cached.get("entries", {}) if isinstance(cached, dict) and cached.get("schema") == CACHE_SCHEMA else {}
    statuses: dict[str, tuple[int, int, str, str, str]] = {}
    todo: list[str] = []
    base = str(root)
    tick = Ticker(progress, "finding the images changed since the last verify", len(keys), "images")
    tick(0, force=True)
    for j, k in enumerate(keys, 1):
        try:
            st = os.stat(os.path.join(base, k))
        except OSError:
            todo.append(k)  # missing or unreadable: check_image says which (no decoding)
            continue
        finally:
            if not j & 1023:  # a stat per image: 700,000 of them on a network file system take minutes
                tick(j, f"{len(todo):,} to decode")
        hit = entries.get(k)
        if not full and isinstance(hit, list) and len(hit) == 5 and hit[0] == st.st_size and hit[1] == st.st_mtime_ns:
            statuses[k] = tuple(hit)  # type: ignore[assignment]
        else:
            todo.append(k)
    tick(len(keys), f"{len(todo):,} to decode", force=True)
    cached_n = len(statuses)
    decoded, stats = decode_images(root, todo, jobs, progress)
    statuses.update(decoded)
    if save:
        for k, v in decoded.items():
            if v[2] == "missing":
                entries.pop(k, None)
            else:
                entries[k] = list(v)
        _save_json(cache_path, {"schema": CACHE_SCHEMA, "entries": entries})
    present = [(k, statuses[k][0]) for k in keys if statuses[k][0] >= 0]
    h = hashlib.sha256()
    for k, size in present:
        h.update(f"{k}\0{size}\n".encode())
    problems = _image_problems(layout, refs, statuses)
    result["images"] = {
        "referenced": sum(len(r) for r in refs.values()), "unique": len(keys), "present": len(present),
        "bytes": sum(size for _, size in present), "digest": h.hexdigest(),
        "decoded": sum(1 for k in todo if statuses[k][0] > 0), "checked": len(todo), "cached": cached_n,
        "jobs": stats["jobs"], "decode_wall_s": round(stats["wall_s"], 3),
        "workers_cpu_s": round(stats["workers_cpu_s"], 3), "problems": problems,
    }  # fmt: skip

    # Folders, weights, the eval set.
    declared = [(sp.images, rel) for sp in layout.stages for rel in sp.folders]
    declared += [(".", rel) for rel in reference.folders if rel not in {r for _, r in declared}]
    folders: dict[str, Any] = {}
    tick = Ticker(progress, "counting the files of the image folders", len(declared), "folders")
    for j, (images, rel) in enumerate(declared):
        tick(j, rel)
        key = image_key(images, rel)
        folders[key] = {"files": count_files(root / key), "reference": reference.folders.get(rel)}
    tick(len(declared), force=True)
    result["folders"] = folders
    result["weights"] = None
    if models is not None:
        result["weights"] = {"root": str(models), **{cp.part: check_checkpoint(Path(models) / cp.folder, cp.needs)
                                                     for cp in layout.checkpoints}}  # fmt: skip
    ev = layout.eval_set
    if eval_data is None and ev is not None and (root / ev.folder).is_dir():
        eval_data = root / ev.folder
    result["eval_data"] = check_eval_set(Path(eval_data), ev) if eval_data is not None and ev is not None else None

    findings.extend(_findings(layout, reference, result, bad, models))
    result["ok"] = not any(f["level"] == "fail" for f in findings)
    result["seconds"] = round(time.monotonic() - t0, 3)
    man = build_manifest(result)
    result["manifest"] = {"path": str(manifest_mod.path(root)), "digest": man["digest"], "written": False}
    if save:
        result["manifest"]["written"] = manifest_mod.write(root, man) is not None
    if write_state and not result["manifest"]["written"]:
        findings.append(_finding(
            "warn", "manifest",
            f"{root} is read-only: no data manifest written and no cache kept (the next verify decodes again)",
            "make the data directory writable for the user who runs kit, or run verify where it is",
        ))  # fmt: skip
    return Verification(layout, result, statuses, refs, bad, writable)


def _examples_records(stage: str, items: list[tuple[int, str | None, str, str]]) -> list[str]:
    return [f"{stage} record #{i} (id {rid!r}): {why}" for i, rid, _cat, why in items]


def _findings(
    layout: Layout, reference: Reference, result: dict[str, Any],
    bad: dict[str, list[tuple[int, str | None, str, str]]], models: Path | None,
) -> list[dict[str, Any]]:
    """What the report says, worst first within each part: fail (a run would stop), warn, info."""
    categories: dict[str, tuple[str, str]] = layout.data.CATEGORIES
    out: list[dict[str, Any]] = []
    root = layout.root
    for sp in layout.stages:
        e = result["stages"][sp.stage]
        name = f"{sp.stage} records"
        only = f" --only {sp.records_source}" if sp.records_source else ""
        if not e["present"]:
            out.append(_finding("fail", name, f"missing: {root / sp.records}",
                                f"kit data fetch --data {root}{only} (or --set {sp.setting}=PATH)"))
            continue
        if e.get("error"):
            out.append(_finding("fail", name, f"{root / sp.records}: {e['error']}",
                                f"download the file again: kit data fetch{only}"))
            continue
        n, ref = e["records"], e["reference"]
        if ref is None:
            out.append(_finding("info", name, f"{n:,} records ({sp.records}; no reference count)"))
        elif n == ref:
            out.append(_finding("info", name, f"{n:,} records, as the reference ({sp.records})"))
        else:
            diff = n - ref
            out.append(_finding(
                "warn", name,
                f"{n:,} records in {sp.records}, {abs(diff):,} {'more' if diff > 0 else 'fewer'} than the reference's "
                f"{ref:,}: results will not compare one to one",
                "download the reference version of the file (a truncated download is the usual cause)",
            ))  # fmt: skip
        for cat, count in sorted(e.get("bad_records", {}).items()):
            what, reference_does = categories.get(cat, (cat, "?"))
            first = [b for b in bad[sp.stage] if b[2] == cat][:FIRST]
            out.append(_finding(
                "fail", f"{sp.stage} records: {cat}",
                f"{count:,} record(s) in {sp.records}: {what} (the reference {reference_does})",
                f"kit data fix --data {root} --write-filtered writes a file without them; or data.skip_bad_records",
                _examples_records(sp.stage, first), category=cat, count=count,
            ))  # fmt: skip
        by_source = reference.by_source.get(sp.stage)
        if by_source and "by_source" in e:
            diffs = []
            for src in sorted(set(by_source) | set(e["by_source"])):
                have, want = e["by_source"].get(src, 0), by_source.get(src, 0)
                if have != want:
                    diffs.append(f"{src} {have:,} (reference {want:,})")
            if diffs:
                out.append(_finding("warn", f"{sp.stage} records by source", "; ".join(diffs),
                                    f"the reference {layout.default_records(sp.stage)} holds the reference's counts"))
            else:
                out.append(_finding("info", f"{sp.stage} records by source", "as the reference"))
    images = result["images"]
    stages = {sp.stage: sp for sp in layout.stages}
    for kind in KINDS:
        p = images["problems"].get(kind)
        if not p:
            continue
        for src, s in sorted(p["by_source"].items()):
            examples = [f"{x['stage']} record #{x['index']} (id {x['id']!r}): {x['path']}: {x['detail']}" for x in s["first"]]
            level = "warn" if kind == "wrong-format" else "fail"
            sp = stages.get(s["first"][0]["stage"]) if s["first"] else None
            fix = {
                "missing": f"kit data fetch --data {root} --only {sp.images_source}" if sp and sp.images_source
                           else f"download the {src} images again (kit data fetch --data {root} --only {src})",
                "empty": f"download these {src} images again; or kit data fix --data {root} --write-filtered",
                "unreadable": f"download these {src} images again; or kit data fix --data {root} --write-filtered",
                "wrong-format": f"kit data fix --data {root} rewrites them as JPEG (it keeps the originals)",
            }[kind]  # fmt: skip
            if s.get("fixable"):
                fix = (f"kit data fix --data {root} writes {s['fixable']:,} of them from a file with the same stem and "
                       f"another extension" + ("; " + fix if s["fixable"] < s["files"] else ""))
            out.append(_finding(
                level, f"images: {kind}",
                f"{src}: {s['files']:,} {kind} file(s) named by {s['records']:,} record(s)"
                + (" (Pillow reads them, the reference's tools may not)" if kind == "wrong-format" else ""),
                fix, examples, kind=kind, source=src, files=s["files"], records=s["records"],
            ))  # fmt: skip
    if not any(images["problems"].get(k) for k in KINDS):
        out.append(_finding("info", "images", f"all {images['unique']:,} images named by {images['referenced']:,} "
                                               "records are present and decode"))
    for rel, f in result["folders"].items():
        ref = f["reference"]
        if f["files"] is None:
            out.append(_finding("info", f"folder {rel}", "absent" + (f" (reference: {ref:,} files)" if ref is not None else "")))
        else:
            note = "as the reference" if f["files"] == ref else f"reference: {ref:,}" if ref is not None else "no reference"
            out.append(_finding("info", f"folder {rel}", f"{f['files']:,} files ({note})"))
    if result["weights"] is not None:
        for cp in layout.checkpoints:
            w = result["weights"][cp.part]
            if w["problems"]:
                only = f" --only {cp.source}" if cp.source else ""
                out.append(_finding("fail", cp.label, f"{w['path']}: " + "; ".join(w["problems"]),
                                    f"download the checkpoint again: kit data fetch --models {models}{only}"))
            else:
                out.append(_finding("info", cp.label, f"{w['path']}: {w['files']} weight file(s), "
                                                      f"{w['bytes'] / 1e9:.2f} GB, whole"))
    else:
        out.append(_finding("info", "weights", "not checked (pass --models DIR)"))
    ev = layout.eval_set
    if ev is None:
        return out
    if result["eval_data"] is not None:
        m = result["eval_data"]
        if m["problems"]:
            only = f" --only {ev.source}" if ev.source else ""
            out.append(_finding("fail", ev.name, f"{m['path']}: " + "; ".join(m["problems"][:SHOWN]),
                                f"download {ev.name} again: kit data fetch --data {root}{only}"))
        else:
            kind = Path(ev.files).suffix.lstrip(".") or "data"
            out.append(_finding("info", ev.name, f"{m['groups']} {ev.group_word}, {m['files']} {kind} file(s), whole"))
    else:
        out.append(_finding("info", ev.name, f"not checked (no {root / ev.folder}; pass --eval-data DIR)"))
    return out


def build_manifest(result: dict[str, Any]) -> dict[str, Any]:
    """The manifest's content from a verification result (kit/data/manifest.py documents the fields)."""
    stages = {}
    for stage, e in result["stages"].items():
        stages[stage] = {
            "file": e["file"], "images_root": e["images_root"], "template": e["template"], "present": e["present"],
            "bytes": e.get("bytes"), "mtime_ns": e.get("mtime_ns"), "sha256": e.get("sha256"),
            "records": e.get("records"), "reference": e["reference"], "bad_records": e.get("bad_records", {}),
            "images_referenced": e.get("images_referenced", 0),
            **({"by_source": e["by_source"]} if "by_source" in e else {}),
            **({"error": e["error"]} if e.get("error") else {}),
        }  # fmt: skip
    im = result["images"]
    images = {
        "referenced": im["referenced"], "unique": im["unique"], "present": im["present"], "bytes": im["bytes"],
        "digest": im["digest"],
        "problems": {k: {"total": v["total"], "records": v["records"],
                         "by_source": {s: x["files"] for s, x in v["by_source"].items()}}
                     for k, v in im["problems"].items()},
    }  # fmt: skip
    doc = {
        "schema": manifest_mod.SCHEMA, "case": result["case"],
        "written": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "kit_version": result["kit_version"], "data_root": result["data_root"], "stages": stages, "images": images,
        "folders": result["folders"], "weights": _compact_weights(result["weights"]), "eval_data": result["eval_data"],
        "ok": result["ok"],
    }  # fmt: skip
    doc["digest"] = manifest_mod.digest_of(stages, images)
    return doc


def _compact_weights(w: dict[str, Any] | None) -> dict[str, Any] | None:
    if w is None:
        return None
    return {"root": w["root"], **{p: {k: v[k] for k in ("path", "files", "bytes", "problems") if k in v}
                                  for p, v in w.items() if p != "root"}}

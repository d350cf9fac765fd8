"""`kit data fetch`: every source of the case's data-sources.toml into the layout `kit run --data/--models` reads.

The case names the file (`case.data.SOURCES`, kit/case/data.py) and the record files whose image paths say which
covers to fetch; every URL, folder and checksum is in the file, none here.

About 700,000 files from seven hosts: each source is planned (the hub's listing, a HEAD for sizes), the free disk
is checked for all of them before the first byte, then each is downloaded resumably (kit/data/http.py), checked
against the published or the hub's checksum, and unpacked so that a folder appears only when it is whole. What
was fetched is recorded in `<root>/.kit-data/fetch-state.json`, so a second run finds it done without a request.

Kept under `<root>/.kit-data/`: downloads/<source>/ (partial downloads, `.part` plus a sidecar), bad/ (files that
failed a check: never used, never unpacked), replaced/ (a file that was in the way), fetch-state.json (what is
done, with the sha256 and md5 of every downloaded file), <covers source>-missing.json (covers that cannot be had).
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import queue
import re
import shutil
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, Task, TextColumn, TimeRemainingColumn
from rich.text import Text

from kit import __version__
from kit.case import data as case_data
from kit.data import http
from kit.data.sources import Source, Sources, SourcesError

STATE_SCHEMA = "kit.fetch-state/1"
KIT_DIR = ".kit-data"
DISK_MARGIN = 0.05
COVER_RETRIES = 2
PLAIN_EVERY_S = 10.0
SHOWN = 5
# macOS metadata that some zips carry: never a part of the data.
SKIP_ENTRIES = ("__MACOSX/",)


class UsageError(Exception):
    """A command line or sources file that cannot be used (exit 2)."""


class FetchError(Exception):
    """Nothing can start (free disk, a lock): the message says why and what to do (exit 1)."""


class SourceFailure(Exception):
    """One source failed; the others go on. `fix` says what to do."""

    def __init__(self, message: str, fix: str) -> None:
        super().__init__(message)
        self.fix = fix


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _stamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")


@dataclass
class Options:
    data: Path | None
    models: Path | None = None
    only: list[str] = field(default_factory=list)
    urls: dict[str, str] = field(default_factory=dict)
    mirror: str = ""
    hf_endpoint: str = ""
    keep_archives: bool = False
    jobs: int = 16
    case: str | None = None  # None: the only case registered
    sources_file: Path | None = None
    dry_run: bool = False
    unreachable: dict[str, SourceFailure] = field(default_factory=dict)  # hub endpoints that did not answer


@dataclass
class Item:
    """One file to download."""

    url: str
    rel: str  # where it goes, relative to the root
    part: Path  # the partial download
    size: int | None  # exact when the server or the listing says
    estimate: int = 0  # for the disk check when the size is unknown
    md5: str = ""  # expected (published)
    sha256: str = ""  # expected (published, or the hub's LFS sha256)
    git_oid: str = ""  # expected (the hub's blob id of a file outside LFS)
    origin: str = ""  # "published" or "hub"
    headers: dict[str, str] = field(default_factory=dict)
    archive: bool = False
    complete: bool = False  # already downloaded and recorded: not downloaded again


@dataclass
class Outcome:
    name: str
    status: str  # fetched | already there | failed | skipped | would fetch
    size: int = 0
    checksum: str = ""
    where: str = ""
    message: str = ""
    fix: str = ""
    warning: str = ""


@dataclass
class Job:
    source: Source
    root: Path
    items: list[Item] = field(default_factory=list)
    need: int = 0  # bytes of disk still needed
    index_url: str = ""  # covers


# ---------------------------------------------------------------- state


class State:
    """`<root>/.kit-data/fetch-state.json`: the sources that are done and every file downloaded, with checksums."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.path = root / KIT_DIR / "fetch-state.json"
        self.data: dict = {"schema": STATE_SCHEMA, "sources": {}, "files": {}}
        try:
            raw = json.loads(self.path.read_text())
            if isinstance(raw, dict) and raw.get("schema") == STATE_SCHEMA:
                self.data = {"schema": STATE_SCHEMA, "sources": dict(raw.get("sources") or {}), "files": dict(raw.get("files") or {})}
        except (OSError, ValueError):
            pass  # none yet, or damaged: everything is checked again
        self.lock = threading.Lock()

    def save(self) -> None:
        with self.lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            http._write_json(self.path, self.data)

    def file(self, rel: str) -> dict:
        return self.data["files"].get(rel) or {}

    def record_file(self, rel: str, entry: dict) -> None:
        self.data["files"][rel] = entry
        self.save()

    def record_source(self, name: str, outputs: list[dict], **extra) -> None:
        self.data["sources"][name] = {"fetched": utc_now(), "outputs": outputs, **extra}
        self.save()

    def done(self, name: str) -> bool:
        """Recorded as done and every output still there (a folder not empty, a file with its recorded size)."""
        entry = self.data["sources"].get(name)
        if not isinstance(entry, dict) or not entry.get("outputs"):
            return False
        for out in entry["outputs"]:
            p = self.root / out.get("path", "")
            if out.get("kind") == "dir":
                if not p.is_dir() or not any(p.iterdir()):
                    return False
            elif not p.is_file() or p.stat().st_size != out.get("size"):
                return False
        return True


def _kit(root: Path, *parts: str) -> Path:
    return root.joinpath(KIT_DIR, *parts)


def _put_aside(root: Path, path: Path, folder: str = "bad") -> Path:
    """Move a file out of the way, kept: `<root>/.kit-data/<folder>/<name>.<UTC time>`."""
    target = _kit(root, folder, f"{path.name}.{_stamp()}")
    http.move(path, target)
    http.sidecar(path).unlink(missing_ok=True)
    return target


@contextlib.contextmanager
def _locked(roots: list[Path]):
    """One `kit data fetch` per root at a time: two would write the same partial files."""
    import fcntl

    handles = []
    try:
        for root in roots:
            p = _kit(root, "fetch.lock")
            p.parent.mkdir(parents=True, exist_ok=True)
            f = open(p, "a+")  # noqa: SIM115 - held until the end of the fetch
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                f.close()
                raise FetchError(f"another `kit data fetch` is writing into {root} (it holds {p}); wait for it to end, "
                                 "or stop it: the next run continues where it stopped") from None
            handles.append(f)
        yield
    finally:
        for f in handles:
            f.close()


# ---------------------------------------------------------------- selection and URLs


def _parse_urls(pairs: list[str], example: str = "SOURCE") -> dict[str, str]:
    urls = {}
    for pair in pairs:
        name, sep, url = pair.partition("=")
        if not sep or not name or not url:
            raise UsageError(f"--url {pair!r}: expected SOURCE=URL, e.g. --url {name or example}="
                             "https://mirror.example/FILE.zip")
        urls[name] = url
    return urls


def _check_scheme(what: str, url: str) -> None:
    if urlparse(url).scheme not in ("http", "https", "file"):
        raise UsageError(f"{what} {url!r}: expected an http://, https:// or file:// URL")


def select(opts: Options, urls: list[str] | None = None) -> tuple[Sources, list[Source], list[Source]]:
    """The sources file, the sources to fetch, and those left out for want of --models."""
    try:
        case = case_data.choose(opts.case)
    except KeyError as e:
        raise UsageError(str(e)) from None
    opts.case = case.name
    try:
        srcs = case_data.sources(case, opts.sources_file)
    except SourcesError as e:
        raise UsageError(str(e)) from None
    opts.sources_file = srcs.path  # named in messages
    if urls is not None:
        opts.urls = _parse_urls(urls, next((s.name for s in srcs.sources if s.kind != "hub"), "SOURCE"))
    unknown = [n for n in opts.only if n not in srcs.names]
    if unknown:
        raise UsageError(f"--only {', '.join(unknown)}: no such source in {srcs.path}; known: {', '.join(srcs.names)}")
    for name, url in opts.urls.items():
        if name not in srcs.names:
            raise UsageError(f"--url {name}=...: no such source in {srcs.path}; known: {', '.join(srcs.names)}")
        if srcs.get(name).kind == "hub":
            raise UsageError(f"--url {name}=...: {name} is a Hugging Face source; serve it from a hub mirror with "
                             "--hf-endpoint URL (or HF_ENDPOINT)")
        _check_scheme(f"--url {name}=", url)
    if opts.mirror:
        _check_scheme("--mirror", opts.mirror)
    if opts.hf_endpoint and urlparse(opts.hf_endpoint).scheme not in ("http", "https"):
        raise UsageError(f"--hf-endpoint {opts.hf_endpoint!r}: expected an http:// or https:// URL")
    if opts.jobs < 1:
        raise UsageError(f"--jobs {opts.jobs}: must be at least 1")
    chosen = [s for s in srcs.sources if not opts.only or s.name in opts.only]
    if opts.data is None and any(s.root == "data" for s in chosen):
        raise UsageError("--data DIR is needed: the folder the data goes into (what `kit run --data` reads)")
    left_out = [s for s in chosen if s.root == "models" and opts.models is None]
    if left_out and opts.only:
        raise UsageError(f"{', '.join(s.name for s in left_out)}: weights go under --models DIR; pass it, or leave them out of --only")
    return srcs, [s for s in chosen if s not in left_out], left_out


def root_of(src: Source, opts: Options) -> Path:
    root = opts.data if src.root == "data" else opts.models
    assert root is not None
    return Path(root).expanduser().absolute()


def _basename(url: str, fallback: str) -> str:
    name = unquote(urlparse(url).path.rstrip("/").rsplit("/", 1)[-1])
    return name if name and name not in (".", "..") else fallback


def source_url(src: Source, opts: Options) -> str:
    """--url NAME=URL, else the mirror's `<mirror>/<name>/<file name>`, else the sources file's URL."""
    if src.name in opts.urls:
        return opts.urls[src.name]
    if opts.mirror:
        fallback = COVERS_INDEX if src.kind == "covers" else f"{src.name}.zip"
        return f"{opts.mirror.rstrip('/')}/{src.name}/{_basename(src.url, fallback)}"
    return src.url


def hf_endpoint(opts: Options) -> str:
    if opts.hf_endpoint:
        return opts.hf_endpoint.rstrip("/")
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def _where(src: Source) -> str:
    return src.yields or src.unpack or src.dest


def present(src: Source, root: Path) -> bool:
    """An unpacked source whose folder is there though this kit did not fetch it (a copy assembled by hand)."""
    if src.kind == "covers" or not src.unpack or not src.yields:
        return False
    p = root / src.yields
    return p.is_dir() and any(p.iterdir())


# ---------------------------------------------------------------- planning


def _access_message(src: Source, endpoint: str, code: int | None) -> SourceFailure:
    page = f"{endpoint}/{'datasets/' if src.repo_type == 'dataset' else ''}{src.repo}"
    from huggingface_hub.utils import build_hf_headers

    has_token = "authorization" in {k.lower() for k in build_hf_headers()}
    token = "the token that is set has no access to it" if has_token else "no Hugging Face token is set"
    return SourceFailure(
        f"{src.repo}: access denied (HTTP {code}) at {endpoint}: the repository is gated or private and {token}",
        f"open {page} while logged in and accept its terms, then `hf auth login` (or export HF_TOKEN=hf_...) and run again",
    )


def _hub_items(src: Source, root: Path, endpoint: str, unreachable: dict[str, SourceFailure]) -> list[Item]:
    from huggingface_hub import HfApi, hf_hub_url
    from huggingface_hub.hf_api import RepoFile
    from huggingface_hub.utils import build_hf_headers


    if endpoint in unreachable:  # one wait for a hub that does not answer is enough
        first = unreachable[endpoint]
        raise SourceFailure(str(first), first.fix)
    try:
        entries = [e for e in HfApi(endpoint=endpoint).list_repo_tree(
            src.repo, recursive=True, revision=src.revision, repo_type=src.repo_type) if isinstance(e, RepoFile)]
    except Exception as e:  # noqa: BLE001 - every hub error becomes the source's failure, with its fix
        code = getattr(getattr(e, "response", None), "status_code", None)
        if code in (401, 403) or type(e).__name__ == "GatedRepoError":
            raise _access_message(src, endpoint, code) from None
        if code == 404:
            raise SourceFailure(f"{src.repo} ({src.repo_type}, revision {src.revision}) is not found at {endpoint}",
                                "check the repo in the sources file, or the hub mirror (--hf-endpoint / HF_ENDPOINT)") from None
        failure = SourceFailure(f"cannot reach the Hugging Face hub at {endpoint} ({type(e).__name__}: {http._short(e)})",
                                "check the network, or use a hub mirror: --hf-endpoint URL (or HF_ENDPOINT)")
        if code is None:
            unreachable[endpoint] = failure
        raise failure from None
    by_path = {e.path: e for e in entries}
    if src.files:
        absent = [f for f in src.files if f not in by_path]
        if absent:
            raise SourceFailure(f"{src.repo}: no file {', '.join(absent)} at revision {src.revision} ({endpoint})",
                                "check the files in the sources file against the repository's file list")
        chosen = list(src.files)
    else:
        chosen = sorted(p for p in by_path if any(fnmatch.fnmatch(p, pat) for pat in src.allow))
        if not chosen:
            raise SourceFailure(f"{src.repo}: no file matches {', '.join(src.allow)} ({endpoint})",
                                "check the allow patterns in the sources file")
    if src.prefer == "safetensors" and any(p.endswith(".safetensors") for p in chosen):
        chosen = [p for p in chosen if not (p.endswith(".bin") or p.endswith(".bin.index.json"))]
    headers = build_hf_headers(library_name="kit", library_version=__version__)
    items = []
    for path in chosen:
        e = by_path[path]
        lfs = getattr(e, "lfs", None)
        sha = (lfs.get("sha256") if isinstance(lfs, dict) else getattr(lfs, "sha256", "")) if lfs else ""
        rel = str(Path(src.dest) / path) if src.dest != "." else path
        archive = bool(src.unpack) and path.endswith(".zip")
        items.append(Item(
            hf_hub_url(src.repo, path, repo_type=src.repo_type, revision=src.revision, endpoint=endpoint), rel,
            _kit(root, "downloads", src.name, path + ".part"), int(e.size), sha256=sha or "",
            git_oid="" if sha else str(e.blob_id or ""), origin="hub", headers=headers, archive=archive,
        ))  # fmt: skip
    if src.unpack and not any(i.archive for i in items):
        raise SourceFailure(f"{src.name}: 'unpack' is set but none of {', '.join(chosen)} is a .zip archive",
                            "only zip archives are unpacked: fix the sources file")
    return items


def plan(src: Source, root: Path, opts: Options, dl: http.Downloader, state: State) -> Job:
    """What this source still needs: its files, their URLs and sizes, and the disk they take; SourceFailure."""
    job = Job(src, root)
    if src.kind == "hub":
        job.items = _hub_items(src, root, hf_endpoint(opts), opts.unreachable)
    elif src.kind == "http":
        url = source_url(src, opts)
        name = _basename(url, f"{src.name}.zip")
        size = dl.size(url)
        job.items = [Item(url, str(Path(src.dest) / name) if src.dest != "." else name,
                          _kit(root, "downloads", src.name, name + ".part"), size, estimate=src.bytes,
                          md5=src.md5, sha256=src.sha256, origin="published", archive=True)]
    else:
        url = source_url(src, opts)
        if not url:
            where = f" from the link on {src.home}" if src.home else ""
            raise SourceFailure(
                f"{src.name}: no URL for {_index_name(src)} (the index of the cover URLs) in {opts.sources_file}",
                f"download {COVERS_INDEX}{where}, then pass it: "
                f"--url {src.name}=file:///path/to/{COVERS_INDEX} (or an http(s) URL, or --mirror URL)")
        job.index_url = url
        job.need = src.bytes
        return job
    per_file = src.bytes // max(1, len(job.items))
    for item in job.items:
        item.estimate = item.estimate or per_file
        _mark_complete(item, root, state)
    todo = [i for i in job.items if not i.complete]
    have = sum(i.part.stat().st_size for i in todo if i.part.is_file())
    job.need = max(0, sum(i.size if i.size is not None else i.estimate for i in todo) - have)
    if src.unpack:
        job.need += src.unpacked_bytes
    return job


def _mark_complete(item: Item, root: Path, state: State) -> None:
    """A file downloaded and checked by an earlier run (its record and its size agree) is not downloaded again."""
    final = root / item.rel
    rec = state.file(item.rel)
    if not final.is_file():
        return
    size = final.stat().st_size
    expected = item.sha256 or item.md5
    recorded = rec.get("sha256") if item.sha256 else rec.get("md5")
    if rec and rec.get("size") == size and (item.size in (None, size)) and (not expected or recorded == expected):
        item.complete = True


# ---------------------------------------------------------------- disk


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def disk_rows(jobs: list[Job]) -> list[tuple[Path, int, int, list[str]]]:
    """Per filesystem (data and models may share one): a root on it, the bytes needed, the bytes free, the sources."""
    by_dev: dict[int, tuple[Path, int, list[str]]] = {}
    for job in jobs:
        dev = _existing(job.root).stat().st_dev
        first, need, names = by_dev.get(dev, (job.root, 0, []))
        by_dev[dev] = (first, need + job.need, names + ([job.source.name] if job.need else []))
    return [(root, need, shutil.disk_usage(_existing(root)).free, names) for root, need, names in by_dev.values()]


def check_disk(jobs: list[Job]) -> list[tuple[Path, int, int, list[str]]]:
    """The bytes the jobs need (with a 5% margin) against the free bytes, per filesystem; FetchError when short."""
    rows = disk_rows(jobs)
    for root, need, free, names in rows:
        if need * (1 + DISK_MARGIN) > free:
            raise FetchError(
                f"not enough free disk under {root}: the sources to fetch ({', '.join(names)}) need {http.human(need)} "
                f"({need:,} bytes, archives plus unpacked) plus a {DISK_MARGIN:.0%} margin, and {http.human(free)} "
                f"({free:,} bytes) are free; free some space, pass another --data/--models, or fetch fewer sources at "
                "a time with --only NAME ... (--keep-archives needs more)")
    return rows


# ---------------------------------------------------------------- progress


class _Amount(ProgressColumn):
    def render(self, task: Task) -> Text:
        if task.fields.get("unit") == "files":
            total = "?" if task.total is None else f"{task.total:,.0f}"
            return Text(f"{task.completed:,.0f}/{total} files")
        return Text(f"{http.human(task.completed)}/{http.human(task.total)}")


class _Speed(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        if speed is None:
            return Text("")
        return Text(f"{speed:,.0f} files/s" if task.fields.get("unit") == "files" else f"{http.human(speed)}/s")


class Display:
    """A Rich bar per file and one overall on a terminal; plain complete lines otherwise (logs, CI, pipes)."""

    def __init__(self, console: Console, total: int) -> None:
        self.console = console
        self.live = console.is_terminal
        self.lock = threading.Lock()
        self.done: dict[str, int] = {}
        self.totals: dict[str, int | None] = {}
        self.tasks: dict[str, int] = {}
        self.labels: dict[str, str] = {}
        self.overall_done = 0
        self.overall_total = total
        self.started = time.monotonic()
        self.last_line = time.monotonic()
        self.progress = None
        if self.live:
            self.progress = Progress(TextColumn("{task.description}"), BarColumn(), _Amount(), _Speed(),
                                     TimeRemainingColumn(), console=console)
            self.overall = self.progress.add_task("[bold]all sources", total=total or None)

    def __enter__(self) -> Display:
        if self.progress:
            self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.progress:
            self.progress.stop()

    def line(self, text: str) -> None:
        self.console.print(text, soft_wrap=True, highlight=False, markup=False)

    def start(self, key: str, label: str, total: int | None, unit: str = "bytes") -> None:
        with self.lock:
            self.done[key], self.totals[key], self.labels[key] = 0, total, label
            if self.progress:
                self.tasks[key] = self.progress.add_task(label, total=total, unit=unit)
            else:
                self.line(f"{label}: started ({http.human(total) if unit == 'bytes' else f'{total:,} files'})")

    def update(self, key: str, done: int, total: int | None, counts_bytes: bool = True) -> None:
        with self.lock:
            delta = done - self.done.get(key, 0)
            self.done[key] = done
            if counts_bytes:
                self.overall_done += delta
            if self.progress:
                self.progress.update(self.tasks[key], completed=done, total=total)
                if counts_bytes:
                    self.progress.update(self.overall, completed=self.overall_done)
            elif time.monotonic() - self.last_line >= PLAIN_EVERY_S:
                self.last_line = time.monotonic()
                rate = self.overall_done / max(1e-6, time.monotonic() - self.started)
                what = f"{http.human(done)} of {http.human(total)}" if counts_bytes else f"{done:,} of {total:,} files"
                self.line(f"{self.labels[key]}: {what}; all: {http.human(self.overall_done)} of "
                          f"{http.human(self.overall_total)} at {http.human(rate)}/s")

    def add_bytes(self, n: int) -> None:
        """Bytes that were not planned (covers): they count in the overall bar's progress and total."""
        with self.lock:
            self.overall_done += n
            self.overall_total += n
            if self.progress:
                self.progress.update(self.overall, completed=self.overall_done, total=self.overall_total)

    def finish(self, key: str, note: str) -> None:
        with self.lock:
            if self.progress:
                self.progress.remove_task(self.tasks.pop(key))
                self.progress.console.print(f"{self.labels[key]}: {note}", soft_wrap=True, highlight=False, markup=False)
            else:
                self.line(f"{self.labels[key]}: {note}")


# ---------------------------------------------------------------- execution


def _checksum(item: Item, res: http.Result) -> tuple[str, str, str]:
    """(state, expected, got) of a finished download; state 'mismatch' when a known checksum differs."""
    if item.sha256:
        ok = res.sha256 == item.sha256
        return (f"matched {item.origin} sha256" if ok else "mismatch"), item.sha256, res.sha256
    if item.md5:
        ok = res.md5 == item.md5
        return (f"matched {item.origin} md5" if ok else "mismatch"), item.md5, res.md5
    if item.git_oid:
        got = http.git_blob_oid(res.path)
        return ("matched hub git oid" if got == item.git_oid else "mismatch"), item.git_oid, got
    return "recorded", "", ""


def _download(item: Item, job: Job, state: State, dl: http.Downloader, display: Display) -> str:
    """One file downloaded, checked, moved into place and recorded; returns its checksum state."""
    src, root = job.source, job.root
    final = root / item.rel
    key = f"{src.name}:{item.rel}"
    if final.is_file() and item.size == final.stat().st_size and (item.sha256 or item.md5 or item.git_oid):
        found = _found_in_place(item, final, state, src.name)  # e.g. a copy another tool downloaded
        if found:
            display.line(f"{src.name} {item.rel}: found in place, {found}")
            return found
    display.start(key, f"{src.name} {item.rel}", item.size)
    try:
        res = dl.download(item.url, item.part, headers=item.headers, size=item.size,
                          progress=lambda done, total: display.update(key, done, total))
    except http.DownloadError as e:
        display.finish(key, "failed")
        if e.status in (401, 403) and src.kind == "hub":
            raise _access_message(src, hf_endpoint_for(item), e.status) from None
        if e.status in (401, 403, 404, 410):
            fix = ("check the repository and the hub mirror (--hf-endpoint / HF_ENDPOINT)" if src.kind == "hub" else
                   f"the URL does not serve the file: pass another with --url {src.name}=URL, or serve a copy with --mirror URL")
            raise SourceFailure(str(e), fix) from None
        raise SourceFailure(str(e), "run the same `kit data fetch` again: it continues where this one stopped") from None
    check, expected, got = _checksum(item, res)
    if check == "mismatch":
        kept = _put_aside(root, item.part)
        display.finish(key, "checksum mismatch")
        kind = "sha256" if item.sha256 else "md5" if item.md5 else "git oid"
        raise SourceFailure(
            f"{item.rel} from {item.url}: {kind} mismatch: expected {expected}, got {got}; the file is kept at {kept} "
            "and not used",
            f"run `kit data fetch --only {src.name}` again to download it anew; if it fails the same way the server "
            f"(or a proxy) serves another file: check the URL ({'--hf-endpoint' if src.kind == 'hub' else f'--url {src.name}=URL'})")
    if final.exists() and not final.is_file():
        raise SourceFailure(f"{final} is in the way of {item.rel} (not a file)", f"move {final} away, then run again")
    if final.is_file():
        _put_aside(root, final, "replaced")  # another copy, not recorded by this kit: kept, not overwritten
    http.move(item.part, final)
    state.record_file(item.rel, {"source": src.name, "url": item.url, "size": res.size, "sha256": res.sha256,
                                 "md5": res.md5, "check": check, "time": utc_now()})
    display.finish(key, f"{http.human(res.size)}, {check}" + (f" (resumed at {http.human(res.resumed_from)})" if res.resumed_from else "")
                   + (f" (after {res.attempts} attempts, each continuing from the bytes on disk)" if res.attempts > 1 and not res.restarted else "")
                   + (" (the server ignored the range: downloaded again from the start)" if res.restarted else ""))
    return check


def _found_in_place(item: Item, final: Path, state: State, source: str) -> str:
    """A file already at its destination with the listed size: hashed once, and kept (recorded) when it matches."""
    import hashlib

    md5, sha = hashlib.md5(usedforsecurity=False), hashlib.sha256()
    http._hash_file(final, md5, sha)
    res = http.Result(final, final.stat().st_size, md5.hexdigest(), sha.hexdigest(), item.url, "", 0, False, 0)
    check, _expected, _got = _checksum(item, res)
    if check == "mismatch":
        return ""
    state.record_file(item.rel, {"source": source, "url": item.url, "size": res.size, "sha256": res.sha256, "md5": res.md5,
                                 "check": check, "time": utc_now(), "found_in_place": True})
    return check


def hf_endpoint_for(item: Item) -> str:
    u = urlparse(item.url)
    return f"{u.scheme}://{u.netloc}"


def _safe_members(zf: zipfile.ZipFile, archive: Path) -> list[zipfile.ZipInfo]:
    members = []
    for info in zf.infolist():
        name = info.filename
        if any(name.startswith(s) for s in SKIP_ENTRIES) or name.rsplit("/", 1)[-1] == ".DS_Store":
            continue
        parts = Path(name.replace("\\", "/")).parts
        if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) or ".." in parts or not parts:
            raise SourceFailure(f"{archive}: entry {name!r} would be written outside the folder it unpacks into",
                                "the archive is not the expected one; check the URL or the file")
        members.append(info)
    return members


def _unpack(archive: Path, job: Job, display: Display) -> None:
    """Into a temporary folder under the target, then each top-level entry moved into place: a folder appears only
    whole. A truncated or damaged zip is moved aside (kept, never used)."""
    src, root = job.source, job.root
    into = root / src.unpack
    again = f"run `kit data fetch --only {src.name}` again: it downloads the archive anew"
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as e:
        kept = _put_aside(root, archive)
        raise SourceFailure(f"{archive.name}: not a whole zip archive ({e}): truncated (an interrupted or cut download) "
                            f"or not a zip; it is kept at {kept}, nothing was unpacked", again) from None
    with zf:
        size = archive.stat().st_size
        cut = [i.filename for i in zf.infolist() if i.header_offset + i.compress_size > size]
        if cut:
            zf.close()
            kept = _put_aside(root, archive)
            raise SourceFailure(f"{archive.name}: truncated: {len(cut):,} entries end past the file's {size:,} bytes "
                                f"(first: {cut[0]}); it is kept at {kept}, nothing was unpacked", again)
        members = _safe_members(zf, archive)
        tops = sorted({Path(i.filename).parts[0] for i in members})
        blocking = [t for t in tops if (into / t).exists() and not ((into / t).is_dir() and not any((into / t).iterdir()))]
        if blocking:
            raise SourceFailure(f"{archive.name} unpacks {', '.join(blocking)} into {into}, where it already exists",
                                f"move {', '.join(str(into / t) for t in blocking)} away (or delete it if it is not "
                                "needed), then run again; the archive is kept for that run")
        total = sum(i.file_size for i in members)
        into.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(into).free
        if total * (1 + DISK_MARGIN) > free:
            raise SourceFailure(f"unpacking {archive.name} needs {http.human(total)} ({total:,} bytes) under {into}; "
                                f"{http.human(free)} ({free:,} bytes) are free; the archive is kept at {archive}",
                                "free some space, then run again: the download is not repeated")
        tmp = into / f".kit-unpack-{src.name}"
        if tmp.exists():
            shutil.rmtree(tmp)  # what an interrupted unpack of this source left
        key = f"{src.name}:unpack"
        display.start(key, f"{src.name} unpack {archive.name}", len(members), unit="files")
        try:
            for n, info in enumerate(members, 1):
                target = tmp / info.filename
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                else:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(info) as fin, open(target, "wb") as fout:
                        shutil.copyfileobj(fin, fout, http.CHUNK)
                if n % 500 == 0 or n == len(members):
                    display.update(key, n, len(members), counts_bytes=False)
        except (zipfile.BadZipFile, zlib_error(), EOFError) as e:
            display.finish(key, "damaged")
            shutil.rmtree(tmp, ignore_errors=True)
            zf.close()
            kept = _put_aside(root, archive)
            raise SourceFailure(f"{archive.name}: damaged at {info.filename} ({e}); it is kept at {kept}, nothing was "
                                "unpacked", again) from None
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    for t in tops:
        target = into / t
        if target.is_dir():
            target.rmdir()  # an empty folder, checked above
        os.replace(tmp / t, target)
    shutil.rmtree(tmp, ignore_errors=True)
    display.finish(key, f"{len(members):,} entries into {into}")
    if src.yields and not (root / src.yields).is_dir():
        raise SourceFailure(f"{archive.name} unpacked {', '.join(tops) or 'nothing'} into {into}, not {root / src.yields}",
                            f"check 'unpack' and 'yields' of {src.name} in the sources file against the archive's "
                            "contents (the unpacked files are left where they are)")


def zlib_error() -> type[Exception]:
    import zlib

    return zlib.error


COVERS_INDEX = "dataset.json"  # what a covers source's index file is called when it is downloaded


def _index_name(src: Source) -> str:
    return src.index or f"the {src.name} index ({COVERS_INDEX})"


def _named_ids(root: Path, case: str | None, dest: str) -> tuple[set[str] | None, Path]:
    """Cover ids the records name (`<dest>/<id>.jpg` under a stage's image folder), read by pattern from the record
    file of each stage whose image folder holds `dest` (the case's default layout; a file is about 1 GB). None when
    no such record file is there yet."""
    named = []
    for sd in case_data.stages(case_data.choose(case)):
        images = os.path.normpath(sd.images)
        prefix = os.path.normpath(dest) if images == "." else os.path.relpath(dest, images)
        if not prefix.startswith(".."):
            named.append((root / sd.records, prefix))
    if not named:
        return None, root
    present = [(p, prefix) for p, prefix in named if p.is_file()]
    if not present:
        return None, named[0][0]
    ids: set[str] = set()
    for path, prefix in present:
        pattern = re.compile(b'"' + re.escape(prefix.strip("/").encode()) + rb'/([^"/\\]+)\.jpg"')
        tail = b""
        with open(path, "rb") as f:
            while block := f.read(1 << 24):
                buf = tail + block
                ids.update(m.group(1).decode("utf-8", "replace") for m in pattern.finditer(buf))
                tail = buf[-512:]
    return ids, present[0][0]


def _covers(job: Job, opts: Options, state: State, dl: http.Downloader, display: Display) -> Outcome:
    """A covers source: the index (an object of id -> entry with 'imageURL'), then each cover the records name,
    saved as <id>.jpg whatever its format."""
    src, root = job.source, job.root
    name = _basename(job.index_url, COVERS_INDEX)
    index_rel = f"{KIT_DIR}/downloads/{src.name}/{name}"
    index_path = root / index_rel
    rec = state.file(index_rel)
    if not (index_path.is_file() and rec.get("size") == index_path.stat().st_size and rec.get("url") == job.index_url):
        item = Item(job.index_url, index_rel, _kit(root, "downloads", src.name, name + ".part"), None, origin="published")
        _download(item, job, state, dl, display)
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        kept = _put_aside(root, index_path)
        raise SourceFailure(f"{job.index_url}: not valid JSON ({http._short(e)}); kept at {kept}", _pass_index(src)) from None
    if not isinstance(index, dict) or not all(isinstance(v, dict) for v in list(index.values())[:100]):
        raise SourceFailure(f"{job.index_url}: not {_index_name(src)} (expected an object of id -> entry with "
                            "'imageURL')", _pass_index(src))
    wanted, records = _named_ids(root, opts.case, src.dest)
    scope = f"named by {records.name}" if wanted is not None else f"of the index ({records.name} is not there yet)"
    ids = sorted(wanted) if wanted is not None else sorted(index)
    dest = root / src.dest
    dest.mkdir(parents=True, exist_ok=True)
    missing: list[dict] = []
    todo = []
    for i in ids:
        entry = index.get(i)
        url = entry.get("imageURL") if isinstance(entry, dict) else None
        if not isinstance(url, str) or not url:
            missing.append({"id": i, "url": "", "reason": "not in the index" if entry is None else "no imageURL"})
            continue
        target = dest / f"{i}.jpg"
        if target.is_file() and target.stat().st_size > 0:
            continue
        if opts.mirror and src.name not in opts.urls:
            url = f"{opts.mirror.rstrip('/')}/{src.name}/{i}.jpg"
        todo.append((i, url, target))
    covers = http.Downloader(retries=COVER_RETRIES, backoff_s=dl.backoff_s)
    key = f"{src.name}:covers"
    display.start(key, f"{src.name} covers", len(todo), unit="files")
    fetched = nbytes = 0
    lock = threading.Lock()

    def one(i: str, url: str, target: Path) -> str | None:
        part = _kit(root, "downloads", src.name, "covers", f"{i}.jpg.part")
        try:
            res = covers.download(url, part)
        except http.DownloadError as e:
            part.unlink(missing_ok=True)
            http.sidecar(part).unlink(missing_ok=True)
            return f"HTTP {e.status}" if e.status else http._short(e)
        if res.size == 0:
            part.unlink()
            return "empty reply"
        os.replace(part, target)  # atomic: a cover is there whole or not at all
        display.add_bytes(res.size)
        return None

    for n, ((i, url, _target), why) in enumerate(threaded(one, todo, opts.jobs), 1):
        with lock:
            if why is None:
                fetched += 1
                nbytes += (dest / f"{i}.jpg").stat().st_size
            else:
                missing.append({"id": i, "url": url, "reason": why})
        display.update(key, n, len(todo), counts_bytes=False)
    missing.sort(key=lambda m: m["id"])
    report = _kit(root, f"{src.name}-missing.json")
    http._write_json(report, {"source": src.name, "index": job.index_url, "written": utc_now(), "wanted": len(ids),
                              "scope": scope, "missing": missing})
    display.finish(key, f"{fetched:,} fetched, {len(missing):,} cannot be had")
    state.record_source(src.name, [{"path": src.yields or src.dest, "kind": "dir"}], covers=len(ids), missing=len(missing))
    out = Outcome(src.name, "fetched", nbytes, "recorded (no published checksums)", str(dest))
    if missing:
        first = "; ".join(f"{m['id']} ({m['reason']})" for m in missing[:SHOWN])
        data_dir = opts.data or root
        out.warning = (f"{len(missing):,} of {len(ids):,} covers {scope} cannot be had (first: {first}); listed in "
                       f"{report}; `kit data fix --data {data_dir}` writes a record file without them")
    return out


def _pass_index(src: Source) -> str:
    return f"pass {_index_name(src)}{f' (from {src.home})' if src.home else ''} with --url {src.name}=URL"


def threaded(fn: Callable[..., Any], items: list[tuple], jobs: int) -> Iterator[tuple[tuple, Any]]:
    """`fn(*item)` for every item on `jobs` threads; yields (item, result) as each ends (an exception is raised here).

    Daemon threads, not ThreadPoolExecutor's: the interpreter joins those at exit, so an interrupted fetch (Ctrl-C,
    SIGTERM) waited for every cover in flight, each up to its read timeout and retries. These stop taking work when
    the caller stops (an exception, a signal) and end with the process; a cover cut off is a `.part` file that the
    next fetch continues."""
    todo: queue.SimpleQueue[tuple] = queue.SimpleQueue()
    done: queue.SimpleQueue[tuple[tuple, Any, BaseException | None]] = queue.SimpleQueue()
    for item in items:
        todo.put(item)
    stop = threading.Event()

    def work() -> None:
        while not stop.is_set():
            try:
                item = todo.get_nowait()
            except queue.Empty:
                return
            try:
                done.put((item, fn(*item), None))
            except BaseException as e:  # noqa: BLE001 - handed to the caller, raised there
                done.put((item, None, e))

    for k in range(min(jobs, len(items))):
        threading.Thread(target=work, name=f"kit-fetch-{k}", daemon=True).start()
    try:
        for _ in range(len(items)):
            while True:
                try:
                    item, result, exc = done.get(timeout=0.5)  # a timeout: signals reach this thread meanwhile
                    break
                except queue.Empty:
                    continue
            if exc is not None:
                raise exc
            yield item, result
    finally:
        stop.set()


def execute(job: Job, opts: Options, state: State, dl: http.Downloader, display: Display) -> Outcome:
    src, root = job.source, job.root
    if src.kind == "covers":
        return _covers(job, opts, state, dl, display)
    checks = []
    for item in job.items:
        if item.complete:
            checks.append(state.file(item.rel).get("check", "recorded"))
            continue
        checks.append(_download(item, job, state, dl, display))
    size = sum((root / i.rel).stat().st_size for i in job.items)
    for item in job.items:
        if item.archive:
            _unpack(root / item.rel, job, display)
            if not opts.keep_archives:
                (root / item.rel).unlink()
    if src.unpack:
        outputs = [{"path": src.yields or src.unpack, "kind": "dir"}]
    else:
        outputs = [{"path": i.rel, "kind": "file", "size": (root / i.rel).stat().st_size} for i in job.items]
    state.record_source(src.name, outputs, files=[i.rel for i in job.items])
    return Outcome(src.name, "fetched", size, _summarize(checks), str(root / _where(src)))


def _summarize(checks: list[str]) -> str:
    if not checks:
        return ""
    counts: dict[str, int] = {}
    for c in checks:
        counts[c] = counts.get(c, 0) + 1
    if len(counts) == 1:
        return next(iter(counts))
    return ", ".join(f"{c} ({n})" for c, n in counts.items())


def _done_outcome(src: Source, root: Path, state: State, note: str = "") -> Outcome:
    entry = state.data["sources"].get(src.name) or {}
    files = [state.file(f) for f in entry.get("files", [])]
    size = sum(int(f.get("size") or 0) for f in files)
    check = _summarize([f.get("check", "recorded") for f in files]) if files else ("recorded" if src.kind == "covers" else "")
    return Outcome(src.name, "already there", size, check or note, str(root / _where(src)), message=note)


def fetch(opts: Options, console: Console, urls: list[str] | None = None,
          dl: http.Downloader | None = None) -> tuple[list[Outcome], list[Source], str]:
    """Plan, check the disk, fetch; returns the outcomes, the sources left out, and a one-line verdict."""
    t0 = time.monotonic()
    srcs, chosen, left_out = select(opts, urls)
    dl = dl or http.Downloader()
    states: dict[Path, State] = {}
    outcomes: dict[str, Outcome] = {}
    todo: list[Source] = []
    for src in chosen:
        root = root_of(src, opts)
        state = states.setdefault(root, State(root))
        retry_covers = src.kind == "covers" and src.name in opts.only and (state.data["sources"].get(src.name) or {}).get("missing")
        if state.done(src.name) and not retry_covers:  # named in --only, a covers source retries its missing covers
            outcomes[src.name] = _done_outcome(src, root, state)
        elif present(src, root):
            outcomes[src.name] = Outcome(src.name, "already there", 0, "not checked (not fetched by kit)",
                                         str(root / _where(src)),
                                         message="found in place, not fetched by kit: `kit data verify` checks it")
        else:
            todo.append(src)
    if not todo:
        took = time.monotonic() - t0
        return [outcomes[s.name] for s in chosen], left_out, f"all {len(chosen)} sources are already fetched ({took:.1f} s)"
    if not opts.dry_run:
        console.print(f"{len(chosen) - len(todo)} of {len(chosen)} sources are already there; to fetch: "
                      f"{', '.join(s.name for s in todo)}", soft_wrap=True, highlight=False)
    jobs: list[Job] = []
    for src in todo:
        root = root_of(src, opts)
        try:
            jobs.append(plan(src, root, opts, dl, states[root]))
        except SourceFailure as e:
            outcomes[src.name] = Outcome(src.name, "failed", where=str(root / _where(src)), message=str(e), fix=e.fix)
    disk = check_disk(jobs) if not opts.dry_run else disk_rows(jobs)
    if opts.dry_run:
        for job in jobs:
            outcomes[job.source.name] = _dry_outcome(job, opts)
        rows = "; ".join(f"{root}: needs {http.human(need)}, {http.human(free)} free" for root, need, free, _ in disk)
        verdict = f"dry run: {len(jobs)} source(s) would be fetched ({rows or 'nothing to fetch'}); nothing was written"
        if any(need * (1 + DISK_MARGIN) > free for _r, need, free, _ in disk):
            verdict += "; NOT ENOUGH FREE DISK"
        return [outcomes[s.name] for s in chosen], left_out, verdict
    total = sum(i.size or i.estimate for j in jobs for i in j.items if not i.complete)
    with _locked(sorted({j.root for j in jobs})), Display(console, total) as display:
        for job in jobs:
            try:
                outcomes[job.source.name] = execute(job, opts, states[job.root], dl, display)
            except SourceFailure as e:
                outcomes[job.source.name] = Outcome(job.source.name, "failed", where=str(job.root / _where(job.source)),
                                                    message=str(e), fix=e.fix)
    failed = [o.name for o in outcomes.values() if o.status == "failed"]
    took = time.monotonic() - t0
    verdict = (f"{len(failed)} of {len(chosen)} sources failed: {', '.join(failed)}" if failed
               else f"all {len(chosen)} sources are fetched ({took:.0f} s)")
    return [outcomes[s.name] for s in chosen], left_out, verdict


def _dry_outcome(job: Job, opts: Options) -> Outcome:
    src = job.source
    if src.kind == "covers":
        frm = job.index_url + " (the index; each cover from its imageURL" + (f", or {opts.mirror})" if opts.mirror else ")")
    else:
        todo = [i for i in job.items if not i.complete]
        frm = "; ".join(i.url for i in todo[:3]) + (f"; and {len(todo) - 3} more" if len(todo) > 3 else "")
    size = sum((i.size or i.estimate) for i in job.items if not i.complete) if job.items else src.bytes
    checks = sorted({f"{i.origin} sha256" if i.sha256 else f"{i.origin} md5" if i.md5 else "hub git oid" if i.git_oid
                     else "recorded" for i in job.items}) or ["recorded"]
    return Outcome(src.name, "would fetch", size, ", ".join(checks), str(job.root / _where(src)),
                   message=f"from {frm}; needs {http.human(job.need)} of disk")

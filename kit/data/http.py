"""The one HTTP downloader of `kit data fetch`: streaming, resumable (Range, If-Range), retried, hashed as it goes.

A 27 GB archive over a flaky link must survive a dropped connection and a Ctrl-C without starting over, and its
checksum must not cost a second pass over the file: md5 and sha256 are computed while the bytes stream (over the
bytes already on disk first when a download resumes). Hub files come through here too (huggingface_hub gives the
URL and the headers), so every file gets the same resume, retries and checks.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import requests
import urllib3

CHUNK = 1 << 20
RETRIES = 5  # attempts after the first, each continuing from the bytes on disk
BACKOFF_S = 1.0  # first wait between attempts; doubles, capped at MAX_WAIT_S
MAX_WAIT_S = 30.0
CONNECT_TIMEOUT_S = 20.0
READ_TIMEOUT_S = 60.0
USER_AGENT = "kit-data-fetch"

Progress = Callable[[int, "int | None"], None]  # (bytes on disk, total bytes or None when unknown)


class DownloadError(Exception):
    """A download that did not complete; the message names the URL, what happened and where the bytes are."""

    def __init__(self, message: str, url: str, status: int | None = None) -> None:
        super().__init__(message)
        self.url = url
        self.status = status


class _Retry(Exception):
    """A transient failure (connection, timeout, 5xx, a reply cut short): try again from the bytes on disk."""


@dataclass(frozen=True)
class Result:
    path: Path
    size: int
    md5: str
    sha256: str
    url: str
    etag: str
    resumed_from: int  # bytes already on disk when this call started (0: a fresh download)
    restarted: bool  # the server ignored a Range request, so the bytes on disk were dropped
    attempts: int


def sidecar(part: Path) -> Path:
    """Where a partial download records its URL, size and ETag (so a resume asks for the same bytes)."""
    return part.with_name(part.name + ".json")


def _hashers() -> tuple[hashlib._Hash, hashlib._Hash]:
    return hashlib.md5(usedforsecurity=False), hashlib.sha256()


def _content_range(value: str) -> tuple[int | None, int | None]:
    """(first byte, total) of a Content-Range header such as 'bytes 100-199/200' or 'bytes */200'."""
    try:
        unit, _, spec = value.partition(" ")
        span, _, total = spec.partition("/")
        first = None if span == "*" else int(span.split("-")[0])
        return first, None if total in ("*", "") else int(total)
    except ValueError:
        return None, None


def human(n: float | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"  # pragma: no cover


class Downloader:
    """Downloads URLs into `.part` files; one session per thread (requests sessions are not shared across threads)."""

    def __init__(self, retries: int | None = None, backoff_s: float | None = None) -> None:
        self.retries = RETRIES if retries is None else retries
        self.backoff_s = BACKOFF_S if backoff_s is None else backoff_s
        self._local = threading.local()

    def _session(self) -> requests.Session:
        s = getattr(self._local, "session", None)
        if s is None:
            s = self._local.session = requests.Session()
            s.headers["User-Agent"] = USER_AGENT
        return s

    def _wait(self, attempt: int) -> None:
        time.sleep(min(MAX_WAIT_S, self.backoff_s * 2 ** (attempt - 1)))

    def size(self, url: str, headers: dict[str, str] | None = None) -> int | None:
        """The file's size from a HEAD request (following redirects), or None when the server does not say."""
        if url.startswith("file://"):
            p = _local_path(url)
            return p.stat().st_size if p.is_file() else None
        try:
            r = self._session().head(url, headers=headers or {}, allow_redirects=True, timeout=(CONNECT_TIMEOUT_S, READ_TIMEOUT_S))
        except requests.RequestException:
            return None  # the download itself reports what is wrong; the size falls back to the estimate
        length = r.headers.get("Content-Length")
        return int(length) if r.status_code == 200 and length and length.isdigit() else None

    def download(self, url: str, part: Path, *, headers: dict[str, str] | None = None, size: int | None = None,
                 progress: Progress | None = None) -> Result:
        """`url` into `part` (continued when a sidecar says it holds the start of the same URL); DownloadError."""
        part.parent.mkdir(parents=True, exist_ok=True)
        side = sidecar(part)
        meta = _read_json(side)
        offset, etag = 0, ""
        if part.is_file() and meta.get("url") == url and (size is None or meta.get("size") in (None, size)):
            offset, etag = part.stat().st_size, str(meta.get("etag") or "")
        elif part.exists():
            part.unlink()  # bytes of another URL, or of unknown origin: not the start of this file
        md5, sha = _hashers()
        if offset:
            _hash_file(part, md5, sha)
        if progress:
            progress(offset, size)
        started_at = offset
        if url.startswith("file://"):
            return self._copy_local(url, part, offset, size, md5, sha, progress)
        state = {"offset": offset, "etag": etag, "total": size, "restarted": False, "md5": md5, "sha": sha}
        attempt = 0
        while True:
            attempt += 1
            try:
                self._once(url, part, headers or {}, size, state, progress)
                break
            except _Retry as e:
                if attempt > self.retries:
                    have = state["offset"]
                    raise DownloadError(
                        f"{url}: {e}, {attempt} attempts; {human(have)} of {human(state['total'])} are kept in {part} "
                        "and the next `kit data fetch` continues from there", url) from None
                self._wait(attempt)
        side.unlink(missing_ok=True)
        return Result(part, state["offset"], state["md5"].hexdigest(), state["sha"].hexdigest(), url, state["etag"],
                      started_at, state["restarted"], attempt)

    def _once(self, url: str, part: Path, headers: dict[str, str], size: int | None, st: dict, progress: Progress | None) -> None:
        h = {"Accept-Encoding": "identity", **headers}  # the bytes as stored: ranges and sizes count those
        if st["offset"]:
            h["Range"] = f"bytes={st['offset']}-"
            if st["etag"]:
                h["If-Range"] = st["etag"]
        try:
            r = self._session().get(url, headers=h, stream=True, allow_redirects=True, timeout=(CONNECT_TIMEOUT_S, READ_TIMEOUT_S))
        except (requests.ConnectionError, requests.Timeout) as e:
            raise _Retry(f"cannot connect ({type(e).__name__}: {_short(e)})") from None
        except requests.RequestException as e:
            raise DownloadError(f"{url}: {type(e).__name__}: {_short(e)}", url) from None
        with r:
            code = r.status_code
            if code == 416 and st["offset"]:
                _, total = _content_range(r.headers.get("Content-Range", ""))
                if total is not None and total == st["offset"] and (size is None or size == total):
                    st["total"] = total
                    return  # the bytes on disk are the whole file already
                self._restart(part, st)
                raise _Retry("the server refused the range of the partial download; starting again")
            if code == 429 or code >= 500:
                raise _Retry(f"HTTP {code} {r.reason}")
            if code >= 400:
                raise DownloadError(f"{url}: HTTP {code} {r.reason}", url, code)
            if code == 206:
                first, total = _content_range(r.headers.get("Content-Range", ""))
                if first != st["offset"]:
                    self._restart(part, st)
                    raise _Retry(f"the server answered bytes from {first}, not {st['offset']}; starting again")
                mode = "ab"
            elif code == 200:
                if st["offset"]:
                    self._restart(part, st)
                    st["restarted"] = True  # the server ignores Range (or the file changed: If-Range)
                length = r.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() and "Content-Encoding" not in r.headers else None
                mode = "wb"
            else:
                raise DownloadError(f"{url}: unexpected HTTP {code} {r.reason}", url, code)
            if total is not None and size is not None and total != size:
                raise DownloadError(f"{url}: the server's file has {total:,} bytes, expected {size:,} (the listing or the "
                                    "sources file): a different file; check the URL", url)
            st["total"] = total if total is not None else size
            st["etag"] = r.headers.get("ETag", "") if not r.headers.get("ETag", "").startswith("W/") else ""
            _write_json(sidecar(part), {"url": url, "size": st["total"], "etag": st["etag"]})
            try:
                with open(part, mode) as f:
                    for chunk in _chunks(r):
                        f.write(chunk)
                        st["md5"].update(chunk)
                        st["sha"].update(chunk)
                        st["offset"] += len(chunk)
                        if progress:
                            progress(st["offset"], st["total"])
            except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as e:
                raise _Retry(f"the connection broke at {human(st['offset'])} ({type(e).__name__})") from None
        want = st["total"]
        if want is not None and st["offset"] < want:
            raise _Retry(f"the reply ended at {st['offset']:,} of {want:,} bytes")
        if want is not None and st["offset"] > want:
            raise DownloadError(f"{url}: received {st['offset']:,} bytes, expected {want:,}; the partial file {part} is "
                                "removed, run again", url)

    def _restart(self, part: Path, st: dict) -> None:
        part.unlink(missing_ok=True)
        st["offset"] = 0
        st["etag"] = ""
        st["md5"], st["sha"] = _hashers()

    def _copy_local(self, url: str, part: Path, offset: int, size: int | None, md5, sha, progress: Progress | None) -> Result:
        src = _local_path(url)
        try:
            total = src.stat().st_size
            if size is not None and total != size:
                raise DownloadError(f"{url}: the file has {total:,} bytes, expected {size:,}", url)
            if offset > total:
                part.unlink()
                offset, (md5, sha) = 0, _hashers()
            _write_json(sidecar(part), {"url": url, "size": total, "etag": ""})
            with open(src, "rb") as fin, open(part, "ab" if offset else "wb") as fout:
                fin.seek(offset)
                while chunk := fin.read(CHUNK):
                    fout.write(chunk)
                    md5.update(chunk)
                    sha.update(chunk)
                    offset += len(chunk)
                    if progress:
                        progress(offset, total)
        except FileNotFoundError:
            raise DownloadError(f"{url}: no such file ({src})", url, 404) from None
        except OSError as e:
            raise DownloadError(f"{url}: cannot be read ({e.strerror or e})", url) from None
        sidecar(part).unlink(missing_ok=True)
        return Result(part, offset, md5.hexdigest(), sha.hexdigest(), url, "", 0, False, 1)


def _chunks(r: requests.Response):
    """The body as it arrives: `read1` hands over what the socket has, so a connection that breaks loses nothing
    already received (a buffered read of 1 MB would drop up to that much)."""
    raw = r.raw
    if hasattr(raw, "read1") and not r.headers.get("Content-Encoding"):
        while chunk := raw.read1(CHUNK):
            yield chunk
    else:
        yield from r.iter_content(CHUNK)


def _local_path(url: str) -> Path:
    return Path(urllib.request.url2pathname(urlparse(url).path))


def _short(e: Exception) -> str:
    text = str(e)
    return text if len(text) < 300 else text[:300] + "..."


def _hash_file(path: Path, *hashers) -> None:
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            for h in hashers:
                h.update(chunk)


def git_blob_oid(path: Path) -> str:
    """The git object id of a file (what the hub lists for files that are not in LFS)."""
    h = hashlib.sha1(f"blob {path.stat().st_size}\0".encode(), usedforsecurity=False)
    _hash_file(path, h)
    return h.hexdigest()


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_json(path: Path, data: dict) -> None:
    """Atomically: a crash leaves the old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


def move(src: Path, dst: Path) -> None:
    """Rename when on one filesystem, else copy then remove (the source is removed only once the copy is whole)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(src, dst)
    except OSError:
        tmp = dst.with_name(f".{dst.name}.kit-tmp")
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
        src.unlink()

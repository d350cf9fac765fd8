"""Bounds on the work a submission can ask of `kit verify` and `kit compare`: members, bytes, depth, time.

A submission comes from someone else. Unpacked without bounds, a 1 MB tarball of empty members, a gzip bomb or a
sparse member can take minutes, gigabytes of memory or the whole disk before a single check runs. Every limit
below is far above what an honest submission of an 8-node x 8-GPU run holds (docs/submissions.md gives the
arithmetic) and far below what a reviewer's machine can give; each is refused on the member that crosses it,
before that member's bytes are written or hashed, with one line that names the limit.
"""

from __future__ import annotations

import gzip
import os
import stat
import tarfile
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from kit.submission.layout import SubmissionError

MIB, GIB = 2**20, 2**30


@dataclass(frozen=True)
class Limits:
    """What one submission may hold (docs/submissions.md, "Bounds")."""

    members: int = 20_000  # files and folders; an honest 8x8 submission of 5 runs holds about 1,100
    file_bytes: int = 512 * MIB  # one file; an honest events.log of a full epoch is about 6 MB, monitor.jsonl 20 MB
    total_bytes: int = 2 * GIB  # all files together; an honest 8x8 submission of 5 runs stays under 300 MB
    depth: int = 12  # path components below the archive's root; the deepest honest path has 8
    path_chars: int = 1024
    seconds: float = 300.0  # unpacking or walking, hashing included


DEFAULT_LIMITS = Limits()


def _fmt(n: int) -> str:
    return f"{n / GIB:.1f} GiB" if n >= GIB else f"{n / MIB:.0f} MiB" if n >= MIB else f"{n:,} bytes"


def check_name(name: str, where: str, limits: Limits) -> PurePosixPath:
    """A member's or a manifest entry's path: relative, canonical, inside the submission, within the bounds."""
    if not name or "\\" in name or "\x00" in name:
        raise SubmissionError(f"{where}: member {name!r} is not a plain relative path")
    p = PurePosixPath(name)
    if p.is_absolute() or ".." in p.parts:
        raise SubmissionError(f"{where}: member {name!r} points outside the archive; a submission holds nothing else")
    if len(name) > limits.path_chars:
        raise SubmissionError(f"{where}: a member's path is {len(name):,} characters long (the bound is "
                              f"{limits.path_chars:,}): not a submission kit submit wrote")  # fmt: skip
    if len(p.parts) > limits.depth:
        raise SubmissionError(f"{where}: member {name[:120]!r} is {len(p.parts)} folders deep (the bound is "
                              f"{limits.depth}): not a submission kit submit wrote")  # fmt: skip
    return p


class Budget:
    """Counts members, bytes and seconds as a submission is read; raises SubmissionError at the first bound crossed."""

    def __init__(self, where: str, limits: Limits = DEFAULT_LIMITS, clock=time.monotonic) -> None:
        self.where, self.limits, self.clock = where, limits, clock
        self.members = 0
        self.bytes = 0
        self.started = clock()

    def member(self, name: str, size: int) -> None:
        lim = self.limits
        self.members += 1
        if self.members > lim.members:
            raise SubmissionError(f"{self.where}: more than {lim.members:,} members (the bound; an honest submission "
                                  "holds about a thousand): refused before unpacking the rest")  # fmt: skip
        if size > lim.file_bytes:
            raise SubmissionError(f"{self.where}: member {name[:120]!r} is {_fmt(size)} (the bound for one file is "
                                  f"{_fmt(lim.file_bytes)}): refused before writing it")  # fmt: skip
        self.bytes += size
        if self.bytes > lim.total_bytes:
            raise SubmissionError(f"{self.where}: the members add up to more than {_fmt(lim.total_bytes)} (the bound); "
                                  f"refused at {name[:120]!r} before writing it")  # fmt: skip
        self.tick()

    def tick(self) -> None:
        if self.clock() - self.started > self.limits.seconds:
            raise SubmissionError(f"{self.where}: reading it took more than {self.limits.seconds:.0f} s (the bound); "
                                  "an honest submission unpacks in seconds")  # fmt: skip


def _sparse(m: tarfile.TarInfo) -> bool:
    return m.issparse() or any(k.startswith("GNU.sparse") for k in (m.pax_headers or {}))


class _Archive:
    """A gzip tar read as a stream (no seeking): the gzip layer is Python's GzipFile, which reads a stream of
    several gzip members as one, as gzip(1) does."""

    def __init__(self, tar_path: Path) -> None:
        self.raw = open(tar_path, "rb")  # noqa: SIM115 - closed in __exit__
        try:
            magic = self.raw.read(2)
            self.raw.seek(0)
            if magic != b"\x1f\x8b":
                raise SubmissionError(f"{tar_path}: not a gzip-compressed tar archive; a submission tarball is the "
                                      "<org>.tar.gz that kit submit writes")  # fmt: skip
            self.gz = gzip.GzipFile(fileobj=self.raw, mode="rb")
            self.tar = tarfile.open(fileobj=self.gz, mode="r|")
        except (tarfile.ReadError, OSError, EOFError, zlib.error) as e:
            self.raw.close()
            raise SubmissionError(f"{tar_path}: not a gzip-compressed tar archive ({e}); a submission tarball is the "
                                  "<org>.tar.gz that kit submit writes") from None  # fmt: skip
        except BaseException:
            self.raw.close()
            raise

    def __enter__(self) -> tarfile.TarFile:
        return self.tar

    def __exit__(self, *exc) -> None:
        for f in (self.tar, self.gz, self.raw):
            try:
                f.close()
            except Exception:  # noqa: BLE001 - closing a damaged stream may raise; the refusal is already made
                pass


def _next(tar: tarfile.TarFile, where: str, count: int) -> tarfile.TarInfo | None:
    try:
        return tar.next()
    except (tarfile.TarError, OSError, EOFError, ValueError, zlib.error) as e:
        raise SubmissionError(f"{where}: the archive is damaged after {count:,} members ({e})") from None


def scan(tar_path: Path, limits: Limits = DEFAULT_LIMITS, free: int | None = None) -> int:
    """Read every member's header (decompressing, writing nothing) and refuse the archive at the first member that
    is not a plain file or folder, is sparse, appears twice, has a path that is not canonical and inside the
    archive, or crosses a bound. Returns the bytes its files hold."""
    where = str(tar_path)
    budget = Budget(where, limits)
    seen: set[str] = set()
    with _Archive(tar_path) as tar:
        while (m := _next(tar, where, budget.members)) is not None:
            name = m.name.rstrip("/") if m.isdir() else m.name
            p = check_name(name, where, limits)
            if not (m.isfile() or m.isdir()) or _sparse(m):
                kind = "a sparse file" if _sparse(m) else "a link" if (m.issym() or m.islnk()) else "a special file"
                raise SubmissionError(f"{where}: member {m.name!r} is {kind}; a submission holds only plain files and "
                                      "folders")  # fmt: skip
            key = p.as_posix()
            if key in seen:
                raise SubmissionError(f"{where}: member {key!r} appears twice; a later copy would hide the first")
            seen.add(key)
            budget.member(key, m.size if m.isfile() else 0)
            if free is not None and budget.bytes > free:
                raise SubmissionError(f"{where}: unpacks to more than the {_fmt(free)} free where it is unpacked; "
                                      "free space, or unpack it elsewhere and verify the folder")  # fmt: skip
    return budget.bytes


def unpack(tar_path: Path, dest: Path, limits: Limits = DEFAULT_LIMITS) -> None:
    """Unpack a submission tarball into `dest`: `scan()` first, so a refusal comes before a byte is written, then
    each member written out, the time bound still counting. A refusal raises SubmissionError."""
    import shutil

    where = str(tar_path)
    scan(tar_path, limits, free=shutil.disk_usage(dest).free)
    budget = Budget(where, limits)
    with _Archive(tar_path) as tar:
        while (m := _next(tar, where, budget.members)) is not None:
            name = m.name.rstrip("/") if m.isdir() else m.name
            p = check_name(name, where, limits)
            budget.member(p.as_posix(), m.size if m.isfile() else 0)
            target = dest.joinpath(*p.parts)
            if m.isdir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            if not m.isfile():  # pragma: no cover - scan() refused it
                raise SubmissionError(f"{where}: member {m.name!r} is not a plain file")
            target.parent.mkdir(parents=True, exist_ok=True)
            src = tar.extractfile(m)
            with open(target, "wb") as out:
                left = m.size
                while left > 0 and src is not None:
                    chunk = src.read(min(left, 4 * MIB))
                    if not chunk:
                        raise SubmissionError(f"{where}: member {p.as_posix()!r} is cut short: the archive is damaged")
                    out.write(chunk)
                    left -= len(chunk)
                    budget.tick()
            os.chmod(target, 0o644)


def walk(root: Path, limits: Limits = DEFAULT_LIMITS) -> Iterator[tuple[str, Path, int]]:
    """Every file under a submission folder as (relative posix path, path, size), within the bounds; links and
    special files are refused, never followed."""
    where = str(root)
    budget = Budget(where, limits)
    stack = [root]
    while stack:
        d = stack.pop()
        try:
            entries = sorted(os.scandir(d), key=lambda e: e.name)
        except OSError as e:
            raise SubmissionError(f"{d}: cannot be listed ({e.strerror or e})") from None
        for e in entries:
            rel = Path(e.path).relative_to(root).as_posix()
            check_name(rel, where, limits)
            st = e.stat(follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode) or not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
                raise SubmissionError(f"{where}: {rel!r} is {'a link' if stat.S_ISLNK(st.st_mode) else 'a special file'}"
                                      "; a submission holds only plain files and folders")  # fmt: skip
            if stat.S_ISDIR(st.st_mode):
                budget.member(rel, 0)
                stack.append(Path(e.path))
                continue
            budget.member(rel, st.st_size)
            # A sparse file's blocks are far fewer than its size: hashing it would read gigabytes of holes.
            if st.st_size > MIB and st.st_blocks * 512 < st.st_size // 8:
                raise SubmissionError(f"{where}: {rel!r} is a sparse file of {_fmt(st.st_size)}; a submission holds "
                                      "only plain files")  # fmt: skip
            yield rel, Path(e.path), st.st_size

"""The file plumbing every part of the host shares: atomic writes, JSON reads, sha256."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent  # the checkout (or the installed tree) holding kit/, env/, cases/
ENV = ROOT / "env"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            h.update(chunk)
    return h.hexdigest()


def write_atomic(path: Path, data: str | bytes, *, fsync: bool = True) -> None:
    """Write a whole file under a temporary name in its folder, then rename it: a reader sees the old file or the
    new one, never half of either."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json(path: Path, obj: Any, *, indent: int | None = 2) -> None:
    """JSON, written atomically (write_atomic), with a final newline."""
    write_atomic(path, json.dumps(obj, indent=indent, default=str) + "\n")


def read_json(path: Path) -> Any:
    """A JSON file's value, or None when it is missing, unreadable or not JSON (callers that must tell those apart
    read the file themselves)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def append_line(path: Path, line: str) -> None:
    """One whole line appended and flushed to disk: an append-only log is never rewritten."""
    with open(path, "a") as f:
        f.write(line.rstrip("\n") + "\n")
        f.flush()
        os.fsync(f.fileno())

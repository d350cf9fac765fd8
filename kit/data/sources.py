"""A case's data sources (its data-sources.toml, `case.data.SOURCES`), validated: every key known, every value typed.

The file is data, not code: where each source comes from, where it goes in the `--data` / `--models` layout, its
published checksum and approximate size, and what a complete copy holds. It is the one place of the reference
counts: the records of each training stage (`<stage>_records`), a stage's records per source (`<stage>_by_source`)
and the files of each image folder (`folders`). `kit data fetch` reads the sources; `kit data verify`,
`kit check-host` and the submission rules read the counts (kit/case/data.py `reference`).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

SOURCES_SCHEMA = "kit.data-sources/1"
FILE_NAME = "data-sources.toml"
KINDS = ("hub", "http", "covers")
ROOTS = ("data", "models")


class SourcesError(ValueError):
    """A data-sources file that does not follow the schema; the message names the file and the key."""


@dataclass(frozen=True)
class Source:
    name: str
    what: str
    kind: str  # hub | http | covers
    root: str  # data | models
    url: str = ""  # http, covers (the index)
    repo: str = ""  # hub
    repo_type: str = "dataset"  # hub: dataset | model
    revision: str = "main"  # hub
    files: tuple[str, ...] = ()  # hub: exact paths
    allow: tuple[str, ...] = ()  # hub: fnmatch patterns
    prefer: str = ""  # hub: "safetensors" drops *.bin when *.safetensors exist
    dest: str = "."  # where downloaded files go, relative to the root
    unpack: str = ""  # archives are extracted into this folder (relative to the root)
    yields: str = ""  # the folder that exists when the source is complete
    md5: str = ""
    sha256: str = ""
    bytes: int = 0
    unpacked_bytes: int = 0
    index: str = ""  # covers: what the index of image URLs is, as its publisher names it
    home: str = ""  # covers: the page that links the index when it has no stable URL of its own


@dataclass(frozen=True)
class Reference:
    """What a complete copy holds: the counts every check compares with (written once, in the sources file)."""

    records: dict[str, int]  # training stage -> records of its reference record file
    by_source: dict[str, dict[str, int]] = field(default_factory=dict)  # stage -> source -> records
    folders: dict[str, int] = field(default_factory=dict)  # image folder -> files after a full download


@dataclass(frozen=True)
class Sources:
    path: Path
    case: str
    reference: Reference
    sources: tuple[Source, ...]

    def get(self, name: str) -> Source:
        for s in self.sources:
            if s.name == name:
                return s
        raise KeyError(name)

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.sources]


_TYPES: dict[str, type] = {
    "name": str, "what": str, "kind": str, "root": str, "url": str, "repo": str, "repo_type": str, "revision": str,
    "files": list, "allow": list, "prefer": str, "dest": str, "unpack": str, "yields": str, "md5": str,
    "sha256": str, "bytes": int, "unpacked_bytes": int, "index": str, "home": str,
}  # fmt: skip
_REQUIRED = ("name", "what", "kind", "root")


def _fail(path: Path, where: str, why: str) -> SourcesError:
    return SourcesError(f"{path}: {where}: {why}")


def _relative(path: Path, where: str, value: str) -> None:
    if value.startswith("/") or ".." in Path(value).parts:
        raise _fail(path, where, f"{value!r} must be a path relative to the data or models root, without '..'")


def _source(path: Path, i: int, raw: Any, seen: set[str]) -> Source:
    where = f"[[source]] #{i + 1}"
    if not isinstance(raw, dict):
        raise _fail(path, where, "must be a table")
    unknown = sorted(set(raw) - set(_TYPES))
    if unknown:
        raise _fail(path, where, f"unknown key(s) {', '.join(unknown)}; known: {', '.join(_TYPES)}")
    for key in _REQUIRED:
        if key not in raw:
            raise _fail(path, where, f"missing {key!r}")
    where = f"[[source]] {raw['name']!r}"
    for key, value in raw.items():
        want = _TYPES[key]
        if want is int and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise _fail(path, f"{where}.{key}", f"must be a non-negative integer, got {value!r}")
        if want is not int and not isinstance(value, want):
            raise _fail(path, f"{where}.{key}", f"must be a {want.__name__}, got {type(value).__name__}")
        if want is list and not all(isinstance(v, str) and v for v in value):
            raise _fail(path, f"{where}.{key}", "must be a list of non-empty strings")
    if raw["name"] in seen:
        raise _fail(path, where, "the name is used twice")
    seen.add(raw["name"])
    if raw["kind"] not in KINDS:
        raise _fail(path, f"{where}.kind", f"{raw['kind']!r} is not one of {', '.join(KINDS)}")
    if raw["root"] not in ROOTS:
        raise _fail(path, f"{where}.root", f"{raw['root']!r} is not one of {', '.join(ROOTS)}")
    if raw["kind"] == "hub":
        if not raw.get("repo"):
            raise _fail(path, where, "a hub source needs 'repo'")
        if bool(raw.get("files")) == bool(raw.get("allow")):
            raise _fail(path, where, "a hub source needs exactly one of 'files' or 'allow'")
        if raw.get("repo_type", "dataset") not in ("dataset", "model"):
            raise _fail(path, f"{where}.repo_type", "must be 'dataset' or 'model'")
    elif raw["kind"] == "http" and not (raw.get("url") and raw.get("unpack")):
        raise _fail(path, where, "an http source needs 'url' and 'unpack' (the archive is extracted there)")
    if raw.get("prefer", "") not in ("", "safetensors"):
        raise _fail(path, f"{where}.prefer", "must be '' or 'safetensors'")
    if raw.get("md5") and len(raw["md5"]) != 32:
        raise _fail(path, f"{where}.md5", "must be 32 hex digits")
    if raw.get("sha256") and len(raw["sha256"]) != 64:
        raise _fail(path, f"{where}.sha256", "must be 64 hex digits")
    for key in ("dest", "unpack", "yields", *[f"files[{j}]" for j in range(len(raw.get("files", [])))]):
        value = raw["files"][int(key[6:-1])] if key.startswith("files[") else raw.get(key, "")
        if value:
            _relative(path, f"{where}.{key}", value)
    kw = {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()}
    return Source(**kw)


def _counts(path: Path, where: str, raw: Any) -> dict[str, int]:
    if not isinstance(raw, dict) or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in raw.values()):
        raise _fail(path, where, "must be a table of non-negative integers")
    return dict(raw)


RECORDS, BY_SOURCE, FOLDERS = "_records", "_by_source", "folders"


def _reference(p: Path, ref: Any, stages: tuple[str, ...] | None) -> Reference:
    """[reference]: `<stage>_records = N` and `[reference.<stage>_by_source]` per training stage, and
    `[reference.folders]`. With the case's training stages, every one needs its count and no other is known."""
    if not isinstance(ref, dict):
        raise _fail(p, "[reference]", "missing")
    records: dict[str, int] = {}
    by_source: dict[str, dict[str, int]] = {}
    for key, value in ref.items():
        if key.endswith(RECORDS) and key != RECORDS:
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise _fail(p, f"[reference].{key}", "must be an integer")
            records[key[: -len(RECORDS)]] = value
        elif key.endswith(BY_SOURCE) and key != BY_SOURCE:
            by_source[key[: -len(BY_SOURCE)]] = _counts(p, f"[reference.{key}]", value)
        elif key != FOLDERS:
            raise _fail(p, "[reference]", f"unknown key {key}; known: <stage>{RECORDS}, <stage>{BY_SOURCE}, {FOLDERS}")
    if stages is not None:
        for stage in stages:
            if stage not in records:
                raise _fail(p, f"[reference].{stage}{RECORDS}", "must be an integer (the records of a complete copy)")
        for stage in sorted((set(records) | set(by_source)) - set(stages)):
            raise _fail(p, "[reference]", f"{stage!r} is not a training stage of the case ({', '.join(stages)})")
    for stage, counts in by_source.items():
        if stage not in records:
            raise _fail(p, f"[reference.{stage}{BY_SOURCE}]", f"needs [reference].{stage}{RECORDS}")
        total = sum(counts.values())
        if counts and total != records[stage]:
            raise _fail(p, f"[reference.{stage}{BY_SOURCE}]", f"sums to {total:,}, not {stage}{RECORDS} = {records[stage]:,}")
    return Reference(records, {s: c for s, c in by_source.items() if c}, _counts(p, "[reference.folders]", ref.get(FOLDERS, {})))


def load(path: str | Path, stages: tuple[str, ...] | None = None) -> Sources:
    """A data-sources.toml, validated against the schema (and, given them, the case's training stages);
    SourcesError names the file and the key."""
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text())
    except OSError as e:
        raise SourcesError(f"{p}: cannot be read ({e.strerror or e})") from e
    except tomllib.TOMLDecodeError as e:
        raise SourcesError(f"{p}: not valid TOML ({e})") from e
    if data.get("schema") != SOURCES_SCHEMA:
        raise SourcesError(f"{p}: schema = {data.get('schema')!r}, expected {SOURCES_SCHEMA!r}")
    unknown = sorted(set(data) - {"schema", "case", "reference", "source"})
    if unknown:
        raise _fail(p, "top level", f"unknown key(s) {', '.join(unknown)}")
    reference = _reference(p, data.get("reference"), stages)
    raw_sources = data.get("source", [])
    if not isinstance(raw_sources, list):
        raise _fail(p, "[[source]]", "must be an array of tables")  # none at all: a case that draws its own data
    seen: set[str] = set()
    sources = tuple(_source(p, i, raw, seen) for i, raw in enumerate(raw_sources))
    return Sources(p, str(data.get("case", "")), reference, sources)

"""A case's data sources (cases/<case>/data-sources.toml), validated: every key known, every value typed.

The file is data, not code: where each source comes from, where it goes in the `--data` / `--models` layout, its
published checksum and approximate size, and what a complete copy holds (record counts, per-source counts, folder
file counts). `kit data fetch` reads the sources, `kit data verify` the reference counts.
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


@dataclass(frozen=True)
class Reference:
    pretrain_records: int
    finetune_records: int
    finetune_by_source: dict[str, int] = field(default_factory=dict)
    folders: dict[str, int] = field(default_factory=dict)


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
    "sha256": str, "bytes": int, "unpacked_bytes": int,
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


def load(case_dir: str | Path, path: str | Path | None = None) -> Sources:
    """The case's data-sources.toml (or `path`), validated; SourcesError names the file and the key."""
    p = Path(path) if path is not None else Path(case_dir) / FILE_NAME
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
    ref = data.get("reference")
    if not isinstance(ref, dict):
        raise _fail(p, "[reference]", "missing")
    for key in ("pretrain_records", "finetune_records"):
        if not isinstance(ref.get(key), int) or isinstance(ref.get(key), bool):
            raise _fail(p, f"[reference].{key}", "must be an integer")
    unknown = sorted(set(ref) - {"pretrain_records", "finetune_records", "finetune_by_source", "folders"})
    if unknown:
        raise _fail(p, "[reference]", f"unknown key(s) {', '.join(unknown)}")
    reference = Reference(
        ref["pretrain_records"], ref["finetune_records"],
        _counts(p, "[reference.finetune_by_source]", ref.get("finetune_by_source", {})),
        _counts(p, "[reference.folders]", ref.get("folders", {})),
    )  # fmt: skip
    by_source = sum(reference.finetune_by_source.values())
    if reference.finetune_by_source and by_source != reference.finetune_records:
        raise _fail(p, "[reference.finetune_by_source]", f"sums to {by_source:,}, not finetune_records = {reference.finetune_records:,}")
    raw_sources = data.get("source", [])
    if not isinstance(raw_sources, list) or not raw_sources:
        raise _fail(p, "[[source]]", "at least one source is needed")
    seen: set[str] = set()
    sources = tuple(_source(p, i, raw, seen) for i, raw in enumerate(raw_sources))
    return Sources(p, str(data.get("case", "")), reference, sources)


def for_case(case_name: str) -> Sources:
    """The data sources of a registered case (kit/cases.py)."""
    from kit import case as cases

    return load(cases.get(case_name).root)

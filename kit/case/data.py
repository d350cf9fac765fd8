"""What the host asks of a case's data (`case.data`), and the host's few helpers around it.

kit/data (fetch, verify, fix, the inputs' identity), kit/checks (check-host) and kit/run (the checks before a launch)
hold no file name, stage, source or count of a case: they ask `case.data`, a module or object that provides what
`CaseData` lists. The case knows its record format, its layout and its model; the host knows how to read JSON record
files in chunks, decode images on every core, hash files, check a safetensors or parquet file for being whole, and
download. The llava case implements it in cases/llava1_5_7b/plugin/data.py (standard library only: no torch on the
host).

What a case declares, and why the host needs it:

- `stages(cfg)`: each training stage's record file and image folder as a config lays them out (`StageData`), the
  config key that names the record file (a `--set` hint), the image folders a complete copy holds, and which data
  source fetches what (a fix names `kit data fetch --only SOURCE`).
- `record_issue(rec, template)`: the case's one record validator (the ranks run it too), with a category per problem
  so a verify counts a real file's unusable records by kind; `CATEGORIES` says what each is and what the reference
  pipeline does with it.
- `record_id(rec)`, `image_of(rec)`: the record's id and the image it names, for reports and the image list.
- `source_of(stage, rec)`, `image_source(stage, image)`: which source a record or an image belongs to, for the
  per-source counts (a missing image is reported with the source to fetch again).
- `checkpoints(cfg)`: the weights folders under `--models` and the files each must hold besides its weights.
- `eval_set()`: the eval set's files under the data root (its parquet layout), or None.
- `SOURCES`: the data-sources.toml, the one place of the sources and of the counts of a complete copy.
- `results_need(cfg, synthetic)`, `memory_need(cfg)`, `shm_need(cfg)`: what a run needs of a host, from the model's
  size and the loader's batches, which only the case knows.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

from kit import case as cases
from kit.data import sources as sources_mod
from kit.data.sources import Reference, Sources


@dataclass(frozen=True)
class StageData:
    """One training stage's data, as a config lays it out (paths relative to the data root)."""

    stage: str  # the stage's name (one of the case's training stages)
    records: str  # its record file: a JSON list of records
    images: str  # the folder its records' image paths are relative to ("." : the data root itself)
    template: str  # what the validator checks each record against (the case's business; kept in the manifest)
    setting: str  # the config key naming the record file: a filtered file is passed with `--set KEY=FILE`
    folders: tuple[str, ...] = ()  # the image folders under `images` a complete copy holds (counted by name)
    records_source: str = ""  # the data source that fetches the record file (`kit data fetch --only NAME`)
    images_source: str = ""  # the data source that fetches every image of the stage, when one source does


@dataclass(frozen=True)
class Checkpoint:
    """A weights folder a run loads from under --models (a Hugging Face checkpoint)."""

    part: str  # its key in inputs.json, the manifest and the rules ("weights.<part>.digest")
    label: str  # as a report names it
    folder: str  # relative to the models root, as the config names it
    needs: tuple[str, ...] = ("config.json",)  # files it must hold besides the weights (a .json must parse)
    source: str = ""  # the data source that fetches it


@dataclass(frozen=True)
class EvalSet:
    """The eval set's files: one folder per group (a subject) holding parquet files, under one folder."""

    name: str  # as reports name it
    folder: str  # its default folder under the data root
    groups: tuple[str, ...]  # the group folders a complete copy holds
    files: str  # the glob of a group's files, e.g. "validation-*.parquet"
    group_word: str = "groups"  # what a group is called in messages ("subjects")
    source: str = ""  # the data source that fetches it


@dataclass(frozen=True)
class Need:
    """What a run needs of a host (bytes), how that was computed, and what lowers it."""

    bytes: int
    how: str
    minimum: int = 0  # disk: the least that lets a run save anything
    fix: str = ""


class CaseData(Protocol):
    SOURCES: Path  # the data-sources.toml: sources and the counts of a complete copy (kit/data/sources.py)
    CATEGORIES: dict[str, tuple[str, str]]  # validator category -> (what it is, what the reference does with it)

    def stages(self, cfg: Any | None) -> tuple[StageData, ...]:
        """The training stages' data in order, as `cfg` (a typed config or its dict; None: the defaults) lays it out."""

    def record_issue(self, rec: Any, template: str) -> tuple[str, str] | None:
        """(category, why) when a record cannot be used, or None: the validator the ranks run too."""

    def record_problem(self, rec: Any, template: str) -> str | None:
        """Why a record cannot be used, or None (record_issue without its category)."""

    def record_id(self, rec: Any) -> str | None:
        """A record's id as reports name it, or None."""

    def image_of(self, rec: Any) -> str | None:
        """The image a record names, relative to its stage's image folder, or None (no image, or not a path)."""

    def image_path_problem(self, image: str) -> str | None:
        """Why an image path must never be opened (it leaves the image folder), or None."""

    def source_of(self, stage: StageData, rec: Any) -> str:
        """The source a record belongs to, for the per-source record counts."""

    def image_source(self, stage: StageData, image: str) -> str:
        """The source an image (relative to the stage's image folder) belongs to, for per-source problems."""

    def source_stage(self, source: str) -> str:
        """The training stage whose records name images of this source (a manifest's per-source counts)."""

    def record_file(self, cfg: Any, stage: str) -> str:
        """The stage's record file, relative to the data root, as the config names it."""

    def record_key(self, stage: str) -> str:
        """The config key that names the stage's record file."""

    def count_records(self, path: Path) -> int:
        """The records of a record file counted without parsing it (a quick check of a 1 GB file)."""

    def checkpoints(self, cfg: Any | None) -> tuple[Checkpoint, ...]:
        """The weights folders a real run loads, as `cfg` names them."""

    def eval_set(self) -> EvalSet | None:
        """The eval set's layout, or None when the case has no eval stage."""

    def synthetic_weights(self, cfg: Any) -> tuple[int, tuple[str, ...]]:
        """With --synthetic: the seed of the random initial weights, and the folders of the generated set that a run
        reads besides the records (a tokenizer), hashed into inputs.json."""

    def results_need(self, cfg: Any, synthetic: bool) -> Need:
        """Disk under --results for a whole run (`bytes`) and to save anything (`minimum`)."""

    def disk_need(self, cfg: Any, request: dict[str, Any]) -> tuple[int, int, str] | None:
        """(bytes, minimum, how) for a request (run.json's fields), or None when it writes nothing large."""

    def memory_need(self, cfg: Any) -> Need:
        """Host memory a rank's node needs at least (loading the model, offloaded optimizer state)."""

    def shm_need(self, cfg: Any) -> Need:
        """/dev/shm the loader workers of one node hold at once."""


def choose(name: str | None = None) -> cases.Case:
    """The case a data command works for: `--case NAME`, else the only one registered (UnknownCase lists them)."""
    return cases.get(name) if name else cases.only()


def of_config(cfg: Any) -> cases.Case:
    """The case whose config schema made `cfg` (a typed config), else the only case registered."""
    module = type(cfg).__module__
    for c in cases.registered().values():
        schema = c.config
        if isinstance(schema, ModuleType) and schema.__name__ == module:
            return c
    return cases.only()


def stages(case: cases.Case, cfg: Any | None = None) -> tuple[StageData, ...]:
    return tuple(case.data.stages(cfg))


def stage(case: cases.Case, cfg: Any | None, name: str) -> StageData:
    for sd in stages(case, cfg):
        if sd.stage == name:
            return sd
    raise KeyError(name)


_SOURCES: dict[tuple[str, str], Sources] = {}


def sources(case: cases.Case, path: str | Path | None = None) -> Sources:
    """The case's data-sources.toml (or another file of the same schema), validated against its training stages;
    read once per file. SourcesError names the file and the key."""
    p = Path(path) if path is not None else Path(case.data.SOURCES)
    key = (case.name, str(p.resolve()))
    if key not in _SOURCES or path is not None:
        _SOURCES[key] = sources_mod.load(p, cases.training(case))
    return _SOURCES[key]


def reference(case: cases.Case) -> Reference:
    """The counts of a complete copy (records per stage, per source, files per folder): one place, the sources file."""
    return sources(case).reference


def reference_records(case: cases.Case) -> dict[str, int]:
    """Records of each training stage's reference record file (what the rules ask a closed run to have read)."""
    return dict(reference(case).records)

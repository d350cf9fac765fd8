"""A case is a plug-in the host asks, never names.

A case is a package with two sides. Its training side runs on the ranks (torch, DeepSpeed); its torch-free side,
its *plugin*, tells the host everything the host needs and is registered under the `kit.cases` entry point group:

    [project.entry-points."kit.cases"]
    my_case = "my_package.plugin:CASE"

`CASE` provides what `Case` below lists: the stages in order and the module each runs under torchrun, the config
schema, the data files (rules, reference rows, data sources), the formulas the results need (`metrics`), the
data layout and validator (`data`), the eval stage's scorer (`scorer`), and the checks of a request the case
alone can judge. kit/ holds none of a case's words; tests/host/test_seams.py fails when it does.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

from kit.errors import KitError

GROUP = "kit.cases"
TRAIN, EVAL = "train", "eval"


@dataclass(frozen=True)
class Stage:
    """One stage of a case, in the order `--stage all` runs them."""

    name: str
    kind: str  # TRAIN (logs kit_step events, counts for throughput) or EVAL (logs eval batches, is scored)
    module: str  # the case module torchrun runs for it, e.g. "my_package.train"
    outputs: tuple[str, ...] = ()  # run-directory globs of what it leaves (recorded by hash in a submission)


class Scorer(Protocol):
    """The eval stage's scorer, on the host: raw responses in, scores out (a corrected parser rescores old runs)."""

    name: str  # what the eval set is called in tables and commands ("the eval set")
    figure: str  # the summary key of its headline accuracy, e.g. "acc"
    responses: str  # the run-directory path of the raw responses the eval stage writes
    scores: str  # the run-directory folder the host writes its scores into

    def score_file(self, responses: Path) -> dict[str, Any]:
        """Score one responses file: the result, raising ScoreError (a KitError) for a bad file."""

    def summary(self, result: dict[str, Any]) -> dict[str, Any]:
        """The headline numbers of a result (what `<scores>/summary.json` holds): JSON-ready."""

    def write(self, out: Path, result: dict[str, Any], protect: tuple[Path, ...] = ()) -> list[Path]:
        """Write the scores under `out` (never over a file in `protect`)."""

    def accuracy(self, summary: dict[str, Any]) -> float | None:
        """The headline accuracy (0..1) of a summary, or None."""


class Case(Protocol):
    name: str
    title: str  # as tables print it
    package: str  # the training side's importable package
    root: Path  # the folder of configs/, rules.toml, reference.toml, data-sources.toml
    stages: tuple[Stage, ...]
    image_repository: str  # the repository of `kit build`'s tags for this case's image
    request_aliases: dict[str, str]  # run.json fields of older runs under their current names: old -> new
    probe_module: str  # prints, as JSON, what it finds where the ranks run (environment.json's `case`); exits 3 when it cannot run
    synthetic_module: str | None  # generates the synthetic data set (--synthetic) in the run directory
    prepare_module: str | None  # prepares this host once before a native run (a JIT-built op), or None
    config: ModuleType  # the config schema, standard library only: available(), load(), dumps(), ConfigError
    metrics: Any  # the formulas of the results (kit/results asks: kit/case/metrics.py)
    data: Any  # the data layout and validator (kit/data asks: kit/case/data.py)
    scorer: Scorer | None

    def stage_args(self, stage: str, request: dict[str, Any]) -> list[str]:
        """The stage entry's arguments for one stage of a request (run.json's fields)."""

    def request_problems(self, request: dict[str, Any], cfg: Any) -> list[str]:
        """What only the case can refuse in a request (a stage that cannot run alone, ...): one line each."""

    def synthetic_questions(self, cfg: Any) -> int:
        """Questions per eval subject that --synthetic generates."""

    def synthetic_eval_questions(self, cfg: dict[str, Any]) -> int:
        """The questions a full eval on the synthetic set answers (a resolved config as a dict)."""

    def synthetic_args(self, cfg: Any, max_steps: int) -> list[str]:
        """The synthetic data module's arguments beyond --config and --out."""

    def eval_default(self, data: Path | None) -> Path | None:
        """Where the eval set lies under --data when --eval-data is not given."""

    def eval_model_problem(self, model_dir: Path | None) -> str | None:
        """Why --model-dir cannot serve the eval stage run alone, or None."""

    def eval_data_problem(self, path: Path | None) -> str:
        """The message for an eval set that is not there."""

    def fit(self, reference: str, target: dict[str, Any]) -> dict[str, Any]:
        """A config for another device, derived from `reference` (a config name or a .toml path) by changing only keys
        the case's rules call free (`kit configs new`). `target`: device (the short name the config records),
        memory_gib (one device's), nodes, gpus_per_node, host_memory_gib (one node's; None: no bound), name (None:
        the case's own naming). Returns {"name", "config": the whole config as a dict that the schema loads,
        "reasons": [(key, old, new, why)], "estimates": {stage: {...}} (figures the case estimated, shown as they
        are), "notes": [str]}. Raises ValueError, its message meant for the user, when nothing fits. Optional: a case
        without it cannot derive configs, and `kit configs new` says so."""


class UnknownCase(KitError, KeyError):
    exit_code = 2

    def __str__(self) -> str:
        names = ", ".join(registered()) or "none (is the kit installed? `pip install -e .` registers the built-in case)"
        return f"unknown case {self.args[0]!r}; known cases: {names}"


_CACHE: dict[str, Case] | None = None


def registered() -> dict[str, Case]:
    """Every case registered under the `kit.cases` entry point group, by name (loaded once)."""
    global _CACHE
    if _CACHE is None:
        found: dict[str, Case] = {}
        for ep in metadata.entry_points(group=GROUP):
            try:
                found[ep.name] = ep.load()
            except Exception as e:  # noqa: BLE001 - one broken plug-in must not hide the others; it is named
                print(f"kit: the case plug-in {ep.name!r} ({ep.value}) cannot be loaded: {type(e).__name__}: {e}",
                      file=sys.stderr)  # fmt: skip
        _CACHE = found
    return _CACHE


def get(name: str) -> Case:
    try:
        return registered()[name]
    except KeyError:
        raise UnknownCase(name) from None


def only() -> Case:
    """The case a command takes when none is named: the only one registered (UnknownCase names them otherwise)."""
    found = registered()
    if len(found) == 1:
        return next(iter(found.values()))
    raise UnknownCase("(none given: several are registered, name one)" if found else "(none registered)")


def stage(case: Case, name: str) -> Stage:
    for s in case.stages:
        if s.name == name:
            return s
    raise KeyError(name)


def training(case: Case) -> tuple[str, ...]:
    """The names of the stages that train, in order."""
    return tuple(s.name for s in case.stages if s.kind == TRAIN)


def evaluating(case: Case) -> tuple[str, ...]:
    return tuple(s.name for s in case.stages if s.kind == EVAL)


def config_module(case: Case) -> ModuleType:
    """The case's config schema (standard library only: no torch on the host)."""
    return case.config


def load_config(case: Case, name: str, overrides: list[str] | tuple[str, ...] = ()):
    return case.config.load(name, overrides)

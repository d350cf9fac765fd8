"""The one results model: typed figures, their statistics over runs, and the entries every table is drawn from.

- `Figure`: one figure of a stage, named once (its summary.json key, its column in csv and json rows, its header,
  its number format, its counterpart in the reference's published rows). `kit report` and `kit compare` draw
  their columns from the same table, so a figure has one name and one format everywhere.
- `Stats`: a figure over the runs of one entry. The **headline is the olympic mean** (the rules' [olympic]: sorted,
  the best and the worst dropped from `min_runs` runs on, the rest averaged), the figure a submission states and
  `kit compare` shows; the plain mean, min, max, sample standard deviation and CV stand beside it under their own
  names. One run is its own headline.
- `Entry`: one system as a table shows it: a run, the runs of one config, a submission, or the seed's published
  rows, with the Stats of every figure of every stage (kit/results/entries.py builds them).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any

from kit import case as cases
from kit.case import metrics as case_metrics
from kit.case.rules import Rules, olympic_mean
from kit.results.formats import is_num


@dataclass(frozen=True)
class Figure:
    """One figure of a stage."""

    key: str  # the stage summary's key (summary.json)
    column: str  # its column in every csv and in the row dicts of json
    label: str  # what a table's header calls it
    kind: str  # its number format (kit/results/formats.py KINDS)
    seed: str | None = None  # the reference row's key of the same quantity, or None: the seed published none
    like: bool = True  # the seed's figure is counted the same way (False: the same quantity, another counting)

    @property
    def seed_figure(self) -> str:
        """The seed entry's figure a ratio against the seed divides by: the like-for-like figure of the same
        quantity (the seed published only its own counting)."""
        return COUNTERPART.get(self.key, self.key)


# The order is the tables': the like-for-like figures (the seed's own counting) first, then the kit's.
FIGURES: tuple[Figure, ...] = (
    Figure("reference_method_tokens_per_s_per_gpu", "ref_method_tokens_per_s", "token/p/s (seed method)", "tps",
           "tokens_per_s_per_gpu"),
    Figure("mfu_reference_method", "ref_method_mfu", "MFU (seed method)", "pct", "mfu"),
    Figure("tokens_per_s_per_gpu", "tokens_per_s", "steady token/p/s", "tps", "tokens_per_s_per_gpu", like=False),
    Figure("mfu_reference", "mfu", "steady MFU", "pct", "mfu", like=False),
    Figure("mfu_exact", "mfu_exact", "exact MFU", "pct"),
    Figure("padded_tokens_per_s_per_gpu", "padded_tokens_per_s", "padded token/p/s", "tps"),
    Figure("loss_tail_mean", "loss", "loss", "loss", "loss"),
    Figure("mem_used_peak_gib", "mem_used_gib", "mem GiB", "gib"),
    Figure("mem_total_gib", "mem_total_gib", "mem total GiB", "gib"),
    Figure("mem_used_fraction", "mem_used_fraction", "mem used", "pct", "mem_used_fraction"),
    Figure("step_time_median_s", "step_time_median_s", "step s median", "s"),
    Figure("step_time_p10_s", "step_time_p10_s", "step s p10", "s"),
    Figure("step_time_p90_s", "step_time_p90_s", "step s p90", "s"),
    Figure("step_time_cv", "step_time_cv", "step time CV", "cv"),
    Figure("startup_s", "startup_s", "start-up s", "duration"),
    Figure("first_step_s", "first_step_s", "first step s", "s"),
    Figure("padding_waste", "padding_waste", "padding waste", "pct"),
    Figure("steady_drift", "steady_drift", "steady drift", "cv"),
)  # fmt: skip
# A steady figure against the seed: the seed's figure of the same quantity is its own counting (not like for like).
COUNTERPART = {"tokens_per_s_per_gpu": "reference_method_tokens_per_s_per_gpu", "mfu_reference": "mfu_reference_method"}
BY_KEY = {f.key: f for f in FIGURES}


def accuracy_figure(case: Any) -> Figure | None:
    """The eval accuracy as a figure: its key is the case's (case.metrics.ACCURACY_KEY), its label the eval set's
    name ("MMMU acc"); None for a case without an eval scorer or without formulas."""
    m = case_metrics.of(case)
    key = getattr(m, "ACCURACY_KEY", None)
    scorer = getattr(case, "scorer", None)
    if not key or scorer is None:
        return None
    return Figure(key, key, f"{scorer.name} acc", "acc", key)


def figures(case: Any) -> tuple[Figure, ...]:
    """Every figure of a stage of this case: FIGURES, then its eval accuracy."""
    acc = accuracy_figure(case)
    return (*FIGURES, acc) if acc else FIGURES


def accuracy_stage(case: Any) -> str | None:
    """The training stage whose row carries the eval accuracy: the last one, whose model the eval stage scores."""
    names = cases.training(case) if case is not None else ()
    return names[-1] if names else None


# ---- a figure over runs ----


@dataclass
class Stats:
    """One figure over the runs of an entry (values in run order; None where a run has none)."""

    values: list[float | None]
    n: int  # how many runs have a value
    olympic_mean: float | None  # the headline (see the module's docstring)
    mean: float | None
    min: float | None
    max: float | None
    std: float | None  # sample standard deviation (n - 1): the runs are a sample of the runs one could make
    cv: float | None  # std / mean

    @property
    def headline(self) -> float | None:
        return self.olympic_mean

    def to_dict(self) -> dict[str, Any]:
        return {"values": self.values, "n": self.n, "olympic_mean": self.olympic_mean, "mean": self.mean,
                "min": self.min, "max": self.max, "std": self.std, "cv": self.cv}  # fmt: skip


def stats(values: list[Any], olympic: dict[str, int]) -> Stats:
    """The statistics of one figure over the runs (olympic: the rules' drop and min_runs)."""
    nums = [float(v) for v in values if is_num(v)]
    mean = sum(nums) / len(nums) if nums else None
    std = statistics.stdev(nums) if len(nums) > 1 else None
    return Stats(
        values=[v if is_num(v) else None for v in values], n=len(nums),
        olympic_mean=olympic_mean(nums, olympic["drop"], olympic["min_runs"]) if nums else None, mean=mean,
        min=min(nums) if nums else None, max=max(nums) if nums else None, std=std,
        cv=std / mean if std is not None and mean else None,
    )  # fmt: skip


def published(v: Any) -> Stats:
    """A single published value (the seed's)."""
    if not is_num(v):
        return Stats([], 0, None, None, None, None, None, None)
    return Stats([v], 1, v, v, v, v, None, None)


# ---- an entry ----


@dataclass
class Entry:
    """One system as the tables show it: who, what ran, and the Stats of every figure of every stage."""

    label: str
    kind: str  # run | runs (several runs of one config) | submission | seed
    source: str
    case: str | None
    division: str = "-"  # closed | open for a submission, "-" for a plain run, "reference" for the seed
    rules_division: str | None = None  # the division that decides comparability (a plain run: what its facts obey)
    category: str = "full"  # full | throughput
    synthetic: bool = False
    breaks: list[dict[str, Any]] = field(default_factory=list)
    accelerator: str | None = None
    device_type: str | None = None  # kit_facts' device_type of its first training stage ("cpu" on a CPU)
    nodes: int | None = None
    gpus_per_node: int | None = None
    peak_flops: float | None = None
    peak_source: str = ""
    peak_declared: bool = False
    software: dict[str, Any] = field(default_factory=dict)
    runtime: dict[str, Any] | None = None  # the vendor's runtime the ranks applied (kit_facts `runtime`)
    shape: dict[str, Any] | None = None  # the case's shape() of its config: what makes two runs the same model
    standing: dict[str, Any] = field(default_factory=dict)  # comparability with the reference (summary.json's)
    runs: list[dict[str, Any]] = field(default_factory=list)
    inputs: dict[str, str | None] = field(default_factory=dict)  # each part of inputs.json: its digest or what it was
    stages: dict[str, dict[str, Stats]] = field(default_factory=dict)  # stage -> figure key -> Stats
    notes: list[str] = field(default_factory=list)
    # A submission's `kit verify` result: None when it passed (or for a plain run or the seed), else what failed.
    # An entry that fails verification is shown, marked, and compared with nothing.
    unverified: str | None = None
    accuracy: Figure | None = None  # the case's eval accuracy figure
    accuracy_stage: str | None = None  # the stage whose row carries it
    summaries: list[dict[str, Any]] = field(default_factory=list, repr=False)  # each run's run_summary (not in json)

    def figure(self, stage: str, key: str) -> float | None:
        """The headline of one figure of one stage (None where there is none)."""
        return self.stats(stage, key).headline

    def stats(self, stage: str, key: str) -> Stats:
        return (self.stages.get(stage) or {}).get(key) or published(None)

    @property
    def cpu(self) -> bool:
        """Ran on CPU ranks: its memory is host RSS and it has no peak, so no device ratio applies."""
        return self.device_type == "cpu" or str(self.accelerator or "").strip().lower().startswith("cpu")

    @property
    def figures(self) -> tuple[Figure, ...]:
        return (*FIGURES, self.accuracy) if self.accuracy else FIGURES

    def marked_label(self, baseline: bool = False) -> str:
        """The label with its marks: "Acme/box (synthetic, throughput, baseline)"."""
        marks = [m for m, on in (("FAILS kit verify", bool(self.unverified)), ("synthetic", self.synthetic),
                                 ("throughput", self.category == "throughput"), ("baseline", baseline)) if on]  # fmt: skip
        return f"{self.label} ({', '.join(marks)})" if marks else self.label

    def to_dict(self) -> dict[str, Any]:
        """Every raw number: per stage and figure the per-run values, olympic mean, plain mean, min, max, std."""
        out = {k: v for k, v in self.__dict__.items() if k not in ("stages", "summaries", "accuracy")}
        out["stages"] = {s: {k: st.to_dict() for k, st in figs.items()} for s, figs in self.stages.items()}
        return out


def stage_stats(summaries: list[dict[str, Any]], stage: str, figs: tuple[Figure, ...],
                olympic: dict[str, int]) -> dict[str, Stats]:
    """Every figure of one stage over the runs' summaries."""
    per = [(s.get("stages") or {}).get(stage) or {} for s in summaries]
    return {f.key: stats([p.get(f.key) for p in per], olympic) for f in figs}


# ---- what a submission states ----


def stated_results(summaries: list[dict[str, Any]], rules: Rules) -> dict[str, Any]:
    """Per training stage and figure of the rules' [olympic] figures: the olympic mean over the runs, with min, max
    and the values (what submission.json states and `kit verify` recomputes). The eval accuracy is the stage's
    that carries it, or the run's own where that stage's summary lacks it."""
    o = {"drop": int(rules.olympic["drop"]), "min_runs": int(rules.olympic["min_runs"])}
    case = cases.get(rules.case)
    acc = accuracy_figure(case)
    carrier = accuracy_stage(case)
    out: dict[str, Any] = {}
    for stage in cases.training(case):
        per = {}
        for fig in rules.olympic["figures"]:
            vals = [(s.get("stages", {}).get(stage) or {}).get(fig) for s in summaries]
            if acc is not None and fig == acc.key:
                vals = [s.get(fig) for s in summaries] if stage == carrier else []
            nums = [v for v in vals if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]
            if not nums:
                continue
            st = stats(nums, o)
            per[fig] = {"olympic_mean": st.olympic_mean, "min": st.min, "max": st.max, "values": nums, "n": st.n}
        out[stage] = per
    return out

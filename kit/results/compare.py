"""`kit compare`: several systems' results side by side, in the reference table's shape.

Each input is one entry, one system: a submission (its folder or its .tar.gz, made by `kit submit`) or a plain
run directory (made by `kit run`). Every figure is recomputed from the runs' raw facts with
`kit.results.metrics.run_summary` (a shipped summary.json is never read), at the peak the system declares when it
declares one, and each stage's figure is the olympic mean over the entry's runs (cases/<case>/rules.toml
[olympic]) with its min and max. Ratios against a baseline (an entry, or the seed's published rows) are
shown only between comparable entries: a ratio between a synthetic and a real entry, a full and a throughput
entry, a closed and an open one, or two model shapes says "not comparable: <why>" instead of a number.

Renderers: a Rich table, markdown (to paste into a README), json (every raw number), csv (one row per entry
and stage) and one self-contained html page (inline CSS and SVG bar charts; nothing external).
"""

from __future__ import annotations

import csv
import html
import io
import json
import math
import re
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from kit import __version__
from kit.results.metrics import LOSS_RULE, STEADY_RULE, run_summary
from kit.results.report import load_reference
from kit.submission import SubmissionError, read_run, unfinished
from kit.tables import whole

SCHEMA = "kit.compare/1"
FORMATS = ("table", "markdown", "json", "csv", "html")
STAGES = ("pretrain", "finetune")
NA = "n/a"
DEFAULT_OLYMPIC = {"drop": 1, "min_runs": 3}
# The per-run figures kept for every stage (keys of kit.results.metrics' stage summary).
FIGURES = (
    "tokens_per_s_per_gpu", "reference_method_tokens_per_s_per_gpu", "padded_tokens_per_s_per_gpu",
    "mfu_reference", "mfu_reference_method", "mfu_exact", "loss_tail_mean", "mem_used_peak_gib", "mem_total_gib",
    "mem_used_fraction", "mmmu_acc",
)  # fmt: skip
# Ratio key -> the figure it divides (entry's olympic mean / baseline's olympic mean).
RATIOS = {
    "tokens_per_s": "tokens_per_s_per_gpu",
    "ref_method_tokens_per_s": "reference_method_tokens_per_s_per_gpu",
    "mfu": "mfu_reference",
    "ref_method_mfu": "mfu_reference_method",
    "mfu_exact": "mfu_exact",
    "mmmu": "mmmu_acc",
}
# (key, header) of the result table, in order.
COLUMNS: list[tuple[str, str]] = [
    ("label", "system"),
    ("stage", "stage"),
    ("tokens_per_s", "token/p/s (min-max)"),
    ("ref_method_tokens_per_s", "ref-method token/p/s"),
    ("mfu", "MFU"),
    ("ref_method_mfu", "ref-method MFU"),
    ("mfu_exact", "exact MFU"),
    ("loss", "loss"),
    ("mem", "mem GiB used/total"),
    ("mmmu", "MMMU"),
    ("runs", "runs"),
    ("division", "division"),
    ("category", "category"),
    ("synthetic", "synthetic"),
]
# Two-line headers of the Rich table, so that it fits a terminal.
RICH_HEADERS = {"tokens_per_s": "token/p/s\n(min-max)", "ref_method_tokens_per_s": "ref-method\ntoken/p/s",
                "ref_method_mfu": "ref-method\nMFU", "mfu_exact": "exact\nMFU", "mem": "mem GiB\nused/total"}
LEFT = ("label", "stage", "division", "category", "synthetic")
SYSTEM_COLUMNS: list[tuple[str, str]] = [
    ("label", "system"), ("kind", "input"), ("accelerator", "accelerator"), ("scale", "nodes x GPUs"),
    ("peak", "peak bf16"), ("software", "software"), ("inputs", "inputs (digests)"), ("run_ids", "runs"),
]  # fmt: skip
CSV_COLUMNS = [
    "label", "kind", "stage", "division", "category", "synthetic", "accelerator", "nodes", "gpus_per_node",
    "peak_flops", "peak_declared", "runs",
    "tokens_per_s", "tokens_per_s_min", "tokens_per_s_max",
    "ref_method_tokens_per_s", "ref_method_tokens_per_s_min", "ref_method_tokens_per_s_max",
    "mfu", "ref_method_mfu", "mfu_exact", "loss", "mem_used_gib", "mem_total_gib", "mem_used_fraction", "mmmu",
    "baseline", "comparable", "not_comparable_why",
    *(f"ratio_{k}" for k in RATIOS),
]  # fmt: skip
# The model-shape keys named first when two shapes differ.
SHAPE_KEYS = ("model.llm.layers", "model.llm.hidden", "model.vision.layers", "model.vision.hidden")
# One colour per entry in the html charts (the seed is grey).
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2", "#bcbd22")
SEED_COLOR = "#7f7f7f"


# ---- entries ----


@dataclass
class Entry:
    """One system as the table shows it: who, what ran, and the figures of every stage over its runs."""

    label: str
    kind: str  # submission | run | seed
    source: str
    case: str | None
    division: str  # closed | open for a submission, "-" for a plain run, "reference" for the seed
    rules_division: str | None  # the division that decides comparability (a plain run: what its facts obey)
    category: str  # full | throughput
    synthetic: bool
    breaks: list[dict[str, Any]]
    accelerator: str | None
    nodes: int | None
    gpus_per_node: int | None
    peak_flops: float | None
    peak_source: str
    peak_declared: bool
    software: dict[str, Any]
    shape: dict[str, Any]  # config model.llm / model.vision (flattened)
    runs: list[dict[str, Any]]
    inputs: dict[str, str | None] = field(default_factory=dict)  # data / weights / mmmu: digest or what it was
    stages: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # stage -> figure -> stats
    notes: list[str] = field(default_factory=list)
    # A submission's `kit verify` result: None when it passed (or for a plain run or the seed), else what failed.
    # An entry that fails verification is shown, marked, and compared with nothing.
    unverified: str | None = None

    def figure(self, stage: str, key: str) -> float | None:
        return ((self.stages.get(stage) or {}).get(key) or {}).get("olympic_mean")

    def stats(self, stage: str, key: str) -> dict[str, Any]:
        return (self.stages.get(stage) or {}).get(key) or {}

    @property
    def marked_label(self) -> str:
        return _marked(self)


def _marked(e: Entry, baseline: bool = False) -> str:
    """The label with its marks: "Acme/box (synthetic, throughput, baseline)"."""
    marks = [m for m, on in (("FAILS kit verify", bool(e.unverified)), ("synthetic", e.synthetic),
                             ("throughput", e.category == "throughput"), ("baseline", baseline)) if on]  # fmt: skip
    return f"{e.label} ({', '.join(marks)})" if marks else e.label


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _flat(d: Any, prefix: str) -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d} if d is not None else {}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}.{k}"))
    return out


def model_shape(config: dict[str, Any]) -> dict[str, Any]:
    """The keys that make two models the same model: config model.llm.* and model.vision.*."""
    m = config.get("model") if isinstance(config.get("model"), dict) else {}
    return {**_flat(m.get("llm") or {}, "model.llm"), **_flat(m.get("vision") or {}, "model.vision")}


def _olympic_params(case: str | None) -> tuple[dict[str, Any], str | None]:
    try:
        from kit.case import rules as rules_mod

        r = rules_mod.load(case or "")
        return {"drop": int(r.olympic["drop"]), "min_runs": int(r.olympic["min_runs"])}, None
    except Exception as e:  # noqa: BLE001 - an unknown case or a broken rules file: the default, said in a note
        return dict(DEFAULT_OLYMPIC), f"olympic mean with drop 1, min_runs 3 (no rules for case {case!r}: {e})"


def _stats(values: list[Any], olympic: dict[str, Any]) -> dict[str, Any]:
    from kit.case.rules import olympic_mean

    nums = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]
    return {
        "values": [v if isinstance(v, (int, float)) and not isinstance(v, bool) else None for v in values],
        "olympic_mean": olympic_mean(nums, olympic["drop"], olympic["min_runs"]) if nums else None,
        "min": min(nums) if nums else None,
        "max": max(nums) if nums else None,
        "n": len(nums),
    }


def _summarize(entry: Entry, run_dirs: list[Path], olympic: dict[str, Any]) -> None:
    """Recompute every run (run_summary at the declared peak) and fill the entry's per-stage statistics."""
    summaries = [run_summary(p, peak_flops=entry.peak_flops if entry.peak_declared else None) for p in run_dirs]
    for meta, s in zip(entry.runs, summaries, strict=True):
        meta["state"] = s.get("state")
    names = [n for n in STAGES if any(n in s.get("stages", {}) for s in summaries)]
    names += [n for s in summaries for n in s.get("stage_order", []) if n not in names and n != "eval"]
    for name in dict.fromkeys(names):
        per = [s.get("stages", {}).get(name) or {} for s in summaries]
        entry.stages[name] = {f: _stats([p.get(f) for p in per], olympic) for f in FIGURES}
        for p in per:
            for n in p.get("notes") or []:
                if not n.startswith("MFU n/a:"):  # the peak note says it once per entry
                    entry.notes.append(f"[{entry.label} {name}] {n}")
        states = sorted({p.get("state") for p in per if p.get("state") != "finished"} - {None})
        if states:
            entry.notes.append(f"[{entry.label} {name}] not every run finished this stage ({', '.join(states)}): "
                               "its figures cover the part that ran")  # fmt: skip
    if not entry.peak_declared:
        first = next((p for s in summaries for p in s.get("stages", {}).values()), {})
        entry.peak_flops = first.get("peak_flops")
        entry.peak_source = first.get("peak_source") or "unknown"
    entry.notes = list(dict.fromkeys(entry.notes))


def input_digests(inputs: dict[str, Any]) -> dict[str, str | None]:
    """What a run read, by content (inputs.json): the data, weights and MMMU digests, or what stood in for them."""
    out: dict[str, str | None] = {}
    for part in ("data", "weights", "mmmu"):
        d = inputs.get(part) if isinstance(inputs.get(part), dict) else {}
        if d.get("digest"):
            out[part] = str(d["digest"])
        elif part == "weights" and d.get("random_init"):
            out[part] = f"random init (seed {d.get('seed')})"
        elif part == "mmmu" and d.get("generated"):
            out[part] = "generated"
        else:
            out[part] = None
    return out


def _entry_inputs(entry: Entry, facts: list[Any]) -> None:
    """The entry's inputs: its first run's, with a note when its runs did not all read the same."""
    seen = [input_digests(f.inputs) for f in facts]
    entry.inputs = seen[0] if seen else {}
    if any(x != seen[0] for x in seen[1:]):
        entry.notes.append(f"[{entry.label}] its runs did not all read the same inputs (inputs.json digests differ; "
                           "kit verify fails it)")  # fmt: skip
    if facts and not facts[0].inputs:
        entry.notes.append(f"[{entry.label}] no inputs.json: what it read is not known by content")


def _short(v: str | None) -> str:
    if v is None:
        return "?"
    return v[:12] if re.fullmatch(r"[0-9a-f]{64}", v) else v


def _software_text(sw: dict[str, Any]) -> str:
    """The image or environment and its software stack: two entries of different stacks never read alike (a
    submission packed before stacks were recorded says "stack unknown")."""
    from kit.image.stacks import describe

    if not isinstance(sw, dict) or not sw:
        return NA
    ident = str(sw.get("id") or "?")
    short = ident[:19] + "..." if len(ident) > 22 else ident
    stack = f"; stack {describe(sw.get('stack')) if sw.get('stack') else 'unknown (not recorded)'}"
    if sw.get("kind") == "image":
        return f"image {short}" + (f" ({sw['tag']})" if sw.get("tag") else "") + stack
    return f"native {short}" + (f" (Python {sw['python']})" if sw.get("python") else "") + stack


def _stack_note(e: Entry, base: Entry) -> str | None:
    """Two entries of different software stacks: their ratio measures the software as well as the system."""
    from kit.image.stacks import describe, stack_key

    a, b = (x.software.get("stack") if isinstance(x.software, dict) else None for x in (e, base))
    known = [x for x in (a, b) if isinstance(x, dict) and x.get("name") not in (None, "unknown")]
    if len(known) < 2:
        missing = " and ".join(x.label for x, st in ((e, a), (base, b)) if st not in known)
        return (f"[{e.label}] vs {base.label}: the software stack of {missing} is not recorded (made before the kit "
                "recorded it): whether both ran the same libraries is not known")  # fmt: skip
    if stack_key(a) == stack_key(b):
        return None
    return (f"[{e.label}] vs {base.label}: different software stacks ({describe(a)} vs {describe(b)}): the ratio "
            "compares the libraries as well as the systems")  # fmt: skip


def load_submission(root: Path, source: str) -> tuple[Entry, list[Path]]:
    """An entry from a submission folder (the folder holding submission.json)."""
    sub = _json(root / "submission.json")
    if not isinstance(sub, dict):
        raise SubmissionError(f"{source}: submission.json is missing or not valid JSON")
    system, case = str(sub.get("system") or ""), sub.get("case")
    runs_meta = [r for r in sub.get("runs") or [] if isinstance(r, dict)]
    if not system or not runs_meta:
        raise SubmissionError(f"{source}: submission.json names no system or no runs")
    results = root / "results" / system / str(case)
    run_dirs = []
    for r in runs_meta:
        d = results / str(r.get("dir"))
        if not (d / "run.json").is_file():
            raise SubmissionError(f"{source}: run {r.get('dir')!r} is listed in submission.json but "
                                  f"results/{system}/{case}/{r.get('dir')} has no run.json")  # fmt: skip
        run_dirs.append(d)
    desc = _json(root / "systems" / f"{system}.json")
    desc = desc if isinstance(desc, dict) else {}
    facts = [read_run(d) for d in run_dirs]
    first = facts[0]
    acc = first.accelerator()
    peak = desc.get("accelerator_peak_bf16_flops")
    declared = isinstance(peak, (int, float)) and not isinstance(peak, bool) and peak > 0
    entry = Entry(
        label=f"{sub.get('submitter') or sub.get('org') or '?'}/{sub.get('system_name') or desc.get('system_name') or system}",
        kind="submission", source=source,
        case=case, division=str(sub.get("division") or "?"), rules_division=sub.get("division"),
        category=str(sub.get("category") or first.category), synthetic=bool(sub.get("synthetic")),
        breaks=[b for b in sub.get("breaks") or [] if isinstance(b, dict)],
        accelerator=acc["model"] or desc.get("accelerator_model_name"),
        nodes=desc.get("number_of_nodes", acc["nodes"]), gpus_per_node=desc.get("accelerators_per_node", acc["per_node"]),
        peak_flops=float(peak) if declared else None,
        peak_source=("declared by the submitter" + (f": {desc['accelerator_peak_source']}"
                                                     if desc.get("accelerator_peak_source") else ""))
        if declared else "",
        peak_declared=declared, software=sub.get("software") or first.software(), shape=model_shape(first.config),
        runs=[{"dir": r.get("dir"), "run_id": r.get("run_id"), "config": r.get("config"),
               "path": f"{source}:results/{system}/{case}/{r.get('dir')}"} for r in runs_meta],
    )  # fmt: skip
    if not desc:
        entry.notes.append(f"[{entry.label}] systems/{system}.json is missing or unreadable: the accelerator and "
                           "scale are the first run's")  # fmt: skip
    _entry_inputs(entry, facts)
    shapes = {json.dumps(model_shape(f.config), sort_keys=True) for f in facts[1:]}
    if shapes - {json.dumps(entry.shape, sort_keys=True)}:
        entry.notes.append(f"[{entry.label}] its runs do not all have the same model shape (kit verify fails it)")
    return entry, run_dirs


def load_run(path: Path) -> tuple[Entry, list[Path]]:
    """An entry from a plain run directory: no division; what its facts would qualify for decides comparability."""
    rf = read_run(path)
    case = rf.run.get("case")
    rules_division, breaks, why = None, [], ""
    try:
        from kit.case import rules as rules_mod

        r = rules_mod.load(case or "")
        found = rules_mod.check_run(r, rf.rule_facts(), rf.category, where=rf.run_id)
        breaks = [b.to_dict() for b in found]
        rules_division = "open" if found else "closed"
    except Exception as e:  # noqa: BLE001 - unknown case, broken rules: comparability then ignores the division
        why = f" (its rules could not be applied: {e})"
    acc = rf.accelerator()
    entry = Entry(
        label=rf.run_id, kind="run", source=str(path), case=case, division="-", rules_division=rules_division,
        category=rf.category, synthetic=rf.synthetic, breaks=breaks, accelerator=acc["model"], nodes=acc["nodes"],
        gpus_per_node=acc["per_node"], peak_flops=None, peak_source="", peak_declared=False, software=rf.software(),
        shape=model_shape(rf.config),
        runs=[{"dir": path.name, "run_id": rf.run_id, "config": rf.config.get("name"), "path": str(path)}],
    )  # fmt: skip
    _entry_inputs(entry, [rf])
    if rules_division == "closed":
        entry.notes.append(f"[{entry.label}] a plain run, not a submission: no division; its facts break no fixed "
                           "rule (closed would accept them); one run, so no olympic mean")  # fmt: skip
    elif rules_division == "open":
        entry.notes.append(f"[{entry.label}] a plain run, not a submission: no division; its facts break "
                           f"{len(breaks)} fixed rule(s), so it compares as open")  # fmt: skip
    else:
        entry.notes.append(f"[{entry.label}] a plain run, not a submission: no division{why}")
    if why_not := unfinished(rf):
        entry.notes.append(f"[{entry.label}] {why_not}")
    return entry, [path]


def load_entry(path: Path, scratch: Path) -> Entry:
    """An entry from a path: a run directory, a submission folder, or a submission .tar.gz (unpacked in scratch,
    within kit verify's bounds). A submission is verified first: one that fails is shown marked, compared with
    nothing."""
    from kit.submission.verifier import find_root, open_tarball

    if not path.exists():
        raise SubmissionError(f"{path}: no such file or folder")
    if path.is_file():
        if not path.name.endswith((".tar.gz", ".tgz")):
            raise SubmissionError(f"{path}: not a run directory, a submission folder or a submission .tar.gz")
        dest = Path(tempfile.mkdtemp(prefix="tar-", dir=scratch))
        root = open_tarball(path, dest)
        entry, run_dirs = load_submission(root, str(path))
        _verify_entry(entry, root)
    elif (path / "run.json").is_file():
        entry, run_dirs = load_run(path)
    else:
        try:
            root = find_root(path)
        except SubmissionError:
            runs = sorted(p.name for p in path.iterdir() if (p / "run.json").is_file())
            hint = f"; it holds {len(runs)} run directories: name each (e.g. {path / runs[0]})" if runs else ""
            raise SubmissionError(f"{path}: neither a run directory (no run.json), a submission folder (no "
                                  f"submission.json in it or one folder below) nor a submission .tar.gz{hint}") from None
        entry, run_dirs = load_submission(root, str(path))
        _verify_entry(entry, root)
    olympic, note = _olympic_params(entry.case)
    if note:
        entry.notes.append(f"[{entry.label}] {note}")
    _summarize(entry, run_dirs, olympic)
    return entry


def _verify_entry(entry: Entry, root: Path) -> None:
    """kit verify on a submission entry's tree: a failure marks the entry, and no ratio is drawn to or from it."""
    from kit.submission.verifier import verify

    rep = verify(root)
    fails = [f for f in rep.findings if f.status == "fail"]
    if fails:
        first = fails[0]
        entry.unverified = f"{len(fails)} check(s) fail, first [{first.check}] {first.where}: {first.detail}"
        entry.notes.append(f"[{entry.label}] FAILS kit verify ({entry.unverified}); its figures are shown as "
                           "submitted and compared with nothing")  # fmt: skip


def _one(v: Any) -> dict[str, Any]:
    """The statistics of a single published value."""
    if not _is_num(v):
        return {"values": [], "olympic_mean": None, "min": None, "max": None, "n": 0}
    return {"values": [v], "olympic_mean": v, "min": v, "max": v, "n": 1}


def seed_entry(case: str | None) -> Entry | None:
    """The seed's primary published rows as an entry ("seed A800 1x8"), or None when the case has none.

    The seed's token/p/s is its own counting (padded tokens over the whole stage's wall time), so it is filed
    under the ref-method figures, as is its MFU; it published no steady-state figure.
    """
    rows = [r for r in load_reference(case) if r.get("primary")]
    if not rows:
        return None
    shape: dict[str, Any] = {}
    try:
        from kit import case as cases
        from kit.case import rules as rules_mod

        r = rules_mod.load(case or "")
        shape = model_shape(cases.config_module(cases.get(r.case)).load(r.reference_config).to_dict())
    except Exception:  # noqa: BLE001 - no rules: the model shape is not compared with the seed
        shape = {}
    first = rows[0]
    entry = Entry(
        label=f"seed {first.get('device')} {first.get('nodes')}x{first.get('gpus_per_node')}", kind="seed",
        source=f"cases/{case}/reference.toml", case=case, division="reference", rules_division="closed",
        category="full", synthetic=False, breaks=[], accelerator=first.get("device_name") or first.get("device"),
        nodes=first.get("nodes"), gpus_per_node=first.get("gpus_per_node"), peak_flops=first.get("peak_flops"),
        peak_source="the seed's (reference.toml)", peak_declared=True, software={"kind": "published", "id": "FlagPerf"},
        shape=shape, runs=[],
    )  # fmt: skip
    for row in rows:
        used, total = row.get("mem_used_gb"), row.get("mem_total_gb")
        entry.stages[row["stage"]] = {
            "reference_method_tokens_per_s_per_gpu": _one(row.get("tokens_per_s_per_gpu")),
            "mfu_reference_method": _one(row.get("mfu")),
            "loss_tail_mean": _one(row.get("loss")),
            "mem_used_peak_gib": _one(used),
            "mem_total_gib": _one(total),
            "mem_used_fraction": _one(used / total if used and total else None),
            "mmmu_acc": _one(row.get("mmmu_acc")),
        }
        if row.get("note"):
            entry.notes.append(f"[seed {row['stage']}] {row['note']}")
    return entry


# ---- comparability and ratios ----


def _kind_word(synthetic: bool) -> str:
    return "synthetic" if synthetic else "real"


def not_comparable(a: Entry, b: Entry) -> list[str]:
    """Why a ratio between a and b would mislead (empty: they compare)."""
    why = [f"{e.label} fails kit verify" for e in (a, b) if e.unverified]
    if a.case and b.case and a.case != b.case:
        why.append(f"case {a.case} vs {b.case}")
    if a.synthetic != b.synthetic:
        why.append(f"{_kind_word(a.synthetic)} vs {_kind_word(b.synthetic)} data")
    if a.category != b.category:
        why.append(f"{a.category} vs {b.category} category")
    if a.rules_division and b.rules_division and a.rules_division != b.rules_division:
        side = lambda e: e.rules_division + (" (by its facts)" if e.kind == "run" else "")  # noqa: E731
        why.append(f"{side(a)} vs {side(b)} division")
    if a.shape and b.shape and a.shape != b.shape:
        keys = [k for k in SHAPE_KEYS if k in a.shape or k in b.shape]
        keys += sorted((set(a.shape) | set(b.shape)) - set(keys))
        differ = [k for k in keys if a.shape.get(k) != b.shape.get(k)]
        more = f", {len(differ) - 1} more" if len(differ) > 1 else ""
        why.append(f"model shape ({differ[0]} {a.shape.get(differ[0])} vs {b.shape.get(differ[0])}{more})")
    return why


def _ratio(a: Any, b: Any) -> float | None:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b:
        return a / b
    return None


def ratios(entry: Entry, base: Entry, stage: str) -> dict[str, Any]:
    """entry / base of the olympic means of one stage, or why not."""
    why = not_comparable(entry, base)
    vals = {k: None if why else _ratio(entry.figure(stage, f), base.figure(stage, f)) for k, f in RATIOS.items()}
    return {"baseline": base.label, "comparable": not why, "why": "; ".join(why), **vals}


@dataclass
class Comparison:
    entries: list[Entry]
    seed: Entry | None
    baseline: Entry
    stages: list[str]
    notes: list[str]
    olympic: dict[str, Any]

    @property
    def shown(self) -> list[Entry]:
        """The entries in input order, then the seed."""
        return self.entries + ([self.seed] if self.seed else [])

    @property
    def ordered(self) -> list[Entry]:
        """The order of each stage's rows: the baseline first, then the others as shown."""
        return [self.baseline] + [e for e in self.shown if e is not self.baseline]


def pick_baseline(entries: list[Entry], seed: Entry | None, name: str | None) -> Entry:
    """--baseline: an entry's label (exact, else a unique case-insensitive part of it), its 1-based position, or seed."""
    if not name:
        return entries[0]
    if name.lower() == "seed":
        if seed is None:
            raise SubmissionError("--baseline seed needs --reference (the seed's rows are shown only with it)")
        return seed
    exact = [e for e in entries if e.label == name]
    if exact:
        return exact[0]
    part = [e for e in entries if name.lower() in e.label.lower()]
    if len(part) == 1:
        return part[0]
    if name.isdigit() and 1 <= int(name) <= len(entries):
        return entries[int(name) - 1]
    labels = ", ".join(repr(e.label) for e in entries) + (", 'seed'" if seed else "")
    what = "matches several entries" if part else "matches no entry"
    raise SubmissionError(f"--baseline {name!r} {what}; choose one of {labels} (or a position 1..{len(entries)})")


def build(paths: list[Path], reference: bool = False, baseline: str | None = None) -> Comparison:
    """Open every input, recompute every figure, pick the baseline and write the notes."""
    if not paths:
        raise SubmissionError("nothing to compare: kit compare SUBMISSION|RUN [...]")
    with tempfile.TemporaryDirectory(prefix="kit-compare-") as tmp:
        entries = [load_entry(Path(p), Path(tmp)) for p in paths]
    seen: dict[str, int] = {}
    for e in entries:  # the same system given twice (its folder and its tarball) stays two labelled entries
        seen[e.label] = seen.get(e.label, 0) + 1
        if seen[e.label] > 1:
            old, e.label = e.label, f"{e.label} #{seen[e.label]}"
            e.notes = [n.replace(f"[{old}", f"[{e.label}", 1) if n.startswith(f"[{old}") else n for n in e.notes]
    case = entries[0].case
    seed = seed_entry(case) if reference else None
    if reference and seed is None:
        raise SubmissionError(f"--reference: case {case!r} has no published reference rows (cases/{case}/reference.toml)")
    base = pick_baseline(entries, seed, baseline)
    olympic, _ = _olympic_params(case)
    stages = [s for s in STAGES if any(s in e.stages for e in entries)]
    stages += [s for e in entries for s in e.stages if s not in stages]
    cmp = Comparison(entries, seed, base, list(dict.fromkeys(stages)), [], olympic)
    cmp.notes = _notes(cmp)
    return cmp


# ---- notes ----


def _peak_text(e: Entry) -> str:
    if not e.peak_flops:
        return f"none, so MFU is n/a: {e.peak_source or 'unknown'}"
    return f"{e.peak_flops / 1e12:g} TFLOP/s dense bf16, {e.peak_source or 'source unknown'}"


def _inputs_notes(e: Entry, base: Entry) -> list[str]:
    """Whether e read the same bytes as the baseline (data, weights, MMMU digests of inputs.json)."""
    same, other = [], []
    for part in ("data", "weights", "mmmu"):
        a, b = e.inputs.get(part), base.inputs.get(part)
        if a is None or b is None:
            continue
        (same if a == b else other).append(f"{part} {_short(a)}" if a == b else f"{part} {_short(a)} vs {_short(b)}")
    out = []
    if other:
        out.append(f"[{e.label}] read other inputs than {base.label}: {', '.join(other)} (inputs.json digests).")
    if same:
        out.append(f"[{e.label}] read the same inputs as {base.label}: {', '.join(same)}.")
    return out


def _notes(c: Comparison) -> list[str]:
    drop, min_runs = c.olympic["drop"], c.olympic["min_runs"]
    notes = [
        "Every figure is recomputed from each run's raw facts (kit.results.metrics.run_summary), at the peak the system "
        "declares when it declares one; no shipped summary.json is read. Every submission is checked with `kit "
        "verify` first: one that fails is marked and compared with nothing.",
        f"olympic mean: each figure of the entry's runs sorted, the best {drop} and the worst {drop} dropped when "
        f"there are at least {min_runs} runs (else the plain mean), the rest averaged; (min-max) over all runs.",
        "token/p/s: real (non-padded) tokens per second per GPU over the steady-state steps; " + STEADY_RULE + ".",
        "ref-method token/p/s: the seed's counting, padded tokens over the whole stage's wall time from launch "
        "(start-up and final save included): the like-for-like figure against the seed.",
        "MFU: the seed's formula (token/p/s x 7e9 x 2 pretrain | 6 finetune / peak) at each system's own peak; "
        "ref-method MFU: the same formula on the ref-method token/p/s; exact MFU: model FLOPs as the graph runs "
        "(kit.results.metrics.exact_flops_breakdown) over the steady steps. n/a without a peak (a CPU has none).",
        LOSS_RULE + ". mem: peak GiB in use on the device (total - free) / the device's GiB. MMMU: accuracy over "
        "the MMMU validation questions the run answered (finetune row).",
    ]
    base = c.baseline
    if base.kind == "seed":
        notes.append(f"ratio rows: each entry / the seed ({base.label}). The seed published only its own counting, so "
                     "only the ref-method token/p/s and ref-method MFU (and MMMU) have a seed counterpart; the "
                     "steady-state ratios are n/a.")  # fmt: skip
    else:
        notes.append(f"ratio rows: each entry / the baseline {base.label} (olympic mean over olympic mean); "
                     "steady vs steady, ref-method vs ref-method.")  # fmt: skip
    notes.append("not comparable: a ratio between entries that differ in synthetic vs real data, category (full vs "
                 "throughput), division (closed vs open; a plain run counts as what its facts obey) or model shape "
                 "(config model.llm / model.vision) is not shown as a number.")  # fmt: skip
    if c.seed is not None:
        notes.append(f"{c.seed.label} rows (--reference): the seed's published primary rows. Its token/p/s counts "
                     "padded tokens over the whole wall time (start-up and save included), so it stands in, and "
                     "compares with, the ref-method token/p/s column; its MFU is its formula on that figure "
                     "(ref-method MFU column). It published no steady-state figure. Its memory is GB read by hand "
                     "from nvidia-smi (81 = 81920 MiB = 80 GiB).")  # fmt: skip
    for e in c.entries:
        notes.append(f"[{e.label}] peak: {_peak_text(e)}.")
        if e.synthetic:
            notes.append(f"[{e.label}] SYNTHETIC: generated data and random initial weights: it measures the kit, "
                         "not the case.")  # fmt: skip
        if e.category == "throughput":
            notes.append(f"[{e.label}] THROUGHPUT category: fewer steps than an epoch (kit run --max-steps): "
                         "token/p/s and MFU only, its loss and MMMU are no claims.")  # fmt: skip
        if e.breaks:
            head = "open division" if e.kind == "submission" else "rules its facts break"
            for b in e.breaks:
                notes.append(f"[{e.label}] {head}: {b.get('where') + ': ' if b.get('where') else ''}{b.get('key')} = "
                             f"{b.get('found')!r}, the rules fix {b.get('expected')!r} ({b.get('rule')})")  # fmt: skip
        elif e.division == "open":
            notes.append(f"[{e.label}] open division: submission.json lists no break.")
        if e is not base:
            why = not_comparable(e, base)
            if why:
                notes.append(f"[{e.label}] vs {base.label}: not comparable: {'; '.join(why)}.")
            if base.kind != "seed":
                notes += _inputs_notes(e, base)
                if note := _stack_note(e, base):
                    notes.append(note)
        notes += e.notes
    if c.seed is not None:
        notes += c.seed.notes
    return list(dict.fromkeys(notes))


# ---- cells ----


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def fmt_tps(v: Any) -> str:
    if not _is_num(v):
        return NA
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:,.1f}"


def fmt_pct(v: Any) -> str:
    if not _is_num(v):
        return NA
    return f"{v * 100:.2f}%" if v == 0 or abs(v) >= 1e-4 else f"{v * 100:.2g}%"


def fmt_x(v: Any) -> str:
    return f"{v:.2f}x" if _is_num(v) else NA


def _tps_range(st: dict[str, Any]) -> str:
    mean = st.get("olympic_mean")
    if not _is_num(mean):
        return NA
    if (st.get("n") or 0) > 1:
        return f"{fmt_tps(mean)} ({fmt_tps(st['min'])}-{fmt_tps(st['max'])})"
    return fmt_tps(mean)


def _mem(e: Entry, stage: str) -> str:
    used, total = e.figure(stage, "mem_used_peak_gib"), e.figure(stage, "mem_total_gib")
    if not _is_num(used):
        return "-" if e.kind == "seed" else NA
    if e.kind == "seed":
        return f"{used:.0f}/{total:.0f} GB" if _is_num(total) else f"{used:.0f} GB"
    return f"{used:.1f}/{total:.1f}" if _is_num(total) else f"{used:.1f}/{NA}"


def entry_cells(e: Entry, stage: str, baseline: Entry) -> dict[str, str]:
    seed = e.kind == "seed"
    loss = e.figure(stage, "loss_tail_mean")
    mmmu = e.figure(stage, "mmmu_acc")
    return {
        "label": _marked(e, e is baseline),
        "stage": stage,
        "tokens_per_s": "-" if seed else _tps_range(e.stats(stage, "tokens_per_s_per_gpu")),
        "ref_method_tokens_per_s": fmt_tps(e.figure(stage, "reference_method_tokens_per_s_per_gpu")),
        "mfu": "-" if seed else fmt_pct(e.figure(stage, "mfu_reference")),
        "ref_method_mfu": fmt_pct(e.figure(stage, "mfu_reference_method")),
        "mfu_exact": "-" if seed else fmt_pct(e.figure(stage, "mfu_exact")),
        "loss": f"{loss:.4f}" if _is_num(loss) else ("-" if seed else NA),
        "mem": _mem(e, stage),
        "mmmu": (f"{mmmu * 100:.1f}%" if _is_num(mmmu) else (NA if stage == "finetune" and not seed else "-")),
        "runs": "published" if seed else str(len(e.runs)),
        "division": e.division,
        "category": e.category,
        "synthetic": "yes" if e.synthetic else "no",
    }


def ratio_cells(r: dict[str, Any], stage: str) -> dict[str, str]:
    label = f"  ratio vs {r['baseline']}"
    if not r["comparable"]:
        cells = {k: "not comparable" for k in RATIOS}
        cells["tokens_per_s"] = f"not comparable: {r['why']}"
    else:
        cells = {k: fmt_x(r[k]) for k in RATIOS}
    if stage != "finetune":
        cells["mmmu"] = ""  # MMMU is the finetune row's
    return {"label": label, "stage": stage, **cells}


def rows(c: Comparison) -> list[dict[str, Any]]:
    """Display rows, stage by stage: every entry (its ratio row under it), then the seed."""
    out: list[dict[str, Any]] = []
    for stage in c.stages:
        for e in c.ordered:
            if stage not in e.stages:
                continue
            out.append({"kind": e.kind, "stage": stage, "entry": e, "cells": entry_cells(e, stage, c.baseline)})
            if e is not c.baseline and e.kind != "seed":
                r = ratios(e, c.baseline, stage)
                out.append({"kind": "ratio", "stage": stage, "entry": e, "ratio": r, "cells": ratio_cells(r, stage)})
    return out


def system_cells(e: Entry) -> dict[str, str]:
    peak = f"{e.peak_flops / 1e12:g} TFLOP/s" if e.peak_flops else NA
    if e.peak_flops and e.peak_declared and e.kind != "seed":
        peak += " (declared by the submitter)"
    scale = f"{e.nodes if e.nodes is not None else '?'} x {e.gpus_per_node if e.gpus_per_node is not None else '?'}"
    ids = [str(r.get("run_id") or r.get("dir")) for r in e.runs]
    return {
        "label": e.marked_label, "kind": e.kind, "accelerator": str(e.accelerator or NA), "scale": scale, "peak": peak,
        "software": "FlagPerf (published)" if e.kind == "seed" else _software_text(e.software),
        "inputs": ", ".join(f"{k} {_short(v)}" for k, v in e.inputs.items()) if e.inputs else "-",
        "run_ids": ", ".join(ids) if ids else "-",
    }  # fmt: skip


# ---- renderers ----


def table_renderable(c: Comparison) -> Group:
    """The result table (the reference table's shape), the systems, and the notes: Rich renderables."""
    main = Table(title=f"kit compare: {len(c.entries)} system(s), baseline {c.baseline.label}", box=box.SIMPLE_HEAD,
                 pad_edge=False, collapse_padding=True, title_justify="left")  # fmt: skip
    all_rows = rows(c)
    widest_num = max([len(r["cells"]["tokens_per_s"]) for r in all_rows if r["kind"] != "ratio"] + [10])
    for k, _ in COLUMNS:
        header = RICH_HEADERS.get(k, dict(COLUMNS)[k])
        if k == "label":  # a run id or a system's name: kept whole (tables.Whole), the other columns wrap
            main.add_column(header, justify="left", min_width=20, overflow="fold")
        elif k == "tokens_per_s":
            main.add_column(header, justify="right", min_width=widest_num, max_width=max(widest_num, 24), overflow="fold")
        elif k in RATIOS:
            main.add_column(header, justify="right", overflow="fold")
        else:
            main.add_column(header, justify="left" if k in LEFT else "right", no_wrap=True)
    stage = None
    for r in all_rows:
        if stage is not None and r["stage"] != stage:
            main.add_section()
        stage = r["stage"]
        style = {"seed": "dim", "ratio": "cyan"}.get(r["kind"])
        if r["kind"] == "ratio" and not r["ratio"]["comparable"]:
            style = "yellow"
        cells = dict(r["cells"])
        if r["kind"] == "ratio" and not r["ratio"]["comparable"]:  # said once, in the first ratio cell
            cells.update({k: "-" for k in RATIOS if k != "tokens_per_s" and cells.get(k)})
        main.add_row(*(cells.get(k, "") for k, _ in COLUMNS), style=style)
    systems = Table(title="systems", box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True, title_justify="left")
    for _, header in SYSTEM_COLUMNS:
        systems.add_column(header, overflow="fold")
    for e in c.shown:
        cells = system_cells(e)
        cells["run_ids"] = cells["run_ids"].replace(", ", "\n")  # one id a line, each whole
        systems.add_row(*(cells.get(k, "") for k, _ in SYSTEM_COLUMNS), style="dim" if e.kind == "seed" else None)
    notes = Text("\n".join(f"{i}. {n}" for i, n in enumerate(c.notes, 1)), style="dim")
    names = [dict(SYSTEM_COLUMNS)[k] for k in ("label", "run_ids", "accelerator")]  # the first kept whole first
    return Group(whole(main, dict(COLUMNS)["label"]), whole(systems, *names), notes)


def render_text(c: Comparison, width: int = 200) -> str:
    console = Console(file=io.StringIO(), width=width, color_system=None, force_terminal=False, record=True)
    console.print(table_renderable(c))
    return console.export_text()


def _md_escape(s: Any) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def render_markdown(c: Comparison) -> str:
    lines = [
        "| " + " | ".join(h for _, h in COLUMNS) + " |",
        "| " + " | ".join("---" if k in LEFT else "---:" for k, _ in COLUMNS) + " |",
    ]
    for r in rows(c):
        cells = dict(r["cells"])
        if r["kind"] == "ratio":
            cells["label"] = "&nbsp;&nbsp;" + cells["label"].strip()
        lines.append("| " + " | ".join(_md_escape(cells.get(k, "")) for k, _ in COLUMNS) + " |")
    lines += ["", "| " + " | ".join(h for _, h in SYSTEM_COLUMNS) + " |",
              "| " + " | ".join("---" for _ in SYSTEM_COLUMNS) + " |"]  # fmt: skip
    for e in c.shown:
        lines.append("| " + " | ".join(_md_escape(system_cells(e)[k]) for k, _ in SYSTEM_COLUMNS) + " |")
    lines.append("")
    lines += [f"{i}. {_md_escape(n)}" for i, n in enumerate(c.notes, 1)]
    return "\n".join(lines) + "\n"


def to_dict(c: Comparison) -> dict[str, Any]:
    """Every raw number: per entry and stage the per-run values, olympic mean, min, max; ratios; notes."""
    def entry_dict(e: Entry) -> dict[str, Any]:
        d = asdict(e)
        d["baseline"] = e is c.baseline
        d["marked_label"] = e.marked_label
        if e.kind != "seed" and e is not c.baseline:
            d["ratios"] = {s: ratios(e, c.baseline, s) for s in e.stages}
        return d

    return {
        "schema": SCHEMA,
        "kit_version": __version__,
        "case": c.entries[0].case,
        "olympic": c.olympic,
        "baseline": c.baseline.label,
        "stages": c.stages,
        "entries": [entry_dict(e) for e in c.entries],
        "reference": entry_dict(c.seed) if c.seed else None,
        "notes": c.notes,
    }


def render_json(c: Comparison) -> str:
    return json.dumps(to_dict(c), indent=2, default=str) + "\n"


def render_csv(c: Comparison) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for stage in c.stages:
        for e in c.shown:
            if stage not in e.stages:
                continue
            tps, ref = e.stats(stage, "tokens_per_s_per_gpu"), e.stats(stage, "reference_method_tokens_per_s_per_gpu")
            row: dict[str, Any] = {
                "label": e.label, "kind": e.kind, "stage": stage, "division": e.division, "category": e.category,
                "synthetic": e.synthetic, "accelerator": e.accelerator, "nodes": e.nodes, "gpus_per_node": e.gpus_per_node,
                "peak_flops": e.peak_flops, "peak_declared": e.peak_declared, "runs": len(e.runs) if e.kind != "seed" else None,
                "tokens_per_s": tps.get("olympic_mean"), "tokens_per_s_min": tps.get("min"),
                "tokens_per_s_max": tps.get("max"), "ref_method_tokens_per_s": ref.get("olympic_mean"),
                "ref_method_tokens_per_s_min": ref.get("min"), "ref_method_tokens_per_s_max": ref.get("max"),
                "mfu": e.figure(stage, "mfu_reference"), "ref_method_mfu": e.figure(stage, "mfu_reference_method"),
                "mfu_exact": e.figure(stage, "mfu_exact"), "loss": e.figure(stage, "loss_tail_mean"),
                "mem_used_gib": e.figure(stage, "mem_used_peak_gib"), "mem_total_gib": e.figure(stage, "mem_total_gib"),
                "mem_used_fraction": e.figure(stage, "mem_used_fraction"), "mmmu": e.figure(stage, "mmmu_acc"),
                "baseline": c.baseline.label,
            }  # fmt: skip
            if e.kind != "seed" and e is not c.baseline:
                r = ratios(e, c.baseline, stage)
                row.update({"comparable": r["comparable"], "not_comparable_why": r["why"],
                            **{f"ratio_{k}": r[k] for k in RATIOS}})  # fmt: skip
            w.writerow({k: "" if row.get(k) is None else row[k] for k in CSV_COLUMNS})
    return buf.getvalue()


# ---- html ----

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;color:#222;margin:24px;
max-width:1400px}
h1{font-size:20px;margin:0 0 4px}h2{font-size:16px;margin:28px 0 8px}
.sub{color:#666;margin:0 0 16px}
.wrap{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;margin:8px 0 4px;font-size:13px;font-variant-numeric:tabular-nums}
th,td{padding:4px 6px;border-bottom:1px solid #e3e3e3;text-align:right;white-space:nowrap;vertical-align:top}
th{background:#f4f5f7;font-weight:600;border-bottom:2px solid #ccc;white-space:normal;vertical-align:bottom}
td.l,th.l{text-align:left}
#systems td.w{white-space:normal;max-width:380px}
#results td.name{white-space:normal;min-width:170px;max-width:230px}
.nw{white-space:nowrap}
p.nochart{color:#a35200;margin:8px 0 20px}
.rng{color:#777;font-size:11px}
tr.stage-start td{border-top:2px solid #bbb}
tr.seed td{color:#555;background:#fafafa;font-style:italic}
tr.ratio td{color:#0b6b83;font-size:12px;padding-left:18px}
tr.ratio td.nc{color:#a35200;white-space:normal}
.mark{display:inline-block;font-size:11px;font-weight:600;border-radius:3px;padding:0 4px;margin-left:4px}
.m-syn{background:#fde7c8;color:#8a4b00}.m-thr{background:#dfe8fb;color:#1c3f91}.m-base{background:#e6f4ea;color:#1e6b34}
ol.notes{color:#444;font-size:13px;max-width:1200px}ol.notes li{margin:2px 0}
.chart{margin:8px 0 20px;overflow-x:auto}svg text{font-family:inherit}
"""


def _h(s: Any) -> str:
    return html.escape(str(s), quote=True)


def _words(text: str) -> str:
    """Text that may wrap between its words only: "(min-max)" or "ref-method" never breaks at its hyphen."""
    return " ".join(f'<span class="nw">{_h(w)}</span>' for w in str(text).split())


def _label_html(e: Entry, baseline: Entry) -> str:
    out = _h(e.label)
    if e.synthetic:
        out += '<span class="mark m-syn">synthetic</span>'
    if e.category == "throughput":
        out += '<span class="mark m-thr">throughput</span>'
    if e is baseline:
        out += '<span class="mark m-base">baseline</span>'
    return out


def _html_table(c: Comparison) -> str:
    head = "".join(f'<th class="{"l" if k in LEFT else ""}">{_words(h)}</th>'
                   for k, h in COLUMNS)  # fmt: skip
    body = []
    stage = None
    for r in rows(c):
        cls = [r["kind"] if r["kind"] in ("seed", "ratio") else "entry"]
        if stage is not None and r["stage"] != stage:
            cls.append("stage-start")
        stage = r["stage"]
        tds = []
        if r["kind"] == "ratio" and not r["ratio"]["comparable"]:  # one cell over the figures says why
            keys = [k for k, _ in COLUMNS]
            i0, i1 = keys.index("tokens_per_s"), keys.index("mmmu")
            tds = [f'<td class="l">{_h(r["cells"]["label"].strip())}</td>', "<td></td>",
                   f'<td class="l nc" colspan="{i1 - i0 + 1}">not comparable: {_h(r["ratio"]["why"])}</td>']
            tds += ["<td></td>"] * (len(keys) - i1 - 1)
            body.append(f'<tr class="{" ".join(cls)}" data-stage="{_h(r["stage"])}" '
                        f'data-label="{_h(r["entry"].label)}">' + "".join(tds) + "</tr>")  # fmt: skip
            continue
        for k, _ in COLUMNS:
            v = r["cells"].get(k, "")
            left = k in LEFT
            if k == "label" and r["kind"] != "ratio":
                content = _label_html(r["entry"], c.baseline)
            elif k == "stage" and r["kind"] == "ratio":
                content = ""
            elif k == "tokens_per_s" and r["kind"] != "ratio" and " (" in str(v):  # the range under the mean
                mean, rng = str(v).split(" (", 1)
                content = f'{_h(mean)}<br><span class="rng">({_h(rng)}</span>'
            else:
                content = _h(v)
            nc = r["kind"] == "ratio" and str(v).startswith("not comparable")
            klass = " ".join(x for x in ("l" if left else "", "nc" if nc else "", "name" if k == "label" else "") if x)
            tds.append(f'<td class="{klass}">{content}</td>' if klass else f"<td>{content}</td>")
        body.append(f'<tr class="{" ".join(cls)}" data-stage="{_h(r["stage"])}" data-label="{_h(r["entry"].label)}">'
                    + "".join(tds) + "</tr>")  # fmt: skip
    return (f'<div class="wrap"><table id="results"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody>'
            "</table></div>")


def _html_systems(c: Comparison) -> str:
    head = "".join(f'<th class="l">{_words(h)}</th>' for _, h in SYSTEM_COLUMNS)

    def cell(e: Entry, k: str) -> str:
        v = system_cells(e)[k]
        if k == "run_ids" and v != "-":  # each id whole on its line
            return ", ".join(f'<span class="nw">{_h(i)}</span>' for i in v.split(", "))
        return _h(v)

    body = "".join(
        f'<tr class="{"seed" if e.kind == "seed" else "entry"}">'
        + "".join(f'<td class="l{" w" if k in ("label", "software", "inputs", "run_ids") else ""}">{cell(e, k)}</td>'
                  for k, _ in SYSTEM_COLUMNS) + "</tr>"
        for e in c.shown
    )
    return f'<div class="wrap"><table id="systems"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _nice_max(v: float) -> tuple[float, float]:
    """(axis maximum, tick step): a round number just above v, in 4-6 ticks."""
    if v <= 0:
        return 1.0, 0.25
    exp = 10 ** math.floor(math.log10(v))
    for m in (1, 2, 2.5, 5, 10):
        step = m * exp / 5
        top = math.ceil(v / step) * step
        if top / step <= 6:
            return top, step
    return 10 * exp, 2 * exp


def _device_unit(e: Entry) -> str:
    """What one token/p/s figure of the entry is per: "GPU", "CPU rank" (a run on the CPU, device "cpu") or
    "device" (an accelerator the kit cannot tell is a GPU). The seed ran on A800s."""
    if e.kind == "seed":
        return "GPU"
    name = str(e.accelerator or "").strip().lower()
    if name == "cpu" or name.startswith("cpu"):
        return "CPU rank"
    if re.search(r"nvidia|geforce|tesla|quadro|radeon|instinct|\bamd\b|\bgpu\b|\b[abhl]\d{2,3}\b|\bmi\d{3}", name):
        return "GPU"
    return "device"


def _chart_sets(c: Comparison) -> list[list[Entry]]:
    """The entries that share one axis: the same unit, and each comparable with every other on it (not_comparable).
    Greedy in the table's order (the baseline first), so the baseline's chart comes first."""
    sets: list[list[Entry]] = []
    for e in c.ordered:
        for s in sets:
            if _device_unit(s[0]) == _device_unit(e) and not any(not_comparable(e, o) for o in s):
                s.append(e)
                break
        else:
            sets.append([e])
    return sets


def _apart(s: list[Entry], sets: list[list[Entry]]) -> list[str]:
    """Why the entries of `s` are not on one axis with each other set: one line per other set."""
    out = []
    for other in sets:
        if other is s:
            continue
        a, b = s[0], other[0]
        why = [f"per {_device_unit(a)} vs per {_device_unit(b)}"] if _device_unit(a) != _device_unit(b) else []
        why += not_comparable(a, b)
        names = ", ".join(e.label for e in other)
        out.append(f"not on one axis with {names}: {'; '.join(why)}")
    return out


def _wrap(text: str, width: int) -> list[str]:
    """Lines of at most `width` characters, broken only after a space, '-' or '/': never inside a word or an id's
    part (a part longer than `width` stays whole on its own line)."""
    parts = re.findall(r"[^\s/-]*(?:[\s/-]+|$)", text)
    lines = [""]
    for part in (p for p in parts if p):
        if lines[-1] and len((lines[-1] + part).rstrip()) > width:
            lines.append("")
        lines[-1] += part
    return [ln.rstrip() for ln in lines if ln.strip()] or [""]


CHAR_W = 7.7  # px per character of 12px text, a little over the average, so that a line never overflows its column


def _svg_bars(title: str, under: list[str], axis: str, groups: list[tuple[str, list[dict[str, Any]]]], fmt,
              chart_id: str) -> str:
    """A horizontal bar chart: one block per stage, in it one block per system with a bar per measure; n/a where
    there is no value. The system's name is wrapped at word breaks (never cut), `under` the title says what the
    chart holds apart from the others.

    block: entry (label), lines (the name, then its marks), color, bars; bar: sub (the measure), value, min, max,
    pale, tip."""
    sub_w, right_pad, plot_w, bar_h, row_h, line_h, head_h = 78, 100, 650, 15, 21, 14, 24
    name_chars = 32
    blocks = [b for _, bl in groups for b in bl]
    longest = max([len(w) for b in blocks for ln in b["lines"] for w in _wrap(ln, name_chars)] + [name_chars])
    label_w = int(sub_w + 10 + CHAR_W * longest)
    width = label_w + plot_w + right_pad
    head = [title] + [ln for u in under for ln in _wrap(u, int(width / 6.6))]
    legend_y = 18 + 17 * (len(head) - 1) + 12
    top, bottom = legend_y + 28, 44
    seed_in = any(b.get("seed") for b in blocks)
    steady_in = any(not bar["pale"] for b in blocks for bar in b["bars"])

    def block_h(b: dict[str, Any]) -> int:
        return max(len(b["bars"]) * row_h, len(_name_lines(b, name_chars)) * line_h + 7)

    height = top + len(groups) * head_h + sum(block_h(b) for b in blocks) + bottom
    vmax = max([bar["value"] for b in blocks for bar in b["bars"] if _is_num(bar.get("value"))]
               + [bar["max"] for b in blocks for bar in b["bars"] if _is_num(bar.get("max"))] + [0.0])  # fmt: skip
    top_v, step = _nice_max(vmax * 1.02) if vmax > 0 else (1.0, 0.25)
    x = lambda v: label_w + plot_w * (v / top_v)  # noqa: E731
    out = [f'<svg id="{chart_id}" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" role="img" aria-label="{_h(title)}">', f"<title>{_h(title)}</title>",
           f'<text x="0" y="18" font-size="15" font-weight="600">{_h(title)}</text>']  # fmt: skip
    for i, ln in enumerate(head[1:], 1):  # what the chart holds apart: on the chart itself, for a screenshot
        out.append(f'<text class="apart" x="0" y="{18 + 17 * i}" font-size="12" fill="#a35200">{_h(ln)}</text>')
    lx = 0
    if steady_in:
        out.append(f'<rect x="{lx}" y="{legend_y}" width="12" height="12" fill="#555"/><text x="{lx + 17}" '
                   f'y="{legend_y + 10}" font-size="12">steady state (whisker: min-max over the runs)</text>')  # fmt: skip
        lx += 340
    ref_note = "the seed's counting" + ("; the seed's own figure is grey" if seed_in else "")
    out.append(f'<rect x="{lx}" y="{legend_y}" width="12" height="12" fill="#555" fill-opacity="0.35" stroke="#555"/>'
               f'<text x="{lx + 17}" y="{legend_y + 10}" font-size="12">ref-method ({_h(ref_note)})</text>')  # fmt: skip
    y_plot0, y_plot1 = top - 6, height - bottom + 4
    t = 0.0
    while t <= top_v * 1.0001:  # grid and tick labels
        xx = x(t)
        out.append(f'<line x1="{xx:.1f}" y1="{y_plot0}" x2="{xx:.1f}" y2="{y_plot1}" stroke="#e5e5e5"/>')
        out.append(f'<text x="{xx:.1f}" y="{y_plot1 + 15}" font-size="11" text-anchor="middle" fill="#555">'
                   f'{_h(fmt(t, axis=True))}</text>')  # fmt: skip
        t += step
    out.append(f'<line x1="{label_w}" y1="{y_plot0}" x2="{label_w}" y2="{y_plot1}" stroke="#888"/>')
    out.append(f'<text x="{label_w + plot_w / 2:.1f}" y="{height - 6}" font-size="12" text-anchor="middle" '
               f'fill="#333">{_h(axis)}</text>')  # fmt: skip
    y = top
    for stage, stage_blocks in groups:
        out.append(f'<text x="0" y="{y + 16}" font-size="13" font-weight="600">{_h(stage)}</text>')
        y += head_h
        for b in stage_blocks:
            lines = _name_lines(b, name_chars)
            mark = ' font-weight="400" fill="#8a4b00"'  # the marks' lines, under the name
            spans = "".join(
                f'<tspan x="{label_w - sub_w - 6}" dy="{0 if j == 0 else line_h}"'
                f'{"" if j < b["name_count"] else mark}>{_h(ln)}</tspan>'
                for j, ln in enumerate(lines)
            )  # fmt: skip
            out.append(f'<text class="name" x="{label_w - sub_w - 6}" y="{y + bar_h / 2 + 4:.1f}" font-size="12" '
                       f'text-anchor="end" font-weight="600" fill="#222">{spans}<title>{_h(b["label"])}</title>'
                       "</text>")  # fmt: skip
            for i, bar in enumerate(b["bars"]):
                _svg_bar(out, bar, b, stage, y + i * row_h, label_w, sub_w, bar_h, x, fmt)
            y += block_h(b)
    out.append("</svg>")
    return "\n".join(out)


def _name_lines(b: dict[str, Any], width: int) -> list[str]:
    """The block's name wrapped (b["name_count"] is set to how many lines the name itself takes), then its marks."""
    name = _wrap(b["lines"][0], width)
    b["name_count"] = len(name)
    return name + [w for ln in b["lines"][1:] for w in _wrap(ln, width)]


def _svg_bar(out: list[str], bar: dict[str, Any], b: dict[str, Any], stage: str, y: float, label_w: int, sub_w: int,
             bar_h: int, x, fmt) -> None:
    cy = y + bar_h / 2
    out.append(f'<text x="{label_w - 6}" y="{cy + 4:.1f}" font-size="11" text-anchor="end" fill="#777">'
               f'{_h(bar["sub"])}</text>')  # fmt: skip
    v = bar.get("value")
    if not _is_num(v):
        out.append(f'<text x="{label_w + 6}" y="{cy + 4:.1f}" font-size="12" fill="#888" font-style="italic">'
                   f'n/a<title>{_h(bar["tip"])}</title></text>')  # fmt: skip
        return
    w = max(1.0, x(v) - label_w)
    pale = ' fill-opacity="0.35" stroke-width="1" stroke="' + b["color"] + '"' if bar.get("pale") else ""
    out.append(f'<rect class="bar" data-label="{_h(b["entry"])}" data-stage="{_h(stage)}" x="{label_w}" '
               f'y="{y}" width="{w:.1f}" height="{bar_h}" fill="{b["color"]}"{pale}>'
               f'<title>{_h(bar["tip"])}</title></rect>')  # fmt: skip
    end = x(v)
    if _is_num(bar.get("min")) and _is_num(bar.get("max")) and bar["max"] > bar["min"]:
        x0, x1 = x(bar["min"]), x(bar["max"])
        out.append(f'<line x1="{x0:.1f}" y1="{cy:.1f}" x2="{x1:.1f}" y2="{cy:.1f}" stroke="#222"/>'
                   f'<line x1="{x0:.1f}" y1="{cy - 4:.1f}" x2="{x0:.1f}" y2="{cy + 4:.1f}" stroke="#222"/>'
                   f'<line x1="{x1:.1f}" y1="{cy - 4:.1f}" x2="{x1:.1f}" y2="{cy + 4:.1f}" stroke="#222"/>')  # fmt: skip
        end = max(end, x1)
    text = fmt(v)
    if w > 8 * len(text) + 12 and not bar.get("pale"):  # inside the bar, white, when it fits
        out.append(f'<text x="{label_w + 6}" y="{cy + 4:.1f}" font-size="11" fill="#fff" '
                   f'font-weight="600">{_h(text)}</text>')  # fmt: skip
    else:
        out.append(f'<text x="{end + 5:.1f}" y="{cy + 4:.1f}" font-size="11" fill="#222">{_h(text)}</text>')


def _chart_groups(c: Comparison, entries: list[Entry], steady: str, ref: str, unit: str,
                  fmt) -> list[tuple[str, list[dict[str, Any]]]]:
    """One chart's blocks, stage by stage: each of `entries` with its steady and ref-method bars (the seed: its
    published figure, filed as ref-method)."""
    colors = {id(e): PALETTE[i % len(PALETTE)] for i, e in enumerate(c.entries)}
    groups = []
    for stage in c.stages:
        blocks = []
        for e in entries:
            if stage not in e.stages:
                continue
            measures = [(ref, "ref-method", True)] if e.kind == "seed" else [
                (steady, "steady", False), (ref, "ref-method", True)]
            marks = e.marked_label[len(e.label):].strip()
            bars = []
            for key, sub, pale in measures:
                st = e.stats(stage, key)
                v = st.get("olympic_mean")
                vals = ", ".join(fmt(x) if _is_num(x) else NA for x in st.get("values") or [])
                if not _is_num(v):
                    why = "no peak FLOP/s" if "mfu" in key and not e.peak_flops else "not measured"
                    tip = f"{e.marked_label} {stage}, {sub} {unit}: n/a ({why})"
                elif e.kind == "seed":
                    tip = f"{e.label} {stage}, {unit} as published: {fmt(v)}"
                else:
                    tip = (f"{e.marked_label} {stage}, {sub} {unit}: olympic mean {fmt(v)} over {st.get('n')} run(s)"
                           f" (min {fmt(st.get('min'))}, max {fmt(st.get('max'))}); per run: {vals}")  # fmt: skip
                bars.append({"sub": sub, "value": v, "min": None if pale else st.get("min"),
                             "max": None if pale else st.get("max"), "pale": pale, "tip": tip})  # fmt: skip
            blocks.append({"entry": e.label, "label": e.marked_label, "lines": [e.label] + ([marks] if marks else []),
                           "color": SEED_COLOR if e.kind == "seed" else colors[id(e)], "seed": e.kind == "seed",
                           "bars": bars})  # fmt: skip
        if blocks:
            groups.append((stage, blocks))
    return groups


def _fmt_tps_axis(v: Any, axis: bool = False) -> str:
    return f"{v:,.0f}" if axis and _is_num(v) else fmt_tps(v)


def _fmt_pct_axis(v: Any, axis: bool = False) -> str:
    return f"{v * 100:g}%" if axis and _is_num(v) else fmt_pct(v)


def _charts(c: Comparison) -> str:
    """The token/p/s and MFU charts: one per set of entries that compare (_chart_sets), each on its own axis and
    saying on itself what it is kept apart from; a chart with no value to draw is one line saying why instead."""
    sets = _chart_sets(c)
    out = []
    for kind, steady, ref in (("token/p/s", "tokens_per_s_per_gpu", "reference_method_tokens_per_s_per_gpu"),
                              ("MFU", "mfu_reference", "mfu_reference_method")):  # fmt: skip
        fmt = _fmt_tps_axis if kind == "token/p/s" else _fmt_pct_axis
        charts = [(s, _chart_groups(c, s, steady, ref, f"{kind} per {_device_unit(s[0])}", fmt)) for s in sets]
        drawn = [s for s, groups in charts if any(_is_num(bar["value"]) for _, bl in groups for b in bl
                                                  for bar in b["bars"])]  # fmt: skip
        for s, groups in charts:
            unit = _device_unit(s[0])
            names = ", ".join(e.marked_label for e in s)
            if s not in drawn:
                no_peak = kind == "MFU" and not any(e.peak_flops for e in s)
                why = ("no peak FLOP/s" + (" (a CPU has none)" if unit == "CPU rank" else " declared or known") +
                       ", so every MFU is n/a") if no_peak else "no figure was measured"  # fmt: skip
                out.append(f'<p class="nochart" data-chart="{_h(kind)}">{_h(kind)} chart of {_h(names)} not drawn: '
                           f"{_h(why)}.</p>")  # fmt: skip
                continue
            i = drawn.index(s) + 1
            many = f" (chart {i} of {len(drawn)})" if len(drawn) > 1 else ""
            if kind == "token/p/s":
                title = f"token/p/s per {unit}, per system and stage (olympic mean){many}"
                axis = f"tokens / s / {unit}"
            else:
                title = f"MFU per system and stage (the seed's formula at each system's peak; olympic mean){many}"
                axis = "MFU (fraction of the peak dense bf16 FLOP/s)"
            chart_id = f"chart-{'tokens' if kind == 'token/p/s' else 'mfu'}" + (f"-{i}" if i > 1 else "")
            svg = _svg_bars(title, _apart(s, sets), axis, groups, fmt, chart_id)
            out.append(f'<div class="chart">{svg}</div>')
    return "\n".join(out)


def render_html(c: Comparison) -> str:
    title = f"kit compare: {', '.join(e.marked_label for e in c.entries)}"
    sub = (f"case {_h(c.entries[0].case)}; baseline {_h(c.baseline.label)}; olympic mean over each system's runs "
           f"(drop {c.olympic['drop']} best and worst at {c.olympic['min_runs']} or more runs); kit {_h(__version__)}")
    notes = "".join(f"<li>{_h(n)}</li>" for n in c.notes)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{_h(title)}</title>"
        f"<style>{CSS}</style></head><body>\n"
        f"<h1>{_h(title)}</h1><p class=\"sub\">{sub}</p>\n"
        f"<h2>Results</h2>\n{_html_table(c)}\n"
        f"<h2>Charts</h2>\n{_charts(c)}\n"
        f"<h2>Systems</h2>\n{_html_systems(c)}\n"
        f"<h2>Notes</h2>\n<ol class=\"notes\">{notes}</ol>\n"
        "</body></html>\n"
    )


def render(c: Comparison, fmt: str = "table") -> str:
    """The comparison as text in one of FORMATS (table: plain text without colour codes)."""
    if fmt == "table":
        return render_text(c)
    if fmt == "markdown":
        return render_markdown(c)
    if fmt == "json":
        return render_json(c)
    if fmt == "csv":
        return render_csv(c)
    if fmt == "html":
        return render_html(c)
    raise ValueError(f"unknown format {fmt!r}: choose one of {', '.join(FORMATS)}")

"""Entries: runs, the runs of one config, a submission's runs, or the seed's published rows, as `Entry` (model.py).

Every figure is recomputed from the runs' raw facts (`run_summary`; a shipped summary.json is never read), and
each stage's figure over an entry's runs is a `Stats` whose headline is the olympic mean of the case's rules. A
submission is checked with `kit verify` first: one that fails is marked and compared with nothing.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kit import case as cases
from kit.case import rules as rules_mod
from kit.errors import KitError
from kit.image.stacks import describe as describe_stack
from kit.image.stacks import stack_key
from kit.io import read_json
from kit.results.comparability import input_digests, merged_standing, shape
from kit.results.model import Entry, accuracy_figure, accuracy_stage, figures, published, stage_stats
from kit.results.reference import case_of, load_reference, olympic, reference_config, rules_of, seed_label
from kit.results.summary import run_summary, stack_of_run
from kit.run.dir import RunDir
from kit.submission import SubmissionError, read_run, unfinished
from kit.submission.verifier import find_root, open_tarball, verify

# Config keys that name or describe a config, not what it runs: runs that differ only there are of one config.
IGNORED_CONFIG_KEYS = ("path", "description")


class MixedRunsError(KitError, ValueError):
    """The runs given to one report are not runs of one config: the message names both and what differs."""


# ---- the figures of an entry ----


def stage_order(case: Any, summaries: list[dict[str, Any]]) -> list[str]:
    """The training stages of the runs: the case's order, then any other the summaries hold."""
    names = [n for n in (cases.training(case) if case is not None else ()) if any(n in s.get("stages", {})
                                                                               for s in summaries)]  # fmt: skip
    names += [n for s in summaries for n in s.get("stage_order", []) if n not in names]
    return list(dict.fromkeys(names))


def fill(entry: Entry, summaries: list[dict[str, Any]], note_states: bool = True) -> None:
    """The entry's Stats of every figure of every stage over its runs' summaries, and the stages' notes."""
    case = case_of(entry.case)
    params, why = olympic(entry.case)
    if why:
        entry.notes.append(f"[{entry.label}] {why}")
    entry.summaries = summaries
    entry.accuracy, entry.accuracy_stage = accuracy_figure(case), accuracy_stage(case)
    entry.standing = merged_standing(summaries)
    figs = figures(case)
    for name in stage_order(case, summaries):
        entry.stages[name] = stage_stats(summaries, name, figs, params)
        per = [s.get("stages", {}).get(name) or {} for s in summaries]
        for p in per:
            for n in p.get("notes") or []:
                if not n.startswith("MFU n/a:"):  # the peak note says it once per entry
                    entry.notes.append(f"[{entry.label} {name}] {n}")
        states = sorted({p.get("state") for p in per if p.get("state") != "finished"} - {None})
        if states and note_states:
            entry.notes.append(f"[{entry.label} {name}] not every run finished this stage ({', '.join(states)}): "
                               "its figures cover the part that ran")  # fmt: skip
    first = next((p for s in summaries for p in s.get("stages", {}).values()), {})
    entry.device_type = entry.device_type or first.get("device_type")
    entry.runtime = entry.runtime or first.get("runtime")
    if not entry.peak_declared:
        entry.peak_flops = first.get("peak_flops")
        entry.peak_source = first.get("peak_source") or "unknown"
    entry.notes = list(dict.fromkeys(entry.notes))


def of_summaries(summaries: list[dict[str, Any]], run_dirs: list[Path] | None = None) -> Entry:
    """An entry of runs already summarised (`kit report`: one run, or the runs of one config); with their
    directories, what their requests say too (synthetic, the model's shape, the software stack)."""
    first = summaries[0]
    case = case_of(first.get("case"))
    paths = list(run_dirs or [])
    entry = Entry(
        label=str(first.get("run_id")) if len(summaries) == 1 else f"{first.get('case')} {first.get('config')}",
        kind="run" if len(summaries) == 1 else "runs", source=str(paths[0]) if paths else "", case=first.get("case"),
        software={"stack": first.get("stack")} if first.get("stack") else {},
        runs=[{"run_id": s.get("run_id"), "path": str(p) if p else None, "state": s.get("state"),
               "config": s.get("config")} for p, s in zip(paths or [None] * len(summaries), summaries, strict=True)],
    )  # fmt: skip
    if paths:
        rd = RunDir(paths[0])
        entry.synthetic = bool(rd.request().get("synthetic"))
        entry.shape = shape(case, rd.config())
        entry.software = entry.software or {"stack": stack_of_run(rd.path)}
    fill(entry, summaries, note_states=False)
    return entry


# ---- several runs of one config ----


def _identity(rd: RunDir) -> dict[str, Any]:
    info, cfg = rd.request(), rd.config()
    flat = {k: v for k, v in rules_mod.flatten(cfg).items() if k.split(".")[-1] not in IGNORED_CONFIG_KEYS}
    stages = [s.get("name") if isinstance(s, dict) else s for s in info.get("stages") or []]
    return {"case": info.get("case"), "config": cfg.get("name"), "stages": stages, "values": flat,
            "synthetic": bool(info.get("synthetic")), "max_steps": info.get("max_steps") or 0}  # fmt: skip


def _describe(ident: dict[str, Any]) -> str:
    extra = (", synthetic" if ident["synthetic"] else "") + (f", --max-steps {ident['max_steps']}" if ident["max_steps"] else "")
    return f"{ident['case']} {ident['config']} ({', '.join(map(str, ident['stages'])) or 'no stages'}{extra})"


def check_one_config(run_dirs: list[Path]) -> None:
    """Refuse runs of different configs (case, config and its values, stages, synthetic, --max-steps) or of
    different software stacks: their spread would mix that difference into the runs' noise."""
    idents = [(Path(p), _identity(RunDir(p))) for p in run_dirs]
    stacks = [(p, stack_of_run(p)) for p, _ in idents]
    for p, st in stacks[1:]:
        if stack_key(st) != stack_key(stacks[0][1]):
            raise MixedRunsError(
                f"runs of different software stacks cannot be reported together: {stacks[0][0].name} ran "
                f"{describe_stack(stacks[0][1])} and {p.name} ran {describe_stack(st)}. Their spread would mix the "
                "libraries' difference into the runs' noise; report them one at a time, or side by side with "
                "`kit compare`"
            )
    (first, a), rest = idents[0], idents[1:]
    for p, b in rest:
        if a == b:
            continue
        what = _describe(a) != _describe(b)
        diff = "" if what else "; they differ in " + ", ".join(
            f"{k} ({a['values'].get(k)!r} vs {b['values'].get(k)!r})"
            for k in sorted(set(a["values"]) | set(b["values"])) if a["values"].get(k) != b["values"].get(k)
        )[:300]  # fmt: skip
        raise MixedRunsError(
            f"runs of different configs cannot be reported together: {first.name} is {_describe(a)} and {p.name} is "
            f"{_describe(b)}{diff}. A multi-run report is over runs of one config; report them one at a time, or set "
            "systems side by side with `kit compare`"
        )


# ---- compare's entries: a run, a submission ----


def _entry_inputs(entry: Entry, facts: list[Any]) -> None:
    """The entry's inputs: its first run's, with a note when its runs did not all read the same."""
    seen = [input_digests(f.inputs) for f in facts]
    entry.inputs = seen[0] if seen else {}
    if any(x != seen[0] for x in seen[1:]):
        entry.notes.append(f"[{entry.label}] its runs did not all read the same inputs (inputs.json digests differ; "
                           "kit verify fails it)")  # fmt: skip
    if facts and not facts[0].inputs:
        entry.notes.append(f"[{entry.label}] no inputs.json: what it read is not known by content")


def load_submission(root: Path, source: str) -> tuple[Entry, list[Path]]:
    """An entry from a submission folder (the folder holding submission.json)."""
    sub = read_json(root / "submission.json")
    if not isinstance(sub, dict):
        raise SubmissionError(f"{source}: submission.json is missing or not valid JSON")
    system, case_name = str(sub.get("system") or ""), sub.get("case")
    runs_meta = [r for r in sub.get("runs") or [] if isinstance(r, dict)]
    if not system or not runs_meta:
        raise SubmissionError(f"{source}: submission.json names no system or no runs")
    results = root / "results" / system / str(case_name)
    run_dirs = []
    for r in runs_meta:
        d = results / str(r.get("dir"))
        if not (d / "run.json").is_file():
            raise SubmissionError(f"{source}: run {r.get('dir')!r} is listed in submission.json but "
                                  f"results/{system}/{case_name}/{r.get('dir')} has no run.json")  # fmt: skip
        run_dirs.append(d)
    desc = read_json(root / "systems" / f"{system}.json")
    desc = desc if isinstance(desc, dict) else {}
    facts = [read_run(d) for d in run_dirs]
    first = facts[0]
    acc = first.accelerator()
    peak = desc.get("accelerator_peak_bf16_flops")
    declared = isinstance(peak, (int, float)) and not isinstance(peak, bool) and peak > 0
    case = case_of(case_name)
    entry = Entry(
        label=f"{sub.get('submitter') or sub.get('org') or '?'}/{sub.get('system_name') or desc.get('system_name') or system}",
        kind="submission", source=source,
        case=case_name, division=str(sub.get("division") or "?"), rules_division=sub.get("division"),
        category=str(sub.get("category") or first.category), synthetic=bool(sub.get("synthetic")),
        breaks=[b for b in sub.get("breaks") or [] if isinstance(b, dict)],
        accelerator=acc["model"] or desc.get("accelerator_model_name"),
        nodes=desc.get("number_of_nodes", acc["nodes"]), gpus_per_node=desc.get("accelerators_per_node", acc["per_node"]),
        peak_flops=float(peak) if declared else None,
        peak_source=("declared by the submitter" + (f": {desc['accelerator_peak_source']}"
                                                     if desc.get("accelerator_peak_source") else ""))
        if declared else "",
        peak_declared=declared, software=sub.get("software") or first.software(), shape=shape(case, first.config),
        runs=[{"dir": r.get("dir"), "run_id": r.get("run_id"), "config": r.get("config"),
               "path": f"{source}:results/{system}/{case_name}/{r.get('dir')}"} for r in runs_meta],
    )  # fmt: skip
    if not desc:
        entry.notes.append(f"[{entry.label}] systems/{system}.json is missing or unreadable: the accelerator and "
                           "scale are the first run's")  # fmt: skip
    _entry_inputs(entry, facts)
    if any(shape(case, f.config) != entry.shape for f in facts[1:]):
        entry.notes.append(f"[{entry.label}] its runs do not all have the same model shape (kit verify fails it)")
    return entry, run_dirs


def load_run(path: Path) -> tuple[Entry, list[Path]]:
    """An entry from a plain run directory: no division; what its facts would qualify for decides comparability."""
    rf = read_run(path)
    case_name = rf.run.get("case")
    rules_division, breaks, why = None, [], ""
    rules, no_rules = rules_of(case_name)
    if rules is None:
        why = f" (its rules could not be applied: {no_rules})"
    else:
        try:
            found = rules_mod.check_run(rules, rf.rule_facts(), rf.category, where=rf.run_id)
            breaks = [b.to_dict() for b in found]
            rules_division = "open" if found else "closed"
        except Exception as e:  # noqa: BLE001 - broken rules: comparability then ignores the division, said in a note
            why = f" (its rules could not be applied: {e})"
    acc = rf.accelerator()
    entry = Entry(
        label=rf.run_id, kind="run", source=str(path), case=case_name, division="-", rules_division=rules_division,
        category=rf.category, synthetic=rf.synthetic, breaks=breaks, accelerator=acc["model"], nodes=acc["nodes"],
        gpus_per_node=acc["per_node"], software=rf.software(), shape=shape(case_of(case_name), rf.config),
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


def _verify_entry(entry: Entry, root: Path) -> None:
    """kit verify on a submission entry's tree: a failure marks the entry, and no ratio is drawn to or from it."""
    rep = verify(root)
    fails = [f for f in rep.findings if f.status == "fail"]
    if fails:
        first = fails[0]
        entry.unverified = f"{len(fails)} check(s) fail, first [{first.check}] {first.where}: {first.detail}"
        entry.notes.append(f"[{entry.label}] FAILS kit verify ({entry.unverified}); its figures are shown as "
                           "submitted and compared with nothing")  # fmt: skip


def load_entry(path: Path, scratch: Path) -> Entry:
    """An entry from a path: a run directory, a submission folder, or a submission .tar.gz (unpacked in scratch,
    within kit verify's bounds), every figure recomputed at the peak the system declares (else the table's)."""
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
    summaries = [run_summary(p, peak_flops=entry.peak_flops if entry.peak_declared else None) for p in run_dirs]
    for meta, s in zip(entry.runs, summaries, strict=True):
        meta["state"] = s.get("state")
    fill(entry, summaries)
    return entry


# ---- the seed ----


def seed_entry(case_name: str | None) -> Entry | None:
    """The seed's primary published rows as an entry ("seed A800 1x8"), or None when the case has none.

    The seed's token/p/s is its own counting (padded tokens over the whole stage's wall time), so it is filed
    under the seed-method figures, as is its MFU; it published no steady-state figure.
    """
    rows = [r for r in load_reference(case_name) if r.get("primary")]
    if not rows:
        return None
    case = case_of(case_name)
    rules, _ = rules_of(case_name)
    first = rows[0]
    entry = Entry(
        label=seed_label(first), kind="seed", source=f"{case_name}: reference.toml", case=case_name,
        division="reference", rules_division="closed", category="full", synthetic=False,
        accelerator=first.get("device_name") or first.get("device"), nodes=first.get("nodes"),
        gpus_per_node=first.get("gpus_per_node"), peak_flops=first.get("peak_flops"),
        peak_source="the seed's (reference.toml)", peak_declared=True, software={"kind": "published", "id": "FlagPerf"},
        shape=shape(case, reference_config(rules)), accuracy=accuracy_figure(case), accuracy_stage=accuracy_stage(case),
    )  # fmt: skip
    for row in rows:
        used, total = row.get("mem_used_gb"), row.get("mem_total_gb")
        figs = {f.key: published(row.get(f.seed)) for f in entry.figures if f.seed and f.like}
        figs.update(mem_used_peak_gib=published(used), mem_total_gib=published(total),
                    mem_used_fraction=published(used / total if used and total else None))  # fmt: skip
        entry.stages[row["stage"]] = figs
        if row.get("note"):
            entry.notes.append(f"[seed {row['stage']}] {row['note']}")
    return entry


# ---- a comparison ----


@dataclass
class Comparison:
    """What `kit compare` shows: the entries in input order, the seed (with --reference), the baseline."""

    entries: list[Entry]
    seed: Entry | None
    baseline: Entry
    stages: list[str]
    olympic: dict[str, int]

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
    """Open every input, recompute every figure, pick the baseline."""
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
    case_name = entries[0].case
    seed = seed_entry(case_name) if reference else None
    if reference and seed is None:
        raise SubmissionError(f"--reference: case {case_name!r} has no published reference rows (its reference.toml)")
    base = pick_baseline(entries, seed, baseline)
    params, _ = olympic(case_name)
    stages = stage_order(case_of(case_name), [s for e in entries for s in e.summaries])
    return Comparison(entries, seed, base, stages, params)

"""A case's submission rules (cases/<case>/rules.toml), validated against its config schema, and applied to runs.

The rules file is data: which config keys are fixed and which are free (every key of the schema exactly one of
the two), the eval protocol a closed run must show, the categories and how many runs each needs, and which figures
are olympic means. The record counts a closed run must show are the data's, read from the case's data-sources.toml
(kit/case/data.py `reference_records`). `check_run` turns one run's raw facts into the list of rules it
breaks; a closed submission must break none, an open one lists them.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kit import case as cases
from kit.case import data as case_data
from kit.errors import KitError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

RULES_SCHEMA = "kit.rules/1"
DIVISIONS = ("closed", "open")


class RulesError(KitError, ValueError):
    """The rules file itself is wrong; the message names the file and the key."""


@dataclass(frozen=True)
class Break:
    """One rule a run does not obey: what, where (run, file, key), expected and found."""

    rule: str
    key: str
    expected: Any
    found: Any
    where: str = ""

    def __str__(self) -> str:
        where = f"{self.where}: " if self.where else ""
        return f"{where}{self.key} = {self.found!r}, the rules fix {self.expected!r} ({self.rule})"

    def to_dict(self) -> dict[str, Any]:
        return {"rule": self.rule, "key": self.key, "expected": self.expected, "found": self.found, "where": self.where}


@dataclass
class Rules:
    case: str
    path: Path
    reference_config: str
    synthetic_configs: list[str]
    fixed: list[str]
    free: list[str]
    records: dict[str, int]
    questions: int
    decoding: str
    weights: dict[str, Any]
    data: dict[str, Any]
    categories: dict[str, dict[str, Any]]
    olympic: dict[str, Any]
    raw: dict[str, Any] = field(default_factory=dict)

    def runs_needed(self, category: str) -> int:
        return int(self.categories[category]["runs"])


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else k
        if isinstance(v, dict):
            out.update(flatten(v, key))
        elif k != "path":
            out[key] = v
    return out


def _matches(pattern: str, key: str) -> bool:
    p, k = pattern.split("."), key.split(".")
    return len(p) == len(k) and all(a in ("*", b) for a, b in zip(p, k, strict=True))


def _need(data: dict[str, Any], key: str, kind: type | tuple[type, ...], path: Path) -> Any:
    node: Any = data
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise RulesError(f"{path}: missing required key {key}")
        node = node[part]
    if not isinstance(node, kind) or isinstance(node, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise RulesError(f"{path}: {key} must be {getattr(kind, '__name__', kind)}, got {node!r}")
    return node


def load(case_name: str, path: str | Path | None = None) -> Rules:
    """Read and validate the case's rules.toml (RulesError names the file and the key of every problem)."""
    case = cases.get(case_name)
    p = Path(path) if path else case.root / "rules.toml"
    try:
        data = tomllib.loads(p.read_text())
    except FileNotFoundError:
        raise RulesError(f"{p}: no rules file for case {case_name!r}") from None
    except tomllib.TOMLDecodeError as e:
        raise RulesError(f"{p}: not valid TOML: {e}") from None
    if data.get("schema") != RULES_SCHEMA:
        raise RulesError(f"{p}: schema = {data.get('schema')!r}, expected {RULES_SCHEMA!r}")
    if data.get("case") != case_name:
        raise RulesError(f"{p}: case = {data.get('case')!r}, expected {case_name!r}")
    known = {"schema", "case", "reference", "fixed", "free", "eval", "weights", "data", "categories", "olympic"}
    if unknown := sorted(set(data) - known):
        raise RulesError(f"{p}: unknown table {unknown[0]}; allowed: {', '.join(sorted(known))}")
    ref = _need(data, "reference.config", str, p)
    synth = _need(data, "reference.synthetic_configs", list, p)
    fixed = _need(data, "fixed.keys", list, p)
    free = _need(data, "free.keys", list, p)
    cfgmod = cases.config_module(case)
    for name in [ref, *synth]:
        if name not in cfgmod.available():
            raise RulesError(f"{p}: reference config {name!r} does not exist; available: {', '.join(cfgmod.available())}")
    # Every key of the schema is fixed or free, exactly once; every pattern matches some key.
    schema_keys = sorted(flatten(cfgmod.load(ref).to_dict()))
    for group, patterns in (("fixed.keys", fixed), ("free.keys", free)):
        for pat in patterns:
            if not isinstance(pat, str) or not any(_matches(pat, k) for k in schema_keys):
                raise RulesError(f"{p}: {group} entry {pat!r} names no key of the config schema")
    for k in schema_keys:
        f = [x for x in fixed if _matches(x, k)]
        r = [x for x in free if _matches(x, k)]
        if f and r:
            raise RulesError(f"{p}: config key {k} is both fixed ({f[0]!r}) and free ({r[0]!r})")
        if not f and not r:
            raise RulesError(f"{p}: config key {k} is neither fixed nor free: add it to [fixed] or [free]")
    # The record counts a closed run must show are the data's: the case's data-sources.toml holds them, once.
    try:
        records = case_data.reference_records(case)
    except ValueError as e:  # SourcesError: the file and the key
        raise RulesError(f"{p}: the record counts cannot be read: {e}") from None
    cats = _need(data, "categories", dict, p)
    for name in ("full", "throughput"):
        if name not in cats:
            raise RulesError(f"{p}: missing required key categories.{name}")
        n = _need(data, f"categories.{name}.runs", int, p)
        if n < 1:
            raise RulesError(f"{p}: categories.{name}.runs must be at least 1, got {n}")
        _need(data, f"categories.{name}.max_steps", bool, p)
    filtered = (data.get("data") or {}).get("filtered", {})
    if filtered:
        reasons = _need(data, "data.filtered.reasons", list, p)
        if not all(isinstance(r, str) for r in reasons):
            raise RulesError(f"{p}: data.filtered.reasons must be a list of strings, got {reasons!r}")
        if _need(data, "data.filtered.max_dropped", int, p) < 0:
            raise RulesError(f"{p}: data.filtered.max_dropped must be at least 0")
    olympic = _need(data, "olympic", dict, p)
    _need(data, "olympic.drop", int, p)
    _need(data, "olympic.min_runs", int, p)
    _need(data, "olympic.figures", list, p)
    return Rules(
        case=case_name, path=p, reference_config=ref, synthetic_configs=list(synth), fixed=list(fixed),
        free=list(free), records=records, questions=_need(data, "eval.questions", int, p),
        decoding=_need(data, "eval.decoding", str, p), weights=dict(data.get("weights", {})),
        data=dict(data.get("data", {})), categories=cats, olympic=olympic, raw=data,
    )  # fmt: skip


def olympic_mean(values: list[float], drop: int = 1, min_runs: int = 3) -> float | None:
    """Sorted, `drop` best and worst removed when there are at least `min_runs` values, the rest averaged."""
    vals = sorted(v for v in values if isinstance(v, (int, float)) and math.isfinite(v))
    if not vals:
        return None
    if len(vals) >= min_runs and len(vals) > 2 * drop:
        vals = vals[drop : len(vals) - drop]
    return sum(vals) / len(vals)


def _shape(case: Any, cfg: dict[str, Any]) -> str:
    """The model's shape, as the case defines it (its metrics' `shape`): the one definition comparability uses."""
    import json

    return json.dumps(case.metrics.shape(cfg), sort_keys=True, default=str)


def reference_for(rules: Rules, config: dict[str, Any], synthetic: bool) -> dict[str, Any]:
    """The config a run's fixed keys are compared with: the reference, or for a synthetic run the one of its shape."""
    cfgmod = cases.config_module(cases.get(rules.case))
    if not synthetic:
        return cfgmod.load(rules.reference_config).to_dict()
    candidates = [cfgmod.load(n).to_dict() for n in rules.synthetic_configs]
    case = cases.get(rules.case)
    same = [c for c in candidates if _shape(case, c) == _shape(case, config)]
    return same[0] if same else candidates[0]


def fixed_key(rules: Rules, key: str) -> bool:
    return any(_matches(p, key) for p in rules.fixed)


def check_config(rules: Rules, config: dict[str, Any], synthetic: bool, where: str = "") -> list[Break]:
    """Every fixed config key of `config` (a run's resolved config) that differs from its reference config."""
    ref = reference_for(rules, config, synthetic)
    ref_flat, run_flat = flatten(ref), flatten(config)
    out = []
    for key in sorted(ref_flat):
        if not fixed_key(rules, key):
            continue
        a, b = ref_flat[key], run_flat.get(key)
        same = a == b or (isinstance(a, float) and isinstance(b, (int, float)) and math.isclose(a, b, rel_tol=1e-12))
        if not same:
            out.append(Break(f"fixed by the rules (config {ref.get('name')})", key, a, b, where))
    return out


def filter_standing(rules: Rules, stage: str, fixed_file: str, provenance: dict[str, Any] | None) -> str | None:
    """Why a filtered record file may not stand in for the stage's fixed one (rules [data.filtered]), or None if it may."""
    allowed = rules.data.get("filtered") or {}
    if not provenance:
        return "it is not a record file written by `kit data fix --write-filtered` (no sidecar)"
    if not allowed:
        return "the rules admit no filtered record file"
    if not provenance.get("valid"):
        return f"its sidecar {provenance.get('sidecar')} does not describe it: {provenance.get('problem', '')}"
    if provenance.get("source_file") != fixed_file:
        return f"it was filtered from {provenance.get('source_file')!r}, not from the fixed {fixed_file!r}"
    pin = rules.data.get(f"{stage}_sha256")
    if pin and provenance.get("source_sha256") != pin:
        return f"its original's sha256 {provenance.get('source_sha256')} is not the pinned {pin}"
    counts = provenance.get("counts") or {}
    if other := sorted(r for r, n in counts.items() if n and r not in allowed["reasons"]):
        return f"it drops records for {', '.join(other)}; only {', '.join(allowed['reasons'])} may be dropped"
    if (dropped := int(provenance.get("dropped") or 0)) > int(allowed["max_dropped"]):
        return f"it drops {dropped:,} records, more than the {allowed['max_dropped']:,} the rules admit"
    return None


def check_run(rules: Rules, facts: dict[str, Any], category: str, where: str = "") -> list[Break]:
    """The rules one run breaks. `facts`: config, synthetic, stages {name: kit_facts}, eval facts, inputs."""
    config, synthetic = facts["config"], bool(facts.get("synthetic"))
    case = cases.get(rules.case)
    training = cases.training(case)
    ref = reference_for(rules, config, synthetic)
    out = check_config(rules, config, synthetic, where)
    data_stages = (((facts.get("inputs") or {}).get("data") or {}).get("stages") or {})
    dropped: dict[str, int] = {}
    if not synthetic:  # a filtered record file in place of the fixed one: admitted within [data.filtered]
        for stage in training:
            key = case.data.record_key(stage)
            hit = [b for b in out if b.key == key]
            prov = (data_stages.get(stage) or {}).get("filter")
            if hit and filter_standing(rules, stage, case.data.record_file(ref, stage), prov) is None:
                out.remove(hit[0])
                dropped[stage] = int(prov.get("dropped") or 0)
            elif hit and prov:  # it tried to be a filtered file: say why it does not stand in
                why = filter_standing(rules, stage, case.data.record_file(ref, stage), prov)
                b = hit[0]
                out[out.index(b)] = Break(f"{b.rule}; as a filtered record file: {why}", key, b.expected, b.found, b.where)
    full = category == "full"
    for stage in training:
        f = (facts.get("stages") or {}).get(stage) or {}
        if not f:
            continue
        if full and f.get("steps_planned") != f.get("steps_total"):
            out.append(Break("one full epoch (category full)", f"{stage}.steps_planned", f.get("steps_total"),
                             f.get("steps_planned"), where))  # fmt: skip
        if not synthetic and f.get("records") != rules.records[stage] - dropped.get(stage, 0):
            out.append(Break("the reference data set" + (f" less the {dropped[stage]:,} records filtered out" if stage in dropped else ""),
                             f"{stage}.records", rules.records[stage] - dropped.get(stage, 0), f.get("records"), where))  # fmt: skip
        if f.get("global_batch") != ref[stage]["global_batch"]:
            out.append(Break("the global batch as run (kit_facts)", f"{stage}.global_batch (events.log)",
                             ref[stage]["global_batch"], f.get("global_batch"), where))  # fmt: skip
    ev = facts.get("eval") or {}
    if ev and full:
        want = rules.questions if not synthetic else case.synthetic_eval_questions(ref)
        name = case.scorer.name if case.scorer else "eval"
        if ev.get("questions") != want:
            out.append(Break(f"all {name} questions", "eval.questions", want, ev.get("questions"), where))
        if ev.get("decoding") != rules.decoding:
            out.append(Break(f"the {name} decoding", "eval.decoding", rules.decoding, ev.get("decoding"), where))
    inputs = facts.get("inputs") or {}
    weights = inputs.get("weights") or {}
    if not synthetic:
        if weights.get("random_init") is not rules.weights.get("random_init", False):
            out.append(Break("the published initial weights", "weights.random_init", False, weights.get("random_init"), where))
        for part in (c.part for c in case.data.checkpoints(None)):
            pin = rules.weights.get(f"{part}_sha256")
            got = (weights.get(part) or {}).get("digest")
            if pin and got != pin:
                out.append(Break("the published initial weights", f"weights.{part}.digest", pin, got, where))
        manifest = (inputs.get("data") or {}).get("manifest") if isinstance(inputs.get("data"), dict) else None
        if rules.data.get("verified") and inputs.get("data") is not None:
            if not manifest:
                found = "none (the data root had no kit-data-manifest.json when the run started)"
            elif not manifest.get("valid"):
                found = f"not valid: {manifest.get('problem', '?')}"
            elif not manifest.get("ok"):
                found = "kit data verify found problems"
            else:
                found = None
            if found:
                out.append(Break("data verified by `kit data verify` before the run", "data.manifest", "valid and clean",
                                 found, where))  # fmt: skip
        for stage in training:
            pin = rules.data.get(f"{stage}_sha256")
            got = (((inputs.get("data") or {}).get("stages") or {}).get(stage) or {}).get("sha256")
            if stage in dropped:  # the pin is the original's: filter_standing checked it against the sidecar
                continue
            if pin and got != pin:
                out.append(Break("the reference data set", f"data.{stage}.sha256", pin, got, where))
    return out

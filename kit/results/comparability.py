"""When two sets of figures may be divided: one definition of "the same model", one of comparability, one ratio.

- `shape`: the case's own definition of the model's shape (case.metrics.shape: the config keys that make two runs
  the same model). Every comparison uses it: a run against the reference, an entry against another.
- `standing`: a run against the case's reference (summary.json's `comparable`): its data, weights and shape, each
  the reference's or not, from run.json, the config and inputs.json; the rules and reference config are the case's.
- `reasons`: why a ratio between two entries would mislead (empty: they compare): a failed `kit verify`, another
  case, synthetic against real data, another category or division, another shape, and against the seed a run whose
  standing is not the reference's.
- `ratios`: one entry's headlines over another's, stage by stage, only where `reasons` is empty; against the seed,
  each figure over the seed's figure of the same quantity (the steady ones not like for like: the seed published
  only its own counting).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kit import case as cases
from kit.case import metrics as case_metrics
from kit.case import rules as rules_mod
from kit.results.model import FIGURES, Entry, Figure
from kit.results.reference import case_of, reference_config, rules_of

# inputs.json's parts that are not the eval set's (the training data, the initial weights) or no part at all.
_NOT_EVAL_PARTS = ("schema", "synthetic", "data", "weights")


def shape(case: Any, cfg: dict[str, Any] | None) -> dict[str, Any] | None:
    """The model's shape in a resolved config, as the case defines it; None without a model or a case."""
    m = case_metrics.of(case)
    if m is None or not isinstance(cfg, dict):
        return None
    return m.shape(cfg)


def _flat(d: Any, prefix: str) -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}.{k}"))
    return out


def shape_difference(a: dict[str, Any] | None, b: dict[str, Any] | None) -> str | None:
    """"model.x.layers 2 vs 32, 11 more": the first config key where two shapes differ, or None when they are one."""
    if a is None or b is None or a == b:
        return None
    fa, fb = _flat(a, "model"), _flat(b, "model")
    keys = list(dict.fromkeys([*fa, *fb]))
    differ = [k for k in keys if fa.get(k) != fb.get(k)]
    more = f", {len(differ) - 1} more" if len(differ) > 1 else ""
    return f"{differ[0]} {fa.get(differ[0])} vs {fb.get(differ[0])}{more}"


def eval_inputs(inputs: dict[str, Any] | None) -> dict[str, Any] | None:
    """inputs.json's record of the eval set (its files, or `generated`), whatever the part is called."""
    for k, v in (inputs or {}).items():
        if k not in _NOT_EVAL_PARTS and isinstance(v, dict):
            return v
    return None


def input_digests(inputs: dict[str, Any] | None) -> dict[str, str | None]:
    """What a run read, by content: each part of inputs.json (data, weights, the eval set) as its digest, or what
    stood in for it (random init, generated)."""
    out: dict[str, str | None] = {}
    for part, d in (inputs or {}).items():
        if part in ("schema", "synthetic"):
            continue
        d = d if isinstance(d, dict) else {}
        if d.get("digest"):
            out[part] = str(d["digest"])
        elif d.get("random_init"):
            out[part] = f"random init (seed {d.get('seed')})"
        elif d.get("generated"):
            out[part] = "generated"
        else:
            out[part] = None
    return out


# ---- a run against the reference ----


def _data_of_stage(
    stage: str, entry: dict[str, Any] | None, records: Any, rules: rules_mod.Rules, ref_cfg: dict[str, Any]
) -> tuple[str, str | None]:
    """(reference | filtered | other, detail) for one training stage of a run on real data (inputs.json's entry)."""
    if not isinstance(entry, dict):
        return "unknown", f"{stage}: inputs.json records no data for the stage"
    fixed = (ref_cfg.get("data") or {}).get(f"{stage}_json")
    prov = entry.get("filter")
    expected = rules.records.get(stage)
    if prov:
        why = rules_mod.filter_standing(rules, stage, fixed, prov)
        if why is not None:
            return "other", f"{stage}: filtered record file {entry.get('records_file')} the rules do not admit: {why}"
        dropped = int(prov.get("dropped") or 0)
        if isinstance(records, int) and isinstance(expected, int) and records != expected - dropped:
            return "other", f"{stage}: {records:,} records, the filtered reference set has {expected - dropped:,}"
        return "filtered", f"{stage}: {dropped:,} records filtered out by `kit data fix` (admitted by the rules)"
    if entry.get("missing"):
        return "unknown", f"{stage}: the record file {entry.get('records_file')} was missing when the run started"
    if fixed and entry.get("records_file") != fixed:
        return "other", f"{stage}: record file {entry.get('records_file')}, the reference reads {fixed}"
    pin = rules.data.get(f"{stage}_sha256")
    if pin and entry.get("sha256") != pin:
        return "other", f"{stage}: record file sha256 {str(entry.get('sha256'))[:16]}, the reference's is {pin[:16]}"
    if isinstance(records, int) and isinstance(expected, int) and records != expected:
        return "other", f"{stage}: {records:,} records, the reference set has {expected:,}"
    return "reference", None


def standing(
    request: dict[str, Any], cfg: dict[str, Any], inputs: dict[str, Any] | None, stages: Sequence[str],
    stage_records: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Whether the run's figures may be set beside the reference's: its data, weights and model shape, each the
    reference's or not, a boolean and a one-line reason. Pure (the rules and reference config are the case's).

    data: reference | synthetic | filtered (a `kit data fix --write-filtered` file the rules admit) | other |
    unknown (no inputs.json); weights: published | random init | trained model (the eval stage alone, on a model a
    run trained) | other | unknown; shape: "reference shape" or "<config> shape" | unknown. Comparable: reference or
    filtered data, published (or, eval alone, trained) weights and the reference shape.
    """
    name = request.get("case")
    case = case_of(name)
    rules, why_no_ref = rules_of(name)
    ref_cfg = reference_config(rules)
    if rules is not None and ref_cfg is None:
        why_no_ref = f"the reference config {rules.reference_config!r} of the case's rules cannot be loaded"
    synthetic = bool(request.get("synthetic")) or bool((inputs or {}).get("synthetic"))
    training = [s for s in stages if case is not None and s in cases.training(case)]
    details: list[str] = []

    by_stage: dict[str, str] = {}
    if synthetic:
        data = "synthetic"
        by_stage = {s: "synthetic" for s in training}
    elif inputs is None:
        data = "unknown"
        details.append("no inputs.json: what the run read is not known by content")
    elif not training:  # the eval stage alone: its data is the eval set
        ev = eval_inputs(inputs)
        data = "reference" if ev and ev.get("files") else "unknown"
        if data == "unknown":
            details.append("inputs.json records no files of the eval set")
    elif rules is None:
        data = "unknown"
        details.append(str(why_no_ref))
    else:
        stage_entries = ((inputs.get("data") or {}).get("stages") or {}) if isinstance(inputs.get("data"), dict) else {}
        for s in training:
            label, detail = _data_of_stage(s, stage_entries.get(s), (stage_records or {}).get(s), rules, ref_cfg or {})
            by_stage[s] = label
            if detail:
                details.append(detail)
        labels = set(by_stage.values())
        data = next(x for x in ("other", "unknown", "filtered", "reference") if x in labels)

    weights_in = (inputs or {}).get("weights") if isinstance((inputs or {}).get("weights"), dict) else None
    if synthetic or (weights_in or {}).get("random_init"):
        weights = "random init"
    elif not training and (request.get("model_dir") or inputs is not None):
        weights = "trained model"
    elif weights_in is None:
        weights = "unknown"
        if inputs is not None:
            details.append("inputs.json records no weights")
    else:
        weights = "published"
        pins = {k.removesuffix("_sha256"): v for k, v in (rules.weights if rules is not None else {}).items()
                if k.endswith("_sha256") and v}  # fmt: skip
        for part, pin in pins.items():
            got = (weights_in.get(part) or {}).get("digest")
            if got != pin:
                weights = "other"
                details.append(f"{part} weights digest {str(got)[:16]}, the published one is {pin[:16]}")

    shape_run, shape_ref = shape(case, cfg), shape(case, ref_cfg)
    if shape_run is None:
        shape_text = "unknown"
        details.append("the run's config has no model section" if case is not None else f"the case {name!r} is not "
                       "installed here: its model shape is unknown")  # fmt: skip
    elif shape_ref is None:
        shape_text = "unknown"
        if why_no_ref and why_no_ref not in details:
            details.append(why_no_ref)
    elif shape_run == shape_ref:
        shape_text = "reference shape"
    else:
        shape_text = f"{cfg.get('name') or 'its own'} shape"

    ok = data in ("reference", "filtered") and weights in ("published", "trained model") and shape_text == "reference shape"
    if ok:
        parts = [f"{data} data", f"{weights} weights" if weights != "trained model" else "a trained model", shape_text]
    else:
        parts = []
        if data not in ("reference", "filtered"):
            parts.append("data unknown" if data == "unknown" else f"{data} data")
        if weights not in ("published", "trained model"):
            parts.append("weights unknown" if weights == "unknown" else f"{weights.replace(' ', '-')} weights")
        if shape_text != "reference shape":
            parts.append("shape unknown" if shape_text == "unknown" else shape_text)
    return {
        "comparable": ok,
        "reason": ", ".join(parts),
        "data": data,
        "weights": weights,
        "shape": shape_text,
        "data_by_stage": by_stage,
        "details": details,
    }


def standing_of(summary: dict[str, Any]) -> dict[str, Any]:
    """A summary's standing; a summary without one (made before the kit recorded it) is not comparable."""
    c = summary.get("comparable")
    if isinstance(c, dict) and "comparable" in c:
        return c
    return {"comparable": False, "reason": "comparability unknown (a summary from before the kit recorded it)"}


def merged_standing(summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """The standing of several runs: comparable when every one is, the reasons each said once."""
    each = [standing_of(s) for s in summaries]
    return {"comparable": all(c["comparable"] for c in each),
            "reason": "; ".join(dict.fromkeys(str(c.get("reason")) for c in each)),
            "details": list(dict.fromkeys(d for c in each for d in c.get("details") or []))}  # fmt: skip


# ---- an entry against another ----


def _kind_word(synthetic: bool) -> str:
    return "synthetic" if synthetic else "real"


def reasons(a: Entry, b: Entry) -> list[str]:
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
    if (diff := shape_difference(a.shape, b.shape)) is not None:
        why.append(f"model shape ({diff})")
    for e, other in ((a, b), (b, a)):  # against the reference: what the run read must be the reference's too
        if other.kind == "seed" and e.kind != "seed" and e.standing and not e.standing.get("comparable"):
            left = [p for p in str(e.standing.get("reason") or "").split(", ")
                    if p and not p.startswith("synthetic") and not p.endswith("shape") and p != "random-init weights"]
            if left:
                why.append(", ".join(left))
    return why


def _ratio(a: Any, b: Any) -> float | None:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b:
        return a / b
    return None


# The figures a ratio row divides, by the column that holds them.
RATIO_FIGURES: tuple[Figure, ...] = tuple(
    f for f in FIGURES if f.key in ("tokens_per_s_per_gpu", "reference_method_tokens_per_s_per_gpu", "mfu_reference",
                                    "mfu_reference_method", "mfu_exact", "loss_tail_mean", "mem_used_fraction")
)  # fmt: skip


def ratio(entry: Entry, base: Entry, stage: str, fig: Figure) -> float | None:
    """entry / base of one figure's headline. Against the seed, over the seed's figure of the same quantity; the
    memory fraction only between entries that both used a device's memory (a CPU's figure is host RSS)."""
    if fig.key == "mem_used_fraction" and (entry.cpu or base.cpu):
        return None
    den = base.figure(stage, fig.seed_figure if base.kind == "seed" else fig.key)
    return _ratio(entry.figure(stage, fig.key), den)


def ratios(entry: Entry, base: Entry, stage: str, why: list[str] | None = None) -> dict[str, Any]:
    """entry / base of every ratio figure of one stage (by column), or why not (`why` given: the caller's own)."""
    why = reasons(entry, base) if why is None else why
    figs = [*RATIO_FIGURES, *([entry.accuracy] if entry.accuracy else [])]
    vals = {f.column: None if why else ratio(entry, base, stage, f) for f in figs}
    return {"baseline": base.label, "comparable": not why, "why": "; ".join(why), **vals}

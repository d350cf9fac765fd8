"""`kit compare`'s renderers: several systems side by side, in the reference table's shape, with ratios.

They draw a `Comparison` of entries (kit/results/entries.py): per stage, each entry's headline (the olympic mean
over its runs) with its min-max, and a ratio row against the baseline where the two compare
(kit/results/comparability.py). Formats: a Rich table, markdown (to paste into a README), json (every raw number),
csv (one row per entry and stage); the html page is kit/results/render_html.py.
"""

from __future__ import annotations

import json
import re
from typing import Any

from rich import box
from rich.console import Group
from rich.table import Table
from rich.text import Text

from kit import __version__
from kit.case import metrics as case_metrics
from kit.image.stacks import describe as describe_stack
from kit.image.stacks import stack_key
from kit.results import formats as f
from kit.results.comparability import ratios, reasons
from kit.results.entries import Comparison
from kit.results.formats import runtime_text
from kit.results.formulas import LOSS_RULE, STEADY_RULE
from kit.results.model import Entry, accuracy_figure
from kit.results.reference import case_of, load_reference
from kit.tables import csv_text, md, plain, whole

SCHEMA = "kit.compare/1"
FORMATS = ("table", "markdown", "json", "csv", "html")
NA = f.NA
# The ratios a ratio row shows (by column), then the eval's accuracy.
RATIO_COLUMNS = ("tokens_per_s", "ref_method_tokens_per_s", "mfu", "ref_method_mfu", "mfu_exact")


def _case(c: Comparison | Any) -> Any:
    """The case of a comparison (its first entry's), or the case given."""
    return case_of(c.entries[0].case) if isinstance(c, Comparison) else c


def _acc_column(c: Comparison | Any) -> str | None:
    acc = accuracy_figure(_case(c))
    return acc.column if acc else None


def ratio_columns(c: Comparison | Any) -> tuple[str, ...]:
    acc = _acc_column(c)
    return (*RATIO_COLUMNS, acc) if acc else RATIO_COLUMNS


def columns(c: Comparison | Any) -> list[tuple[str, str]]:
    """(key, header) of the result table, in order (for a comparison, or a case)."""
    acc = accuracy_figure(_case(c))
    return [
        ("label", "system"), ("stage", "stage"), ("tokens_per_s", "token/p/s (min-max)"),
        ("ref_method_tokens_per_s", "token/p/s (seed method)"), ("mfu", "steady MFU"),
        ("ref_method_mfu", "MFU (seed method)"), ("mfu_exact", "exact MFU"), ("loss", "loss"),
        ("mem", "mem used/total"), *([(acc.column, acc.label)] if acc else []), ("runs", "runs"),
        ("division", "division"), ("category", "category"), ("synthetic", "synthetic"),
    ]  # fmt: skip


# Two-line headers of the Rich table, so that it fits a terminal.
RICH_HEADERS = {"tokens_per_s": "token/p/s\n(min-max)", "ref_method_tokens_per_s": "token/p/s\n(seed method)",
                "mfu": "steady\nMFU", "ref_method_mfu": "MFU (seed\nmethod)", "mfu_exact": "exact\nMFU",
                "mem": "mem\nused/total"}  # fmt: skip
LEFT = ("label", "stage", "division", "category", "synthetic")
SYSTEM_COLUMNS: list[tuple[str, str]] = [
    ("label", "system"), ("kind", "input"), ("accelerator", "accelerator"), ("scale", "nodes x GPUs"),
    ("peak", "peak bf16"), ("software", "software"), ("runtime", "vendor runtime"), ("inputs", "inputs (digests)"),
    ("run_ids", "runs"),
]  # fmt: skip


def csv_columns(c: Comparison | Any) -> list[str]:
    """The csv's columns (for a comparison, or a case): raw numbers, fractions 0..1, an empty cell for n/a."""
    acc = _acc_column(c)
    return [
        "label", "kind", "stage", "division", "category", "synthetic", "accelerator", "nodes", "gpus_per_node",
        "peak_flops", "peak_declared", "runs",
        "tokens_per_s", "tokens_per_s_min", "tokens_per_s_max",
        "ref_method_tokens_per_s", "ref_method_tokens_per_s_min", "ref_method_tokens_per_s_max",
        "mfu", "ref_method_mfu", "mfu_exact", "loss", "mem_used_gib", "mem_total_gib", "mem_used_fraction",
        *([acc] if acc else []), "baseline", "comparable", "not_comparable_why",
        *(f"ratio_{k}" for k in ratio_columns(c)),
    ]  # fmt: skip


# ---- notes ----


def _short(v: str | None) -> str:
    if v is None:
        return "?"
    return v[:12] if re.fullmatch(r"[0-9a-f]{64}", v) else v


def software_text(sw: dict[str, Any]) -> str:
    """The image or environment and its software stack: two entries of different stacks never read alike (a
    submission packed before stacks were recorded says "stack unknown")."""
    if not isinstance(sw, dict) or not sw:
        return NA
    ident = str(sw.get("id") or "?")
    short = ident[:19] + "..." if len(ident) > 22 else ident
    stack = f"; stack {describe_stack(sw.get('stack')) if sw.get('stack') else 'unknown (not recorded)'}"
    if sw.get("kind") == "image":
        return f"image {short}" + (f" ({sw['tag']})" if sw.get("tag") else "") + stack
    return f"native {short}" + (f" (Python {sw['python']})" if sw.get("python") else "") + stack


def _stack_note(e: Entry, base: Entry) -> str | None:
    """Two entries of different software stacks: their ratio measures the software as well as the system."""
    a, b = (x.software.get("stack") if isinstance(x.software, dict) else None for x in (e, base))
    known = [x for x in (a, b) if isinstance(x, dict) and x.get("name") not in (None, "unknown")]
    if len(known) < 2:
        missing = " and ".join(x.label for x, st in ((e, a), (base, b)) if st not in known)
        return (f"[{e.label}] vs {base.label}: the software stack of {missing} is not recorded (made before the kit "
                "recorded it): whether both ran the same libraries is not known")  # fmt: skip
    if stack_key(a) == stack_key(b):
        return None
    return (f"[{e.label}] vs {base.label}: different software stacks ({describe_stack(a)} vs {describe_stack(b)}): "
            "the ratio compares the libraries as well as the systems")  # fmt: skip


def _peak_text(e: Entry) -> str:
    if not e.peak_flops:
        return f"none, so MFU is n/a: {e.peak_source or 'unknown'}"
    return f"{e.peak_flops / 1e12:g} TFLOP/s dense bf16, {e.peak_source or 'source unknown'}"


def _inputs_notes(e: Entry, base: Entry) -> list[str]:
    """Whether e read the same bytes as the baseline (each part's digest in inputs.json)."""
    same, other = [], []
    for part in dict.fromkeys([*e.inputs, *base.inputs]):
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


def notes(c: Comparison) -> list[str]:
    """What the columns mean, each entry's peak and marks, why a ratio is not comparable, and the runs' notes."""
    drop, min_runs = c.olympic["drop"], c.olympic["min_runs"]
    case = case_of(c.entries[0].case)
    m = case_metrics.of(case)
    acc = accuracy_figure(case)
    ref_rule = m.REFERENCE_RULE if m else "the reference's MFU formula (its case is not installed here)"
    out = [
        "Every figure is recomputed from each run's raw facts (kit.results.summary.run_summary), at the peak the "
        "system declares when it declares one; no shipped summary.json is read. Every submission is checked with "
        "`kit verify` first: one that fails is marked and compared with nothing.",
        f"olympic mean, the headline of every figure (the figure a submission states): each figure of the entry's "
        f"runs sorted, the best {drop} and the worst {drop} dropped when there are at least {min_runs} runs (else the "
        "plain mean), the rest averaged; (min-max) over all runs. The json has the plain mean and the standard "
        "deviation beside it.",
        "token/p/s: real (non-padded) tokens per second per GPU over the steady-state steps; " + STEADY_RULE + ".",
        "token/p/s (seed method): the seed's counting, padded tokens over the whole stage's wall time from launch "
        "(start-up and final save included): the like-for-like figure against the seed.",
        f"steady MFU: the reference's MFU formula on the steady token/p/s, at each system's own peak ({ref_rule}); MFU "
        "(seed method): the same formula on the seed-method token/p/s; exact MFU: model FLOPs as the graph runs (the "
        "case's `flops`) over the steady steps. n/a without a peak (a CPU has none).",
        LOSS_RULE + ". mem: peak GiB in use on the device (total - free) / the device's GiB."
        + (f" {acc.label}: the accuracy over the eval questions the run answered (on the row of the stage whose "
           "model it scored)." if acc else ""),
    ]
    base = c.baseline
    if base.kind == "seed":
        out.append(f"ratio rows: each entry / the seed ({base.label}). The seed published only its own counting: the "
                   "seed-method token/p/s and MFU compare like for like; the steady figures are set over the same "
                   "published figures, not like for like (no start-up, no padding); exact MFU has no counterpart.")  # fmt: skip
    else:
        out.append(f"ratio rows: each entry / the baseline {base.label} (olympic mean over olympic mean); "
                   "steady vs steady, seed method vs seed method.")  # fmt: skip
    out.append("not comparable: a ratio between entries that differ in synthetic vs real data, category (full vs "
               "throughput), division (closed vs open; a plain run counts as what its facts obey) or model shape "
               "(the case's definition of the same model), or against the seed a run whose data or weights are not "
               "the reference's, is not shown as a number.")  # fmt: skip
    if c.seed is not None:
        out.append(f"{c.seed.label} rows (--reference): the seed's published primary rows. Its token/p/s counts "
                   "padded tokens over the whole wall time (start-up and save included), so it stands in, and "
                   "compares with, the token/p/s (seed method) column; its MFU is its formula on that figure "
                   "(MFU (seed method) column). It published no steady-state figure."
                   + "".join(f" Its {r.get('stage')} memory: {r['mem_method']}." for r in load_reference(c.seed.case)
                             if r.get("primary") and r.get("mem_method")))  # fmt: skip
    for e in c.entries:
        out.append(f"[{e.label}] peak: {_peak_text(e)}.")
        if e.synthetic:
            out.append(f"[{e.label}] SYNTHETIC: generated data and random initial weights: it measures the kit, "
                       "not the case.")  # fmt: skip
        if e.category == "throughput":
            out.append(f"[{e.label}] THROUGHPUT category: fewer steps than an epoch (kit run --max-steps): "
                       "token/p/s and MFU only, its loss and accuracy are no claims.")  # fmt: skip
        if e.breaks:
            head = "open division" if e.kind == "submission" else "rules its facts break"
            for b in e.breaks:
                out.append(f"[{e.label}] {head}: {b.get('where') + ': ' if b.get('where') else ''}{b.get('key')} = "
                           f"{b.get('found')!r}, the rules fix {b.get('expected')!r} ({b.get('rule')})")  # fmt: skip
        elif e.division == "open":
            out.append(f"[{e.label}] open division: submission.json lists no break.")
        if e is not base:
            why = reasons(e, base)
            if why:
                out.append(f"[{e.label}] vs {base.label}: not comparable: {'; '.join(why)}.")
            if base.kind != "seed":
                out += _inputs_notes(e, base)
                if note := _stack_note(e, base):
                    out.append(note)
        out += e.notes
    if c.seed is not None:
        out += c.seed.notes
    return list(dict.fromkeys(out))


# ---- cells ----


def _tps_range(st: Any) -> str:
    if not f.is_num(st.headline):
        return NA
    if (st.n or 0) > 1:
        return f"{f.tps(st.headline)} ({f.tps(st.min)}-{f.tps(st.max)})"
    return f.tps(st.headline)


def entry_cells(e: Entry, stage: str, baseline: Entry) -> dict[str, str]:
    seed = e.kind == "seed"
    loss = e.figure(stage, "loss_tail_mean")
    out = {
        "label": e.marked_label(e is baseline),
        "stage": stage,
        "tokens_per_s": "-" if seed else _tps_range(e.stats(stage, "tokens_per_s_per_gpu")),
        "ref_method_tokens_per_s": f.tps(e.figure(stage, "reference_method_tokens_per_s_per_gpu")),
        "mfu": "-" if seed else f.pct(e.figure(stage, "mfu_reference")),
        "ref_method_mfu": f.pct(e.figure(stage, "mfu_reference_method")),
        "mfu_exact": "-" if seed else f.pct(e.figure(stage, "mfu_exact")),
        "loss": f.loss(loss) if f.is_num(loss) else ("-" if seed else NA),
        "mem": f.mem(e.figure(stage, "mem_used_peak_gib"), e.figure(stage, "mem_total_gib"), published=seed),
        "runs": "published" if seed else str(len(e.runs)),
        "division": e.division,
        "category": e.category,
        "synthetic": "yes" if e.synthetic else "no",
    }
    if e.accuracy is not None:
        v = e.figure(stage, e.accuracy.key)
        out[e.accuracy.column] = f.acc(v) if f.is_num(v) else (NA if stage == e.accuracy_stage and not seed else "-")
    return out


def ratio_cells(c: Comparison, r: dict[str, Any], stage: str, acc_stage: str | None) -> dict[str, str]:
    label = f"  ratio vs {r['baseline']}"
    keys = ratio_columns(c)
    if not r["comparable"]:
        shown = {k: "not comparable" for k in keys}
        shown["tokens_per_s"] = f"not comparable: {r['why']}"
    else:
        shown = {k: f.ratio(r.get(k)) for k in keys}
    acc = _acc_column(c)
    if acc and stage != acc_stage:
        shown[acc] = ""  # the accuracy is the row's of the stage whose model the eval scored
    return {"label": label, "stage": stage, **shown}


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
                out.append({"kind": "ratio", "stage": stage, "entry": e, "ratio": r,
                            "cells": ratio_cells(c, r, stage, e.accuracy_stage)})  # fmt: skip
    return out


def system_cells(e: Entry) -> dict[str, str]:
    peak = f"{e.peak_flops / 1e12:g} TFLOP/s" if e.peak_flops else NA
    if e.peak_flops and e.peak_declared and e.kind != "seed":
        peak += " (declared by the submitter)"
    scale = f"{e.nodes if e.nodes is not None else '?'} x {e.gpus_per_node if e.gpus_per_node is not None else '?'}"
    ids = [str(r.get("run_id") or r.get("dir")) for r in e.runs]
    return {
        "label": e.marked_label(), "kind": e.kind, "accelerator": str(e.accelerator or NA), "scale": scale, "peak": peak,
        "software": "FlagPerf (published)" if e.kind == "seed" else software_text(e.software),
        "runtime": runtime_text(e.runtime),
        "inputs": ", ".join(f"{k} {_short(v)}" for k, v in e.inputs.items()) if e.inputs else "-",
        "run_ids": ", ".join(ids) if ids else "-",
    }  # fmt: skip


# ---- renderers ----


def table_renderable(c: Comparison) -> Group:
    """The result table (the reference table's shape), the systems, and the notes: Rich renderables."""
    main = Table(title=f"kit compare: {len(c.entries)} system(s), baseline {c.baseline.label}", box=box.SIMPLE_HEAD,
                 pad_edge=False, collapse_padding=True, title_justify="left")  # fmt: skip
    all_rows = rows(c)
    cols = columns(c)
    ratio_keys = ratio_columns(c)
    widest_num = max([len(r["cells"]["tokens_per_s"]) for r in all_rows if r["kind"] != "ratio"] + [10])
    for k, header in cols:
        header = RICH_HEADERS.get(k, header)
        if k == "label":  # a run id or a system's name: kept whole (tables.Whole), the other columns wrap
            main.add_column(header, justify="left", min_width=20, overflow="fold")
        elif k == "tokens_per_s":
            main.add_column(header, justify="right", min_width=widest_num, max_width=max(widest_num, 24), overflow="fold")
        elif k in ratio_keys:
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
        shown = dict(r["cells"])
        if r["kind"] == "ratio" and not r["ratio"]["comparable"]:  # said once, in the first ratio cell
            shown.update({k: "-" for k in ratio_keys if k != "tokens_per_s" and shown.get(k)})
        main.add_row(*(shown.get(k, "") for k, _ in cols), style=style)
    systems = Table(title="systems", box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True, title_justify="left")
    for _, header in SYSTEM_COLUMNS:
        systems.add_column(header, overflow="fold")
    for e in c.shown:
        shown = system_cells(e)
        shown["run_ids"] = shown["run_ids"].replace(", ", "\n")  # one id a line, each whole
        systems.add_row(*(shown.get(k, "") for k, _ in SYSTEM_COLUMNS), style="dim" if e.kind == "seed" else None)
    text = Text("\n".join(f"{i}. {n}" for i, n in enumerate(notes(c), 1)), style="dim")
    names = [dict(SYSTEM_COLUMNS)[k] for k in ("label", "run_ids", "accelerator")]  # the first kept whole first
    return Group(whole(main, dict(cols)["label"]), whole(systems, *names), text)


def render_text(c: Comparison, width: int = 200) -> str:
    return plain(table_renderable(c), width)


def render_markdown(c: Comparison) -> str:
    cols = columns(c)
    lines = [
        "| " + " | ".join(h for _, h in cols) + " |",
        "| " + " | ".join("---" if k in LEFT else "---:" for k, _ in cols) + " |",
    ]
    for r in rows(c):
        shown = dict(r["cells"])
        if r["kind"] == "ratio":
            shown["label"] = "&nbsp;&nbsp;" + shown["label"].strip()
        lines.append("| " + " | ".join(md(shown.get(k, "")) for k, _ in cols) + " |")
    lines += ["", "| " + " | ".join(h for _, h in SYSTEM_COLUMNS) + " |",
              "| " + " | ".join("---" for _ in SYSTEM_COLUMNS) + " |"]  # fmt: skip
    for e in c.shown:
        lines.append("| " + " | ".join(md(system_cells(e)[k]) for k, _ in SYSTEM_COLUMNS) + " |")
    lines.append("")
    lines += [f"{i}. {md(n)}" for i, n in enumerate(notes(c), 1)]
    return "\n".join(lines) + "\n"


def to_dict(c: Comparison) -> dict[str, Any]:
    """Every raw number: per entry and stage the per-run values, olympic mean, plain mean, min, max; ratios; notes."""
    def entry_dict(e: Entry) -> dict[str, Any]:
        d = e.to_dict()
        d["baseline"] = e is c.baseline
        d["marked_label"] = e.marked_label()
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
        "notes": notes(c),
    }


def render_json(c: Comparison) -> str:
    return json.dumps(to_dict(c), indent=2, default=str) + "\n"


def render_csv(c: Comparison) -> str:
    acc = _acc_column(c)
    out = []
    for stage in c.stages:
        for e in c.shown:
            if stage not in e.stages:
                continue
            tps, ref = e.stats(stage, "tokens_per_s_per_gpu"), e.stats(stage, "reference_method_tokens_per_s_per_gpu")
            row: dict[str, Any] = {
                "label": e.label, "kind": e.kind, "stage": stage, "division": e.division, "category": e.category,
                "synthetic": e.synthetic, "accelerator": e.accelerator, "nodes": e.nodes, "gpus_per_node": e.gpus_per_node,
                "peak_flops": e.peak_flops, "peak_declared": e.peak_declared, "runs": len(e.runs) if e.kind != "seed" else None,
                "tokens_per_s": tps.headline, "tokens_per_s_min": tps.min, "tokens_per_s_max": tps.max,
                "ref_method_tokens_per_s": ref.headline, "ref_method_tokens_per_s_min": ref.min,
                "ref_method_tokens_per_s_max": ref.max, "mfu": e.figure(stage, "mfu_reference"),
                "ref_method_mfu": e.figure(stage, "mfu_reference_method"), "mfu_exact": e.figure(stage, "mfu_exact"),
                "loss": e.figure(stage, "loss_tail_mean"), "mem_used_gib": e.figure(stage, "mem_used_peak_gib"),
                "mem_total_gib": e.figure(stage, "mem_total_gib"),
                "mem_used_fraction": e.figure(stage, "mem_used_fraction"), "baseline": c.baseline.label,
            }  # fmt: skip
            if acc:
                row[acc] = e.figure(stage, acc)
            if e.kind != "seed" and e is not c.baseline:
                r = ratios(e, c.baseline, stage)
                row.update({"comparable": r["comparable"], "not_comparable_why": r["why"],
                            **{f"ratio_{k}": r.get(k) for k in ratio_columns(c)}})  # fmt: skip
            out.append(row)
    return csv_text(csv_columns(c), out)

"""`kit report`'s renderers: one run beside the seed, or the runs of one config with their spread.

Both draw from the results model (kit/results/model.py): the run (or the runs) as an Entry, the seed's published
rows as another, ratios through kit/results/comparability.py, every number through kit/results/formats.py.
Formats: table (Rich, or plain text for logs and tests), json, csv (raw numbers: fractions 0..1, an empty cell
for n/a) and markdown. Every format carries the comparability label and every warning.
"""

from __future__ import annotations

import json
from typing import Any

from rich import box
from rich.console import Group
from rich.table import Table
from rich.text import Text

from kit.case import metrics as case_metrics
from kit.image.stacks import describe as describe_stack
from kit.results import formats as f
from kit.results.comparability import ratio, ratios, standing_of
from kit.results.entries import check_one_config, of_summaries, seed_entry
from kit.results.formulas import LOSS_RULE, SPREAD_RULE, STEADY_RULE, STEP_TIME_CV_WARN
from kit.results.model import BY_KEY, Entry, Figure, accuracy_figure, accuracy_stage, stats
from kit.results.reference import case_of, load_reference, olympic, primary, row_label
from kit.results.summary import eval_stage
from kit.tables import csv_text, md, plain, whole

FORMATS = ("table", "json", "csv", "markdown")
NA = f.NA
MULTI_SCHEMA = "kit.multi-summary/1"

MIB_PER_GIB = 1024  # the seed's "GB" are nvidia-smi MiB / 1000: GiB x 1024 / 1000 is the same unit
MEM_DEVICE = "device memory in use (total - free, as the vendor's management tool counts) / device total"
MEM_CPU = "one rank's peak RSS (ru_maxrss) / host RAM: host memory, not a device's"
RATIO_LINE = (
    "ratio run/seed: token/p/s and MFU (seed method: padded tokens over the stage's whole wall time) over the "
    "seed's, like for like; steady token/p/s and steady MFU (real tokens over the steady steps) over the same "
    "seed figures, not like for like (no start-up, no padding); loss and the eval's accuracy run over seed; mem the "
    "fraction of the device used over the seed's fraction."
)


def _acc_label(case: Any) -> str:
    acc = accuracy_figure(case)
    return acc.label if acc else "accuracy"


def columns(case: Any) -> list[tuple[str, str]]:
    """(cell key, header) of the markdown table, in order: the like-for-like figures first (the seed's method),
    then the seed's other columns, then the kit's own figures and how they were measured."""
    return [
        ("config", "config"), ("ref_method_tokens_per_s", "token/p/s (seed method)"),
        ("ref_method_mfu", "MFU (seed method)"), ("loss", "loss"), ("mem", "mem used/total"), ("acc", _acc_label(case)),
        ("tokens_per_s", "steady token/p/s"), ("mfu", "steady MFU"), ("mfu_exact", "exact MFU"),
        ("padded_tokens_per_s", "padded token/p/s"), ("step_median", "step s median"),
        ("step_p10_p90", "step s p10-p90"), ("step_cv", "step time CV (steps)"), ("startup_s", "start-up s"),
        ("first_step_s", "first step s"), ("padding_waste", "padding waste"), ("steps", "steps"), ("state", "state"),
    ]  # fmt: skip


def csv_columns(case: Any) -> list[str]:
    """Raw columns of the csv (numbers as numbers; empty cell = n/a). mem_used_gb / mem_total_gb are in the seed's
    unit (nvidia-smi MiB / 1000, reference.toml) for every row; mem_used_gib / mem_total_gib are GiB (2^30 bytes).
    The eval's accuracy is in the case's own column (its summary key)."""
    acc = accuracy_figure(case)
    return [
        "kind", "config", "stage", "tokens_per_s", "loss", "mem_used_gb", "mem_total_gb", "mem_used_fraction",
        *([acc.column] if acc else []), "mfu", "mfu_exact", "padded_tokens_per_s", "ref_method_tokens_per_s",
        "ref_method_mfu", "startup_s", "first_step_s", "steady_drift", "padding_waste", "steps_done", "steps_planned",
        "state", "steps_logged", "mem_used_gib", "mem_total_gib", "mem_meaning", "step_time_median_s",
        "step_time_p10_s", "step_time_p90_s", "step_time_cv", "step_time_steps", "comparable", "comparability",
        "warnings",
    ]  # fmt: skip


# ---- lines every format says ----


def stack_line(summary: dict[str, Any]) -> str:
    """The report header's software line: the stack's name and its lock hash (or the native versions)."""
    st = summary.get("stack")
    if not isinstance(st, dict) or st.get("name") in (None, "unknown"):
        return "stack: unknown (run.json records none: a run made before the kit recorded its software stack)"
    return f"stack: {describe_stack(st)}" + (f", lock sha256 {st['lock_sha256']}" if st.get("lock_sha256") else "")


def not_comparable_text(summary: dict[str, Any]) -> str | None:
    """"not comparable: <reason>" for a run whose ratios against the seed would compare unlike things, else None."""
    c = standing_of(summary)
    return None if c["comparable"] else f"not comparable: {c.get('reason') or 'unknown'}"


def comparability_line(summary: dict[str, Any]) -> str:
    c = standing_of(summary)
    if c["comparable"]:
        return f"comparable with the seed: {c.get('reason')}"
    return (f"NOT comparable with the seed: {c.get('reason') or 'unknown'}; the seed's rows are shown for scale, "
            "without ratios")  # fmt: skip


def warning_lines(summary: dict[str, Any]) -> list[str]:
    """Every warning of the run: the run's own, then each stage's `stage_warnings` (prefixed with the stage)."""
    out = [str(w) for w in summary.get("warnings") or []]
    for name, st in (summary.get("stages") or {}).items():
        out += [f"[{name}] {w}" for w in st.get("stage_warnings") or []]
    ev = summary.get("eval") or {}
    out += [f"[{eval_stage(case_of(summary.get('case')))}] {w}" for w in ev.get("stage_warnings") or []]
    return list(dict.fromkeys(out))


def data_note(stage: str, st: dict[str, Any], case: Any) -> str | None:
    """One line saying what the reference's own rules did to this stage's data, or None when nothing happened."""
    m = case_metrics.of(case)
    data = st.get("data") if isinstance(st.get("data"), dict) else {}
    parts = [f"{data[k]:,} {what}" for k, what in (m.DATA_STEP_COUNTS.items() if m else ())
             if isinstance(data.get(k), int) and data[k] > 0]  # fmt: skip
    skipped, by_cat = data.get("skipped_records"), data.get("skipped_by_category") or {}
    if isinstance(skipped, int) and skipped > 0:
        cats = ", ".join(f"{k} {v:,}" for k, v in sorted(by_cat.items()) if v)
        parts.append(f"{skipped:,} records skipped at load" + (f" ({cats})" if cats else ""))
    if not parts:
        return None
    return f"[{stage}] data as the reference trains it (docs/fidelity.md): " + ", ".join(parts)


def footnotes(summary: dict[str, Any], reference: list[dict[str, Any]] | None = None) -> list[str]:
    """What each column means, and why a value is n/a (per stage)."""
    case = case_of(summary.get("case"))
    m = case_metrics.of(case)
    ref_rows = load_reference(summary.get("case")) if reference is None else reference
    ref_rule = m.REFERENCE_RULE if m else "the reference's MFU formula (its case is not installed here)"
    notes = [
        "token/p/s and MFU (seed method): the seed's counting, padded tokens over the stage's whole wall time from "
        f"launch (start-up and final save included) per GPU, and its MFU formula on it ({ref_rule}): like for like "
        "with the seed's token/p/s and MFU.",
        "steady token/p/s: real (non-padded) tokens per second per GPU over the steady-state steps; " + STEADY_RULE
        + ". steady MFU: the seed's formula on it. exact MFU: "
        + (m.EXACT_RULE if m else "model FLOPs as the graph runs") + " over the steady steps.",
        SPREAD_RULE + "; (n) = how many steady steps.",
        f"mem: GiB (2^30 bytes), {MEM_DEVICE}."
        + "".join(f" The seed's {r.get('stage')} memory: {r['mem_method']}: compare the fractions used (ratio row), "
                  "not the numbers." for r in ref_rows if r.get("primary") and r.get("mem_method")),
        LOSS_RULE + "; the seed does not say which loss it reports.",
    ]
    for name, st in summary.get("stages", {}).items():
        if st.get("device_type") == "cpu":
            notes.append(f"[{name}] mem on a CPU: {MEM_CPU}; no ratio against the seed's GPU memory.")
    for name, st in summary.get("stages", {}).items():
        if isinstance(st.get("runtime"), dict) and (st["runtime"].get("imports") or st["runtime"].get("environment")):
            notes.append(f"[{name}] vendor runtime (a free change under the rules): {f.runtime_text(st['runtime'])}")
    for r in ref_rows:
        if r.get("primary") and r.get("note") and r.get("stage") in summary.get("stages", {}):
            notes.append(f"seed {r.get('stage')}: {r['note']}")
    for st in summary.get("stages", {}).values():
        if st.get("peak_flops"):
            notes.append(f"peak: {st['peak_flops'] / 1e12:g} TFLOP/s dense bf16 ({st.get('peak_source')})")
    for name, st in summary.get("stages", {}).items():
        notes += [f"[{name}] {n}" for n in st.get("notes", [])]
        if (line := data_note(name, st, case)) is not None:
            notes.append(line)
    ev = summary.get("eval")
    scorer = getattr(case, "scorer", None)
    if ev and ev.get("overall") is not None and scorer is not None:
        what = (f"generated questions in {scorer.name}'s format (--synthetic: not {scorer.name} itself)"
                if ev.get("generated") else f"questions of {scorer.name}")  # fmt: skip
        notes.append(
            f"{scorer.name}: {ev.get('questions')} {what}, {ev.get('decoding') or '?'} decoding, scored on the host "
            f"by the case's scorer ({scorer.scores}/: its judgements and summary)."
        )
    if ev:
        notes += [f"[{eval_stage(case)}] {n}" for n in ev.get("notes", [])]
    details = standing_of(summary).get("details") or []
    notes += [f"comparability: {d}" for d in details]
    notes += summary.get("notes", [])
    return list(dict.fromkeys(notes))  # the same peak for every stage is said once


# ---- one run: rows ----


def _seed_unit(gib: Any) -> float | None:
    """GiB in the seed's unit: nvidia-smi's MiB read as thousands (reference.toml)."""
    return gib * MIB_PER_GIB / 1000 if f.is_num(gib) else None


def _label(summary: dict[str, Any], stage: str) -> str:
    return f"{summary.get('config') or summary.get('device') or 'run'} {stage}"


def reference_row(ref: dict[str, Any], kind: str, entry: Entry) -> dict[str, Any]:
    """A published row: each figure the seed published in its column (its token/p/s and MFU are its own counting:
    in the steady columns too, so the csv holds them wherever a ratio divides by them)."""
    row: dict[str, Any] = {
        "kind": kind, "config": row_label(ref, entry.case), "stage": ref.get("stage"), "state": "published", "ref": ref,
        "mem_used_gb": ref.get("mem_used_gb"), "mem_total_gb": ref.get("mem_total_gb"),
        "mem_meaning": ref.get("mem_method") if ref.get("mem_used_gb") else None,
    }  # fmt: skip
    for fig in entry.figures:
        if fig.seed and fig.key != "mem_used_fraction":
            row[fig.column] = ref.get(fig.seed)
    used, total = ref.get("mem_used_gb"), ref.get("mem_total_gb")
    row["mem_used_fraction"] = used / total if f.is_num(used) and f.is_num(total) and total else None
    return row


def _run_row(entry: Entry, summary: dict[str, Any], name: str, comp: dict[str, Any],
             run_warnings: list[str]) -> dict[str, Any]:
    st = summary["stages"][name]
    cpu = st.get("device_type") == "cpu"
    row: dict[str, Any] = {fig.column: entry.figure(name, fig.key) for fig in entry.figures}
    row.update({
        "kind": "run", "config": _label(summary, name), "stage": name, "cpu": cpu,
        "mem_used_gb": _seed_unit(row["mem_used_gib"]), "mem_total_gb": _seed_unit(row["mem_total_gib"]),
        "mem_meaning": MEM_CPU if cpu else MEM_DEVICE, "steps_done": st.get("steps_done"),
        "steps_logged": st.get("steps_logged"), "steps_planned": st.get("steps_planned"), "state": st.get("state"),
        "step_time_steps": st.get("step_time_steps"), "comparable": comp["comparable"],
        "comparability": comp.get("reason"),
        "warnings": "; ".join([*run_warnings, *(str(w) for w in st.get("stage_warnings") or [])]),
    })  # fmt: skip
    return row


def _ratio_row(entry: Entry, seed: Entry | None, stage: str, nc: str | None, comp: dict[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = {"kind": "ratio", "config": "ratio run/seed", "stage": stage,
                           "comparable": comp["comparable"], "comparability": comp.get("reason")}  # fmt: skip
    if nc or seed is None:
        return {**row, "not_comparable": nc}
    r = ratios(entry, seed, stage, why=[])
    return {**row, **{k: v for k, v in r.items() if k not in ("baseline", "comparable", "why")}}


def build_rows(
    summary: dict[str, Any], reference: list[dict[str, Any]] | None = None, show_other: bool = False
) -> list[dict[str, Any]]:
    """Raw rows: per stage, this run, the seed's primary row of that stage, and the ratio run/seed.

    A run that is not comparable with the seed (its standing) gets a ratio row without numbers that says why. The
    ratios are the results model's (comparability.ratios): the seed-method columns over the seed's token/p/s and
    MFU (like for like), the steady columns over the same seed figures (not like for like; RATIO_LINE), loss and
    the accuracy directly, memory as the fraction of the device used (device runs only: a CPU's figure is host RSS).
    """
    case = case_of(summary.get("case"))
    entry = of_summaries([summary])
    seed = seed_entry(summary.get("case"))
    ref_rows = load_reference(summary.get("case")) if reference is None else reference
    comp = standing_of(summary)
    nc = not_comparable_text(summary)
    run_warnings = [str(w) for w in summary.get("warnings") or []]
    acc = entry.accuracy
    rows: list[dict[str, Any]] = []
    for name in summary.get("stage_order") or list(summary.get("stages", {})):
        rows.append(_run_row(entry, summary, name, comp, run_warnings))
        ref = primary(ref_rows, name)
        if ref is None:
            continue
        rows.append(reference_row(ref, "reference", entry))
        rows.append(_ratio_row(entry, seed, name, nc, comp))
    ev = summary.get("eval")
    carrier = accuracy_stage(case)
    if ev and acc is not None and carrier not in (summary.get("stages") or {}):  # the eval stage alone: its row
        stage = eval_stage(case) or "eval"
        run = {
            "kind": "run", "config": _label(summary, stage), "stage": stage, acc.column: ev.get("overall"),
            "state": ev.get("state"), "questions": ev.get("questions"), "comparable": comp["comparable"],
            "comparability": comp.get("reason"),
            "warnings": "; ".join([*run_warnings, *(str(w) for w in ev.get("stage_warnings") or [])]),
        }  # fmt: skip
        rows.append(run)
        ref = primary(ref_rows, carrier) if carrier else None
        if ref is not None and ref.get(acc.seed) is not None:
            rows.append({"kind": "reference", "config": row_label(ref, entry.case), "stage": stage,
                         acc.column: ref.get(acc.seed), "state": "published", "ref": ref})  # fmt: skip
            rows.append({"kind": "ratio", "config": "ratio run/seed", "stage": stage, "comparable": comp["comparable"],
                         "comparability": comp.get("reason"), "not_comparable": nc,
                         acc.column: None if nc else _div(run[acc.column], ref.get(acc.seed))})  # fmt: skip
    if show_other:
        rows += [reference_row(r, "other", entry) for r in ref_rows if not r.get("primary")]
    return rows


def _div(a: Any, b: Any) -> float | None:
    return a / b if f.is_num(a) and f.is_num(b) and b else None


# ---- one run: cells ----


def _steps_cell(row: dict[str, Any]) -> str:
    """logged/planned; "31/32 logged" when steps are missing from events.log (a torn line, a cut file)."""
    if row.get("questions") is not None:
        return f"{row['questions']} questions"
    done, logged, planned = row.get("steps_done"), row.get("steps_logged"), row.get("steps_planned")
    logged = logged if isinstance(logged, int) else done if isinstance(done, int) else 0
    cell = f"{logged}/{planned if planned is not None else '?'}"
    return cell + " logged" if isinstance(done, int) and logged < done else cell


def cells(row: dict[str, Any], acc: Figure | None) -> dict[str, str]:
    """Display strings of one row (n/a where there is no value)."""
    acc_col = acc.column if acc else ""
    if row["kind"] == "ratio":
        if row.get("not_comparable"):
            return {"config": row["config"], "ref_method_tokens_per_s": row["not_comparable"]}
        x = lambda v: "" if v is None else f.ratio(v)  # noqa: E731
        return {
            "config": row["config"], "tokens_per_s": x(row.get("tokens_per_s")), "loss": x(row.get("loss")),
            "mem": x(row.get("mem_used_fraction")), "acc": x(row.get(acc_col)), "mfu": x(row.get("mfu")),
            "ref_method_tokens_per_s": x(row.get("ref_method_tokens_per_s")),
            "ref_method_mfu": x(row.get("ref_method_mfu")),
        }  # fmt: skip
    published = row["kind"] in ("reference", "other")
    eval_row = row.get("questions") is not None or (not published and "steps_done" not in row)
    if published:
        mem = f.mem(row.get("mem_used_gb"), row.get("mem_total_gb"), published=True)
    else:
        mem = f.mem(row.get("mem_used_gib"), row.get("mem_total_gib"))
    blank = "" if published else NA

    def num(key: str, kind: str, dash: bool = False) -> str:
        """A kit figure; a published row shows only what the seed published (`dash`: "-" where it did not)."""
        if not published:
            return f.fmt(row.get(key), kind)
        return f.fmt(row[key], kind) if dash and row.get(key) is not None else ("-" if dash else blank)

    p10, p90, cv = row.get("step_time_p10_s"), row.get("step_time_p90_s"), row.get("step_time_cv")
    out = {
        "config": row["config"],
        "tokens_per_s": num("tokens_per_s", "tps"),
        "ref_method_tokens_per_s": num("ref_method_tokens_per_s", "tps", dash=True),
        "loss": num("loss", "loss", dash=True),
        "mem": mem,
        "acc": num(acc_col, "acc", dash=True) if acc else "",
        "mfu": num("mfu", "pct"),
        "ref_method_mfu": num("ref_method_mfu", "pct", dash=True),
        "mfu_exact": num("mfu_exact", "pct"),
        "padded_tokens_per_s": num("padded_tokens_per_s", "tps"),
        "step_median": num("step_time_median_s", "s"),
        "step_p10_p90": (f"{f.seconds(p10)}-{f.seconds(p90)}" if f.is_num(p10) and f.is_num(p90) else NA)
        if not published else blank,
        "step_cv": (f"{f.cv(cv)} ({row.get('step_time_steps')})" if f.is_num(cv) else NA) if not published else blank,
        "startup_s": num("startup_s", "duration"),
        "first_step_s": num("first_step_s", "s"),
        "padding_waste": num("padding_waste", "pct"),
        "steps": _steps_cell(row) if not published else blank,
        "state": row.get("state") or NA,
    }
    if eval_row:  # the eval stage has questions, not steps: only the accuracy, steps (questions) and state apply
        out = {k: ("" if k not in ("config", "acc", "steps", "state") else v) for k, v in out.items()}
    return out


# ---- one run: renderers ----

# The Rich tables, each within 80 columns: the seed's shape (the like-for-like figures first), how it was
# measured, and the spread of the step time.
DETAIL = (("stage", "stage"), ("padded_tokens_per_s", "padded\ntok/p/s"), ("mfu", "steady\nMFU"),
          ("mfu_exact", "exact\nMFU"), ("startup_s", "start-up\ns"), ("first_step_s", "first\nstep s"),
          ("padding_waste", "padding\nwaste"), ("steps", "steps"), ("state", "state"))  # fmt: skip
SPREAD = (("stage", "stage"), ("step_n", "steady\nsteps"), ("step_median", "median s"), ("step_p10", "p10 s"),
          ("step_p90", "p90 s"), ("step_cv_only", "CV"))  # fmt: skip
NOT_COMPARABLE_WIDTH = 20  # the ratio row's "not comparable: ..." folds into this width in the first column


def _main_columns(case: Any) -> tuple[tuple[str, str], ...]:
    acc = accuracy_figure(case)
    return (("label", "config"), ("ref_method_tokens_per_s", "token/p/s"), ("ref_method_mfu", "MFU"),
            ("loss", "loss"), ("mem", "mem\nused/total"), *((("acc", acc.label.removesuffix(" acc")),) if acc else ()),
            ("tokens_per_s", "steady\ntok/p/s"))  # fmt: skip


def _short_label(row: dict[str, Any], summary: dict[str, Any]) -> str:
    if row["kind"] == "run":
        return f"{summary.get('config') or 'run'} {row['stage']}"
    if row["kind"] == "ratio":
        return "  ratio"
    if row.get("ref"):
        return "  " + row_label(row["ref"], summary.get("case")).removesuffix(f" {row['ref'].get('stage')}")
    return row["config"]


def table_renderable(
    summary: dict[str, Any], reference: list[dict[str, Any]] | None = None, show_other: bool = False
) -> Group:
    """Rich tables (the reference table's shape; how it was measured; the step-time spread), warnings, footnotes."""
    case = case_of(summary.get("case"))
    acc = accuracy_figure(case)
    rows = build_rows(summary, reference, show_other)
    comparable = standing_of(summary)["comparable"]
    title = Text(f"{summary.get('run_id')} ({summary.get('state')})\n{stack_line(summary)}\n")
    title.append(comparability_line(summary), style="" if comparable else "bold yellow")
    main = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True, title_justify="left")
    main_cols = _main_columns(case)
    for k, header in main_cols:
        if k == "ref_method_tokens_per_s":  # folds a "not comparable: ..." cell; numbers are far narrower
            main.add_column(header, justify="right", max_width=NOT_COMPARABLE_WIDTH, overflow="fold")
        else:
            main.add_column(header, justify="left" if k == "label" else "right", no_wrap=k != "label")
    stage = None
    for row in rows:
        if stage is not None and row["kind"] == "run":
            main.add_section()
        stage = row.get("stage")
        shown = {**cells(row, acc), "label": _short_label(row, summary)}
        if row["kind"] == "ratio" and not comparable:  # the title above says why, once
            shown["ref_method_tokens_per_s"] = "not comparable"
        style = {"reference": "dim", "other": "dim italic", "ratio": "cyan" if comparable else "yellow"}.get(row["kind"])
        main.add_row(*(shown.get(k, "") for k, _ in main_cols), style=style)
    parts: list[Any] = [whole(main, "config")]  # a config's name whole; a too-narrow terminal folds it
    if any(r["kind"] == "ratio" for r in rows):
        parts.append(Text(RATIO_LINE, style="dim"))
    run_rows = [r for r in rows if r["kind"] == "run"]
    detail = Table(
        title="how it was measured", box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True, title_justify="left"
    )
    for k, header in DETAIL:
        detail.add_column(header, justify="left" if k in ("stage", "state") else "right", no_wrap=True)
    for row in run_rows:
        shown = {**cells(row, acc), "stage": row["stage"]}
        detail.add_row(*(shown.get(k, "") for k, _ in DETAIL))
    parts.append(detail)
    timed = [r for r in run_rows if r.get("step_time_steps")]
    if timed:
        spread_t = Table(title="step time over the steady steps", box=box.SIMPLE_HEAD, pad_edge=False,
                         collapse_padding=True, title_justify="left")  # fmt: skip
        for k, header in SPREAD:
            spread_t.add_column(header, justify="left" if k == "stage" else "right", no_wrap=True)
        for row in timed:
            cv = row.get("step_time_cv")
            spread_t.add_row(
                row["stage"], str(row.get("step_time_steps")), f.seconds(row.get("step_time_median_s")),
                f.seconds(row.get("step_time_p10_s")), f.seconds(row.get("step_time_p90_s")), f.cv(cv),
                style="yellow" if f.is_num(cv) and cv > STEP_TIME_CV_WARN else None,
            )  # fmt: skip
        parts.append(spread_t)
    if warnings := warning_lines(summary):
        parts.append(Text("\n".join(f"warning: {w}" for w in warnings), style="yellow"))
    parts.append(Text("\n".join(f"{i}. {n}" for i, n in enumerate(footnotes(summary, reference), 1)), style="dim"))
    return Group(*parts)


def render_text(
    summary: dict[str, Any], width: int = 220, reference: list[dict[str, Any]] | None = None,
    show_other: bool = False,
) -> str:
    """The table as plain text (no colour codes): for tests, logs and pipes."""
    return plain(table_renderable(summary, reference, show_other), width)


def _markdown(summary: dict[str, Any], reference: list[dict[str, Any]] | None, show_other: bool) -> str:
    case = case_of(summary.get("case"))
    acc = accuracy_figure(case)
    rows = build_rows(summary, reference, show_other)
    lines = [f"**{md(summary.get('run_id'))} ({md(summary.get('state'))})**: {md(comparability_line(summary))}", "",
             md(stack_line(summary)), ""]  # fmt: skip
    if warnings := warning_lines(summary):
        lines += [f"> warning: {md(w)}  " for w in warnings] + [""]
    cols = columns(case)
    lines += ["| " + " | ".join(h for _, h in cols) + " |", "| " + " | ".join("---" for _ in cols) + " |"]
    for row in rows:
        shown = cells(row, acc)
        lines.append("| " + " | ".join(md(shown.get(k, "")) for k, _ in cols) + " |")
    lines.append("")
    if any(r["kind"] == "ratio" for r in rows):
        lines += [md(RATIO_LINE), ""]
    lines += [f"{i}. {md(n)}" for i, n in enumerate(footnotes(summary, reference), 1)]
    return "\n".join(lines) + "\n"


def _csv(summary: dict[str, Any], reference: list[dict[str, Any]] | None, show_other: bool) -> str:
    out = []
    for row in build_rows(summary, reference, show_other):
        raw = dict(row)
        if row["kind"] == "ratio" and row.get("not_comparable"):
            raw["comparability"] = row["not_comparable"]
        out.append(raw)
    return csv_text(csv_columns(case_of(summary.get("case"))), out)


def render(
    summary: dict[str, Any], fmt: str = "table", reference: list[dict[str, Any]] | None = None,
    show_other: bool = False,
) -> str:
    """The summary as text: table (plain-text Rich table), json (the summary itself), csv or markdown.

    csv holds raw numbers (fractions 0..1, empty cell = n/a); table and markdown say n/a and explain it
    in the footnotes. Every format carries the comparability label and every warning.
    """
    if fmt == "table":
        return render_text(summary, reference=reference, show_other=show_other)
    if fmt == "json":
        return json.dumps(summary, indent=2) + "\n"
    if fmt == "csv":
        return _csv(summary, reference, show_other)
    if fmt == "markdown":
        return _markdown(summary, reference, show_other)
    raise ValueError(f"unknown format {fmt!r}: choose one of {', '.join(FORMATS)}")


# ---- several runs of one config: the headline (olympic mean) and the spread ----

# The figures of the multi-run table (keys of the results model's FIGURES), in order, then the eval's accuracy.
MULTI_FIGURES = ("reference_method_tokens_per_s_per_gpu", "mfu_reference_method", "tokens_per_s_per_gpu",
                 "mfu_reference", "mfu_exact", "loss_tail_mean", "mem_used_peak_gib", "step_time_median_s",
                 "step_time_cv")  # fmt: skip
MULTI_LABELS = {"reference_method_tokens_per_s_per_gpu": "token/p/s", "mfu_reference_method": "MFU",
                "tokens_per_s_per_gpu": "steady tok/p/s", "mfu_reference": "steady MFU",
                "mem_used_peak_gib": "mem GiB"}  # fmt: skip


def _figure_dict(st: Any, fig: Figure, seed: float | None, over_seed: float | None) -> dict[str, Any]:
    return {**st.to_dict(), "label": MULTI_LABELS.get(fig.key, fig.label), "kind": fig.kind, "seed": seed,
            "olympic_over_seed": over_seed}  # fmt: skip


def multi_summary(run_dirs: list[Any], summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """Per stage, over the runs of one config (check_one_config), every figure of MULTI_FIGURES and the eval's
    accuracy: the headline (the olympic mean of the case's rules, the figure a submission states and `kit compare`
    shows), the plain mean, min-max and the sample standard deviation. Compared with the seed (olympic mean / seed)
    only when every run is comparable with it."""
    check_one_config(run_dirs)
    entry = of_summaries(summaries, run_dirs)
    first = summaries[0]
    case = case_of(first.get("case"))
    seed = seed_entry(first.get("case"))
    ok = bool(entry.standing.get("comparable"))
    params, _ = olympic(first.get("case"))
    stages: dict[str, Any] = {}
    notes: list[str] = []
    for name in entry.stages:
        figs = {}
        for key in MULTI_FIGURES:
            fig = BY_KEY[key]
            seed_v = seed.figure(name, fig.seed_figure) if seed is not None and fig.seed else None
            over = ratio(entry, seed, name, fig) if ok and seed is not None and seed_v is not None else None
            figs[key] = _figure_dict(entry.stats(name, key), fig, seed_v, over)
        stages[name] = figs
        per = [s.get("stages", {}).get(name) or {} for s in summaries]
        bad = [f"{s.get('run_id')} {p.get('state')}" for s, p in zip(summaries, per, strict=True)
               if p.get("state") != "finished"]  # fmt: skip
        if bad:
            notes.append(f"[{name}] not every run finished the stage ({', '.join(bad)}): its figures cover what ran")
    acc = entry.accuracy
    accuracy = None
    if acc is not None:
        st = stats([s.get(acc.key) for s in summaries], params)
        carrier = accuracy_stage(case)
        seed_v = seed.figure(carrier, acc.key) if seed is not None and carrier else None
        over = _div(st.headline, seed_v) if ok else None
        accuracy = {**_figure_dict(st, acc, seed_v, over), "key": acc.key, "stage": eval_stage(case) or carrier}
    warnings = [f"{s.get('run_id')}: {w}" for s in summaries for w in warning_lines(s)]
    return {
        "schema": MULTI_SCHEMA,
        "case": first.get("case"),
        "config": first.get("config"),
        "stack": entry.software.get("stack"),
        "n_runs": len(summaries),
        "runs": entry.runs,
        "comparable": {"comparable": ok, "reason": entry.standing.get("reason")},
        "olympic": params,
        "stage_order": list(stages),
        "stages": stages,
        "accuracy": accuracy,
        "warnings": warnings,
        "notes": notes,
        "rules": {"olympic_mean": _olympic_rule(params),
                  "std": "sample standard deviation over the runs (n - 1); min-max: the range over the runs",
                  "spread": SPREAD_RULE},  # fmt: skip
    }


def _olympic_rule(params: dict[str, int]) -> str:
    return (f"the headline: the runs' values sorted, the best {params['drop']} and the worst {params['drop']} dropped "
            f"from {params['min_runs']} runs on (else the plain mean), the rest averaged: the figure a submission "
            "states and `kit compare` shows")  # fmt: skip


def _multi_items(ms: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    items = [(n, k, st) for n in ms["stage_order"] for k, st in ms["stages"][n].items()]
    if ms.get("accuracy"):
        items.append((ms["accuracy"]["stage"], ms["accuracy"]["key"], ms["accuracy"]))
    return items


def _multi_rows(ms: dict[str, Any]) -> list[dict[str, str]]:
    """Display rows of the multi-run table: one per stage and figure that has a value in some run."""
    out = []
    for stage, key, st in _multi_items(ms):
        if not st["n"]:
            continue
        kind = st["kind"]
        std = NA if st["std"] is None else f.fmt(st["std"], kind) + (f" ({f.cv(st['cv'])})" if st.get("cv") else "")
        seed = ""
        if st.get("seed") is not None:
            over = st.get("olympic_over_seed")
            seed = f.fmt(st["seed"], kind) + (f" ({f.ratio(over)})" if f.is_num(over) else "")
        out.append({"stage": stage, "figure": st["label"], "key": key, "olympic": f.fmt(st["olympic_mean"], kind),
                    "mean": f.fmt(st["mean"], kind), "range": f"{f.fmt(st['min'], kind)}-{f.fmt(st['max'], kind)}",
                    "std": std, "n": str(st["n"]), "seed": seed})  # fmt: skip
    return out


# The seed column only for comparable runs: beside a run that is not, the seed's figures are no yardstick.
MULTI_COLUMNS = (("stage", "stage"), ("figure", "figure"), ("olympic", "olympic mean"), ("mean", "plain mean"),
                 ("range", "min-max"), ("std", "std (CV)"), ("n", "runs"),
                 ("seed", "seed (olympic/seed)"))  # fmt: skip


def _multi_columns(ms: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    return MULTI_COLUMNS if ms["comparable"]["comparable"] else MULTI_COLUMNS[:-1]


def _multi_title(ms: dict[str, Any]) -> str:
    return f"{ms['n_runs']} runs of {ms['case']} {ms['config']}: olympic mean and spread over the runs"


def _multi_label(ms: dict[str, Any]) -> str:
    c = ms["comparable"]
    if c["comparable"]:
        return f"comparable with the seed: {c['reason']}"
    return f"NOT comparable with the seed: {c['reason']}; no seed figures or ratios"


def _multi_notes(ms: dict[str, Any]) -> list[str]:
    return [
        f"olympic mean: {ms['rules']['olympic_mean']}. plain mean: all the runs averaged.",
        f"std: {ms['rules']['std']}; (CV) = std / plain mean.",
        "token/p/s and MFU: the seed's method (padded tokens over the stage's whole wall time), like for like with "
        "the seed's; steady tok/p/s and steady MFU: real tokens over the steady steps, set beside the same seed "
        "figure, not like for like; mem: GiB (2^30 bytes); step s median and step time CV: per run over its steady "
        "steps.",
        *ms["notes"],
        *(f"{r['run_id']}: {r['state']}, {r['path']}" for r in ms["runs"]),
    ]


def multi_renderable(ms: dict[str, Any]) -> Group:
    comparable = ms["comparable"]["comparable"]
    title = Text(_multi_title(ms) + "\n" + stack_line(ms) + "\n")
    title.append(_multi_label(ms), style="" if comparable else "bold yellow")
    t = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True, title_justify="left")
    cols = _multi_columns(ms)
    for k, h in cols:
        t.add_column(h, justify="left" if k in ("stage", "figure") else "right", no_wrap=True)
    stage = None
    for row in _multi_rows(ms):
        if stage is not None and row["stage"] != stage:
            t.add_section()
        stage = row["stage"]
        t.add_row(*(row[k] for k, _ in cols))
    parts: list[Any] = [t]
    if ms["warnings"]:
        parts.append(Text("\n".join(f"warning: {w}" for w in ms["warnings"]), style="yellow"))
    parts.append(Text("\n".join(f"{i}. {n}" for i, n in enumerate(_multi_notes(ms), 1)), style="dim"))
    return Group(*parts)


MULTI_CSV = ["stage", "figure", "key", "olympic_mean", "mean", "min", "max", "std", "n", "seed", "olympic_over_seed",
             "values", "comparable", "comparability", "warnings"]  # fmt: skip


def render_multi(ms: dict[str, Any], fmt: str = "table") -> str:
    """The multi-run summary as table, json, csv (one row per stage and figure, raw numbers) or markdown."""
    if fmt == "table":
        return plain(multi_renderable(ms), 220)
    if fmt == "json":
        return json.dumps(ms, indent=2) + "\n"
    if fmt == "csv":
        c = ms["comparable"]
        rows = [{**st, "stage": stage, "figure": st["label"], "key": key,
                 "values": ";".join("" if v is None else repr(v) for v in st["values"]),
                 "comparable": c["comparable"],
                 "comparability": c["reason"] if c["comparable"] else f"not comparable: {c['reason']}",
                 "warnings": "; ".join(ms["warnings"])} for stage, key, st in _multi_items(ms)]  # fmt: skip
        return csv_text(MULTI_CSV, rows)
    if fmt == "markdown":
        lines = [f"**{md(_multi_title(ms))}**: {md(_multi_label(ms))}", "", md(stack_line(ms)), ""]
        lines += [f"> warning: {md(w)}  " for w in ms["warnings"]] + ([""] if ms["warnings"] else [])
        cols = _multi_columns(ms)
        lines += ["| " + " | ".join(h for _, h in cols) + " |", "| " + " | ".join("---" for _ in cols) + " |"]
        lines += ["| " + " | ".join(md(r[k]) for k, _ in cols) + " |" for r in _multi_rows(ms)]
        lines += ["", *(f"{i}. {md(n)}" for i, n in enumerate(_multi_notes(ms), 1))]
        return "\n".join(lines) + "\n"
    raise ValueError(f"unknown format {fmt!r}: choose one of {', '.join(FORMATS)}")


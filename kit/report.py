"""summary.json, plots and the result table of a run, beside the seed's published rows.

Everything here is recomputed from the raw facts (kit.metrics), so it works on a finished, failed,
interrupted or still-running run. matplotlib is optional (extra "plots"): without it the plots are
skipped with a note and everything else works.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from kit.events import load_stage
from kit.metrics import LOSS_RULE, STEADY_RULE, run_summary

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

CASES_DIR = Path(__file__).resolve().parent.parent / "cases"
FORMATS = ("table", "json", "csv", "markdown")
NA = "n/a"

# (key, header) of the table's columns, in order: the seed's columns first, then the kit's extras.
COLUMNS: list[tuple[str, str]] = [
    ("config", "config"),
    ("tokens_per_s", "token/p/s"),
    ("loss", "loss"),
    ("mem", "mem (GB used/total)"),
    ("mmmu", "MMMU acc"),
    ("mfu", "MFU"),
    ("mfu_exact", "exact MFU"),
    ("padded_tokens_per_s", "padded token/p/s"),
    ("ref_method_tokens_per_s", "ref-method token/p/s"),
    ("ref_method_mfu", "ref-method MFU"),
    ("startup_s", "start-up s"),
    ("padding_waste", "padding waste"),
    ("steps", "steps"),
    ("state", "state"),
]
# Raw columns of the csv (numbers as numbers; empty cell = n/a).
CSV_COLUMNS = [
    "kind", "config", "stage", "tokens_per_s", "loss", "mem_used_gb", "mem_total_gb", "mem_used_fraction",
    "mmmu", "mfu", "mfu_exact", "padded_tokens_per_s", "ref_method_tokens_per_s", "ref_method_mfu",
    "startup_s", "padding_waste", "steps_done", "steps_planned", "state",
]


# ---- reference rows ----


def load_reference(case: str | None, path: str | Path | None = None) -> list[dict[str, Any]]:
    """Rows of cases/<case>/reference.toml ([] when the case has none)."""
    if path is None:
        if not case or not re.fullmatch(r"[A-Za-z0-9_]+", case):
            return []
        path = CASES_DIR / case / "reference.toml"
    p = Path(path)
    if not p.is_file():
        return []
    return list(tomllib.loads(p.read_text()).get("row", []))


# ---- summary.json and plots ----


def _atomic_write(path: Path, data: bytes) -> None:
    """Readers (kit report on a live run, a dashboard) never see a half-written file."""
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _save_plot(fig: Any, run_dir: Path, rel: str, steady_from: int | None) -> str:
    """Mark where the steady state starts, then write the PNG atomically; returns `rel`."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    ax = fig.axes[0]
    if steady_from is not None:
        ax.axvline(steady_from, color="grey", linestyle=":", label="steady state from")
    ax.legend(loc="best", fontsize="small")
    FigureCanvasAgg(fig)  # a canvas of its own: no pyplot, no global backend
    target = run_dir / rel
    tmp = target.with_name(f".{target.name}.tmp.{os.getpid()}")
    fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    os.replace(tmp, target)
    return rel


def write_plots(run_dir: str | Path, summary: dict[str, Any]) -> tuple[list[str], list[str]]:
    """plots/<stage>-loss.png and plots/<stage>-throughput.png per stage with steps: (paths, notes)."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return [], ["plots skipped: matplotlib is not installed (pip install 'kit[plots]')"]
    rd = Path(run_dir)
    made: list[str] = []
    for name, st in summary.get("stages", {}).items():
        steps = load_stage(rd / name).steps
        if not steps:
            continue
        (rd / "plots").mkdir(exist_ok=True)
        xs = [s["step"] for s in steps]
        world = st.get("world_size") or 1
        steady_from = st.get("steady_from_step")

        fig = Figure(figsize=(7, 4))
        ax = fig.add_subplot()
        loss = [(s["step"], s["loss"]) for s in steps if isinstance(s.get("loss"), (int, float))]
        ax.plot([a for a, _ in loss], [b for _, b in loss], lw=1, label="loss")
        ax.set(xlabel="step", ylabel="loss", title=f"{summary.get('run_id')} {name}: loss")
        made.append(_save_plot(fig, rd, f"plots/{name}-loss.png", steady_from))

        fig = Figure(figsize=(7, 4))
        ax = fig.add_subplot()
        for key, label in (("real_tokens", "real"), ("padded_tokens", "padded")):
            ys = [
                (s.get(key) or 0) / s["step_time_s"] / world if (s.get("step_time_s") or 0) > 0 else None
                for s in steps
            ]
            ax.plot(xs, [y if y is not None else float("nan") for y in ys], lw=1, label=f"{label} token/p/s")
        if st.get("tokens_per_s_per_gpu"):
            ax.axhline(st["tokens_per_s_per_gpu"], color="black", lw=0.8, linestyle="--", label="steady real")
        ax.set(xlabel="step", ylabel="tokens / s / GPU", title=f"{summary.get('run_id')} {name}: throughput")
        made.append(_save_plot(fig, rd, f"plots/{name}-throughput.png", steady_from))
    return made, []


def write_summary(run_dir: str | Path, peak_flops: float | None = None, plots: bool = True) -> dict[str, Any]:
    """Recompute summary.json (atomically) and the plots from the raw facts; returns the summary."""
    rd = Path(run_dir)
    summary = run_summary(rd, peak_flops=peak_flops)
    made, notes = write_plots(rd, summary) if plots else ([], [])
    summary["plots"] = made
    summary["notes"] = notes
    _atomic_write(rd / "summary.json", (json.dumps(summary, indent=2) + "\n").encode())
    return summary


# ---- rows ----


def _ratio(a: Any, b: Any) -> float | None:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b:
        return a / b
    return None


def _label(summary: dict[str, Any], stage: str) -> str:
    cfg = summary.get("config") or summary.get("device") or "run"
    return f"{cfg} {stage}"


def _ref_label(row: dict[str, Any]) -> str:
    model = "" if row.get("model", "LLaVA-1.5-7B") == "LLaVA-1.5-7B" else f" {row['model']}"
    return f"seed {row.get('device')} {row.get('nodes')}x{row.get('gpus_per_node')}{model} {row.get('stage')}"


def build_rows(
    summary: dict[str, Any], reference: list[dict[str, Any]] | None = None, show_other: bool = False
) -> list[dict[str, Any]]:
    """Raw rows: per stage, this run, the seed's primary row of that stage, and the ratio run/reference.

    The ratio compares token/p/s, loss, MMMU and MFU directly, the reference-method columns against the
    seed's token/p/s and MFU (the like-for-like pair), and memory as the fraction of the device used.
    """
    ref_rows = load_reference(summary.get("case")) if reference is None else reference
    rows: list[dict[str, Any]] = []
    for name in summary.get("stage_order") or list(summary.get("stages", {})):
        st = summary["stages"][name]
        run = {
            "kind": "run", "config": _label(summary, name), "stage": name,
            "tokens_per_s": st.get("tokens_per_s_per_gpu"), "loss": st.get("loss_tail_mean"),
            "mem_used_gb": st.get("mem_used_peak_gib"), "mem_total_gb": st.get("mem_total_gib"),
            "mem_used_fraction": st.get("mem_used_fraction"), "mmmu": st.get("mmmu_acc"),
            "mfu": st.get("mfu_reference"), "mfu_exact": st.get("mfu_exact"),
            "padded_tokens_per_s": st.get("padded_tokens_per_s_per_gpu"),
            "ref_method_tokens_per_s": st.get("reference_method_tokens_per_s_per_gpu"),
            "ref_method_mfu": st.get("mfu_reference_method"), "startup_s": st.get("startup_s"),
            "padding_waste": st.get("padding_waste"), "steps_done": st.get("steps_done"),
            "steps_planned": st.get("steps_planned"), "state": st.get("state"),
        }
        rows.append(run)
        ref = next((r for r in ref_rows if r.get("primary") and r.get("stage") == name), None)
        if ref is None:
            continue
        rows.append(_reference_row(ref, "reference"))
        ref_frac = _ratio(ref.get("mem_used_gb"), ref.get("mem_total_gb"))
        rows.append({
            "kind": "ratio", "config": "ratio run/seed", "stage": name,
            "tokens_per_s": _ratio(run["tokens_per_s"], ref.get("tokens_per_s_per_gpu")),
            "loss": _ratio(run["loss"], ref.get("loss")),
            "mem_used_fraction": _ratio(run["mem_used_fraction"], ref_frac),
            "mmmu": _ratio(run["mmmu"], ref.get("mmmu_acc")),
            "mfu": _ratio(run["mfu"], ref.get("mfu")),
            "ref_method_tokens_per_s": _ratio(run["ref_method_tokens_per_s"], ref.get("tokens_per_s_per_gpu")),
            "ref_method_mfu": _ratio(run["ref_method_mfu"], ref.get("mfu")),
        })
    if show_other:
        rows += [_reference_row(r, "other") for r in ref_rows if not r.get("primary")]
    return rows


def _reference_row(ref: dict[str, Any], kind: str) -> dict[str, Any]:
    return {
        "kind": kind, "config": _ref_label(ref), "stage": ref.get("stage"),
        "tokens_per_s": ref.get("tokens_per_s_per_gpu"), "loss": ref.get("loss"),
        "mem_used_gb": ref.get("mem_used_gb"), "mem_total_gb": ref.get("mem_total_gb"),
        "mem_used_fraction": _ratio(ref.get("mem_used_gb"), ref.get("mem_total_gb")),
        "mmmu": ref.get("mmmu_acc"), "mfu": ref.get("mfu"), "state": "published", "ref": ref,
    }


# ---- formatting ----


def _num(v: Any, fmt: str) -> str:
    return NA if not isinstance(v, (int, float)) or isinstance(v, bool) else format(v, fmt)


def _tps(v: Any) -> str:
    return _num(v, ".0f" if isinstance(v, (int, float)) and v >= 1000 else ".1f")


def _pct(v: Any) -> str:
    """Two decimals as the seed prints; tiny values (CPU-sized models) keep two significant digits."""
    if not isinstance(v, (int, float)):
        return NA
    return f"{v * 100:.2f}%" if v == 0 or abs(v) >= 1e-4 else f"{v * 100:.2g}%"


def _cells(row: dict[str, Any]) -> dict[str, str]:
    """Display strings of one row (n/a where there is no value)."""
    if row["kind"] == "ratio":
        x = lambda v: "" if v is None else f"{v:.2f}x"  # noqa: E731
        return {
            "config": row["config"], "tokens_per_s": x(row.get("tokens_per_s")), "loss": x(row.get("loss")),
            "mem": x(row.get("mem_used_fraction")), "mmmu": x(row.get("mmmu")), "mfu": x(row.get("mfu")),
            "ref_method_tokens_per_s": x(row.get("ref_method_tokens_per_s")),
            "ref_method_mfu": x(row.get("ref_method_mfu")),
        }
    published = row["kind"] in ("reference", "other")
    used, total = row.get("mem_used_gb"), row.get("mem_total_gb")
    if used is None:
        mem = NA if not published else "-"
    else:
        mem = f"{used:.0f}/{total:.0f}" if published else f"{used:.1f}/{_num(total, '.1f')}"
    done, planned = row.get("steps_done"), row.get("steps_planned")
    blank = "" if published else NA
    return {
        "config": row["config"],
        "tokens_per_s": _tps(row.get("tokens_per_s")),
        "loss": _num(row.get("loss"), ".4f") if row.get("loss") is not None or not published else "-",
        "mem": mem,
        "mmmu": (f"{row['mmmu'] * 100:.1f}%" if row.get("mmmu") is not None else ("-" if published else NA)),
        "mfu": _pct(row.get("mfu")),
        "mfu_exact": _pct(row.get("mfu_exact")) if not published else blank,
        "padded_tokens_per_s": _tps(row.get("padded_tokens_per_s")) if not published else blank,
        "ref_method_tokens_per_s": _tps(row.get("ref_method_tokens_per_s")) if not published else blank,
        "ref_method_mfu": _pct(row.get("ref_method_mfu")) if not published else blank,
        "startup_s": _num(row.get("startup_s"), ".1f") if not published else blank,
        "padding_waste": _pct(row.get("padding_waste")) if not published else blank,
        "steps": f"{done if done is not None else 0}/{planned if planned is not None else '?'}"
        if not published else blank,
        "state": row.get("state") or NA,
    }


# (key of a stage's "data" counts, what one of it is): the one-line data note, in this order.
DATA_NOTE_PARTS = (
    ("masked_by_reference_rule", "samples fully masked (reference mismatch rule)"),
    ("relabelled_by_reference_rule", "samples relabelled (reference round arithmetic)"),
    ("pad_tokens_removed", "<unk> tokens removed"),
    ("images_dropped_by_truncation", "images dropped by truncation"),
    ("skipped_unreadable_images", "unreadable images skipped"),
)


def data_note(stage: str, st: dict[str, Any]) -> str | None:
    """One line saying what the reference's own rules did to this stage's data, or None when nothing happened."""
    data = st.get("data") if isinstance(st.get("data"), dict) else {}
    parts = [f"{data[k]:,} {what}" for k, what in DATA_NOTE_PARTS if isinstance(data.get(k), int) and data[k] > 0]
    skipped, by_cat = data.get("skipped_records"), data.get("skipped_by_category") or {}
    if isinstance(skipped, int) and skipped > 0:
        cats = ", ".join(f"{k} {v:,}" for k, v in sorted(by_cat.items()) if v)
        parts.append(f"{skipped:,} records skipped at load" + (f" ({cats})" if cats else ""))
    if not parts:
        return None
    return f"[{stage}] data as the reference trains it (docs/fidelity.md): " + ", ".join(parts)


def footnotes(summary: dict[str, Any], reference: list[dict[str, Any]] | None = None) -> list[str]:
    """What each column means, and why a value is n/a (per stage)."""
    ref_rows = load_reference(summary.get("case")) if reference is None else reference
    notes = [
        "token/p/s: real (non-padded) tokens per second per GPU over the steady-state steps; " + STEADY_RULE + ".",
        "MFU: the seed's formula (token/p/s x 7e9 x 2 pretrain | 6 finetune / peak) on this run's token/p/s. "
        "exact MFU: model FLOPs as the graph runs (frozen LLM 4N, attention 12.L.H.T^2, projector, CLIP "
        "forward) on real tokens over the steady steps.",
        "ref-method: the seed's counting, padded tokens over the whole stage's wall time from launch (start-up "
        "and final save included); compare this column with the seed's token/p/s (ratio row).",
        "mem: peak GiB in use on the device (total - free, as nvidia-smi counts) / device GiB. The seed's "
        "74/81 was read by hand from nvidia-smi (81 = 81920 MiB = 80 GiB); the ratio compares fractions used.",
        LOSS_RULE + "; the seed does not say which loss it reports.",
    ]
    for r in ref_rows:
        if r.get("primary") and r.get("note") and r.get("stage") in summary.get("stages", {}):
            notes.append(f"seed {r.get('stage')}: {r['note']}")
    for st in summary.get("stages", {}).values():
        if st.get("peak_flops"):
            notes.append(f"peak: {st['peak_flops'] / 1e12:g} TFLOP/s dense bf16 ({st.get('peak_source')})")
    for name, st in summary.get("stages", {}).items():
        notes += [f"[{name}] {n}" for n in st.get("notes", [])]
        if (line := data_note(name, st)) is not None:
            notes.append(line)
    ev = summary.get("eval")
    if ev and ev.get("overall") is not None:
        notes.append(
            f"MMMU: {ev.get('questions')} questions of MMMU validation, {ev.get('decoding') or '?'} decoding, "
            "scored on the host with the official rules (eval/mmmu/: per subject and discipline)."
        )
    notes += summary.get("notes", [])
    return list(dict.fromkeys(notes))  # the same peak for every stage is said once


# The Rich tables: the seed's shape, then how it was measured; short headers so each fits 80 columns.
MAIN = (("label", "config"), ("tokens_per_s", "token/p/s"), ("loss", "loss"), ("mem", "mem GB"),
        ("mmmu", "MMMU"), ("mfu", "MFU"), ("mfu_exact", "exact\nMFU"))  # fmt: skip
DETAIL = (("stage", "stage"), ("padded_tokens_per_s", "padded\ntok/p/s"),
          ("ref_method_tokens_per_s", "ref-method\ntok/p/s"), ("ref_method_mfu", "ref-method\nMFU"),
          ("startup_s", "start-up\ns"), ("padding_waste", "padding\nwaste"), ("steps", "steps"),
          ("state", "state"))  # fmt: skip


def _short_label(row: dict[str, Any], summary: dict[str, Any]) -> str:
    if row["kind"] == "run":
        return f"{summary.get('config') or 'run'} {row['stage']}"
    if row["kind"] == "ratio":
        return "  ratio run/seed"
    return "  " + _ref_label(row["ref"]).removesuffix(f" {row['stage']}") if row.get("ref") else row["config"]


def table_renderable(
    summary: dict[str, Any], reference: list[dict[str, Any]] | None = None, show_other: bool = False
) -> Group:
    """Two Rich tables (the reference table's shape; the measurement details) with footnotes below."""
    rows = build_rows(summary, reference, show_other)
    main = Table(
        title=f"{summary.get('run_id')} ({summary.get('state')})", box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True,
        title_justify="left",
    )  # fmt: skip
    for k, header in MAIN:
        main.add_column(header, justify="left" if k == "label" else "right", no_wrap=k != "label")
    stage = None
    for row in rows:
        if stage is not None and row["kind"] == "run":
            main.add_section()
        stage = row.get("stage")
        cells = {**_cells(row), "label": _short_label(row, summary)}
        style = {"reference": "dim", "other": "dim italic", "ratio": "cyan"}.get(row["kind"])
        main.add_row(*(cells.get(k, "") for k, _ in MAIN), style=style)
    detail = Table(
        title="how it was measured", box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True, title_justify="left"
    )
    for k, header in DETAIL:
        detail.add_column(header, justify="left" if k in ("stage", "state") else "right", no_wrap=True)
    for row in rows:
        if row["kind"] in ("run", "ratio"):
            cells = {**_cells(row), "stage": row["stage"] if row["kind"] == "run" else "  ratio"}
            detail.add_row(*(cells.get(k, "") for k, _ in DETAIL), style="cyan" if row["kind"] == "ratio" else None)
    notes = Text("\n".join(f"{i}. {n}" for i, n in enumerate(footnotes(summary, reference), 1)), style="dim")
    return Group(main, detail, notes)


def render_text(
    summary: dict[str, Any], width: int = 220, reference: list[dict[str, Any]] | None = None,
    show_other: bool = False,
) -> str:
    """The table as plain text (no colour codes): for tests, logs and pipes."""
    console = Console(file=io.StringIO(), width=width, color_system=None, force_terminal=False, record=True)
    console.print(table_renderable(summary, reference, show_other))
    return console.export_text()


def _markdown(summary: dict[str, Any], reference: list[dict[str, Any]] | None, show_other: bool) -> str:
    esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
    lines = [
        "| " + " | ".join(h for _, h in COLUMNS) + " |",
        "| " + " | ".join("---" for _ in COLUMNS) + " |",
    ]
    for row in build_rows(summary, reference, show_other):
        cells = _cells(row)
        lines.append("| " + " | ".join(esc(cells.get(k, "")) for k, _ in COLUMNS) + " |")
    lines.append("")
    lines += [f"{i}. {esc(n)}" for i, n in enumerate(footnotes(summary, reference), 1)]
    return "\n".join(lines) + "\n"


def _csv(summary: dict[str, Any], reference: list[dict[str, Any]] | None, show_other: bool) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for row in build_rows(summary, reference, show_other):
        w.writerow({k: ("" if row.get(k) is None else row[k]) for k in CSV_COLUMNS})
    return buf.getvalue()


def render(
    summary: dict[str, Any], fmt: str = "table", reference: list[dict[str, Any]] | None = None,
    show_other: bool = False,
) -> str:
    """The summary as text: table (plain-text Rich table), json (the summary itself), csv or markdown.

    csv holds raw numbers (fractions 0..1, empty cell = n/a); table and markdown say n/a and explain it
    in the footnotes.
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

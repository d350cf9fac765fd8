"""summary.json, plots and the result table of a run, beside the seed's published rows.

Everything here is recomputed from the raw facts (kit.results.metrics), so it works on a finished, failed,
interrupted or still-running run. matplotlib is optional (extra "plots"): without it the plots are
skipped with a note and everything else works.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import statistics
import sys
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from kit.results.metrics import LOSS_RULE, SPREAD_RULE, STEADY_RULE, STEP_TIME_CV_WARN, run_summary
from kit.run.events import load_stage
from kit.tables import whole

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

CASES_DIR = Path(__file__).resolve().parents[2] / "cases"
FORMATS = ("table", "json", "csv", "markdown")
NA = "n/a"

# (key, header) of the markdown table's columns, in order: the like-for-like figures first (the seed's method),
# then the seed's other columns, then the kit's own figures and how they were measured.
COLUMNS: list[tuple[str, str]] = [
    ("config", "config"),
    ("ref_method_tokens_per_s", "token/p/s (seed method)"),
    ("ref_method_mfu", "MFU (seed method)"),
    ("loss", "loss"),
    ("mem", "mem used/total"),
    ("mmmu", "MMMU acc"),
    ("tokens_per_s", "steady token/p/s"),
    ("mfu", "steady MFU"),
    ("mfu_exact", "exact MFU"),
    ("padded_tokens_per_s", "padded token/p/s"),
    ("step_median", "step s median"),
    ("step_p10_p90", "step s p10-p90"),
    ("step_cv", "step time CV (steps)"),
    ("startup_s", "start-up s"),
    ("first_step_s", "first step s"),
    ("padding_waste", "padding waste"),
    ("steps", "steps"),
    ("state", "state"),
]
# Raw columns of the csv (numbers as numbers; empty cell = n/a). mem_used_gb / mem_total_gb are in the seed's
# unit (nvidia-smi MiB / 1000, reference.toml) for every row; mem_used_gib / mem_total_gib are GiB (2^30 bytes).
CSV_COLUMNS = [
    "kind", "config", "stage", "tokens_per_s", "loss", "mem_used_gb", "mem_total_gb", "mem_used_fraction",
    "mmmu", "mfu", "mfu_exact", "padded_tokens_per_s", "ref_method_tokens_per_s", "ref_method_mfu",
    "startup_s", "first_step_s", "steady_drift", "padding_waste", "steps_done", "steps_planned", "state",
    "steps_logged", "mem_used_gib", "mem_total_gib", "mem_meaning", "step_time_median_s", "step_time_p10_s",
    "step_time_p90_s", "step_time_cv", "step_time_steps", "comparable", "comparability", "warnings",
]
MIB_PER_GIB = 1024  # the seed's "GB" are nvidia-smi MiB / 1000: GiB x 1024 / 1000 is the same unit
MEM_DEVICE = "device memory in use (total - free, as nvidia-smi counts) / device total"
MEM_CPU = "one rank's peak RSS (ru_maxrss) / host RAM: host memory, not a device's"
RATIO_LINE = (
    "ratio run/seed: token/p/s and MFU (seed method: padded tokens over the stage's whole wall time) over the "
    "seed's, like for like; steady token/p/s and steady MFU (real tokens over the steady steps) over the same "
    "seed figures, not like for like (no start-up, no padding); loss and MMMU run over seed; mem the fraction of "
    "the device used over the seed's fraction."
)


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
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # left only when the write failed (a full disk)


def _save_plot(fig: Any, run_dir: Path, rel: str, steady_from: int | None) -> str:
    """Mark where the steady state starts, then write the PNG atomically; returns `rel`."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    ax = fig.axes[0]
    if steady_from is not None:
        ax.axvline(steady_from, color="grey", linestyle=":", label="steady state from")
    ax.legend(loc="best", fontsize="small")
    FigureCanvasAgg(fig)  # a canvas of its own: no pyplot, no global backend
    write_png(fig, run_dir / rel, dpi=110)
    return rel


def write_png(fig: Any, target: Path, dpi: int) -> None:
    """A matplotlib figure (with its canvas) as a PNG, atomically: a temporary file, then os.replace."""
    tmp = target.with_name(f".{target.name}.tmp.{os.getpid()}")
    try:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


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
    # The devices (or the host) over each stage's time, from its monitor.jsonl (kit/monitor.py).
    from kit.run.monitor import plot_monitor

    for name in [*summary.get("stages", {}), "eval"]:
        if (rd / name / "monitor.jsonl").is_file():
            (rd / "plots").mkdir(exist_ok=True)
            if plot_monitor(rd / name, rd / "plots" / f"{name}-monitor.png"):
                made.append(f"plots/{name}-monitor.png")
    return made, []


def write_summary(run_dir: str | Path, peak_flops: float | None = None, plots: bool = True) -> dict[str, Any]:
    """Recompute summary.json (atomically) and the plots from the raw facts; returns the summary.

    A run directory that cannot be written (a read-only share, a full disk) still gets its summary: the
    returned summary says in `not_written` (and its warnings) what was not written and why.
    """
    rd = Path(run_dir)
    summary = run_summary(rd, peak_flops=peak_flops)
    summary["stack"] = stack_of_run(rd)
    failed: list[str] = []
    problem: OSError | None = None
    try:
        made, notes = write_plots(rd, summary) if plots else ([], [])
    except OSError as e:
        made, notes, problem = [], [], e
        failed.append("the plots")
    summary["plots"] = made
    summary["notes"] = notes
    try:
        _atomic_write(rd / "summary.json", (json.dumps(summary, indent=2) + "\n").encode())
    except OSError as e:
        problem = problem or e
        failed.insert(0, "summary.json")
    if failed and problem is not None:
        why = problem.strerror or str(problem)
        line = (f"{' and '.join(failed)} {'was' if failed == ['summary.json'] else 'were'} not written to {rd} ({why}); "
                "the figures shown are computed from the raw facts all the same")  # fmt: skip
        summary["not_written"] = line
        summary.setdefault("warnings", []).append(line)
    return summary


def stack_of_run(run_dir: str | Path) -> dict[str, Any]:
    """run.json's `stack` (the software the run ran on: kit/image/stacks.py's record), "unknown" in older runs."""
    from kit.image.stacks import run_stack
    from kit.results.metrics import read_run_json

    try:
        environment = json.loads((Path(run_dir) / "environment.json").read_text())
    except (OSError, ValueError):
        environment = None
    return run_stack(read_run_json(run_dir), environment if isinstance(environment, dict) else None)


def stack_line(summary: dict[str, Any]) -> str:
    """The report header's software line: the stack's name and its lock hash (or the native versions)."""
    from kit.image.stacks import describe

    st = summary.get("stack")
    if not isinstance(st, dict) or st.get("name") in (None, "unknown"):
        return "stack: unknown (run.json records none: a run made before the kit recorded its software stack)"
    return f"stack: {describe(st)}" + (f", lock sha256 {st['lock_sha256']}" if st.get("lock_sha256") else "")


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


def comparable_of(summary: dict[str, Any]) -> dict[str, Any]:
    """The summary's comparability (metrics.comparability); a summary without one is not comparable."""
    c = summary.get("comparable")
    if isinstance(c, dict) and "comparable" in c:
        return c
    return {"comparable": False, "reason": "comparability unknown (a summary from before the kit recorded it)"}


def not_comparable_text(summary: dict[str, Any]) -> str | None:
    """"not comparable: <reason>" for a run whose ratios against the seed would compare unlike things, else None."""
    c = comparable_of(summary)
    return None if c["comparable"] else f"not comparable: {c.get('reason') or 'unknown'}"


def comparability_line(summary: dict[str, Any]) -> str:
    c = comparable_of(summary)
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
    out += [f"[eval] {w}" for w in ev.get("stage_warnings") or []]
    return list(dict.fromkeys(out))


def _seed_unit(gib: Any) -> float | None:
    """GiB in the seed's unit: nvidia-smi's MiB read as thousands (reference.toml)."""
    return gib * MIB_PER_GIB / 1000 if isinstance(gib, (int, float)) else None


def _primary(ref_rows: list[dict[str, Any]], stage: str) -> dict[str, Any] | None:
    return next((r for r in ref_rows if r.get("primary") and r.get("stage") == stage), None)


def build_rows(
    summary: dict[str, Any], reference: list[dict[str, Any]] | None = None, show_other: bool = False
) -> list[dict[str, Any]]:
    """Raw rows: per stage, this run, the seed's primary row of that stage, and the ratio run/reference.

    A run that is not comparable (metrics.comparability) gets a ratio row without numbers that says why. The
    ratio compares the seed-method columns with the seed's token/p/s and MFU (like for like), the steady
    columns with the same seed figures (not like for like; RATIO_LINE), loss and MMMU directly, and memory as
    the fraction of the device used (GPU runs only: a CPU's figure is host RSS).
    """
    ref_rows = load_reference(summary.get("case")) if reference is None else reference
    comp = comparable_of(summary)
    nc = not_comparable_text(summary)
    run_warnings = [str(w) for w in summary.get("warnings") or []]
    rows: list[dict[str, Any]] = []
    for name in summary.get("stage_order") or list(summary.get("stages", {})):
        st = summary["stages"][name]
        cpu = st.get("device_type") == "cpu"
        used, total = st.get("mem_used_peak_gib"), st.get("mem_total_gib")
        run = {
            "kind": "run", "config": _label(summary, name), "stage": name,
            "tokens_per_s": st.get("tokens_per_s_per_gpu"), "loss": st.get("loss_tail_mean"),
            "mem_used_gb": _seed_unit(used), "mem_total_gb": _seed_unit(total),
            "mem_used_gib": used, "mem_total_gib": total, "mem_meaning": MEM_CPU if cpu else MEM_DEVICE, "cpu": cpu,
            "mem_used_fraction": st.get("mem_used_fraction"), "mmmu": st.get("mmmu_acc"),
            "mfu": st.get("mfu_reference"), "mfu_exact": st.get("mfu_exact"),
            "padded_tokens_per_s": st.get("padded_tokens_per_s_per_gpu"),
            "ref_method_tokens_per_s": st.get("reference_method_tokens_per_s_per_gpu"),
            "ref_method_mfu": st.get("mfu_reference_method"), "startup_s": st.get("startup_s"),
            "first_step_s": st.get("first_step_s"), "steady_drift": st.get("steady_drift"),
            "padding_waste": st.get("padding_waste"), "steps_done": st.get("steps_done"),
            "steps_logged": st.get("steps_logged"), "steps_planned": st.get("steps_planned"), "state": st.get("state"),
            **{k: st.get(k) for k in ("step_time_median_s", "step_time_p10_s", "step_time_p90_s", "step_time_cv",
                                      "step_time_steps")},
            "comparable": comp["comparable"], "comparability": comp.get("reason"),
            "warnings": "; ".join([*run_warnings, *(str(w) for w in st.get("stage_warnings") or [])]),
        }  # fmt: skip
        rows.append(run)
        ref = _primary(ref_rows, name)
        if ref is None:
            continue
        rows.append(_reference_row(ref, "reference"))
        rows.append(_ratio_row(run, ref, name, nc, comp))
    ev = summary.get("eval")
    if ev and "finetune" not in (summary.get("stages") or {}):  # the eval stage alone: its MMMU is the row
        run = {
            "kind": "run", "config": _label(summary, "eval"), "stage": "eval", "mmmu": ev.get("overall"),
            "state": ev.get("state"), "questions": ev.get("questions"), "comparable": comp["comparable"],
            "comparability": comp.get("reason"),
            "warnings": "; ".join([*run_warnings, *(str(w) for w in ev.get("stage_warnings") or [])]),
        }  # fmt: skip
        rows.append(run)
        ref = _primary(ref_rows, "finetune")
        if ref is not None and ref.get("mmmu_acc") is not None:
            seed = {"kind": "reference", "config": _ref_label(ref), "stage": "eval", "mmmu": ref.get("mmmu_acc"),
                    "state": "published", "ref": ref}  # fmt: skip
            rows.append(seed)
            rows.append({"kind": "ratio", "config": "ratio run/seed", "stage": "eval", "comparable": comp["comparable"],
                         "comparability": comp.get("reason"), "not_comparable": nc,
                         "mmmu": None if nc else _ratio(run["mmmu"], ref.get("mmmu_acc"))})  # fmt: skip
    if show_other:
        rows += [_reference_row(r, "other") for r in ref_rows if not r.get("primary")]
    return rows


def _ratio_row(
    run: dict[str, Any], ref: dict[str, Any], stage: str, nc: str | None, comp: dict[str, Any]
) -> dict[str, Any]:
    row: dict[str, Any] = {"kind": "ratio", "config": "ratio run/seed", "stage": stage,
                           "comparable": comp["comparable"], "comparability": comp.get("reason")}  # fmt: skip
    if nc:
        return {**row, "not_comparable": nc}
    ref_frac = _ratio(ref.get("mem_used_gb"), ref.get("mem_total_gb"))
    return {
        **row,
        "tokens_per_s": _ratio(run["tokens_per_s"], ref.get("tokens_per_s_per_gpu")),
        "loss": _ratio(run["loss"], ref.get("loss")),
        "mem_used_fraction": None if run.get("cpu") else _ratio(run["mem_used_fraction"], ref_frac),
        "mmmu": _ratio(run["mmmu"], ref.get("mmmu_acc")),
        "mfu": _ratio(run["mfu"], ref.get("mfu")),
        "ref_method_tokens_per_s": _ratio(run["ref_method_tokens_per_s"], ref.get("tokens_per_s_per_gpu")),
        "ref_method_mfu": _ratio(run["ref_method_mfu"], ref.get("mfu")),
    }


def _reference_row(ref: dict[str, Any], kind: str) -> dict[str, Any]:
    return {
        "kind": kind, "config": _ref_label(ref), "stage": ref.get("stage"),
        "tokens_per_s": ref.get("tokens_per_s_per_gpu"), "loss": ref.get("loss"),
        "mem_used_gb": ref.get("mem_used_gb"), "mem_total_gb": ref.get("mem_total_gb"),
        "mem_used_fraction": _ratio(ref.get("mem_used_gb"), ref.get("mem_total_gb")),
        "mem_meaning": "nvidia-smi read by hand, MiB as thousands (GB)" if ref.get("mem_used_gb") else None,
        "mmmu": ref.get("mmmu_acc"), "mfu": ref.get("mfu"), "state": "published", "ref": ref,
        # The seed's token/p/s and MFU are its own method's: they stand in the seed-method columns.
        "ref_method_tokens_per_s": ref.get("tokens_per_s_per_gpu"), "ref_method_mfu": ref.get("mfu"),
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


def _steps_cell(row: dict[str, Any]) -> str:
    """logged/planned; "31/32 logged" when steps are missing from events.log (a torn line, a cut file)."""
    if row.get("stage") == "eval" and row.get("questions") is not None:
        return f"{row['questions']} questions"
    done, logged, planned = row.get("steps_done"), row.get("steps_logged"), row.get("steps_planned")
    logged = logged if isinstance(logged, int) else done if isinstance(done, int) else 0
    cell = f"{logged}/{planned if planned is not None else '?'}"
    return cell + " logged" if isinstance(done, int) and logged < done else cell


def _cells(row: dict[str, Any]) -> dict[str, str]:
    """Display strings of one row (n/a where there is no value)."""
    if row["kind"] == "ratio":
        if row.get("not_comparable"):
            return {"config": row["config"], "ref_method_tokens_per_s": row["not_comparable"]}
        x = lambda v: "" if v is None else f"{v:.2f}x"  # noqa: E731
        return {
            "config": row["config"], "tokens_per_s": x(row.get("tokens_per_s")), "loss": x(row.get("loss")),
            "mem": x(row.get("mem_used_fraction")), "mmmu": x(row.get("mmmu")), "mfu": x(row.get("mfu")),
            "ref_method_tokens_per_s": x(row.get("ref_method_tokens_per_s")),
            "ref_method_mfu": x(row.get("ref_method_mfu")),
        }
    published = row["kind"] in ("reference", "other")
    eval_row = row.get("stage") == "eval" and not published
    if published:
        used, total = row.get("mem_used_gb"), row.get("mem_total_gb")
        mem = f"{used:.0f}/{total:.0f} GB" if used is not None and total is not None else "-"
    else:
        used, total = row.get("mem_used_gib"), row.get("mem_total_gib")
        mem = NA if used is None else f"{used:.1f}/{_num(total, '.1f')} GiB"
    blank = "" if published else NA
    p10, p90 = row.get("step_time_p10_s"), row.get("step_time_p90_s")
    cv = row.get("step_time_cv")
    cells = {
        "config": row["config"],
        "tokens_per_s": _tps(row.get("tokens_per_s")) if not published else blank,
        "ref_method_tokens_per_s": _tps(row.get("ref_method_tokens_per_s"))
        if row.get("ref_method_tokens_per_s") is not None or not published else "-",
        "loss": _num(row.get("loss"), ".4f") if row.get("loss") is not None or not published else "-",
        "mem": mem,
        "mmmu": (f"{row['mmmu'] * 100:.1f}%" if row.get("mmmu") is not None else ("-" if published else NA)),
        "mfu": _pct(row.get("mfu")) if not published else blank,
        "ref_method_mfu": _pct(row.get("ref_method_mfu")) if row.get("ref_method_mfu") is not None or not published
        else "-",
        "mfu_exact": _pct(row.get("mfu_exact")) if not published else blank,
        "padded_tokens_per_s": _tps(row.get("padded_tokens_per_s")) if not published else blank,
        "step_median": _num(row.get("step_time_median_s"), ".3g") if not published else blank,
        "step_p10_p90": (f"{p10:.3g}-{p90:.3g}" if isinstance(p10, float) and isinstance(p90, float) else NA)
        if not published else blank,
        "step_cv": (f"{cv:.0%} ({row.get('step_time_steps')})" if isinstance(cv, float) else NA)
        if not published else blank,
        "startup_s": _num(row.get("startup_s"), ".1f") if not published else blank,
        "first_step_s": _num(row.get("first_step_s"), ".3g") if not published else blank,
        "padding_waste": _pct(row.get("padding_waste")) if not published else blank,
        "steps": _steps_cell(row) if not published else blank,
        "state": row.get("state") or NA,
    }
    if eval_row:  # the eval stage has questions, not steps: only MMMU, steps (questions) and state apply
        cells = {k: ("" if k not in ("config", "mmmu", "steps", "state") else v) for k, v in cells.items()}
    return cells


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
        "token/p/s and MFU (seed method): the seed's counting, padded tokens over the stage's whole wall time from "
        "launch (start-up and final save included) per GPU, and its MFU formula on it (token/p/s x 7e9 x 2 "
        "pretrain | 6 finetune / peak): like for like with the seed's token/p/s and MFU.",
        "steady token/p/s: real (non-padded) tokens per second per GPU over the steady-state steps; " + STEADY_RULE
        + ". steady MFU: the seed's formula on it. exact MFU: model FLOPs as the graph runs (frozen LLM 4N, "
        "attention 12.L.H.T^2, projector, CLIP forward) on real tokens over the steady steps.",
        SPREAD_RULE + "; (n) = how many steady steps.",
        f"mem: GiB (2^30 bytes), {MEM_DEVICE}. The seed's 74/81 GB were read by hand from nvidia-smi, its MiB read "
        "as thousands (81 = 81920 MiB = 80 GiB): compare the fractions used (ratio row), not the numbers.",
        LOSS_RULE + "; the seed does not say which loss it reports.",
    ]
    for name, st in summary.get("stages", {}).items():
        if st.get("device_type") == "cpu":
            notes.append(f"[{name}] mem on a CPU: {MEM_CPU}; no ratio against the seed's GPU memory.")
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
        what = ("generated questions in MMMU's format (--synthetic: not MMMU validation)" if ev.get("generated")
                else "questions of MMMU validation")  # fmt: skip
        notes.append(
            f"MMMU: {ev.get('questions')} {what}, {ev.get('decoding') or '?'} decoding, "
            "scored on the host with the official rules (eval/mmmu/: per subject and discipline)."
        )
    if ev:
        notes += [f"[eval] {n}" for n in ev.get("notes", [])]
    details = comparable_of(summary).get("details") or []
    notes += [f"comparability: {d}" for d in details]
    notes += summary.get("notes", [])
    return list(dict.fromkeys(notes))  # the same peak for every stage is said once


# The Rich tables, each within 80 columns: the seed's shape (the like-for-like figures first), how it was
# measured, and the spread of the step time.
MAIN = (("label", "config"), ("ref_method_tokens_per_s", "token/p/s"), ("ref_method_mfu", "MFU"),
        ("loss", "loss"), ("mem", "mem\nused/total"), ("mmmu", "MMMU"), ("tokens_per_s", "steady\ntok/p/s"))
DETAIL = (("stage", "stage"), ("padded_tokens_per_s", "padded\ntok/p/s"), ("mfu", "steady\nMFU"),
          ("mfu_exact", "exact\nMFU"),
          ("startup_s", "start-up\ns"), ("first_step_s", "first\nstep s"), ("padding_waste", "padding\nwaste"),
          ("steps", "steps"),
          ("state", "state"))  # fmt: skip
SPREAD = (("stage", "stage"), ("step_n", "steady\nsteps"), ("step_median", "median s"), ("step_p10", "p10 s"),
          ("step_p90", "p90 s"), ("step_cv_only", "CV"))  # fmt: skip
NOT_COMPARABLE_WIDTH = 20  # the ratio row's "not comparable: ..." folds into this width in the first column


def _short_label(row: dict[str, Any], summary: dict[str, Any]) -> str:
    if row["kind"] == "run":
        return f"{summary.get('config') or 'run'} {row['stage']}"
    if row["kind"] == "ratio":
        return "  ratio"
    if row.get("ref"):
        label = _ref_label(row["ref"]).removesuffix(f" {row['ref'].get('stage')}")
        return "  " + label
    return row["config"]


def table_renderable(
    summary: dict[str, Any], reference: list[dict[str, Any]] | None = None, show_other: bool = False
) -> Group:
    """Rich tables (the reference table's shape; how it was measured; the step-time spread), warnings, footnotes."""
    rows = build_rows(summary, reference, show_other)
    comparable = comparable_of(summary)["comparable"]
    title = Text(f"{summary.get('run_id')} ({summary.get('state')})\n{stack_line(summary)}\n")
    title.append(comparability_line(summary), style="" if comparable else "bold yellow")
    main = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True, title_justify="left")
    for k, header in MAIN:
        if k == "ref_method_tokens_per_s":  # folds a "not comparable: ..." cell; numbers are far narrower
            main.add_column(header, justify="right", max_width=NOT_COMPARABLE_WIDTH, overflow="fold")
        else:
            main.add_column(header, justify="left" if k == "label" else "right", no_wrap=k != "label")
    label_header = dict(MAIN)["label"]
    stage = None
    for row in rows:
        if stage is not None and row["kind"] == "run":
            main.add_section()
        stage = row.get("stage")
        cells = {**_cells(row), "label": _short_label(row, summary)}
        if row["kind"] == "ratio" and not comparable:  # the title above says why, once
            cells["ref_method_tokens_per_s"] = "not comparable"
        style = {"reference": "dim", "other": "dim italic", "ratio": "cyan" if comparable else "yellow"}.get(row["kind"])
        main.add_row(*(cells.get(k, "") for k, _ in MAIN), style=style)
    parts: list[Any] = [whole(main, label_header)]  # a config's name whole; a too-narrow terminal folds it
    if any(r["kind"] == "ratio" for r in rows):
        parts.append(Text(RATIO_LINE, style="dim"))
    run_rows = [r for r in rows if r["kind"] == "run"]
    detail = Table(
        title="how it was measured", box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True, title_justify="left"
    )
    for k, header in DETAIL:
        detail.add_column(header, justify="left" if k in ("stage", "state") else "right", no_wrap=True)
    for row in run_rows:
        cells = {**_cells(row), "stage": row["stage"]}
        detail.add_row(*(cells.get(k, "") for k, _ in DETAIL))
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
                row["stage"], str(row.get("step_time_steps")), _num(row.get("step_time_median_s"), ".3g"),
                _num(row.get("step_time_p10_s"), ".3g"), _num(row.get("step_time_p90_s"), ".3g"),
                NA if cv is None else f"{cv:.0%}", style="yellow" if isinstance(cv, float) and cv > STEP_TIME_CV_WARN
                else None,
            )  # fmt: skip
        parts.append(spread_t)
    if warnings := warning_lines(summary):
        parts.append(Text("\n".join(f"warning: {w}" for w in warnings), style="yellow"))
    parts.append(Text("\n".join(f"{i}. {n}" for i, n in enumerate(footnotes(summary, reference), 1)), style="dim"))
    return Group(*parts)


def _plain(renderable: Any, width: int) -> str:
    console = Console(file=io.StringIO(), width=width, color_system=None, force_terminal=False, record=True)
    console.print(renderable)
    return console.export_text()


def render_text(
    summary: dict[str, Any], width: int = 220, reference: list[dict[str, Any]] | None = None,
    show_other: bool = False,
) -> str:
    """The table as plain text (no colour codes): for tests, logs and pipes."""
    return _plain(table_renderable(summary, reference, show_other), width)


def _esc(s: Any) -> str:
    return str(s).replace("|", "\\|")


def _markdown(summary: dict[str, Any], reference: list[dict[str, Any]] | None, show_other: bool) -> str:
    rows = build_rows(summary, reference, show_other)
    lines = [f"**{_esc(summary.get('run_id'))} ({_esc(summary.get('state'))})**: {_esc(comparability_line(summary))}", "",
             _esc(stack_line(summary)), ""]
    if warnings := warning_lines(summary):
        lines += [f"> warning: {_esc(w)}  " for w in warnings] + [""]
    lines += [
        "| " + " | ".join(h for _, h in COLUMNS) + " |",
        "| " + " | ".join("---" for _ in COLUMNS) + " |",
    ]
    for row in rows:
        cells = _cells(row)
        lines.append("| " + " | ".join(_esc(cells.get(k, "")) for k, _ in COLUMNS) + " |")
    lines.append("")
    if any(r["kind"] == "ratio" for r in rows):
        lines += [_esc(RATIO_LINE), ""]
    lines += [f"{i}. {_esc(n)}" for i, n in enumerate(footnotes(summary, reference), 1)]
    return "\n".join(lines) + "\n"


def _csv(summary: dict[str, Any], reference: list[dict[str, Any]] | None, show_other: bool) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for row in build_rows(summary, reference, show_other):
        out = {k: ("" if row.get(k) is None else row[k]) for k in CSV_COLUMNS}
        if row["kind"] == "ratio" and row.get("not_comparable"):
            out["comparability"] = row["not_comparable"]
        if isinstance(row.get("comparable"), bool):
            out["comparable"] = "true" if row["comparable"] else "false"
        w.writerow(out)
    return buf.getvalue()


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


# ---- several runs of one config: mean and spread ----

MULTI_SCHEMA = "kit.multi-summary/1"
# (stage summary key, label, the seed row's key it compares with like for like, or None, kind of number)
MULTI_FIGURES: tuple[tuple[str, str, str | None, str], ...] = (
    ("reference_method_tokens_per_s_per_gpu", "token/p/s", "tokens_per_s_per_gpu", "tps"),
    ("mfu_reference_method", "MFU", "mfu", "pct"),
    ("tokens_per_s_per_gpu", "steady tok/p/s", None, "tps"),
    ("mfu_reference", "steady MFU", None, "pct"),
    ("mfu_exact", "exact MFU", None, "pct"),
    ("loss_tail_mean", "loss", "loss", "loss"),
    ("mem_used_peak_gib", "mem GiB", None, "gib"),
    ("step_time_median_s", "step s median", None, "s"),
    ("step_time_cv", "step time CV", None, "cv"),
)
MULTI_IGNORED_CONFIG_KEYS = ("path", "description")  # keys that name or describe a config, not what it runs


class MixedRunsError(ValueError):
    """The runs given to one report are not runs of one config: the message names both and what differs."""


def _run_identity(info: dict[str, Any], cfg: dict[str, Any]) -> dict[str, Any]:
    from kit.case.rules import flatten

    flat = {k: v for k, v in flatten(cfg).items() if k.split(".")[-1] not in MULTI_IGNORED_CONFIG_KEYS}
    stages = [s.get("name") if isinstance(s, dict) else s for s in info.get("stages") or []]
    return {"case": info.get("case"), "config": cfg.get("name"), "stages": stages, "values": flat,
            "synthetic": bool(info.get("synthetic")), "max_steps": info.get("max_steps") or 0}  # fmt: skip


def _describe(ident: dict[str, Any]) -> str:
    extra = (", synthetic" if ident["synthetic"] else "") + (f", --max-steps {ident['max_steps']}" if ident["max_steps"] else "")
    return f"{ident['case']} {ident['config']} ({', '.join(map(str, ident['stages'])) or 'no stages'}{extra})"


def check_one_config(run_dirs: list[Path]) -> None:
    """Refuse runs of different configs (case, config and its values, stages, synthetic, --max-steps)."""
    from kit.results.metrics import read_run_json, run_config

    idents = []
    for rd in run_dirs:
        info = read_run_json(rd)
        idents.append((rd, _run_identity(info, run_config(rd, info)[0])))
    from kit.image.stacks import describe, stack_key

    stacks = [(rd, stack_of_run(rd)) for rd, _ in idents]
    for rd, st in stacks[1:]:
        if stack_key(st) != stack_key(stacks[0][1]):
            raise MixedRunsError(
                f"runs of different software stacks cannot be reported together: {stacks[0][0].name} ran "
                f"{describe(stacks[0][1])} and {rd.name} ran {describe(st)}. Their spread would mix the libraries' "
                "difference into the runs' noise; report them one at a time, or side by side with `kit compare`"
            )
    (first, a), rest = idents[0], idents[1:]
    for rd, b in rest:
        if a == b:
            continue
        what = _describe(a) != _describe(b)
        diff = "" if what else "; they differ in " + ", ".join(
            f"{k} ({a['values'].get(k)!r} vs {b['values'].get(k)!r})"
            for k in sorted(set(a["values"]) | set(b["values"])) if a["values"].get(k) != b["values"].get(k)
        )[:300]  # fmt: skip
        raise MixedRunsError(
            f"runs of different configs cannot be reported together: {first.name} is {_describe(a)} and {rd.name} is "
            f"{_describe(b)}{diff}. A multi-run report is over runs of one config; report them one at a time, or set "
            "systems side by side with `kit compare`"
        )


def spread(values: list[Any]) -> dict[str, Any]:
    """Mean, min, max and sample standard deviation (n - 1: the runs are a sample of the runs one could make)."""
    nums = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]
    mean = sum(nums) / len(nums) if nums else None
    return {
        "values": [v if isinstance(v, (int, float)) and not isinstance(v, bool) else None for v in values],
        "n": len(nums), "mean": mean, "min": min(nums) if nums else None, "max": max(nums) if nums else None,
        "std": statistics.stdev(nums) if len(nums) > 1 else None,
        "cv": statistics.stdev(nums) / mean if len(nums) > 1 and mean else None,
    }  # fmt: skip


def multi_summary(
    run_dirs: list[Path], summaries: list[dict[str, Any]], reference: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """Per stage, the mean and spread over the runs of every figure of MULTI_FIGURES and of MMMU.

    The runs must be of one config (check_one_config). The mean is compared with the seed (mean/seed) only
    when every run is comparable and for the like-for-like figures.
    """
    check_one_config(run_dirs)
    first = summaries[0]
    ref_rows = load_reference(first.get("case")) if reference is None else reference
    comps = [comparable_of(s) for s in summaries]
    ok = all(c["comparable"] for c in comps)
    reasons = list(dict.fromkeys(str(c.get("reason")) for c in comps))
    names = list(dict.fromkeys(n for s in summaries for n in s.get("stage_order") or []))
    stages: dict[str, Any] = {}
    notes: list[str] = []
    for name in names:
        per = [s.get("stages", {}).get(name) or {} for s in summaries]
        ref = _primary(ref_rows, name)
        figs = {}
        for key, label, seed_key, kind in MULTI_FIGURES:
            st = spread([p.get(key) for p in per])
            seed = ref.get(seed_key) if ref and seed_key else None
            st.update(label=label, kind=kind, seed=seed,
                      mean_over_seed=_ratio(st["mean"], seed) if ok else None)  # fmt: skip
            figs[key] = st
        stages[name] = figs
        bad = [f"{s.get('run_id')} {p.get('state')}" for s, p in zip(summaries, per, strict=True)
               if p.get("state") != "finished"]  # fmt: skip
        if bad:
            notes.append(f"[{name}] not every run finished the stage ({', '.join(bad)}): its figures cover what ran")
    mm = spread([s.get("mmmu_acc") for s in summaries])
    seed_mm = (_primary(ref_rows, "finetune") or {}).get("mmmu_acc")
    mm.update(label="MMMU", kind="acc", seed=seed_mm, mean_over_seed=_ratio(mm["mean"], seed_mm) if ok else None)
    warnings = [f"{s.get('run_id')}: {w}" for s in summaries for w in warning_lines(s)]
    return {
        "schema": MULTI_SCHEMA,
        "case": first.get("case"),
        "config": first.get("config"),
        "stack": first.get("stack") or stack_of_run(run_dirs[0]),
        "n_runs": len(summaries),
        "runs": [{"run_id": s.get("run_id"), "path": str(p), "state": s.get("state")}
                 for p, s in zip(run_dirs, summaries, strict=True)],  # fmt: skip
        "comparable": {"comparable": ok, "reason": "; ".join(reasons)},
        "stage_order": names,
        "stages": stages,
        "mmmu": mm,
        "warnings": warnings,
        "notes": notes,
        "rules": {"std": "sample standard deviation over the runs (n - 1); min-max: the range over the runs",
                  "spread": SPREAD_RULE},  # fmt: skip
    }


def _fmt_kind(v: Any, kind: str) -> str:
    if not isinstance(v, (int, float)):
        return NA
    return {"tps": _tps, "pct": _pct, "cv": lambda x: f"{x:.0%}", "acc": lambda x: f"{x * 100:.1f}%"}.get(
        kind, lambda x: format(x, ".4f" if kind == "loss" else ".3g")
    )(v)


def _multi_rows(ms: dict[str, Any]) -> list[dict[str, str]]:
    """Display rows of the multi-run table: one per stage and figure that has a value in some run."""
    out = []
    items = [(n, k, st) for n in ms["stage_order"] for k, st in ms["stages"][n].items()]
    if ms["mmmu"]["n"]:
        items.append(("eval", "mmmu_acc", ms["mmmu"]))
    for stage, key, st in items:
        if not st["n"]:
            continue
        kind = st["kind"]
        std = NA if st["std"] is None else _fmt_kind(st["std"], kind) + (f" ({st['cv']:.0%})" if st.get("cv") else "")
        seed = ""
        if st.get("seed") is not None:
            ratio = st.get("mean_over_seed")
            seed = _fmt_kind(st["seed"], kind) + (f" ({ratio:.2f}x)" if isinstance(ratio, float) else "")
        out.append({"stage": stage, "figure": st["label"], "key": key, "mean": _fmt_kind(st["mean"], kind),
                    "range": f"{_fmt_kind(st['min'], kind)}-{_fmt_kind(st['max'], kind)}", "std": std,
                    "n": str(st["n"]), "seed": seed})  # fmt: skip
    return out


# The seed column only for comparable runs: beside a run that is not, the seed's figures are no yardstick.
MULTI_COLUMNS = (("stage", "stage"), ("figure", "figure"), ("mean", "mean"), ("range", "min-max"),
                 ("std", "std (CV)"), ("n", "runs"), ("seed", "seed (mean/seed)"))  # fmt: skip


def _multi_columns(ms: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    return MULTI_COLUMNS if ms["comparable"]["comparable"] else MULTI_COLUMNS[:-1]


def _multi_title(ms: dict[str, Any]) -> str:
    return f"{ms['n_runs']} runs of {ms['case']} {ms['config']}: mean and spread over the runs"


def _multi_label(ms: dict[str, Any]) -> str:
    c = ms["comparable"]
    if c["comparable"]:
        return f"comparable with the seed: {c['reason']}"
    return f"NOT comparable with the seed: {c['reason']}; no seed figures or ratios"


def _multi_notes(ms: dict[str, Any]) -> list[str]:
    return [
        f"std: {ms['rules']['std']}; (CV) = std / mean.",
        "token/p/s and MFU: the seed's method (padded tokens over the stage's whole wall time), like for like with "
        "the seed's; steady tok/p/s and steady MFU: real tokens over the steady steps (no seed counterpart); "
        "mem: GiB (2^30 bytes); step s median and step time CV: per run over its steady steps.",
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


def render_multi(ms: dict[str, Any], fmt: str = "table") -> str:
    """The multi-run summary as table, json, csv (one row per stage and figure, raw numbers) or markdown."""
    if fmt == "table":
        return _plain(multi_renderable(ms), 220)
    if fmt == "json":
        return json.dumps(ms, indent=2) + "\n"
    if fmt == "csv":
        buf = io.StringIO()
        cols = ["stage", "figure", "key", "mean", "min", "max", "std", "n", "seed", "mean_over_seed", "values",
                "comparable", "comparability", "warnings"]  # fmt: skip
        w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
        w.writeheader()
        items = [(n, k, st) for n in ms["stage_order"] for k, st in ms["stages"][n].items()]
        items.append(("eval", "mmmu_acc", ms["mmmu"]))
        for stage, key, st in items:
            w.writerow({
                "stage": stage, "figure": st["label"], "key": key,
                **{k: ("" if st.get(k) is None else st[k]) for k in ("mean", "min", "max", "std", "n", "seed",
                                                                      "mean_over_seed")},
                "values": ";".join("" if v is None else repr(v) for v in st["values"]),
                "comparable": "true" if ms["comparable"]["comparable"] else "false",
                "comparability": ms["comparable"]["reason"] if ms["comparable"]["comparable"]
                else f"not comparable: {ms['comparable']['reason']}",
                "warnings": "; ".join(ms["warnings"]),
            })  # fmt: skip
        return buf.getvalue()
    if fmt == "markdown":
        lines = [f"**{_esc(_multi_title(ms))}**: {_esc(_multi_label(ms))}", "", _esc(stack_line(ms)), ""]
        lines += [f"> warning: {_esc(w)}  " for w in ms["warnings"]] + ([""] if ms["warnings"] else [])
        cols = _multi_columns(ms)
        lines += ["| " + " | ".join(h for _, h in cols) + " |", "| " + " | ".join("---" for _ in cols) + " |"]
        lines += ["| " + " | ".join(_esc(r[k]) for k, _ in cols) + " |" for r in _multi_rows(ms)]
        lines += ["", *(f"{i}. {_esc(n)}" for i, n in enumerate(_multi_notes(ms), 1))]
        return "\n".join(lines) + "\n"
    raise ValueError(f"unknown format {fmt!r}: choose one of {', '.join(FORMATS)}")

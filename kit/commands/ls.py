"""`kit ls`: the runs under --results, one line each, newest first.

Each line: the run's id, its config, every stage with its state, when it started, and the headline figures
(each training stage's token/p/s by the reference's method, as the report's first column, and the eval's
accuracy; the JSON has the steady-state real-token throughput too), derived from the raw facts with
`kit.results.summary.run_summary` exactly as `kit report` derives them and printed in the same format
(kit/results/formats.py), but read-only: `ls` never writes summary.json or a plot, so it is safe on a share others
read and on a run that is still going. A run that is not the reference's data, weights and shape says so on its
line. A damaged run is listed with the reason, never skipped and never a crash.
"""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.text import Text

from kit.results import formats as f
from kit.results.model import accuracy_figure
from kit.results.reference import case_of
from kit.results.summary import eval_stage, run_summary
from kit.run.dir import RunDir, RunDirError

# A run directory: what `kit run` writes first. A folder with neither (builds/, a cache) is not a run.
RUN_MARKERS = ("run.json", "status.jsonl")
STATE_STYLES = {"finished": "green", "failed": "red", "interrupted": "yellow", "stopped": "yellow", "running": "cyan"}


def _started(run: Path, info: dict[str, Any]) -> float | None:
    """When the run started: run.json's `created`, else the id's stamp (YYYYmmdd-HHMMSS-...), else the folder's."""
    created = info.get("created")
    if isinstance(created, (int, float)) and not isinstance(created, bool):
        return float(created)
    try:
        return datetime.strptime(run.name[:15], "%Y%m%d-%H%M%S").timestamp()
    except ValueError:
        pass
    try:
        return run.stat().st_mtime
    except OSError:
        return None


def run_dirs(results: Path) -> list[Path]:
    """Every run directory right under `results`."""
    try:
        children = list(results.iterdir())
    except OSError:
        return []
    return [p for p in children if p.is_dir() and any((p / m).exists() for m in RUN_MARKERS)]


def describe(run: Path) -> dict[str, Any]:
    """One run as `ls` lists it; a run whose files cannot be used gets `error` (the file and the reason) instead."""
    rd = RunDir(run)
    info = rd.request()
    cfg = info.get("config")
    acc = accuracy_figure(case_of(info.get("case")))
    row: dict[str, Any] = {
        "run_id": run.name, "path": str(run), "case": info.get("case"), "config": None, "state": None,
        "started": _started(run, info), "started_local": None, "stages": {}, "tokens_per_s_per_gpu": {},
        "reference_method_tokens_per_s_per_gpu": {}, "accuracy_key": acc.key if acc else None,
        "accuracy_label": acc.label if acc else None, **({acc.key: None} if acc else {}), "eval_generated": None,
        "comparable": None, "error": None,
    }  # fmt: skip
    row["started_local"] = _when(row["started"])
    row["config"] = cfg.get("name") if isinstance(cfg, dict) else info.get("config_name")
    try:
        rd.check()  # the report's own gate: run.json, the config, status.jsonl
        s = run_summary(run)
    except Exception as e:  # noqa: BLE001 - one damaged run must not hide the others
        row["error"] = str(e) if isinstance(e, RunDirError) else f"cannot be summarised ({type(e).__name__}: {e})"
        return row
    row["config"] = s.get("config") or row["config"]
    row["state"] = s.get("state")
    for name, st in (s.get("stages") or {}).items():
        row["stages"][name] = st.get("state")
        row["tokens_per_s_per_gpu"][name] = st.get("tokens_per_s_per_gpu")
        row["reference_method_tokens_per_s_per_gpu"][name] = st.get("reference_method_tokens_per_s_per_gpu")
    if isinstance(s.get("eval"), dict):
        row["stages"][eval_stage(case_of(info.get("case"))) or "eval"] = s["eval"].get("state")
        row["eval_generated"] = s["eval"].get("generated")
    if acc:
        row[acc.key] = s.get(acc.key)
    row["comparable"] = s.get("comparable")
    return row


def list_runs(results: Path) -> list[dict[str, Any]]:
    """Every run under `results`, newest first."""
    rows = [describe(p) for p in run_dirs(results)]
    return sorted(rows, key=lambda r: (r["started"] or 0.0, r["run_id"]), reverse=True)


# ---------------------------------------------------------------- the lines


def _when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t)) if t else "?"


def _stages_text(row: dict[str, Any]) -> Text:
    out = Text()
    for i, (name, state) in enumerate(row["stages"].items()):
        if i:
            out.append(" ")
        out.append(f"{name} ")
        out.append(state or "?", style=STATE_STYLES.get(state or "", ""))
    return out


def _figures(row: dict[str, Any]) -> str:
    """`pretrain 596 finetune 744 token/p/s; MMMU 30.0% (generated questions)`: the report's first column, the
    reference's own method (padded tokens over the stage's wall time, per rank), so it sits beside the seed's."""
    tps = [f"{name} {f.tps(v)}" for name, v in row["reference_method_tokens_per_s_per_gpu"].items() if f.is_num(v)]
    parts = [" ".join(tps) + " token/p/s"] if tps else []
    acc = row.get(row.get("accuracy_key") or "")
    if f.is_num(acc):
        name = str(row["accuracy_label"]).removesuffix(" acc")
        parts.append(f"{name} {f.acc(acc)}" + (" (generated questions)" if row["eval_generated"] else ""))
    return "; ".join(parts) or "-"


def _inputs(row: dict[str, Any]) -> str:
    comp = row["comparable"]
    if not isinstance(comp, dict):
        return "?"
    return "comparable with the reference" if comp.get("comparable") else f"not comparable: {comp.get('reason') or '?'}"


def lines(rows: list[dict[str, Any]]) -> list[Text]:
    """A header and one line per run, columns aligned; a line is never cut (the terminal may wrap it)."""
    head = ("run", "config", "started", "stages", "figures", "inputs")
    cells: list[tuple[str, str, str, Text, str, str]] = []
    for r in rows:
        if r["error"]:
            cells.append((r["run_id"], r["config"] or "?", _when(r["started"]), Text("damaged", style="red"), "-",
                          r["error"]))  # fmt: skip
        else:
            cells.append((r["run_id"], r["config"] or "?", _when(r["started"]), _stages_text(r), _figures(r), _inputs(r)))
    rows_t = [[Text(h, style="bold") for h in head], *([c if isinstance(c, Text) else Text(c) for c in r] for r in cells)]
    widths = [max(len(r[i].plain) for r in rows_t) for i in range(len(head))]
    out = []
    for row in rows_t:
        line = Text()
        for i, cell in enumerate(row):
            line.append_text(cell)
            line.append(" " * (widths[i] - len(cell.plain) + 2))
        line.rstrip()
        out.append(line)
    return out


def ls(
    results: Path = typer.Option(Path("runs"), "--results", help="Where run directories are."),
    json_out: bool = typer.Option(False, "--json", help="Print the runs as a JSON list (same content)."),
) -> None:
    """List the runs under --results, newest first: id, config, stages and their states, start, headline figures.

    Read-only: nothing is written (`kit report RUN` writes a run's summary.json and plots). A damaged run is
    listed with the reason.

    Examples:

      kit ls

      kit ls --results /shared/runs --json
    """
    console = Console()
    if not results.is_dir():
        Console(stderr=True).print(f"[bold red]error:[/] --results {escape(str(results))}: no such directory; pass "
                                   "the directory `kit run --results` wrote to", soft_wrap=True)  # fmt: skip
        raise typer.Exit(2)
    rows = list_runs(results)
    if json_out:
        typer.echo(json.dumps(rows, indent=2, default=str))
        return
    if not rows:
        console.print(f"no runs under {escape(str(results))}: start one with `kit run`", soft_wrap=True)
        return
    for line in lines(rows):
        console.print(line, soft_wrap=True, highlight=False)

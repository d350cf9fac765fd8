"""`kit data verify` and `kit data fix` (kit/data/audit.py, kit/data/fix.py): the report, progress and exit codes.

Both ask the case (`--case`, else the only one registered) where its data lies (kit/case/data.py).

Exit codes: 0 nothing a run would stop on (warnings allowed), 1 something a run would stop on, 2 bad usage,
130/143/129 interrupted by SIGINT/SIGTERM/SIGHUP (one line says so; no decoding worker outlives the command).
"""

from __future__ import annotations

import json
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape

from kit import case as cases
from kit.case import data as case_data
from kit.data import fix as fix_mod
from kit.data import manifest as manifest_mod
from kit.data.audit import Layout, VerifyError
from kit.data.audit import verify as run_verify
from kit.data.progress import PhaseProgress
from kit.run.guard import Stop, exit_code

console = Console()
err = Console(stderr=True)
STYLE = {"fail": "bold red", "warn": "yellow", "info": "green"}
LABEL = {"fail": "FAIL", "warn": "warn", "info": "ok"}
SHOWN = 5


def _usage(message: str) -> None:
    err.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    raise typer.Exit(2)


def _layout(case: str | None, config: str | None, overrides: list[str] | None, data: Path):
    """The layout the case gives the config (default: the config `kit run` takes without --config), and the counts
    of a complete copy."""

    try:
        c = case_data.choose(case)
        cfg = cases.load_config(c, config or c.config.default_for(1, None), list(overrides or []))
        ref = case_data.reference(c)
    except (KeyError, ValueError) as e:  # UnknownCase, ConfigError, SourcesError
        _usage(str(e))
    return Layout.from_config(data, cfg, c), ref, cfg.name


def _interrupted(e: KeyboardInterrupt, progress: PhaseProgress, what: str) -> None:
    """One line saying which signal stopped the command and what it left, then exit 128 + the signal's number."""
    progress.close()
    name = str(e) if isinstance(e, Stop) else "SIGINT (Ctrl-C)"
    try:
        err.print(f"[yellow]interrupted[/] by {name}: {escape(what)}", soft_wrap=True, highlight=False)
    except OSError:
        pass  # the terminal or the pipe is gone (SIGHUP): the exit code still says it
    raise typer.Exit(exit_code(e, 130))


@contextmanager
def signals_as_interrupts() -> Iterator[None]:
    """SIGTERM and SIGHUP (`kill`, `timeout`, a closed terminal) raised as Ctrl-C is, as guard.Stop (a
    KeyboardInterrupt naming the signal), so the command stops its workers, says so and exits 128 + the signal.
    After SIGHUP a terminal is gone: output to it is dropped (a log file or a pipe still gets the line)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def raise_stop(signum: int, _frame: Any) -> None:
        if signum == signal.SIGHUP:
            for fd in (1, 2):
                try:
                    if os.isatty(fd):
                        os.dup2(os.open(os.devnull, os.O_WRONLY), fd)
                except OSError:
                    pass
        raise Stop(signum)

    old = {s: signal.signal(s, raise_stop) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _print_findings(findings: list[dict[str, Any]]) -> None:
    for f in findings:
        level = f["level"]
        console.print(f"[{STYLE[level]}]{LABEL[level]:<4}[/] [bold]{escape(f['what'])}[/]: {escape(f['detail'])}",
                      soft_wrap=True, highlight=False)
        for x in f["examples"][:SHOWN]:
            console.print(f"       {escape(x)}", soft_wrap=True, highlight=False)
        if len(f["examples"]) > SHOWN or f.get("files", 0) > len(f["examples"][:SHOWN]):
            more = max(f.get("files", 0), len(f["examples"]), f.get("count", 0)) - min(SHOWN, len(f["examples"]))
            if more > 0:
                console.print(f"       ... and {more:,} more (--json lists the first 20)", highlight=False)
        if f["fix"] and level != "info":
            console.print(f"       fix: {escape(f['fix'])}", soft_wrap=True, highlight=False)


def _summary(r: dict[str, Any]) -> None:
    im = r["images"]
    console.print(
        f"images: {im['unique']:,} unique, {im['checked']:,} checked now ({im['decoded']:,} decoded on {im['jobs']} "
        f"process(es) in {im['decode_wall_s']:.1f} s), {im['cached']:,} unchanged since the last verify",
        soft_wrap=True, highlight=False,
    )  # fmt: skip
    m = r["manifest"]
    if m["written"]:
        console.print(f"manifest: {escape(m['path'])} (digest {m['digest'][:16]})", soft_wrap=True, highlight=False)


def verify(
    data: Path = typer.Option(..., "--data", help="The data root (the layout `kit run --data` reads)."),
    models: Path = typer.Option(None, "--models", help="The checkpoint root (the layout `kit run --models` reads)."),
    eval_data: Path = typer.Option(None, "--eval-data", help="The eval set, e.g. MMMU validation (default: its folder under DATA, e.g. DATA/MMMU, when present)."),
    jobs: int = typer.Option(0, "--jobs", "-j", help="Processes that decode images (default: every core)."),
    full: bool = typer.Option(False, "--full", help="Decode every image again, even those unchanged since the last verify."),
    as_json: bool = typer.Option(False, "--json", help="Print the whole result as JSON."),
    case: str = typer.Option(None, "--case", help="The case whose data this is (default: the only case registered)."),
    config: str = typer.Option(None, "--config", help="The config whose data and model paths apply (default: the case's default, e.g. A800x1x8)."),
    set_: list[str] = typer.Option(None, "--set", metavar="KEY=VALUE", help="Override a config value, as `kit run`."),
) -> None:
    """Check a copy of the data: every record, every image decoded, the folders, the weights, the eval set.

    Writes the data manifest (kit-data-manifest.json) into the data directory. Exit 0 when a run could use the
    data (warnings allowed), 1 when it would stop on something found, 2 for bad usage, 130/143/129 when
    interrupted (Ctrl-C, SIGTERM, SIGHUP).

    Examples:

      kit data verify --data /data/llava --models /models

      kit data verify --data /data/llava --set data.finetune_json=llava_v1_5_mix665k.filtered.json
    """

    if jobs < 0:
        _usage(f"--jobs {jobs}: must be at least 1 (or 0: every core)")
    layout, ref, config = _layout(case, config, set_, data)
    if models is not None and not models.is_dir():
        _usage(f"--models {models}: no such directory")
    progress = PhaseProgress(err, quiet=as_json)
    try:
        with signals_as_interrupts():
            v = run_verify(layout, ref, models=models, eval_data=eval_data, jobs=jobs or None, full=full,
                           progress=progress)  # fmt: skip
    except VerifyError as e:
        _usage(str(e))
    except KeyboardInterrupt as e:  # Ctrl-C, SIGTERM, SIGHUP: every decoding worker is stopped by now
        _interrupted(e, progress, "verify stopped, and every worker with it; no manifest was written. The record "
                     "files' checks are kept: `kit data verify` again goes on from the images")  # fmt: skip
    finally:
        progress.close()
    r = v.result
    if as_json:
        print(json.dumps(r, indent=2))
        raise typer.Exit(0 if v.ok else 1)
    console.print(f"[bold]kit data verify[/] {escape(str(data))} (case {escape(layout.case)}, config "
                  f"{escape(config)})", highlight=False)  # fmt: skip
    _print_findings(r["findings"])
    _summary(r)
    fails = sum(f["level"] == "fail" for f in r["findings"])
    if v.ok:
        console.print("[green]verified[/]: a run can use this data", highlight=False)
    else:
        console.print(f"[bold red]{fails} problem(s)[/] a run would stop on; each line above says what to do",
                      highlight=False)
    raise typer.Exit(0 if v.ok else 1)


def fix(
    data: Path = typer.Option(..., "--data", help="The data root (the layout `kit run --data` reads)."),
    write_filtered: bool = typer.Option(
        False, "--write-filtered", help="Write <stem>.filtered.json beside each record file, without the unusable records."
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Say what would change; change nothing."),
    jobs: int = typer.Option(0, "--jobs", "-j", help="Processes that decode images (default: every core)."),
    as_json: bool = typer.Option(False, "--json", help="Print the whole result as JSON."),
    case: str = typer.Option(None, "--case", help="The case whose data this is (default: the only case registered)."),
    config: str = typer.Option(None, "--config", help="The config whose data paths apply (default: the case's default, e.g. A800x1x8)."),
    set_: list[str] = typer.Option(None, "--set", metavar="KEY=VALUE", help="Override a config value, as `kit run`."),
) -> None:
    """Rewrite GIF/PNG images named .jpg as JPEG (originals kept under DATA/.kit-data/originals), list the records
    that still cannot be used, and with --write-filtered write a record file without them beside the original.

    Exit 0 when the data is usable afterwards (or a filtered file was written for what is not), 1 otherwise.

    Examples:

      kit data fix --data /data/llava --dry-run

      kit data fix --data /data/llava --write-filtered
    """

    if jobs < 0:
        _usage(f"--jobs {jobs}: must be at least 1 (or 0: every core)")
    layout, ref, config = _layout(case, config, set_, data)
    models = None
    try:
        old = manifest_mod.read(data) if data.is_dir() else None
    except manifest_mod.ManifestError:
        old = None
    if old and isinstance(old.get("weights"), dict) and Path(old["weights"].get("root", "")).is_dir():
        models = Path(old["weights"]["root"])  # the manifest written after the fix keeps its weights checked
    progress = PhaseProgress(err, quiet=as_json)

    def again(write_state: bool):
        return run_verify(layout, ref, models=models, jobs=jobs or None, progress=progress,
                          write_state=write_state)  # fmt: skip

    try:
        with signals_as_interrupts():
            r = fix_mod.fix(layout, again, write_filtered_files=write_filtered, dry_run=dry_run, progress=progress)
    except (VerifyError, fix_mod.FixError) as e:
        _usage(str(e))
    except KeyboardInterrupt as e:
        _interrupted(e, progress, "fix stopped, and every worker with it. No file is half-written: an image in flight "
                     "is completed or redone by the next `kit data fix` (its journal is in .kit-data), and no "
                     "filtered record file was left unfinished")  # fmt: skip
    finally:
        progress.close()
    usable = all(not rows for rows in r["unusable"].values())
    covered = all(not rows or stage in r["filtered"] for stage, rows in r["unusable"].items())
    code = 0 if usable or (write_filtered and covered) else 1
    if as_json:
        print(json.dumps({k: v for k, v in r.items() if k != "verification"} | {"exit": code}, indent=2))
        raise typer.Exit(code)
    verb = "would " if dry_run else ""
    console.print(f"[bold]kit data fix[/] {escape(str(data))}" + (" (dry run: nothing changes)" if dry_run else ""),
                  highlight=False)
    for key in r["recovered"]:
        console.print(f"completed an interrupted fix: {escape(key)}", highlight=False)
    for a in r["actions"]:
        if a["error"]:
            console.print(f"[bold red]cannot fix[/] {escape(a['path'])}: {escape(a['error'])}", soft_wrap=True)
        elif a["kind"] == "rewrite":
            kept = f"; original kept as {a['original_kept']}" if a["original_kept"] else ""
            console.print(f"{verb}rewrite {escape(a['path'])}: {a['format']} bytes under a .jpg name -> JPEG"
                          f"{escape(kept)}", soft_wrap=True, highlight=False)
        else:
            console.print(f"{verb}write {escape(a['path'])} as JPEG from {escape(a['from'])} (left as it is)",
                          soft_wrap=True, highlight=False)
    if not r["actions"]:
        console.print("no image to rewrite", highlight=False)
    for stage, rows in r["unusable"].items():
        if not rows:
            continue
        counts: dict[str, int] = {}
        for row in rows:
            counts[row["reason"]] = counts.get(row["reason"], 0) + 1
        console.print(f"[bold red]{stage}[/]: {len(rows):,} record(s) cannot be used: "
                      + ", ".join(f"{k} {n:,}" for k, n in sorted(counts.items())), highlight=False)
        for row in rows[:20]:
            console.print(f"       record #{row['index']} (id {row['id']!r}): {escape(row['reason'])}: "
                          f"{escape(row['detail'])}", soft_wrap=True, highlight=False)
        if len(rows) > 20:
            console.print(f"       ... and {len(rows) - 20:,} more (--json lists them all)", highlight=False)
    for f in r["filtered"].values():
        console.print(f"{verb}write {escape(f['file'])}: {f['records']:,} records ({f['dropped']:,} dropped; "
                      f"why in {escape(f['sidecar'])})", soft_wrap=True, highlight=False)
        console.print(f"       a run uses it with: {escape(f['set'])}", soft_wrap=True, highlight=False)
    if not write_filtered and not usable:
        console.print(f"to train without these records: kit data fix --data {escape(str(data))} --write-filtered",
                      soft_wrap=True, highlight=False)
    raise typer.Exit(code)

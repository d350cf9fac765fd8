"""Run directories: a new one for every run, raw facts never overwritten, every file written atomically."""

from __future__ import annotations

import json
import os
import secrets
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

# submitted: a Slurm job was queued for the run; allocated: a job (or the allocation kit runs in) got its nodes.
RUN_STATES = ("created", "submitted", "allocated", "launched", "resumed", "finished", "failed", "interrupted")


class RunDirError(RuntimeError):
    """A run directory is missing, incomplete or would be overwritten."""


def new_run_dir(results: Path, case: str, config: str) -> Path:
    """Create `results/<id>` with an exclusive mkdir, so two runs can never share (or clobber) a directory."""
    results.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    for _ in range(100):
        run = results / f"{stamp}-{case}-{config}-{secrets.token_hex(2)}"
        try:
            run.mkdir()
            return run
        except FileExistsError:
            continue
    raise RunDirError(f"could not create a new run directory under {results}")  # pragma: no cover


def write_json(path: Path, obj: Any, *, replace: bool = False) -> None:
    """Write JSON atomically (temporary file, then rename). Refuse to overwrite unless the file is derived."""
    if path.exists() and not replace:
        raise RunDirError(f"{path} exists: raw facts of a run are never overwritten")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, default=str)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise RunDirError(f"{path} is missing: is {path.parent} a run directory made by `kit run`?") from None
    except json.JSONDecodeError as e:
        raise RunDirError(f"{path} is not valid JSON ({e}); the file is damaged") from None


def append_status(run: Path, state: str, stage: str | None = None, detail: Any = None) -> None:
    """One line per state change, appended and flushed: the history of a run is never rewritten."""
    assert state in RUN_STATES, state
    now = time.time()
    row = {
        "time": datetime.fromtimestamp(now, timezone.utc).isoformat(timespec="milliseconds"),
        "t": now,
        "stage": stage,
        "state": state,
        "detail": detail,
    }
    try:
        with open(run / "status.jsonl", "a") as f:
            f.write(json.dumps(row, default=str) + "\n")
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:  # a full disk: the state is not recorded, and the run reads as stopped (kit resume continues)
        import sys

        print(f"kit: cannot record state {state!r} in {run / 'status.jsonl'}: {e}", file=sys.stderr)


def read_status(run: Path) -> list[dict[str, Any]]:
    """Every readable line of status.jsonl, oldest first (a line cut short by a crash is skipped)."""
    path = run / "status.jsonl"
    rows = []
    for line in path.read_text(errors="replace").splitlines() if path.exists() else []:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def stage_states(run: Path) -> dict[str | None, str]:
    """The last state of every stage (key None: the run itself).

    The run counts as finished only when every stage that has a line finished too: a run line `finished` beside a
    stage that was launched and never ended (its kit killed between the two lines, a stage the line forgot) reads
    `stopped`, so `kit resume` continues the stage instead of calling the run done.
    """
    states: dict[str | None, str] = {}
    path = run / "status.jsonl"
    if not path.exists():
        return states
    for line in path.read_text(errors="replace").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a crash
        if isinstance(row, dict) and isinstance(row.get("state"), str):
            states[row.get("stage")] = row["state"]
    if states.get(None) == "finished" and any(v != "finished" for k, v in states.items() if k is not None):
        states[None] = "stopped"
    return states


# What `kit resume` may correct (a Python, data or weights that moved): recorded in the "resumed" line's detail.
RESUME_OVERRIDES = ("python", "data", "models")


def effective_request(run: Path) -> dict[str, Any]:
    """run.json with every resume's corrections applied in order: run.json is written once and never changed, so
    `kit resume --python/--data/--models` are recorded in the "resumed" lines of status.jsonl and overlaid here."""
    meta = read_json(run / "run.json")
    path = run / "status.jsonl"
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a crash
        if row.get("state") == "resumed" and isinstance(row.get("detail"), dict):
            meta.update({k: v for k, v in row["detail"].items() if k in RESUME_OVERRIDES})
    return meta


def find_run(ref: str | None, results: Path) -> Path:
    """A run directory from a path, an id under `results`, or (None) the newest run there.

    A ref that is no run says what it is instead (a file, a results folder with runs in it, an empty folder) and
    what to pass."""
    if ref:
        cands = list(dict.fromkeys([Path(ref), results / ref]))  # an absolute ref is the same path both ways
        for cand in cands:
            if (cand / "run.json").is_file():
                return cand
        there = [p for p in cands if p.exists() or p.is_symlink()]
        if not there:
            raise RunDirError(f"no run {ref!r}: " + ", and ".join(f"{p} does not exist" for p in cands))
        raise RunDirError(f"no run {ref!r}: " + "; ".join(_not_a_run(p) for p in there))
    runs = sorted((p for p in results.glob("*/run.json")), key=lambda p: p.stat().st_mtime)
    if not runs:
        raise RunDirError(f"no runs under {results}: start one with `kit run`, or pass --results DIR")
    return runs[-1].parent


def _not_a_run(p: Path) -> str:
    """What `p` is, since it is not a run directory, and what to pass instead."""
    if p.is_dir():
        runs = sorted((q.parent for q in p.glob("*/run.json")), key=lambda q: q.stat().st_mtime, reverse=True)
        if runs:
            shown = ", ".join(str(q) for q in runs[:3]) + (f" (and {len(runs) - 3} more)" if len(runs) > 3 else "")
            return (f"{p} is a results folder holding {len(runs)} run(s), not a run: name one, e.g. {shown}; "
                    f"`kit ls --results {p}` lists them all")  # fmt: skip
        return f"{p} has no run.json: it is not a run directory made by `kit run` (`kit ls --results DIR` lists runs)"
    if not p.exists():
        return f"{p} is a broken symlink"
    if p.name == "run.json" or (p.parent / "run.json").is_file():
        return f"{p} is a file in the run directory {p.parent}: pass the directory, {p.parent}"
    if p.name.endswith((".tar.gz", ".tgz")):
        return (f"{p} is a file, not a run directory; a submission tarball goes to `kit verify` or `kit compare`, "
                "a run to `kit report` as its directory")  # fmt: skip
    return f"{p} is a file, not a run directory: pass the folder that holds run.json (`kit ls` lists the runs)"

"""The run directory, the contract between the case and the host: one model reads and writes every file of it.

`RunDir` is the only place that knows the files' names and shapes (docs/run-directory.md). Raw facts are written
once (run.json, environment.json, inputs.json, config.toml) or only appended to (status.jsonl, each stage's logs),
every whole file atomically; derived files (summary.json, plots) are rewritten from the raw facts at will. Reads
are lenient where a report must show what can be shown (`request()`, `config()`), strict where a command cannot go
on (`check()`), and always name the file and the reason (RunDirError).
"""

from __future__ import annotations

import json
import secrets
import sys
import time
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path
from typing import Any

from kit import case as cases
from kit import io
from kit.errors import KitError
from kit.run.events import RunStatus, StageEvents, load_stage, read_status

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

# submitted: a Slurm job was queued for the run; allocated: a job (or the allocation kit runs in) got its nodes.
RUN_STATES = ("created", "submitted", "allocated", "launched", "resumed", "finished", "failed", "interrupted")
# What `kit resume` may correct (a Python, data or weights that moved): recorded in the "resumed" line's detail.
RESUME_OVERRIDES = ("python", "data", "models")

RUN_JSON, CONFIG, STATUS = "run.json", "config.toml", "status.jsonl"
ENVIRONMENT, INPUTS, SUMMARY = "environment.json", "inputs.json", "summary.json"
EVENTS, MONITOR = "events.log", "monitor.jsonl"


class RunDirError(KitError, RuntimeError):
    """A run directory is missing, damaged, or would be overwritten: the message names the file and the reason."""


_RAW_FACTS_KEPT = "the raw facts (events.log, status.jsonl) are not touched"


class RunDir:
    """One run directory. Reads are cached for the object's life: make a new RunDir to see later writes."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # ---- making one ----

    @classmethod
    def create(cls, results: Path, case: str, config: str) -> RunDir:
        """`results/<id>` by an exclusive mkdir, so two runs can never share (or clobber) a directory."""
        results.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        for _ in range(100):
            run = results / f"{stamp}-{case}-{config}-{secrets.token_hex(2)}"
            try:
                run.mkdir()
                return cls(run)
            except FileExistsError:
                continue
        raise RunDirError(f"could not create a new run directory under {results}")  # pragma: no cover

    @classmethod
    def find(cls, ref: str | None, results: Path) -> RunDir:
        return cls(find_run(ref, results))

    # ---- where things are ----

    @property
    def id(self) -> str:
        return str(self.request().get("run_id") or self.path.name)

    def file(self, name: str) -> Path:
        return self.path / name

    def stage_dir(self, stage: str) -> Path:
        return self.path / stage

    def events_path(self, stage: str) -> Path:
        return self.path / stage / EVENTS

    def monitor_path(self, stage: str) -> Path:
        return self.path / stage / MONITOR

    @property
    def config_file(self) -> Path:
        return self.path / CONFIG

    def exists(self) -> bool:
        return (self.path / RUN_JSON).is_file()

    # ---- raw facts, read ----

    @cached_property
    def _request(self) -> dict[str, Any]:
        data = io.read_json(self.path / RUN_JSON)
        if not isinstance(data, dict):
            return {}
        # Fields a case renamed since older runs were written (its `request_aliases`: old name -> new name).

        try:
            aliases = getattr(cases.get(str(data.get("case"))), "request_aliases", {})
        except cases.UnknownCase:
            aliases = {}
        for old, new in aliases.items():
            if old in data and new not in data:
                data[new] = data.pop(old)
        return data

    def request(self) -> dict[str, Any]:
        """run.json as written (fields of older runs under their current names), or {} when missing or damaged
        (`check()` is the strict reader)."""
        return dict(self._request)

    def effective_request(self) -> dict[str, Any]:
        """run.json with every resume's corrections applied in order: run.json is written once and never changed, so
        `kit resume --python/--data/--models` are recorded in the "resumed" lines of status.jsonl and overlaid here."""
        meta = self.request()
        if not meta:
            raise RunDirError(f"{self.path / RUN_JSON} is missing or damaged: is {self.path} a run directory made by "
                              "`kit run`?")  # fmt: skip
        for row in self.status_rows():
            if row.get("state") == "resumed" and isinstance(row.get("detail"), dict):
                meta.update({k: v for k, v in row["detail"].items() if k in RESUME_OVERRIDES})
        return meta

    @cached_property
    def _config(self) -> tuple[dict[str, Any], list[str]]:
        info = self._request
        c = self.path / CONFIG
        if c.is_file():
            try:
                cfg = tomllib.loads(c.read_text(errors="replace"))
                cfg.setdefault("name", (info.get("config") or {}).get("name") if isinstance(info.get("config"), dict)
                               else info.get("config_name"))  # fmt: skip
                return cfg, []
            except (OSError, tomllib.TOMLDecodeError) as e:
                if isinstance(info.get("config"), dict) and len(info["config"]) > 2:
                    return info["config"], [f"config.toml cannot be read ({e}): the config is read from run.json"]
                return {}, [f"config.toml cannot be read ({e}): the config is unknown"]
        if isinstance(info.get("config"), dict) and len(info["config"]) > 2:  # older runs kept it in run.json too
            return info["config"], []
        return {}, ["config.toml is missing: the run's config is unknown"]

    def config(self) -> dict[str, Any]:
        """The run's resolved config: config.toml, the one copy every process of the run read."""
        return self._config[0]

    def config_warnings(self) -> list[str]:
        return list(self._config[1])

    @cached_property
    def _environment(self) -> dict[str, Any]:
        data = io.read_json(self.path / ENVIRONMENT)
        return data if isinstance(data, dict) else {}

    def environment(self) -> dict[str, Any]:
        return self._environment

    @cached_property
    def _inputs(self) -> dict[str, Any] | None:
        data = io.read_json(self.path / INPUTS)
        return data if isinstance(data, dict) else None

    def inputs(self) -> dict[str, Any] | None:
        """inputs.json, or None when it is missing or damaged (`inputs_damaged()` tells which)."""
        return self._inputs

    def inputs_damaged(self) -> bool:
        return self._inputs is None and (self.path / INPUTS).exists()

    @cached_property
    def _status(self) -> RunStatus:
        return read_status(self.path)

    def status(self) -> RunStatus:
        return self._status

    def status_rows(self) -> list[dict[str, Any]]:
        """Every readable line of status.jsonl, oldest first (a line cut short by a crash is skipped)."""
        path = self.path / STATUS
        rows = []
        for line in path.read_text(errors="replace").splitlines() if path.exists() else []:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict):
                rows.append(row)
        return rows

    def stage_states(self) -> dict[str | None, str]:
        """The last state of every stage (key None: the run itself).

        The run counts as finished only when every stage that has a line finished too: a run line `finished` beside
        a stage that was launched and never ended (its kit killed between the two lines, a stage the line forgot)
        reads `stopped`, so `kit resume` continues the stage instead of calling the run done.
        """
        states: dict[str | None, str] = {}
        for row in self.status_rows():
            if isinstance(row.get("state"), str):
                states[row.get("stage")] = row["state"]
        if states.get(None) == "finished" and any(v != "finished" for k, v in states.items() if k is not None):
            states[None] = "stopped"
        return states

    def events(self, stage: str) -> StageEvents:
        """The stage's events.log, folded (kit/run/events.py); cached."""
        cache = self.__dict__.setdefault("_events", {})
        if stage not in cache:
            cache[stage] = load_stage(self.path / stage)
        return cache[stage]

    def stage_names(self) -> list[str]:
        """Stages in run.json order, then any other stage that has status lines or an events.log."""
        names: list[str] = []
        for s in self._request.get("stages") or []:  # names, or tables with a name
            n = s.get("name") if isinstance(s, dict) else s
            if isinstance(n, str) and n not in names:
                names.append(n)
        for n in [*self._status.stages, *sorted(p.parent.name for p in self.path.glob(f"*/{EVENTS}"))]:
            if n not in names:
                names.append(n)
        return names

    def check(self) -> None:
        """Raise RunDirError, naming the file and the reason, when nothing can be derived from this run directory:
        run.json unreadable or naming no case, the config lost, or status.jsonl with lines and not one readable."""
        p = self.path / RUN_JSON
        try:
            text = p.read_text(errors="replace")
        except OSError as e:
            raise RunDirError(f"{p} cannot be read ({e.strerror or e})") from None
        fix = f"restore it from a copy of the run (a submission keeps one); {_RAW_FACTS_KEPT}"
        if not text.strip():
            raise RunDirError(f"{p} is empty: the run's request (case, config, stages) is lost, so its rows cannot be "
                              f"named or set beside the reference; {fix}")  # fmt: skip
        try:
            data = json.loads(text)
        except ValueError as e:
            raise RunDirError(f"{p} is not valid JSON ({e}): the file is damaged; {fix}") from None
        if not isinstance(data, dict):
            raise RunDirError(f"{p} holds a JSON {type(data).__name__}, not an object: the file is damaged; {fix}")
        if not isinstance(data.get("case"), str):
            raise RunDirError(f"{p} names no case (key \"case\"): the reference rows cannot be found; {fix}")
        if not self.config():
            c = self.path / CONFIG
            why = "does not exist" if not c.is_file() else "is damaged"
            raise RunDirError(f"{c} {why} and {p} has no config table: the run's config is lost; {fix}")
        if self._status.unreadable:
            raise RunDirError(f"{self.path / STATUS} has {self._status.lines} line(s) and not one readable status "
                              "line: the stages' states and launch times are lost; restore it from a copy of the run")  # fmt: skip

    # ---- raw facts, written ----

    def _write_once(self, name: str, obj: Any) -> None:
        path = self.path / name
        if path.exists():
            raise RunDirError(f"{path} exists: raw facts of a run are never overwritten")
        io.write_json(path, obj)

    def write_request(self, request: dict[str, Any]) -> None:
        self._write_once(RUN_JSON, request)
        self.__dict__.pop("_request", None)

    def write_config(self, text: str) -> None:
        if self.config_file.exists():
            raise RunDirError(f"{self.config_file} exists: raw facts of a run are never overwritten")
        io.write_atomic(self.config_file, text)

    def write_environment(self, facts: dict[str, Any]) -> None:
        self._write_once(ENVIRONMENT, facts)

    def write_inputs(self, facts: dict[str, Any]) -> None:
        self._write_once(INPUTS, facts)

    def append_status(self, state: str, stage: str | None = None, detail: Any = None) -> None:
        """One line per state change, appended and flushed: the history of a run is never rewritten."""
        if state not in RUN_STATES:
            raise ValueError(f"unknown run state {state!r}")
        now = time.time()
        row = {"time": datetime.fromtimestamp(now, timezone.utc).isoformat(timespec="milliseconds"), "t": now,
               "stage": stage, "state": state, "detail": detail}  # fmt: skip
        try:
            io.append_line(self.path / STATUS, json.dumps(row, default=str))
        except OSError as e:  # a full disk: the state is not recorded, and the run reads as stopped (resume continues)
            print(f"kit: cannot record state {state!r} in {self.path / STATUS}: {e}", file=sys.stderr)
        self.__dict__.pop("_status", None)

    def write_summary(self, summary: dict[str, Any]) -> None:
        """summary.json: derived, so it may be replaced."""
        io.write_json(self.path / SUMMARY, summary)


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

"""A run's life, written once for every launcher: create the run directory, then run its stages in order.

`start()` makes a new run: the launcher plans (engines reached, image pinned, a job script written), the run
directory is created with its request (run.json), config (config.toml) and first status line, and then either
the stages run here (`execute()`) or the launcher takes over (a scheduler's job runs them). `execute()` also
continues a run (`kit resume`): it holds the run's lock, turns SIGTERM and SIGHUP into Ctrl-C, keeps the heartbeat
the ranks watch, probes the environment once, generates synthetic data once, records the inputs once, and runs
each stage that has not finished through the launcher's stage interface (kit/launchers/base.py `run_stage`).

Nothing here names a launcher or a case: both are asked (kit/launchers `launcher_for`, kit/case).
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.panel import Panel
from rich.text import Text

from kit import __version__, vendors
from kit import case as cases
from kit.checks import system
from kit.checks.system import human
from kit.data import manifest as data_manifest
from kit.errors import (
    EXIT_ENVIRONMENT,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    EnvironmentProblem,
    UsageError,
)
from kit.image import stacks
from kit.io import sha256_file
from kit.launchers import launcher_class, run_stage
from kit.launchers.base import StageResult, StartFailed, tail_lines
from kit.run import guard
from kit.run.dir import RunDir
from kit.run.hostfacts import host_facts
from kit.run.inputs import collect_inputs, same_inputs
from kit.run.progress import StageProgress
from kit.run.request import RunRequest, Stop, python_problem
from kit.run.revision import source_revision
from kit.vendors.base import RUNTIME_ENV

DISK_LOW_BYTES = 64 << 20
NO_SPACE = "No space left on device"


# ---- what this host must offer before anything is created ----


def device_problem(req: RunRequest, cfg: Any) -> str | None:
    """An accelerator config on this host's devices (the launcher runs the ranks here): the vendor that owns the
    config's device must see --gpus of them, or the run would start building the model in host memory. None when
    it does (or does not apply)."""
    if cfg.device == "cpu" or not launcher_class(req).ranks_here(req):
        return None  # other hosts' devices: `kit check-host --hosts` (or --launcher slurm) counts them
    vendor = vendors.for_config(cfg.device)
    probe = vendor.probe()
    found = len(probe.devices)
    if found >= req.gpus:
        return None
    word = vendor.device_word
    per = f"{req.gpus} {word}{'s' if req.gpus != 1 else ''} per node ({cfg.device})"
    scale = "" if req.gpus == cfg.gpus_per_node else f" at --gpus {req.gpus}"
    if not probe.available:
        has = f"none: {probe.reason}"
    elif not found:
        has = f"none ({vendor.title}'s library lists no {word})"
    else:
        names = ", ".join(sorted({d.name for d in probe.devices}))
        has = f"{found} ({names})"
    fix = (f"run on a host with {vendor.title} {word}s, or use --config tiny on a CPU" if not found
           else f"run on a host with {req.gpus}, or pass --gpus {found} (or a config for {found}: kit configs)")  # fmt: skip
    return f"config {cfg.name}{scale} needs {per}; this host has {has} — {fix}"


def disk_need(req: RunRequest, cfg: Any) -> tuple[int, int, str] | None:
    """(full, minimum, how) under --results, or None when the run writes nothing large: the case knows its sizes."""
    return cases.get(req.case).data.disk_need(cfg, req.to_dict())


def record_check(req: RunRequest, cfg: Any, console: Console) -> None:
    """The record files of the training stages that will run, through the case's own validator (standard library
    only): a truncated file or a bad record fails here in seconds (UsageError, exit 2), not after the start-up."""
    if req.synthetic or not req.data:
        return
    case = cases.get(req.case)
    limit = cfg.data.skip_bad_records
    hint = "fix or remove the record(s), or set data.skip_bad_records (--set data.skip_bad_records=N) to skip a counted few"
    for stage in (s for s in req.stages if s in cases.training(case)):
        path = Path(req.data) / case.data.record_file(cfg, stage)
        template = cfg.stage(stage).template
        if not path.is_file():
            raise UsageError(f"--data {req.data}: the {stage} records {path} are missing; download them there")
        what = f"checking the {stage} records: {path} ({human(path.stat().st_size)})"
        if not console.is_terminal:  # a log: the spinner shows nothing there
            console.print(Text(what, style="dim"))
        with console.status(what):
            try:
                with open(path, encoding="utf-8") as f:
                    records = json.load(f)
            except (ValueError, OSError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
                raise UsageError(f"{path}: not valid JSON ({e}); the file may be truncated: download it again") from None
            if not isinstance(records, list):
                raise UsageError(f"{path}: expected a JSON list of records, got {type(records).__name__}")
            bad, first = 0, []  # the count, and the first three named
            for i, rec in enumerate(records):
                if why := case.data.record_problem(rec, template):
                    bad += 1
                    if len(first) < 3:
                        rid = repr(rec["id"]) if isinstance(rec, dict) and "id" in rec else "none"
                        first.append(f"record #{i} (id {rid}): {why}")
            n = len(records)
            del records
        listed = "; ".join(first) + (f"; and {bad - 3:,} more" if bad > 3 else "")
        if bad > limit:
            over = "" if limit == 0 else f", more than data.skip_bad_records = {limit}"
            raise UsageError(f"{path}: {bad:,} of {n:,} records cannot be used ({template} template{over}): "
                             f"{listed}; {hint}")  # fmt: skip
        if bad:
            console.print(Text(f"warning: {path}: {bad:,} of {n:,} records will be skipped (data.skip_bad_records "
                               f"= {limit}): {listed}", style="yellow"))  # fmt: skip


def manifest_check(req: RunRequest, cfg: Any, console: Console) -> None:
    """What the last `kit data verify` found (the data manifest: a few stats, no decoding). An image that is missing,
    empty or does not decode stops a run when its record is drawn, hours in: more of them among the records this
    run reads than data.skip_bad_records tolerates is a UsageError now. No manifest, or one older than the record
    files, is a warning: the images are then checked only as they are drawn."""
    case = cases.get(req.case)
    trains = [s for s in req.stages if s in cases.training(case)]
    if req.synthetic or not req.data or not trains:
        return
    root = Path(req.data)
    verify_cmd = f"kit data verify --data {root}"

    def warn(message: str) -> None:
        console.print(Text(f"warning: {message}", style="yellow"))

    try:
        m = data_manifest.read(root)
    except data_manifest.ManifestError as e:
        return warn(str(e))
    if m is None:
        return warn(f"{root} has no {data_manifest.MANIFEST_NAME}: its images have not been verified, so a missing or "
                    f"corrupt one stops the run when it is drawn, and a submission needs a verified copy; `{verify_cmd}` "
                    "checks every image")  # fmt: skip
    if stale := data_manifest.stale(root, m):
        return warn(f"{', '.join(stale)} changed since `kit data verify` ({m.get('written', '?')}): run `{verify_cmd}` "
                    "again (the run records the manifest as stale)")  # fmt: skip
    problems = (m.get("images") or {}).get("problems") or {}
    for stage in trains:
        want = case.data.record_file(cfg, stage)
        entry = (m.get("stages") or {}).get(stage) or {}
        if entry.get("file") != want:
            warn(f"the data manifest describes the {stage} records {entry.get('file')!r}, not {want!r}: run "
                 f"`{verify_cmd} --set {case.data.record_key(stage)}={want}`")  # fmt: skip
            continue
        found = {kind: sum(n for src, n in (p.get("by_source") or {}).items() if case.data.source_stage(src) == stage)
                 for kind, p in problems.items() if kind in ("missing", "empty", "unreadable")}  # fmt: skip
        bad = sum(found.values())
        if bad > cfg.data.skip_bad_records:
            listed = ", ".join(f"{n:,} {kind}" for kind, n in sorted(found.items()) if n)
            raise UsageError(
                f"{root}: `kit data verify` ({m.get('written', '?')}) found {bad:,} image(s) named by the {stage} "
                f"records {want} that cannot be used ({listed}): the run would stop when it draws the first; run "
                f"`kit data fix --data {root} --write-filtered` and pass the filtered file (--set "
                f"{case.data.record_key(stage)}=...), or set data.skip_bad_records (--set data.skip_bad_records=N)"
            )  # fmt: skip


def preflight(req: RunRequest, cfg: Any, console: Console, dry_run: bool = False) -> list[Stop]:
    """What this host must offer before anything is created: the devices, the disk under --results, well-formed
    records, usable images. Raises EnvironmentProblem (exit 3) or UsageError (exit 2); a dry run gets every check
    that would stop a launch back instead, in the order a launch meets them."""
    stops = []
    if problem := device_problem(req, cfg):
        stops.append(problem)
    if need := disk_need(req, cfg):
        full, minimum, how = need
        where, free = system.free_bytes(req.results)
        if free < minimum:
            stops.append(f"--results {req.results}: {human(free)} free at {where}, but the run needs at least "
                         f"{human(minimum)} for one checkpoint and the model (a whole run about {human(full)}: {how}); "
                         "free space there, or pass --results DIR on a larger disk")  # fmt: skip
        elif free < full:
            console.print(Text(f"warning: {human(free)} free at {where}; a whole run needs about {human(full)} "
                               f"({how}): a long run may stop at a checkpoint (free space, then kit resume)",
                               style="yellow"))  # fmt: skip
    if not dry_run:
        if stops:
            raise EnvironmentProblem("\n".join(stops))  # each its own line: "error: " on the first
        record_check(req, cfg, console)
        manifest_check(req, cfg, console)
        return []
    found = [Stop(EXIT_ENVIRONMENT, problem) for problem in stops]
    case = cases.get(req.case)
    if req.data and Path(req.data).is_dir():  # a missing --data is already among the dry run's stops
        readable = []
        for stage in (s for s in req.stages if s in cases.training(case)):  # each stage's records, not the first's
            try:
                record_check(_with_stages(req, [stage]), cfg, console)
                readable.append(stage)
            except UsageError as e:
                found.append(Stop(EXIT_USAGE, str(e)))
        try:  # the manifest's word on the images of the records that can be read
            if readable:
                manifest_check(_with_stages(req, readable), cfg, console)
        except UsageError as e:
            found.append(Stop(EXIT_USAGE, str(e)))
    return found


def _with_stages(req: RunRequest, stages: list[str]) -> RunRequest:
    from dataclasses import replace

    return replace(req, stages=stages)


# ---- a dry run ----


def stage_commands(req: RunRequest, cfg: Any, run: Path) -> dict[str, list[str]]:
    """Each stage's arguments for its case module, as a launch of this request would pass them."""
    case = cases.get(req.case)
    request = {**req.to_dict(), "config_file": str(run / "config.toml"),
               "synthetic_questions": case.synthetic_questions(cfg)}  # fmt: skip
    return {s: ["--stage", s, "--run-dir", str(run), *case.stage_args(s, request)] for s in req.stages}


def dry_run(req: RunRequest, cfg: Any, console: Console, stops: list[Stop] | None = None) -> int:
    """Print what `kit run` would do, then every check a launch would stop on; start nothing, write nothing.

    `stops` holds what the request's resolution found missing. Returns the code a launch would exit with: 0 when it
    would go, else the code of the first stop in the order a launch meets them (request, devices and disk, records,
    the launcher's own: engines, image stack, scheduler)."""
    stops = list(stops or [])
    console.print(f"[bold]dry run[/]: {req.case} config {req.config}, stages {', '.join(req.stages)}, "
                  f"{req.nodes} node(s) x {req.gpus}; results under {Path(req.results).resolve()}")  # fmt: skip
    run = Path(req.results).resolve() / "<run id>"
    cls = launcher_class(req)
    with cls.session(req):
        launcher, late = cls.prepare(req, cfg, dry=True)
        late = late + launcher.describe(req, cfg, console, stage_commands(req, cfg, run), run)
        stops += preflight(req, cfg, console, dry_run=True) + late
    return report_stops(stops, console)


def report_stops(stops: list[Stop], console: Console) -> int:
    """A dry run's verdict: each check a launch would stop on, once, with its exit code; the launch's own code."""
    unique: list[Stop] = []
    for s in stops:
        if all(s.message != u.message for u in unique):
            unique.append(s)
    for s in unique:
        console.print(Text(f"dry run: a launch would stop here (exit {s.code}): {s.message}", style="yellow"),
                      soft_wrap=True)  # fmt: skip
    if not unique:
        console.print(Text("dry run: the checks pass; a launch would go (exit 0)", style="green"))
        return EXIT_OK
    many = f"the first of these {len(unique)} checks" if len(unique) > 1 else "this check"
    console.print(Text(f"dry run: a launch would exit {unique[0].code} at {many}", style="yellow"))
    return unique[0].code


# ---- a new run ----


def run_record(run: RunDir, req: RunRequest, cfg: Any, **more: Any) -> dict[str, Any]:
    """run.json: written once, when the run is created. The resolved config lives in config.toml alone; run.json
    names it and holds its sha256."""

    return {
        "run_id": run.path.name,
        "created": time.time(),
        "kit_version": __version__,
        "kit_source": source_revision(),  # git commit and dirty flag, or the installed version
        **req.to_dict(),
        "config": cfg.name,
        "config_file": str(run.config_file.resolve()),
        "config_sha256": sha256_file(run.config_file),
        "seed": cfg.train.seed,
        **more,
    }


def start(req: RunRequest, cfg: Any, console: Console) -> tuple[Path, int]:
    """Create the run directory and run it; returns (run, exit code).

    The launcher plans first (a container launcher reaches the nodes' engines and pins the image), so an
    unreachable node or a missing image leaves no run directory behind (exit 3)."""
    preflight(req, cfg, console)  # devices, disk, the record files: before anything is created
    cls = launcher_class(req)
    with cls.session(req):
        launcher, _ = cls.prepare(req, cfg)
        launcher.check_before_create(req, cfg, console)
        run = RunDir.create(Path(req.results), req.case, req.config)
        try:  # a failure before the first stage leaves no run directory in state `created` behind
            run.write_config(cases.get(req.case).config.dumps(cfg))  # what every process of the run reads
            more = launcher.before_record(run, req, cfg, console)
            run.write_request(run_record(run, req, cfg, **more))
            run.append_status("created")
            console.print(f"run directory [bold]{run.path}[/]")
            for line in launcher.plan_lines():
                console.print(Text(line, style="dim"))
            code = launcher.launch(run, req, cfg, console)
        except BaseException:
            launcher.abandon()
            _abandon(run.path)
            raise
        if code is not None:  # the launcher took the stages elsewhere (a scheduler's job) and followed them
            return run.path, code
        try:
            return run.path, execute(run.path, console, launcher=launcher)
        except Exception:
            if RunDir(run.path).stage_states() == {None: "created"}:  # raised before anything was launched
                _abandon(run.path)
            raise


def _abandon(run: Path) -> None:
    """A new run that failed before its first stage: removed while it holds only start()'s bookkeeping (run.json,
    config.toml, status.jsonl, the lock); with anything more (a probe's log) it is marked failed, for the record."""
    import shutil

    ours = {"run.json", "config.toml", "status.jsonl", guard.LOCK_NAME, guard.HEARTBEAT_NAME}
    entries = list(run.iterdir()) if run.is_dir() else []
    if all(p.is_file() and (p.name in ours or p.name.endswith(".tmp") or p.name.startswith(".")) for p in entries):
        shutil.rmtree(run, ignore_errors=True)
    else:
        RunDir(run).append_status("failed", detail="failed before the first stage")


# ---- resuming ----


def resume_overrides(run: Path, python: str | None, data: Path | None, models: Path | None) -> dict[str, str]:
    """`kit resume`'s corrections (a Python, data or weights that moved), checked: UsageError when one cannot serve.
    They go into the "resumed" line of status.jsonl (run.json is never changed; RunDir.effective_request)."""
    import os


    meta = RunDir(run).effective_request()
    out: dict[str, str] = {}
    if python is not None:
        if RunRequest.from_dict(meta).launcher_name == "containers":
            raise UsageError(f"--python {python}: {run} runs in containers, whose image holds the Python; "
                             "--python is for --native runs")  # fmt: skip
        if problem := python_problem(python):
            raise UsageError(problem)
        out["python"] = os.path.abspath(python) if os.sep in python else python  # not resolved: a venv's link
    for name, p in (("data", data), ("models", models)):
        if p is None:
            continue
        if name == "data" and meta.get("synthetic"):
            raise UsageError(f"--data {p}: {run} trains on the synthetic data set it generated; --data is for runs "
                             "on real data")  # fmt: skip
        if not p.is_dir():
            raise UsageError(f"--{name} {p}: no such directory")
        out[name] = str(p.resolve())
    return out


# ---- the stages ----


def execute(run: Path, console: Console, resumed: bool = False, launcher: Any = None,
            overrides: dict | None = None, follow: bool = True) -> int:  # fmt: skip
    """Run (or continue) the stages of a run directory; finished stages are skipped.

    For its whole life it holds the run's lock (a second kit on the same run is refused: guard.RunBusy), handles
    SIGTERM and SIGHUP as Ctrl-C, and keeps the heartbeat the ranks watch, so none outlives this process. A launcher
    that runs stages elsewhere (a scheduler, outside its job) resubmits instead.
    """
    rd = RunDir(run)
    meta = {**rd.effective_request(), **(overrides or {})}  # run.json with the resumes' --python/--data/--models
    req = RunRequest.from_dict(meta)
    cls = launcher_class(req)
    if launcher is None and (code := cls.elsewhere(run, meta, console, overrides, follow)) is not None:
        return code  # the job, not this process, runs the stages (and takes the lock)
    with guard.RunLock(run):
        try:
            with guard.stop_on_signals(), guard.Heartbeat(run) as beat, cls.session(req):
                launcher = launcher or cls.reopen(run, meta)
                launcher.env["KIT_HEARTBEAT"] = str(beat.path)
                return _execute(rd, console, resumed, launcher, req, overrides)
        except KeyboardInterrupt as e:  # outside a stage (probe, data generation): nothing runs on, just mark it
            rd.append_status("interrupted", detail={"signal": str(e) or "SIGINT"})
            console.print(f"[yellow]interrupted[/]; continue with: kit resume {run}")
            return guard.exit_code(e, EXIT_INTERRUPTED)
        finally:
            if launcher is not None:
                launcher.close()


def disk_full_note(run: Path, req: RunRequest, cfg: Any, logs: list[Path]) -> str | None:
    """When a failure comes from a full disk, say which disk, how much is free and what the run needs."""
    where, free = system.free_bytes(run)
    said = any(NO_SPACE in tail_lines(p, 200) for p in logs if p.is_file())
    if free >= DISK_LOW_BYTES and not said:
        return None
    need = disk_need(req, cfg)
    if need is None:  # a run that writes nothing large still filled the disk: say what a whole run of the case needs
        need = system.results_need(cfg, req.synthetic, cases.get(req.case))
    need_text = f"; the whole run needs about {human(need[0])} ({need[2]})"
    return (f"no space left under {where}: {human(free)} free{need_text}. Free space there (or move --results), then "
            f"`kit resume {run}` continues the run")


def _leftovers(stage_dir: Path) -> None:
    """Temporary files a rank could not finish writing (a full disk): removed, so no partial file remains."""
    for p in stage_dir.glob("failure-rank*.tmp"):
        p.unlink(missing_ok=True)


def score(run: Path, case: Any) -> str | None:
    """Score the eval stage's raw responses on the host (the case's scorer); None, or what went wrong."""
    scorer = case.scorer
    responses = run / scorer.responses
    try:
        result = scorer.score_file(responses)
        scorer.write(run / scorer.scores, result, protect=(responses,))
    except (scorer.error, OSError) as e:
        return f"scoring {responses} failed: {e}"
    return None


def _execute(rd: RunDir, console: Console, resumed: bool, launcher: Any, req: RunRequest,
             overrides: dict | None) -> int:  # fmt: skip
    run = rd.path
    case = cases.get(req.case)
    cfg = cases.load_config(case, str(rd.config_file), [])
    # The vendor's runtime (what the case imports and sets before its first rank touches a device), handed to the
    # probe and every rank; the case applies it and records it in kit_facts (docs/vendors.md).
    vendor = vendors.for_config(cfg.device)
    launcher.env.setdefault(RUNTIME_ENV, json.dumps({"vendor": vendor.name, **vendor.runtime.to_dict()}))
    states = rd.stage_states()
    if resumed and overrides and {"data", "models"} & set(overrides) and rd.inputs() is not None:
        if problem := same_inputs(run, req, cfg, console):
            console.print(f"[red]error:[/] {problem}")
            return EXIT_USAGE
    if resumed:
        rd.append_status("resumed", detail=overrides or None)

    if not rd.file("environment.json").exists():
        probe = launcher.run_module(case.probe_module, [], run / "logs" / "probe.log")
        if probe.returncode != 0:
            console.print(f"[red]the case cannot run with {launcher.where_ranks_run()}:[/]")
            console.print(Text(tail_lines(run / "logs" / "probe.log", 20)))
            rd.append_status("failed", detail="environment probe failed")
            return EXIT_ENVIRONMENT
        env = {"host": host_facts(), "case": json.loads(probe.stdout), **launcher.environment_facts()}
        if (stack := launcher.probed_stack(env["case"])) is not None:
            env["stack"] = stack  # native, or an image without kit's labels: the probe's versions are the stack
            if problem := stacks.config_problem(cfg.to_dict(), stack, launcher.image_name()):
                console.print(f"[red]error:[/] {problem}")
                rd.append_status("failed", detail=problem)
                return EXIT_ENVIRONMENT
        rd.write_environment(env)

    if req.synthetic and case.synthetic_module and not (run / "synthetic" / ".complete").exists():
        with console.status("generating synthetic data (real formats and layout) and training its tokenizer"):
            args = ["--config", str(rd.config_file), "--out", str(run / "synthetic"),
                    *case.synthetic_args(cfg, req.max_steps)]  # fmt: skip
            gen = launcher.run_module(case.synthetic_module, args, run / "logs" / "synthetic.log")
        if gen.returncode != 0:
            console.print("[red]synthetic data generation failed:[/]")
            disk = disk_full_note(run, req, cfg, [run / "logs" / "synthetic.log"])
            console.print(Text(disk or tail_lines(run / "logs" / "synthetic.log", 20) or "(no output)"))
            rd.append_status("failed", detail=disk or "synthetic data generation failed")
            return EXIT_FAILED

    if not rd.file("inputs.json").exists():
        with console.status("hashing the inputs (record files, weights, eval set) for the run's identity"):
            rd.write_inputs(collect_inputs(req, cfg, run / "synthetic" if req.synthetic else None))

    request = {**req.to_dict(), "config_file": str(rd.config_file), "synthetic_questions": case.synthetic_questions(cfg)}
    evals = set(cases.evaluating(case))
    with StageProgress(console) as display:
        for stage in req.stages:
            if states.get(stage) == "finished":
                continue
            display.start(stage)
            try:  # a one-time build first, so the launch stamp is the ranks' and the stage's clocks start together
                launcher.before_stage(run, stage, display)
            except StartFailed as e:
                result = e.result
            else:
                rd.append_status("launched", stage, {"gpus": req.gpus, "nodes": req.nodes})
                args = case.stage_args(stage, request)
                result = run_stage(launcher, run, stage, req.nodes * req.gpus, args, display)
            if result.state == "finished" and stage in evals and case.scorer and (problem := score(run, case)):
                result = StageResult(stage, "failed", EXIT_FAILED, message=problem)
            rd.append_status(result.state, stage, result.message or None)
            display.finish(result.state)
            if result.state == "interrupted":
                signame = (result.message or "").rpartition("(")[2].rstrip(")") or "SIGINT"
                rd.append_status("interrupted", detail={"signal": signame})
                console.print(
                    Panel(
                        f"stopped every rank; the run is marked interrupted.\ncontinue it with: kit resume {run}",
                        title="interrupted", border_style="yellow",
                    )  # fmt: skip
                )
                return 128 + int(getattr(signal.Signals, signame, signal.SIGINT))
            if result.state == "failed":
                _leftovers(run / stage)
                logs = [*(run / stage / "logs").glob("*.log")]
                if disk := disk_full_note(run, req, cfg, logs):
                    result = StageResult(stage, "failed", result.returncode, result.failures, f"{disk}\n\n{result.message}")
                rd.append_status("failed", detail=f"stage {stage}")
                console.print(Panel(Text(result.message), title=f"{stage} failed", border_style="red"))
                return EXIT_FAILED
    rd.append_status("finished")
    return EXIT_OK


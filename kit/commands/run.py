"""`kit run`: the case's stages into a new run directory, with live progress; `kit resume` continues one."""

from __future__ import annotations

import json
import os
import shlex
import signal
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from rich.console import Console
from rich.panel import Panel
from rich.text import Text

from kit import __version__
from kit import case as cases
from kit.commands.env import source_revision
from kit.image import stacks
from kit.launchers import (
    EXIT_ENVIRONMENT,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    StageResult,
    run_stage,
    tail_lines,
)
from kit.launchers.native import NativeLauncher
from kit.run.dir import RunDir
from kit.run.progress import StageProgress


class UsageError(ValueError):
    """A bad request, caught before anything is created or launched."""


class EnvironmentProblem(RuntimeError):
    """This host cannot run the request (too few GPUs, too little disk): exit 3, before anything is created."""


@dataclass
class Stop:
    """A check a launch would stop on, as a dry run lists it: the exit code the launch would end with, and why."""

    code: int
    message: str


@dataclass
class RunRequest:
    case: str
    config: str
    stages: list[str]
    nodes: int
    gpus: int
    results: str
    data: str | None = None
    models: str | None = None
    synthetic: bool = False
    max_steps: int = 0
    native: bool = True
    save: bool = True
    python: str = sys.executable
    overrides: list[str] = field(default_factory=list)
    mmmu: str | None = None
    model_dir: str | None = None
    mmmu_decoding: str = "greedy"
    eval_limit: int = 0
    command: list[str] = field(default_factory=list)
    # The container path (ignored with --native).
    image: str | None = None
    hosts: list[str] = field(default_factory=list)
    ssh_options: list[str] = field(default_factory=list)
    master_addr: str | None = None
    master_port: int | None = None
    env: list[str] = field(default_factory=list)
    ulimits: list[str] = field(default_factory=list)
    # Seconds without a step before the stage is declared hung (0: the larger of 600 s and 20 x the median step).
    hang_timeout: float = 0.0
    # local (this host: --native, or Docker containers) or slurm (sbatch/srun; kit.launchers.slurm).
    launcher: str = "local"
    # With --launcher slurm: partition, account, time, sbatch_args, container_image, master_port; and once
    # submitted, the job id and the batch script (run.json is written after the held submission).
    slurm: dict | None = None


TRAIN_STAGES = ("pretrain", "finetune")


def plan(
    case_name: str, config: str | None, stage: str, *, nodes: int = 1, gpus: int | None = None,
    results: Path = Path("runs"), data: Path | None = None, models: Path | None = None, synthetic: bool = False,
    max_steps: int = 0, native: bool = False, save: bool = True, python: str = sys.executable,
    overrides: list[str] | None = None, mmmu: Path | None = None, model_dir: Path | None = None,
    mmmu_decoding: str = "greedy", eval_limit: int = 0, image: str | None = None, hosts: str | None = None,
    ssh_options: list[str] | None = None, master_addr: str | None = None, master_port: int | None = None,
    env: list[str] | None = None, ulimits: list[str] | None = None, hang_timeout: float = 0.0,
    launcher: str = "local", partition: str | None = None, account: str | None = None, time_limit: str | None = None,
    sbatch_args: list[str] | None = None, container_image: str | None = None, stops: list[Stop] | None = None,
) -> tuple[RunRequest, object]:
    """Check the request before anything is written, so a bad one leaves no half-made run behind.

    Without `config`, the scale picks it: A800x{nodes}x{gpus} (gpus 8 when not given) where the case ships one,
    else A800x1x8 run at the given scale (the global batch check below then names what works).
    With `stops` (a dry run), what this host's paths lack (--data, --models, MMMU, --results, --python) is added
    there instead of raised, so the plan can still be shown; a request that is wrong in itself always raises.
    """

    def refuse(message: str) -> None:
        if stops is None:
            raise UsageError(message)
        stops.append(Stop(EXIT_USAGE, message))

    case = cases.get(case_name)
    overrides = list(overrides or [])
    if config is None:
        scaled = f"A800x{nodes}x{gpus or 8}"
        config = scaled if scaled in cases.config_module(case).available() else "A800x1x8"
    cfg = cases.load_config(case, config, overrides)
    if stage == "all":
        stages = [s.name for s in case.stages]
    elif stage == "train":
        stages = list(cases.training(case))
    elif stage in [s.name for s in case.stages]:
        stages = [stage]
    else:
        raise UsageError(f"--stage {stage!r}: expected all, train or one of {', '.join(s.name for s in case.stages)}")
    # --gpus None: not given, the config's; --gpus 0 is a request like --nodes 0, and refused the same way.
    for flag, n, default in (("--nodes", nodes, "1"), ("--gpus", gpus, f"the config's {cfg.gpus_per_node} per node")):
        if n is not None and n < 1:
            raise UsageError(f"{flag} {n}: must be at least 1 (leave {flag} out for {default})")
    gpus = gpus or cfg.gpus_per_node
    slurm = slurm_request(launcher, native, partition, account, time_limit, sbatch_args, container_image, master_port,
                          image=image, hosts=hosts, ssh_options=ssh_options, master_addr=master_addr, env=env,
                          ulimits=ulimits)  # fmt: skip
    if slurm is not None:
        host_list = []
    elif native:
        if nodes > 1:
            raise UsageError("--native runs on this host only (--nodes 1); several nodes run in containers")
        given = [o for o, v in (("--image", image), ("--hosts", hosts), ("--master-addr", master_addr),
                                ("--master-port", master_port), ("--env", env), ("--ulimit", ulimits)) if v]  # fmt: skip
        if given:
            raise UsageError(f"{', '.join(given)} belong(s) to the container path; drop --native to use it")
        host_list: list[str] = []
    else:
        from kit.launchers.containers import forwarded_env, parse_hosts, parse_ulimits

        try:
            host_list = parse_hosts(hosts, nodes)
            forwarded_env(env)
            parse_ulimits(ulimits)
        except ValueError as e:
            raise UsageError(str(e)) from None
        if master_port is not None and not 1024 <= master_port <= 65535:
            raise UsageError(f"--master-port {master_port}: expected a port from 1024 to 65535")
    training = [s for s in stages if s in TRAIN_STAGES]
    # Raises, naming every stage whose global batch does not divide and the --config / --set that fix it.
    cfg.check_world_size(nodes * gpus, training)
    if synthetic and data is not None:
        raise UsageError(f"--synthetic generates its own data set; drop --data, or drop --synthetic to train on {data}")
    if not synthetic:
        needed = [("--data", data)] if training else []
        needed += [("--models", models)]
        missing = [name for name, v in needed if v is None]
        if missing:
            refuse(f"{' and '.join(missing)} needed for a run on real data and weights (or pass --synthetic)")
        for name, p in needed:
            if p is not None and not p.is_dir():
                refuse(f"{name} {p}: no such directory")
    if stages == ["finetune"] and not synthetic:
        raise UsageError(
            "finetune alone needs the pretrain projector: run --stage train (with --synthetic, finetune alone "
            "starts from a random projector)"
        )
    if hang_timeout < 0:
        raise UsageError(f"--hang-timeout {hang_timeout}: expected seconds (0: from the observed step times)")
    if max_steps < 0 or eval_limit < 0:
        raise UsageError("--max-steps and --eval-limit must be 0 (everything) or positive")
    if mmmu_decoding not in ("greedy", "reference"):
        raise UsageError(f"--mmmu-decoding {mmmu_decoding!r}: expected greedy or reference")
    if "eval" in stages:
        if mmmu is None and data is not None and not synthetic:
            mmmu = data / "MMMU"
        # (no --data at all is one stop already: MMMU's default is DATA/MMMU)
        if not synthetic and (mmmu is None or not mmmu.is_dir()) and not (mmmu is None and data is None and training):
            refuse(
                f"the eval stage needs MMMU validation data: {mmmu or '--mmmu DIR'} is not a directory; pass --mmmu "
                "DIR (a local copy of the MMMU/MMMU dataset, one folder of parquet files per subject), or --stage "
                "train to skip the evaluation"
            )
        if "finetune" not in stages:
            if model_dir is None or not (model_dir / "pytorch_model.bin").is_file():
                refuse(
                    f"--stage eval alone needs a finetuned model: --model-dir DIR holding pytorch_model.bin "
                    f"(a run's finetune/model){'' if model_dir is None else f'; {model_dir} has none'}"
                )
        elif not save:
            raise UsageError("--no-save leaves no finetuned model for the eval stage: use --stage train with --no-save")
    for problem in (results_problem(results), python_problem(python) if native else None):
        if problem:
            refuse(problem)
    if not native or slurm is not None:  # containers and other nodes see every directory at its absolute host path
        results, data, models, mmmu, model_dir = (
            p.resolve() if p is not None else None for p in (results, data, models, mmmu, model_dir)
        )
    req = RunRequest(
        case=case.name, config=cfg.name, stages=stages, nodes=nodes, gpus=gpus, results=str(results),
        data=str(data) if data else None, models=str(models) if models else None, synthetic=synthetic,
        max_steps=max_steps, native=native, save=save, python=python, overrides=overrides,
        mmmu=str(mmmu) if mmmu else None, model_dir=str(model_dir) if model_dir else None,
        mmmu_decoding=mmmu_decoding, eval_limit=eval_limit, command=sys.argv, image=image, hosts=host_list,
        ssh_options=list(ssh_options or []), master_addr=master_addr, master_port=master_port, env=list(env or []),
        ulimits=list(ulimits or []), hang_timeout=hang_timeout, launcher=launcher, slurm=slurm,
    )  # fmt: skip
    if slurm is not None and native and os.sep in python:
        req.python = os.path.abspath(python)  # the nodes run it from the shared file system
    return req, cfg


def slurm_request(
    launcher: str, native: bool, partition: str | None, account: str | None, time_limit: str | None,
    sbatch_args: list[str] | None, container_image: str | None, master_port: int | None, **docker_only,
) -> dict | None:
    """--launcher slurm's part of the request, checked (UsageError); None for the local launchers."""
    from kit.launchers.slurm import valid_time

    given = {"--partition": partition, "--account": account, "--time": time_limit, "--sbatch-arg": sbatch_args,
             "--container-image": container_image}  # fmt: skip
    if launcher not in ("local", "slurm"):
        raise UsageError(f"--launcher {launcher!r}: expected local (this host, or Docker engines) or slurm")
    if launcher == "local":
        if used := [k for k, v in given.items() if v]:
            raise UsageError(f"{', '.join(used)} belong(s) to --launcher slurm; add it, or drop them")
        return None
    flags = {"image": "--image", "hosts": "--hosts", "ssh_options": "--ssh-option", "master_addr": "--master-addr",
             "env": "--env", "ulimits": "--ulimit"}  # fmt: skip
    if used := [flags[k] for k, v in docker_only.items() if v]:
        raise UsageError(f"{', '.join(used)} belong(s) to the Docker container path; with --launcher slurm the "
                         "containers are pyxis's (--container-image), on the nodes Slurm allocates")  # fmt: skip
    if native and container_image:
        raise UsageError("--native and --container-image exclude each other: --native runs --python on the nodes, "
                         "--container-image runs the stages in that image through pyxis")  # fmt: skip
    if not native and not container_image:
        raise UsageError("--launcher slurm runs the stages in containers through pyxis: pass --container-image IMAGE "
                         "(an enroot image, e.g. one made by `enroot import dockerd://TAG`; see docs/slurm.md), or "
                         "--native to run --python on the nodes")  # fmt: skip
    if time_limit and not valid_time(time_limit):
        raise UsageError(f"--time {time_limit!r}: expected a Slurm time limit (MM, HH:MM:SS, D-HH:MM:SS, ...)")
    if master_port is not None and not 1024 <= master_port <= 65535:
        raise UsageError(f"--master-port {master_port}: expected a port from 1024 to 65535")
    return {"partition": partition, "account": account, "time": time_limit, "sbatch_args": list(sbatch_args or []),
            "container_image": container_image, "master_port": master_port}  # fmt: skip


PYTHON_FIX = "pass --python PATH: the Python of an environment with the case's packages (torch, deepspeed)"


def python_problem(python: str, flag: str = "--python") -> str | None:
    """Why `python` cannot run the case's launcher (missing, not executable), or None. Whether it can import torch
    and deepspeed is the environment probe's question (seconds): here only what costs nothing."""
    import os
    import shutil

    if shutil.which(python):
        return None
    if os.path.isdir(python):
        why = "is a directory, not a Python executable"
    elif os.path.exists(python):
        why = "is not executable"
    elif os.path.lexists(python):
        why = f"is a broken symlink (to {os.readlink(python)}, which does not exist)"
    else:
        why = "does not exist" if os.sep in python else "is not a command on PATH"
    return f"{flag} {python} {why}; {PYTHON_FIX}"


def results_problem(results: Path) -> str | None:
    """Why run directories cannot be created under `results` (a file, under a file, not writable), or None."""
    import os

    target = results.absolute()
    p = target
    while not p.exists() and p != p.parent:  # --results may not exist yet: its nearest existing parent decides
        p = p.parent
    if not p.is_dir():
        where = "is a file" if p == target else f"is under {p}, a file"
        return f"--results {results} {where}, not a directory; pass a directory (it is created when missing)"
    if not os.access(p, os.W_OK | os.X_OK):
        where = "" if p == target else f" ({p}, where it would be created)"
        return (f"--results {results}: cannot create run directories there{where}: not writable by this user; "
                "pass a directory you can write to")  # fmt: skip
    return None


def gpu_problem(req: RunRequest, cfg) -> str | None:
    """A GPU config on this host's GPUs (--native, or containers all on the local engine): NVML must see --gpus
    of them, or the run would start building the 7B model in host memory. None when it does (or does not apply)."""
    import os

    if cfg.device == "cpu" or req.launcher == "slurm":
        return None  # Slurm's nodes: `kit check-host --launcher slurm` counts the partition's GPUs
    local_engine = all(h == "local" for h in req.hosts) and os.environ.get("DOCKER_HOST", "unix://").startswith("unix://")
    if not (req.native or local_engine):
        return None  # other hosts' GPUs: `kit check-host --hosts` counts them
    from kit.run.hostfacts import gpu_facts

    facts = gpu_facts()
    found = len(facts["devices"])
    if found >= req.gpus:
        return None
    per = f"{req.gpus} GPU{'s' if req.gpus != 1 else ''} per node ({cfg.device})"
    scale = "" if req.gpus == cfg.gpus_per_node else f" at --gpus {req.gpus}"
    if not facts["available"]:
        has = f"none: {facts['reason']}"
    elif not found:
        has = "none (NVML sees no GPU)"
    else:
        names = ", ".join(sorted({d["name"] for d in facts["devices"]}))
        has = f"{found} ({names})"
    fix = ("run on a GPU host, or use --config tiny on a CPU" if not found
           else f"run on a host with {req.gpus}, or pass --gpus {found} (or a config for {found}: kit configs)")  # fmt: skip
    return f"config {cfg.name}{scale} needs {per}; this host has {has} — {fix}"


def disk_need(req: RunRequest, cfg) -> tuple[int, int, str] | None:
    """(full, minimum, how) under --results, or None when the run writes nothing large: the finetune checkpoints
    and 16-bit model dominate (kit.checks.system.results_need), and a short --no-save run writes neither."""
    from kit.checks.system import results_need

    if "finetune" not in req.stages:
        return None  # pretrain checkpoints hold the projector alone (tens of MB at 7B)
    checkpoints = req.max_steps == 0 or req.max_steps >= cfg.finetune.checkpoint_every
    if not (req.save or checkpoints):
        return None
    return results_need(cfg, req.synthetic)


def record_check(req: RunRequest, cfg, console: Console) -> None:
    """The record files of the training stages that will run, through the case's own validator (standard library
    only): a truncated file or a bad record fails here in seconds (UsageError, exit 2), not after the start-up."""

    if req.synthetic or not req.data:
        return
    try:
        record_problem = cases.get(req.case).data.record_problem
    except (ImportError, AttributeError):
        return  # a case without a host-side validator: its loader checks the records
    from kit.checks.system import human

    limit = cfg.data.skip_bad_records
    hint = "fix or remove the record(s), or set data.skip_bad_records (--set data.skip_bad_records=N) to skip a counted few"
    for stage in (s for s in req.stages if s in TRAIN_STAGES):
        path = Path(req.data) / getattr(cfg.data, f"{stage}_json")
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
                if why := record_problem(rec, template):
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


def preflight(req: RunRequest, cfg, console: Console, dry_run: bool = False) -> list[Stop]:
    """What this host must offer before anything is created: the GPUs, the disk under --results, well-formed
    records, usable images. Raises EnvironmentProblem (exit 3) or UsageError (exit 2); a dry run gets every check
    that would stop a launch back instead, in the order a launch meets them."""
    from kit.checks.system import free_bytes, human

    stops = []
    if problem := gpu_problem(req, cfg):
        stops.append(problem)
    if need := disk_need(req, cfg):
        full, minimum, how = need
        where, free = free_bytes(req.results)
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
    if req.data and Path(req.data).is_dir():  # a missing --data is already among the dry run's stops
        readable = []
        for stage in (s for s in req.stages if s in TRAIN_STAGES):  # each stage's records, not just the first's
            try:
                record_check(replace(req, stages=[stage]), cfg, console)
                readable.append(stage)
            except UsageError as e:
                found.append(Stop(EXIT_USAGE, str(e)))
        try:  # the manifest's word on the images of the records that can be read
            if readable:
                manifest_check(replace(req, stages=readable), cfg, console)
        except UsageError as e:
            found.append(Stop(EXIT_USAGE, str(e)))
    return found


def manifest_check(req: RunRequest, cfg, console: Console) -> None:
    """What the last `kit data verify` found (the data manifest: a few stats, no decoding). An image that is missing,
    empty or does not decode stops a run when its record is drawn, hours in: more of them among the records this
    run reads than data.skip_bad_records tolerates is a UsageError now. No manifest, or one older than the record
    files, is a warning: the images are then checked only as they are drawn."""
    if req.synthetic or not req.data or not any(s in TRAIN_STAGES for s in req.stages):
        return
    from kit.data import manifest as data_manifest

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
    for stage in (s for s in req.stages if s in TRAIN_STAGES):
        want = getattr(cfg.data, f"{stage}_json")
        entry = (m.get("stages") or {}).get(stage) or {}
        if entry.get("file") != want:
            warn(f"the data manifest describes the {stage} records {entry.get('file')!r}, not {want!r}: run "
                 f"`{verify_cmd} --set data.{stage}_json={want}`")  # fmt: skip
            continue
        ours = (lambda src: src == "pretrain") if stage == "pretrain" else (lambda src: src != "pretrain")
        found = {kind: sum(n for src, n in (p.get("by_source") or {}).items() if ours(src))
                 for kind, p in problems.items() if kind in ("missing", "empty", "unreadable")}  # fmt: skip
        bad = sum(found.values())
        if bad > cfg.data.skip_bad_records:
            listed = ", ".join(f"{n:,} {kind}" for kind, n in sorted(found.items()) if n)
            raise UsageError(
                f"{root}: `kit data verify` ({m.get('written', '?')}) found {bad:,} image(s) named by the {stage} "
                f"records {want} that cannot be used ({listed}): the run would stop when it draws the first; run "
                f"`kit data fix --data {root} --write-filtered` and pass the filtered file (--set data.{stage}_json=..."
                f"), or set data.skip_bad_records (--set data.skip_bad_records=N)"
            )  # fmt: skip


def resume_overrides(run: Path, python: str | None, data: Path | None, models: Path | None) -> dict[str, str]:
    """`kit resume`'s corrections (a Python, data or weights that moved), checked: UsageError when one cannot serve.
    They go into the "resumed" line of status.jsonl (run.json is never changed; RunDir.effective_request)."""
    import os

    meta = RunDir(run).effective_request()
    out: dict[str, str] = {}
    if python is not None:
        if not meta.get("native", True):
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


def container_plan(req: RunRequest, cfg, run_tag: str, create: bool = True):
    """Reach the nodes' engines and fix the containers' shape (raises ContainerError, exit 3); with create=False
    (a dry run) nothing is written, not even the results directory."""
    from kit.launchers import containers

    read_only = [Path(p) for p in (req.data, req.models, req.mmmu, req.model_dir) if p]
    return containers.plan(
        hosts=req.hosts, image=req.image, results=Path(req.results).resolve(), read_only=read_only,
        gpus_per_node=req.gpus, use_gpus=cfg.device != "cpu", env=containers.forwarded_env(req.env),
        ssh_options=req.ssh_options, master_addr=req.master_addr, master_port=req.master_port, run_tag=run_tag,
        ulimits=containers.parse_ulimits(req.ulimits), create=create,
    )  # fmt: skip


def dry_run(req: RunRequest, cfg, console: Console, stops: list[Stop] | None = None) -> int:
    """Print what `kit run` would do, then every check a launch would stop on; start nothing, write nothing.

    `stops` holds what plan() found missing. Returns the code a launch would exit with: 0 when it would go, else
    the code of the first stop in the order a launch meets them (plan, GPUs and disk, records, engines, stack)."""
    stops = list(stops or [])
    console.print(f"[bold]dry run[/]: {req.case} config {req.config}, stages {', '.join(req.stages)}, "
                  f"{req.nodes} node(s) x {req.gpus}; results under {Path(req.results).resolve()}")  # fmt: skip
    run = Path(req.results).resolve() / "<run id>"
    mmmu_q = cfg.to_dict()["synthetic"].get("mmmu_questions", 30)
    cmds = {}
    for stage in req.stages:
        args = ["--stage", stage, "--run-dir", str(run), *case_args(req, str(run / "config.toml"), stage, mmmu_q)]
        cmds[stage] = args
    late: list[Stop] = []  # what a launch meets after the host's checks: the engines and the image's stack
    if req.launcher == "slurm":
        from kit.launchers import slurm

        case = cases.get(req.case)
        meta = {**asdict(req), "config": cfg.to_dict()}
        console.print(Text(f"{slurm.describe(meta)}; the batch script (RUN/slurm/{slurm.SCRIPT}):", style="bold"))
        console.print(Text(slurm.batch_script(run, meta, cfg.device != "cpu")), soft_wrap=True)
        python = req.python if req.native else "python"
        for stage, args in cmds.items():
            step = run / "slurm" / f"{stage}.sh"
            console.print(Text(f"{stage}: {shlex.join(slurm.stage_srun(meta, run / stage, step))}"), soft_wrap=True)
            console.print(Text(slurm.step_script(python, cases.stage(case, stage).module, req.nodes, req.gpus,
                                                 "FIRST_NODE_ADDR", req.master_port or 0, args)
                               .replace("--master-port=0", "--master-port=FREE_PORT"), style="dim"),
                          soft_wrap=True)  # fmt: skip
    elif req.native:
        console.print("native: torchrun on this host with " + req.python)
        for stage, args in cmds.items():
            case = cases.get(req.case)
            cmd = NativeLauncher(case, python=req.python).command(cases.stage(case, stage).module, req.gpus, 0, args)
            console.print(f"{stage}: {' '.join(cmd)}".replace("--master-port=0", "--master-port=<free port>"))
    else:
        late = _dry_run_containers(req, cfg, console, cmds)
    stops += preflight(req, cfg, console, dry_run=True) + late
    return report_stops(stops, console)


def _dry_run_containers(req: RunRequest, cfg, console: Console, cmds: dict[str, list[str]]) -> list[Stop]:
    """The container plan as the engines answer it; an engine that cannot be reached is a stop, and the plan is
    then printed with what only the engines know (image id, engine names) left open. Everything that asks an
    engine runs under the ssh policy (an ssh:// node's image labels too)."""
    from kit.launchers import containers

    with containers.SshPolicy(req.ssh_options):
        return _dry_run_engines(req, cfg, console, cmds)


def _dry_run_engines(req: RunRequest, cfg, console: Console, cmds: dict[str, list[str]]) -> list[Stop]:
    from kit.launchers import containers

    stops: list[Stop] = []
    try:
        p = container_plan(req, cfg, "<run id>", create=False)
        reached = True
    except containers.ContainerError as e:
        stops.append(Stop(EXIT_ENVIRONMENT, str(e)))
        reached = False
        p = containers.unreached_plan(
            hosts=req.hosts, image=req.image, results=Path(req.results).resolve(),
            read_only=[Path(x) for x in (req.data, req.models, req.mmmu, req.model_dir) if x],
            gpus_per_node=req.gpus, use_gpus=cfg.device != "cpu", env=containers.forwarded_env(req.env),
            ssh_options=req.ssh_options, master_addr=req.master_addr, master_port=req.master_port,
            run_tag="<run id>", ulimits=containers.parse_ulimits(req.ulimits),
        )  # fmt: skip
    case = cases.get(req.case)
    for node in p.nodes:
        for stage, args in cmds.items():
            cmd = " ".join(p.torchrun(node, cases.stage(case, stage).module, args))
            console.print(Text(f"{stage}, {node.where}: {cmd}".replace("--master-port=0", "--master-port=<free port>")))
    for line in containers.describe(p):
        console.print(Text(line))
    if not reached:
        console.print(Text("image stack: not read (no engine or image to read it from: see below)"))
        return stops
    stack = image_stack_of(p)
    needs = [f"{n.key} = {n.value!r} needs {n.package}" for n in stacks.config_needs(cfg.to_dict())]
    if problem := stacks.config_problem(cfg.to_dict(), stack, p.image):
        stops.append(Stop(EXIT_USAGE, problem))
        console.print(Text(f"image stack: {stacks.describe(stack)}"))
    else:
        met = f": it meets the config's needs ({'; '.join(needs)})" if needs else ""
        console.print(Text(f"image stack: {stacks.describe(stack)}{met}"))
    if len(p.nodes) > 1 and not p.own_network:
        console.print(Text("not checked by a dry run: that --results is shared by the nodes and node 0's rendezvous "
                           "port is free and reached (a launch starts a container per node to see)", style="dim"))
    return stops


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


def case_args(req: RunRequest, cfg_path: str, stage: str, synthetic_mmmu_questions: int) -> list[str]:
    """The case entry's arguments for one stage (train.py for training, evaluate.py for eval)."""
    args = ["--config", cfg_path]
    if req.synthetic:
        args.append("--synthetic")
    if req.models:
        args += ["--models", req.models]
    if stage == "eval":
        if req.mmmu:
            args += ["--mmmu", req.mmmu]
        elif req.synthetic:
            args += ["--synthetic-questions", str(synthetic_mmmu_questions)]
        if req.model_dir:
            args += ["--model-dir", req.model_dir]
        args += ["--decoding", req.mmmu_decoding]
        if req.eval_limit:
            args += ["--limit", str(req.eval_limit)]
        return args
    if req.data:
        args += ["--data", req.data]
    if req.max_steps:
        args += ["--max-steps", str(req.max_steps)]
    if not req.save:
        args.append("--no-save")
    return args


def score_eval(run: Path) -> str | None:
    """Score the eval stage's raw responses on the host (cases.llava1_5_7b.plugin.scoring); None, or what went wrong."""
    from cases.llava1_5_7b.plugin import scoring as mmmu

    responses = run / "eval" / "responses.json"
    try:
        result = mmmu.score(mmmu.load_predictions(responses))
        mmmu.write_outputs(run / "eval" / "mmmu", result, protect=(responses,))
    except (mmmu.MMMUError, OSError) as e:
        return f"scoring {responses} failed: {e}"
    return None


def host_facts() -> dict:
    from kit.run.hostfacts import host_facts as facts

    return facts()


def start(req: RunRequest, cfg, console: Console) -> tuple[Path, int]:
    """Create the run directory and run every stage; returns (run, exit code).

    On the container path the nodes' engines are reached and the image pinned first, so an unreachable node
    or a missing image leaves no run directory behind (ContainerError, exit 3).
    """
    from kit.launchers import containers

    if req.launcher == "slurm":
        return start_slurm(req, cfg, console)
    with containers.SshPolicy(req.ssh_options if not req.native else []):
        plan_ = None if req.native else container_plan(req, cfg, uuid.uuid4().hex[:8])
        stack = None
        if plan_ is not None:  # the image's stack must meet the config's needs: refused before anything starts
            stack = image_stack_of(plan_)
            if problem := stacks.config_problem(cfg.to_dict(), stack, plan_.image):
                raise UsageError(problem)
        if plan_ is not None and not plan_.own_network and len(plan_.nodes) > 1:
            with console.status("checking the nodes: shared results, rendezvous port, reachability"):
                containers.preflight(plan_, Path(req.results))
        run = RunDir.create(Path(req.results), req.case, req.config).path
        try:  # a failure before the first stage leaves no run directory in state `created` behind
            # The resolved config (overrides applied) is what every process of the run reads.
            resolved = run / "config.toml"
            resolved.write_text(cases.config_module(cases.get(req.case)).dumps(cfg))
            RunDir(run).write_request(
                run_record(run, req, cfg, resolved, containers=plan_.to_dict() if plan_ else None,
                           stack=stack or {"name": "native", "python": req.python}),
            )
            RunDir(run).append_status("created")
            console.print(f"run directory [bold]{run}[/]")
            if plan_ is not None:
                for line in containers.describe(plan_):
                    console.print(Text(line, style="dim"))
        except BaseException:
            _abandon(run)
            raise
        try:
            return run, execute(run, console, plan_=plan_)
        except Exception:
            if RunDir(run).stage_states() == {None: "created"}:  # raised before anything was launched
                _abandon(run)
            raise


def run_record(run: Path, req: RunRequest, cfg, resolved: Path, **more) -> dict:
    """run.json: written once, when the run is created."""
    return {
        "run_id": run.name,
        "created": time.time(),
        "kit_version": __version__,
        "kit_source": source_revision(),  # git commit and dirty flag, or the installed version
        **asdict(req),
        "config": cfg.to_dict(),  # resolved: every value the run used, the name among them
        "config_path": str(resolved.resolve()),
        "seed": cfg.train.seed,
        **more,
    }


def start_slurm(req: RunRequest, cfg, console: Console, follow: bool | None = None) -> tuple[Path, int]:
    """--launcher slurm: inside an allocation, the stages run here as srun steps; outside, the batch script is
    submitted held, its job id recorded in run.json, the job released and (unless --no-follow) followed."""
    from kit.launchers import slurm

    follow = req.slurm.get("follow", True) if follow is None else follow
    run = RunDir.create(Path(req.results), req.case, req.config).path
    job = None
    try:
        resolved = run / "config.toml"
        resolved.write_text(cases.config_module(cases.get(req.case)).dumps(cfg))
        request = {k: v for k, v in (req.slurm or {}).items() if k != "follow"}
        if slurm.in_allocation():
            nodes = slurm.hostnames(os.environ.get("SLURM_JOB_NODELIST", ""))
            if len(nodes) < req.nodes:
                raise UsageError(f"--nodes {req.nodes}: this allocation (job {os.environ['SLURM_JOB_ID']}) has "
                                 f"{len(nodes)} node(s): {', '.join(nodes)}; ask for fewer, or allocate more")  # fmt: skip
            record = {**request, "job_id": os.environ["SLURM_JOB_ID"], "in_allocation": True, "nodes": nodes,
                      "script": None}  # fmt: skip
            req.slurm = record
            RunDir(run).write_request(run_record(run, req, cfg, resolved, containers=None,
                                                           stack=slurm_stack(req)))  # fmt: skip
            RunDir(run).append_status("created")
            console.print(f"run directory [bold]{run}[/]")
            console.print(Text(f"inside slurm job {record['job_id']} on {', '.join(nodes)}: each stage one srun step",
                               style="dim"))  # fmt: skip
        else:
            meta = {**asdict(req), "config": cfg.to_dict(), "slurm": request}
            script = slurm.write_script(run, meta, cfg.device != "cpu")
            job = slurm.sbatch(script, hold=True)
            req.slurm = {**request, "job_id": job, "in_allocation": False, "script": str(script.relative_to(run)),
                         "script_sha256": slurm.script_digest(script)}  # fmt: skip
            RunDir(run).write_request(run_record(run, req, cfg, resolved, containers=None,
                                                           stack=slurm_stack(req)))  # fmt: skip
            RunDir(run).append_status("created")
            RunDir(run).append_status("submitted", detail={"job_id": job})
            slurm.release(job)
            console.print(f"run directory [bold]{run}[/]")
            console.print(Text(f"{slurm.describe(meta)}; batch script {script}; submitted as job {job}", style="dim"))
    except BaseException:
        if job is not None:
            slurm.cancel(job)
        _abandon(run)
        raise
    if slurm.in_allocation():
        return run, execute(run, console)
    if not follow:
        console.print(f"submitted batch job {job}; its output: {run / 'slurm' / f'job-{job}.out'}\n"
                      f"follow it with `squeue -j {job}` and `kit report {run}`; `scancel {job}` stops it")  # fmt: skip
        return run, EXIT_OK
    return run, slurm.follow_job(run, job, console)


def image_stack_of(plan_) -> dict:
    """The stack of a container plan's image, from its labels (kit.image.stacks.image_stack)."""
    try:
        labels = plan_.nodes[0].client.images.get(plan_.image_id or plan_.image).labels or {}
    except Exception:  # noqa: BLE001 - the plan just inspected it; an engine that went away reads as unlabelled
        labels = {}
    return stacks.image_stack(labels)


def slurm_stack(req: RunRequest) -> dict:
    """A Slurm run's stack as far as run.json can tell: its versions come from the environment probe on the nodes
    (environment.json `stack`, which completes this record)."""
    image = (req.slurm or {}).get("container_image")
    return {"name": "native", "python": req.python} if image is None else {"name": "native", "image": image}


def probed_stack(meta: dict, probe: dict) -> dict:
    """What the probe found on the nodes (native, or a pyxis image without kit's labels): versions decide."""
    st = stacks.native_stack(probe)
    image = (meta.get("slurm") or {}).get("container_image")
    return {**st, "image": image} if image else st


def resubmit(run: Path, console: Console, overrides: dict | None, follow: bool = True) -> int:
    """`kit resume` of a Slurm run outside an allocation: the same batch script, submitted again and followed."""
    from kit.launchers import slurm

    if live := slurm.live_job(run):
        raise UsageError(f"{run} is still slurm job {live[0]} ({live[1]}): wait for it, or `scancel {live[0]}`, then "
                         "resume")  # fmt: skip
    meta = {**RunDir(run).effective_request(), **(overrides or {})}
    if overrides and {"data", "models"} & set(overrides) and (run / "inputs.json").exists():
        fields = {k: meta[k] for k in RunRequest.__dataclass_fields__ if k in meta}
        req = RunRequest(**{**fields, "config": meta["config"]["name"]})
        if problem := same_inputs(run, req, meta["config"], console):
            raise UsageError(problem)
    script = run / ((meta.get("slurm") or {}).get("script") or f"slurm/{slurm.SCRIPT}")
    if not script.is_file():
        raise UsageError(f"{script} is missing: it is the run's batch script; a run started inside an allocation "
                         "resumes inside one (salloc, then kit resume)")  # fmt: skip
    RunDir(run).append_status("resumed", detail=overrides or None)
    job = slurm.sbatch(script, hold=False)
    RunDir(run).append_status("submitted", detail={"job_id": job})
    console.print(f"resubmitted {script} as slurm job {job}")
    if not follow:
        console.print(f"its output: {run / 'slurm' / f'job-{job}.out'}")
        return EXIT_OK
    return slurm.follow_job(run, job, console)


def _abandon(run: Path) -> None:
    """A new run that failed before its first stage: removed while it holds only start()'s bookkeeping (run.json,
    config.toml, status.jsonl, the lock); with anything more (a probe's log) it is marked failed, for the record."""
    import shutil

    from kit.run.guard import HEARTBEAT_NAME, LOCK_NAME

    ours = {"run.json", "config.toml", "status.jsonl", LOCK_NAME, HEARTBEAT_NAME}
    entries = list(run.iterdir()) if run.is_dir() else []
    if all(p.is_file() and (p.name in ours or p.name.endswith(".tmp")) for p in entries):
        shutil.rmtree(run, ignore_errors=True)
    else:
        RunDir(run).append_status("failed", detail="failed before the first stage")


def execute(
    run: Path, console: Console, resumed: bool = False, plan_=None, overrides: dict | None = None, follow: bool = True
) -> int:
    """Run (or continue) the stages of a run directory; finished stages are skipped.

    For its whole life it holds the run's lock (a second kit on the same run is refused: guard.RunBusy), handles
    SIGTERM and SIGHUP as Ctrl-C, and keeps the heartbeat the ranks watch, so none outlives this process.
    """
    from kit.launchers import containers
    from kit.run import guard

    meta = {**RunDir(run).effective_request(), **(overrides or {})}  # run.json with the resumes' --python/--data/--models
    launcher = None
    if meta.get("launcher") == "slurm":
        from kit.launchers import slurm

        if not slurm.in_allocation():  # the job, not this process, runs the stages (and takes the lock)
            return resubmit(run, console, overrides, follow=follow)
    with guard.RunLock(run):
        try:
            with guard.stop_on_signals(), guard.Heartbeat(run) as beat, containers.SshPolicy(meta.get("ssh_options") or []):
                hang = float(meta.get("hang_timeout") or 0)
                case = cases.get(meta["case"])
                if meta.get("launcher") == "slurm":
                    launcher = slurm.SlurmLauncher(case, meta, hang_timeout=hang)
                    slurm.record_allocation(run, launcher)
                elif meta.get("native", True):
                    launcher = NativeLauncher(case, python=meta.get("python", sys.executable), hang_timeout=hang)
                else:
                    launcher = containers.ContainerLauncher(case, plan_ or replan(meta), run.name, hang_timeout=hang)
                launcher.env["KIT_HEARTBEAT"] = str(beat.path)
                return _execute(run, console, resumed, launcher, overrides)
        except KeyboardInterrupt as e:  # outside a stage (probe, data generation): nothing runs on, just mark it
            RunDir(run).append_status("interrupted", detail={"signal": str(e) or "SIGINT"})
            console.print(f"[yellow]interrupted[/]; continue with: kit resume {run}")
            return guard.exit_code(e, EXIT_INTERRUPTED)
        finally:
            if launcher is not None and hasattr(launcher, "close"):
                launcher.close()


def replan(meta: dict):
    """The container plan of a run being resumed: the same hosts, and the same image (by id), or ContainerError."""
    from kit.launchers import containers

    stored = meta["containers"]
    fields = {k: meta[k] for k in RunRequest.__dataclass_fields__ if k in meta}
    req = RunRequest(**{**fields, "config": meta["config"]["name"], "image": stored["image"]})
    case = cases.get(meta["case"])
    cfg = cases.load_config(case, meta["config_path"], [])
    tag = stored["network"].removeprefix("kit-") if stored["network"] != "host" else uuid.uuid4().hex[:8]
    if stored["network"] == "host" and req.nodes == 1:
        req.master_port = None  # a fresh free port: the old one may be taken now
    p = container_plan(req, cfg, tag)
    if not p.own_network and len(p.nodes) > 1:
        containers.preflight(p, Path(req.results))
    if p.image_id != stored["image_id"]:
        raise containers.ContainerError(
            f"the image {stored['image']} is now {p.image_id[:19]}, but the run started with {stored['image_id'][:19]}: "
            "a resumed run must use the image it started with",
            f"tag the original image again (`docker tag {stored['image_id'][:19]} {stored['image']}`) and resume, "
            "or start a new run",
        )
    return p


def write_inputs(run: Path, req: RunRequest, config: dict, console: Console) -> None:
    """inputs.json: the sha256 of every record file, checkpoint file and MMMU parquet the run reads (kit.data.identity)."""
    from kit.data import identity

    with console.status("hashing the inputs (record files, weights, MMMU) for the run's identity"):
        facts = identity.collect(
            data=Path(req.data) if req.data else None, models=Path(req.models) if req.models else None,
            mmmu=Path(req.mmmu) if req.mmmu else None,
            synthetic_dir=run / "synthetic" if req.synthetic else None, stages=req.stages, config=config,
            cache_path=Path(req.results) / identity.CACHE_NAME,
        )  # fmt: skip
    RunDir(run).write_inputs(facts)


DISK_LOW_BYTES = 64 << 20
NO_SPACE = "No space left on device"


def disk_full_note(run: Path, meta: dict, logs: list[Path]) -> str | None:
    """When a failure comes from a full disk, say which disk, how much is free and what the run needs."""
    from kit.checks.system import free_bytes, human, results_need

    where, free = free_bytes(run)
    said = any(NO_SPACE in tail_lines(p, 200) for p in logs if p.is_file())
    if free >= DISK_LOW_BYTES and not said:
        return None
    try:
        cfg = cases.load_config(cases.get(meta["case"]), meta["config_path"], [])
        full, _, how = results_need(cfg, bool(meta.get("synthetic")))
        need = f"; the whole run needs about {human(full)} ({how})"
    except (ValueError, OSError):
        need = ""
    return (f"no space left under {where}: {human(free)} free{need}. Free space there (or move --results), then "
            f"`kit resume {run}` continues the run")


def _leftovers(stage_dir: Path) -> None:
    """Temporary files a rank could not finish writing (a full disk): removed, so no partial file remains."""
    for p in stage_dir.glob("failure-rank*.tmp"):
        p.unlink(missing_ok=True)


def same_inputs(run: Path, req: RunRequest, config: dict, console: Console) -> str | None:
    """A corrected --data or --models may move the inputs, never change them: their digests must equal inputs.json's."""
    from kit.data import identity

    with console.status("hashing the corrected inputs: a resumed run must read the same bytes"):
        now = identity.collect(
            data=Path(req.data) if req.data else None, models=Path(req.models) if req.models else None,
            mmmu=Path(req.mmmu) if req.mmmu else None, synthetic_dir=None, stages=req.stages, config=config,
            cache_path=Path(req.results) / identity.CACHE_NAME,
        )  # fmt: skip
    before = (RunDir(run).inputs() or {})
    for part, flag in (("data", "--data"), ("weights", "--models")):
        a = (before.get(part) or {}).get("digest") if isinstance(before.get(part), dict) else None
        b = (now.get(part) or {}).get("digest") if isinstance(now.get(part), dict) else None
        if a != b:
            return (f"{flag} {req.data if part == 'data' else req.models} holds other {part} than the run started with "
                    f"(digest {str(b)[:16]} vs {str(a)[:16]} in {run / 'inputs.json'}): a resumed run must read the same "
                    "inputs; point it at the same files, or start a new run")  # fmt: skip
    return None


def _execute(run: Path, console: Console, resumed: bool, launcher, overrides: dict | None = None) -> int:
    meta = {**RunDir(run).effective_request(), **(overrides or {})}  # run.json, then every resume's corrections in order
    fields = {k: meta[k] for k in RunRequest.__dataclass_fields__ if k in meta}
    req = RunRequest(**{**fields, "config": meta["config"]["name"]})
    states = RunDir(run).stage_states()
    if resumed and overrides and {"data", "models"} & set(overrides) and (run / "inputs.json").exists():
        if problem := same_inputs(run, req, meta["config"], console):
            console.print(f"[red]error:[/] {problem}")
            return EXIT_USAGE
    if resumed:
        RunDir(run).append_status("resumed", detail=overrides or None)

    if not (run / "environment.json").exists():
        probe = launcher.run_module(launcher.case.probe_module, [], run / "logs" / "probe.log")
        if probe.returncode != 0:
            image = (meta.get("containers") or {}).get("image") or (meta.get("slurm") or {}).get("container_image")
            where = req.python if req.native else f"the image {image}"
            console.print(f"[red]the case cannot run with {where}:[/]")
            console.print(Text(tail_lines(run / "logs" / "probe.log", 20)))
            RunDir(run).append_status("failed", detail="environment probe failed")
            return EXIT_ENVIRONMENT
        env = {"host": host_facts(), "case": json.loads(probe.stdout)}
        if meta.get("containers"):
            env["containers"] = meta["containers"]
        else:  # native, or pyxis: the probe's versions are the stack, and must meet the config's needs
            env["stack"] = probed_stack(meta, env["case"])
            image = (meta.get("slurm") or {}).get("container_image") or "native"
            if problem := stacks.config_problem(meta["config"], env["stack"], image):
                console.print(f"[red]error:[/] {problem}")
                RunDir(run).append_status("failed", detail=problem)
                return EXIT_ENVIRONMENT
        if meta.get("launcher") == "slurm":
            env["slurm"] = launcher.allocation()
        RunDir(run).write_environment(env)

    cfg_path = meta["config_path"]
    if req.synthetic and not (run / "synthetic" / ".complete").exists():  # eval alone needs its tokenizer too
        with console.status("generating synthetic data (real formats and layout) and training its tokenizer"):
            args = ["--config", cfg_path, "--out", str(run / "synthetic")]
            if req.max_steps:
                # One step more than the run trains: an epoch's last step gathers the leftover samples of both
                # modalities (LLaVA's grouped sampler), 1 step in 5,197 of the real finetune epoch but 1 in 4 of
                # a 4-step epoch, where it inflated the measured padding (finetune by_length: 7.8% against 3%).
                cfg = meta["config"]
                args += ["--pretrain-records", str((req.max_steps + 1) * cfg["pretrain"]["global_batch"])]
                args += ["--finetune-records", str((req.max_steps + 1) * cfg["finetune"]["global_batch"])]
            gen = launcher.run_module(launcher.case.synthetic_module, args, run / "logs" / "synthetic.log")
        if gen.returncode != 0:
            console.print("[red]synthetic data generation failed:[/]")
            disk = disk_full_note(run, meta, [run / "logs" / "synthetic.log"])
            console.print(Text(disk or tail_lines(run / "logs" / "synthetic.log", 20) or "(no output)"))
            RunDir(run).append_status("failed", detail=disk or "synthetic data generation failed")
            return EXIT_FAILED

    if not (run / "inputs.json").exists():
        write_inputs(run, req, meta["config"], console)

    mmmu_questions = meta["config"]["synthetic"].get("mmmu_questions", 30)
    with StageProgress(console) as display:
        for stage in req.stages:
            if states.get(stage) == "finished":
                continue
            display.start(stage)
            RunDir(run).append_status("launched", stage, {"gpus": req.gpus, "nodes": req.nodes})
            args = case_args(req, cfg_path, stage, mmmu_questions)
            result = run_stage(launcher, run, stage, req.nodes * req.gpus, args, display)
            if result.state == "finished" and stage == "eval" and (problem := score_eval(run)):
                result = StageResult(stage, "failed", EXIT_FAILED, message=problem)
            RunDir(run).append_status(result.state, stage, result.message or None)
            display.finish(result.state)
            if result.state == "interrupted":
                signame = (result.message or "").rpartition("(")[2].rstrip(")") or "SIGINT"
                RunDir(run).append_status("interrupted", detail={"signal": signame})
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
                if disk := disk_full_note(run, meta, logs):
                    result = StageResult(stage, "failed", result.returncode, result.failures, f"{disk}\n\n{result.message}")
                RunDir(run).append_status("failed", detail=f"stage {stage}")
                console.print(Panel(Text(result.message), title=f"{stage} failed", border_style="red"))
                return EXIT_FAILED
    RunDir(run).append_status("finished")
    from kit.commands.report import show

    show(run, console)
    return EXIT_OK

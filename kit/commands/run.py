"""`kit run`: the case's stages into a new run directory, with live progress; `kit resume` continues one."""

from __future__ import annotations

import json
import signal
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rich.console import Console
from rich.panel import Panel
from rich.text import Text

from .. import __version__, cases, rundir
from ..launch import (
    EXIT_ENVIRONMENT,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    NativeLauncher,
    StageResult,
    tail_lines,
)
from ..progress import StageProgress


class UsageError(ValueError):
    """A bad request, caught before anything is created or launched."""


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


TRAIN_STAGES = ("pretrain", "finetune")


def plan(
    case_name: str, config: str | None, stage: str, *, nodes: int = 1, gpus: int | None = None,
    results: Path = Path("runs"), data: Path | None = None, models: Path | None = None, synthetic: bool = False,
    max_steps: int = 0, native: bool = False, save: bool = True, python: str = sys.executable,
    overrides: list[str] | None = None, mmmu: Path | None = None, model_dir: Path | None = None,
    mmmu_decoding: str = "greedy", eval_limit: int = 0, image: str | None = None, hosts: str | None = None,
    ssh_options: list[str] | None = None, master_addr: str | None = None, master_port: int | None = None,
    env: list[str] | None = None, ulimits: list[str] | None = None, hang_timeout: float = 0.0,
) -> tuple[RunRequest, object]:
    """Check the request before anything is written, so a bad one leaves no half-made run behind.

    Without `config`, the scale picks it: A800x{nodes}x{gpus} (gpus 8 when not given) where the case ships one,
    else A800x1x8 run at the given scale (the global batch check below then names what works).
    """
    case = cases.get(case_name)
    overrides = list(overrides or [])
    if config is None:
        scaled = f"A800x{nodes}x{gpus or 8}"
        config = scaled if scaled in cases.config_module(case).available() else "A800x1x8"
    cfg = cases.load_config(case, config, overrides)
    if stage == "all":
        stages = list(case.stages)
    elif stage == "train":
        stages = [s for s in case.stages if s in TRAIN_STAGES]
    elif stage in case.stages:
        stages = [stage]
    else:
        raise UsageError(f"--stage {stage!r}: expected all, train or one of {', '.join(case.stages)}")
    gpus = gpus or cfg.gpus_per_node
    if nodes < 1 or gpus < 1:
        raise UsageError("--nodes and --gpus must be at least 1")
    if native:
        if nodes > 1:
            raise UsageError("--native runs on this host only (--nodes 1); several nodes run in containers")
        given = [o for o, v in (("--image", image), ("--hosts", hosts), ("--master-addr", master_addr),
                                ("--master-port", master_port), ("--env", env), ("--ulimit", ulimits)) if v]  # fmt: skip
        if given:
            raise UsageError(f"{', '.join(given)} belong(s) to the container path; drop --native to use it")
        host_list: list[str] = []
    else:
        from ..containers import forwarded_env, parse_hosts, parse_ulimits

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
    if not synthetic:
        needed = [("--data", data)] if training else []
        needed += [("--models", models)]
        missing = [name for name, v in needed if v is None]
        if missing:
            raise UsageError(f"{' and '.join(missing)} needed for a run on real data and weights (or pass --synthetic)")
        for name, p in needed:
            if not p.is_dir():
                raise UsageError(f"{name} {p}: no such directory")
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
        if not synthetic and (mmmu is None or not mmmu.is_dir()):
            raise UsageError(
                f"the eval stage needs MMMU validation data: {mmmu or '--mmmu DIR'} is not a directory; pass --mmmu "
                "DIR (a local copy of the MMMU/MMMU dataset, one folder of parquet files per subject), or --stage "
                "train to skip the evaluation"
            )
        if "finetune" not in stages:
            if model_dir is None or not (model_dir / "pytorch_model.bin").is_file():
                raise UsageError(
                    f"--stage eval alone needs a finetuned model: --model-dir DIR holding pytorch_model.bin "
                    f"(a run's finetune/model){'' if model_dir is None else f'; {model_dir} has none'}"
                )
        elif not save:
            raise UsageError("--no-save leaves no finetuned model for the eval stage: use --stage train with --no-save")
    if not native:  # the containers see every directory at its absolute host path
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
        ulimits=list(ulimits or []), hang_timeout=hang_timeout,
    )  # fmt: skip
    return req, cfg


def container_plan(req: RunRequest, cfg, run_tag: str):
    """Reach the nodes' engines and fix the containers' shape (raises ContainerError, exit 3)."""
    from .. import containers

    read_only = [Path(p) for p in (req.data, req.models, req.mmmu, req.model_dir) if p]
    return containers.plan(
        hosts=req.hosts, image=req.image, results=Path(req.results).resolve(), read_only=read_only,
        gpus_per_node=req.gpus, use_gpus=cfg.device != "cpu", env=containers.forwarded_env(req.env),
        ssh_options=req.ssh_options, master_addr=req.master_addr, master_port=req.master_port, run_tag=run_tag,
        ulimits=containers.parse_ulimits(req.ulimits),
    )  # fmt: skip


def dry_run(req: RunRequest, cfg, console: Console) -> int:
    """Print what `kit run` would do, start nothing, write nothing."""
    console.print(f"[bold]dry run[/]: {req.case} config {req.config}, stages {', '.join(req.stages)}, "
                  f"{req.nodes} node(s) x {req.gpus}; results under {Path(req.results).resolve()}")  # fmt: skip
    run = Path(req.results).resolve() / "<run id>"
    mmmu_q = cfg.to_dict()["synthetic"].get("mmmu_questions", 30)
    cmds = {}
    for stage in req.stages:
        args = ["--stage", stage, "--run-dir", str(run), *case_args(req, str(run / "config.toml"), stage, mmmu_q)]
        cmds[stage] = args
    if req.native:
        console.print("native: torchrun on this host with " + req.python)
        for stage, args in cmds.items():
            case = cases.get(req.case)
            cmd = NativeLauncher(case, python=req.python).command(case.stage_module(stage), req.gpus, 0, args)
            console.print(f"{stage}: {' '.join(cmd)}".replace("--master-port=0", "--master-port=<free port>"))
        return EXIT_OK
    from .. import containers

    with containers.SshPolicy(req.ssh_options):
        p = container_plan(req, cfg, "<run id>")
    case = cases.get(req.case)
    for node in p.nodes:
        for stage, args in cmds.items():
            cmds_node = p.torchrun(node, case.stage_module(stage), args)
            console.print(Text(f"{stage}, {node.where}: {' '.join(cmds_node)}"))
    for line in containers.describe(p):
        console.print(Text(line))
    return EXIT_OK


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
    """Score the eval stage's raw responses on the host (kit.mmmu); None, or what went wrong."""
    from .. import mmmu

    responses = run / "eval" / "responses.json"
    try:
        result = mmmu.score(mmmu.load_predictions(responses))
        mmmu.write_outputs(run / "eval" / "mmmu", result, protect=(responses,))
    except (mmmu.MMMUError, OSError) as e:
        return f"scoring {responses} failed: {e}"
    return None


def host_facts() -> dict:
    from ..hostfacts import host_facts as facts

    return facts()


def start(req: RunRequest, cfg, console: Console) -> tuple[Path, int]:
    """Create the run directory and run every stage; returns (run, exit code).

    On the container path the nodes' engines are reached and the image pinned first, so an unreachable node
    or a missing image leaves no run directory behind (ContainerError, exit 3).
    """
    from .. import containers

    with containers.SshPolicy(req.ssh_options if not req.native else []):
        plan_ = None if req.native else container_plan(req, cfg, uuid.uuid4().hex[:8])
        if plan_ is not None and not plan_.own_network and len(plan_.nodes) > 1:
            with console.status("checking the nodes: shared results, rendezvous port, reachability"):
                containers.preflight(plan_, Path(req.results))
        run = rundir.new_run_dir(Path(req.results), req.case, req.config)
        # The resolved config (overrides applied) is what every process of the run reads.
        resolved = run / "config.toml"
        resolved.write_text(cases.config_module(cases.get(req.case)).dumps(cfg))
        rundir.write_json(
            run / "run.json",
            {
                "run_id": run.name,
                "created": time.time(),
                "kit_version": __version__,
                **asdict(req),
                "config": cfg.to_dict(),  # resolved: every value the run used, the name among them
                "config_path": str(resolved.resolve()),
                "seed": cfg.train.seed,
                "containers": plan_.to_dict() if plan_ else None,
            },
        )
        rundir.append_status(run, "created")
        console.print(f"run directory [bold]{run}[/]")
        if plan_ is not None:
            for line in containers.describe(plan_):
                console.print(Text(line, style="dim"))
        return run, execute(run, console, plan_=plan_)


def execute(run: Path, console: Console, resumed: bool = False, plan_=None) -> int:
    """Run (or continue) the stages of a run directory; finished stages are skipped.

    For its whole life it holds the run's lock (a second kit on the same run is refused: guard.RunBusy), handles
    SIGTERM and SIGHUP as Ctrl-C, and keeps the heartbeat the ranks watch, so none outlives this process.
    """
    from .. import containers, guard

    meta = rundir.read_json(run / "run.json")
    launcher = None
    with guard.RunLock(run):
        try:
            with guard.stop_on_signals(), guard.Heartbeat(run) as beat, containers.SshPolicy(meta.get("ssh_options") or []):
                hang = float(meta.get("hang_timeout") or 0)
                case = cases.get(meta["case"])
                if meta.get("native", True):
                    launcher = NativeLauncher(case, python=meta.get("python", sys.executable), hang_timeout=hang)
                else:
                    launcher = containers.ContainerLauncher(case, plan_ or replan(meta), run.name, hang_timeout=hang)
                launcher.env["KIT_HEARTBEAT"] = str(beat.path)
                return _execute(run, console, resumed, launcher)
        except KeyboardInterrupt as e:  # outside a stage (probe, data generation): nothing runs on, just mark it
            rundir.append_status(run, "interrupted", detail={"signal": str(e) or "SIGINT"})
            console.print(f"[yellow]interrupted[/]; continue with: kit resume {run}")
            return guard.exit_code(e, EXIT_INTERRUPTED)
        finally:
            if launcher is not None and hasattr(launcher, "close"):
                launcher.close()


def replan(meta: dict):
    """The container plan of a run being resumed: the same hosts, and the same image (by id), or ContainerError."""
    from .. import containers

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
    """inputs.json: the sha256 of every record file, checkpoint file and MMMU parquet the run reads (kit.identity)."""
    from .. import identity

    with console.status("hashing the inputs (record files, weights, MMMU) for the run's identity"):
        facts = identity.collect(
            data=Path(req.data) if req.data else None, models=Path(req.models) if req.models else None,
            mmmu=Path(req.mmmu) if req.mmmu else None,
            synthetic_dir=run / "synthetic" if req.synthetic else None, stages=req.stages, config=config,
            cache_path=Path(req.results) / identity.CACHE_NAME,
        )  # fmt: skip
    rundir.write_json(run / "inputs.json", facts)


DISK_LOW_BYTES = 64 << 20
NO_SPACE = "No space left on device"


def disk_full_note(run: Path, meta: dict, logs: list[Path]) -> str | None:
    """When a failure comes from a full disk, say which disk, how much is free and what the run needs."""
    from ..checks.system import free_bytes, human, results_need

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


def _execute(run: Path, console: Console, resumed: bool, launcher) -> int:
    meta = rundir.read_json(run / "run.json")
    fields = {k: meta[k] for k in RunRequest.__dataclass_fields__ if k in meta}
    req = RunRequest(**{**fields, "config": meta["config"]["name"]})
    states = rundir.stage_states(run)
    if resumed:
        rundir.append_status(run, "resumed")

    if not (run / "environment.json").exists():
        probe = launcher.run_module("env", [], run / "logs" / "probe.log")
        if probe.returncode != 0:
            where = req.python if req.native else f"the image {meta['containers']['image']}"
            console.print(f"[red]the case cannot run with {where}:[/]")
            console.print(Text(tail_lines(run / "logs" / "probe.log", 20)))
            rundir.append_status(run, "failed", detail="environment probe failed")
            return EXIT_ENVIRONMENT
        env = {"host": host_facts(), "case": json.loads(probe.stdout)}
        if not req.native:
            env["containers"] = meta["containers"]
        rundir.write_json(run / "environment.json", env)

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
            gen = launcher.run_module("synthetic", args, run / "logs" / "synthetic.log")
        if gen.returncode != 0:
            console.print("[red]synthetic data generation failed:[/]")
            disk = disk_full_note(run, meta, [run / "logs" / "synthetic.log"])
            console.print(Text(disk or tail_lines(run / "logs" / "synthetic.log", 20) or "(no output)"))
            rundir.append_status(run, "failed", detail=disk or "synthetic data generation failed")
            return EXIT_FAILED

    if not (run / "inputs.json").exists():
        write_inputs(run, req, meta["config"], console)

    mmmu_questions = meta["config"]["synthetic"].get("mmmu_questions", 30)
    with StageProgress(console) as display:
        for stage in req.stages:
            if states.get(stage) == "finished":
                continue
            display.start(stage)
            rundir.append_status(run, "launched", stage, {"gpus": req.gpus, "nodes": req.nodes})
            args = case_args(req, cfg_path, stage, mmmu_questions)
            result = launcher.run_stage(run, stage, req.nodes * req.gpus, args, display)
            if result.state == "finished" and stage == "eval" and (problem := score_eval(run)):
                result = StageResult(stage, "failed", EXIT_FAILED, message=problem)
            rundir.append_status(run, result.state, stage, result.message or None)
            display.finish(result.state)
            if result.state == "interrupted":
                signame = (result.message or "").rpartition("(")[2].rstrip(")") or "SIGINT"
                rundir.append_status(run, "interrupted", detail={"signal": signame})
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
                rundir.append_status(run, "failed", detail=f"stage {stage}")
                console.print(Panel(Text(result.message), title=f"{stage} failed", border_style="red"))
                return EXIT_FAILED
    rundir.append_status(run, "finished")
    from .report import show

    show(run, console)
    return EXIT_OK

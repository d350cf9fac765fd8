"""`kit run`: the case's stages into a new run directory, with live progress; `kit resume` continues one."""

from __future__ import annotations

import getpass
import json
import os
import platform
import socket
import sys
import time
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


TRAIN_STAGES = ("pretrain", "finetune")


def plan(
    case_name: str, config: str, stage: str, *, nodes: int = 1, gpus: int | None = None,
    results: Path = Path("runs"), data: Path | None = None, models: Path | None = None, synthetic: bool = False,
    max_steps: int = 0, native: bool = False, save: bool = True, python: str = sys.executable,
    overrides: list[str] | None = None, mmmu: Path | None = None, model_dir: Path | None = None,
    mmmu_decoding: str = "greedy", eval_limit: int = 0,
) -> tuple[RunRequest, object]:
    """Check the request before anything is written, so a bad one leaves no half-made run behind."""
    case = cases.get(case_name)
    overrides = list(overrides or [])
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
    if not native:
        raise UsageError(
            "the container path is not available in this version of kit: pass --native to run on this host"
        )
    if nodes > 1:
        raise UsageError("--native runs on this host only (--nodes 1); several nodes run in containers")
    for s in stages:
        if s in TRAIN_STAGES:
            cfg.grad_accum(s, nodes * gpus)  # raises with the fix when the global batch does not divide
    training = [s for s in stages if s in TRAIN_STAGES]
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
    req = RunRequest(
        case=case.name, config=cfg.name, stages=stages, nodes=nodes, gpus=gpus, results=str(results),
        data=str(data) if data else None, models=str(models) if models else None, synthetic=synthetic,
        max_steps=max_steps, native=native, save=save, python=python, overrides=overrides,
        mmmu=str(mmmu) if mmmu else None, model_dir=str(model_dir) if model_dir else None,
        mmmu_decoding=mmmu_decoding, eval_limit=eval_limit, command=sys.argv,
    )  # fmt: skip
    return req, cfg


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
    return {
        "hostname": socket.gethostname(),
        "user": getpass.getuser(),
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "cpu": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "kit_version": __version__,
    }


def start(req: RunRequest, cfg, console: Console) -> tuple[Path, int]:
    """Create the run directory and run every stage; returns (run, exit code)."""
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
            "config_path": str(resolved),
            "seed": cfg.train.seed,
        },
    )
    rundir.append_status(run, "created")
    console.print(f"run directory [bold]{run}[/]")
    return run, execute(run, console)


def execute(run: Path, console: Console, resumed: bool = False) -> int:
    """Run (or continue) the stages of a run directory; finished stages are skipped."""
    try:
        return _execute(run, console, resumed)
    except KeyboardInterrupt:  # outside a stage (probe, data generation): nothing runs on, just mark it
        rundir.append_status(run, "interrupted")
        console.print(f"[yellow]interrupted[/]; continue with: kit resume {run}")
        return EXIT_INTERRUPTED


def _execute(run: Path, console: Console, resumed: bool) -> int:
    meta = rundir.read_json(run / "run.json")
    case = cases.get(meta["case"])
    fields = {k: meta[k] for k in RunRequest.__dataclass_fields__ if k in meta}
    req = RunRequest(**{**fields, "config": meta["config"]["name"]})
    launcher = NativeLauncher(case, python=req.python)
    states = rundir.stage_states(run)
    if resumed:
        rundir.append_status(run, "resumed")

    if not (run / "environment.json").exists():
        probe = launcher.run_module("env", [], run / "logs" / "probe.log")
        if probe.returncode != 0:
            console.print(f"[red]the case cannot run with {req.python}:[/]")
            console.print(Text(tail_lines(run / "logs" / "probe.log", 20)))
            rundir.append_status(run, "failed", detail="environment probe failed")
            return EXIT_ENVIRONMENT
        rundir.write_json(run / "environment.json", {"host": host_facts(), "case": json.loads(probe.stdout)})

    cfg_path = meta["config_path"]
    if req.synthetic and not (run / "synthetic" / ".complete").exists():  # eval alone needs its tokenizer too
        with console.status("generating synthetic data (real formats and layout) and training its tokenizer"):
            args = ["--config", cfg_path, "--out", str(run / "synthetic")]
            if req.max_steps:
                cfg = meta["config"]
                args += ["--pretrain-records", str(req.max_steps * cfg["pretrain"]["global_batch"])]
                args += ["--finetune-records", str(req.max_steps * cfg["finetune"]["global_batch"])]
            gen = launcher.run_module("synthetic", args, run / "logs" / "synthetic.log")
        if gen.returncode != 0:
            console.print("[red]synthetic data generation failed:[/]")
            console.print(Text(tail_lines(run / "logs" / "synthetic.log", 20)))
            rundir.append_status(run, "failed", detail="synthetic data generation failed")
            return EXIT_FAILED

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
                rundir.append_status(run, "interrupted")
                console.print(
                    Panel(
                        f"stopped every rank; the run is marked interrupted.\ncontinue it with: kit resume {run}",
                        title="interrupted", border_style="yellow",
                    )  # fmt: skip
                )
                return EXIT_INTERRUPTED
            if result.state == "failed":
                rundir.append_status(run, "failed", detail=f"stage {stage}")
                console.print(Panel(Text(result.message), title=f"{stage} failed", border_style="red"))
                return EXIT_FAILED
    rundir.append_status(run, "finished")
    from .report import show

    show(run, console)
    return EXIT_OK

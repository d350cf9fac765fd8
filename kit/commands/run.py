"""`kit run`, `kit resume` and the hidden `kit slurm-job`: a case's stages into a run directory, with live progress.

The command chooses; the rest is elsewhere. Its options are RunRequest's fields (kit/run/request.py), declared
once; the request is resolved and checked there; the launcher of the request plans, dry-runs, starts or submits
and follows (kit/launchers); the run's life is kit/run/stages.py. The table at the end is kit report's.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from kit.commands.report import show
from kit.errors import EXIT_OK, KitError
from kit.launchers import launcher_class
from kit.launchers.slurm import in_allocation
from kit.run import stages
from kit.run.dir import RunDir, find_run
from kit.run.request import RunRequest, Stop, cli_fields, field_default, flag_of, resolve

console = Console()
err = Console(stderr=True)




def fail(message: str, code: int = 2) -> None:
    from rich.markup import escape

    # Escaped: "[pretrain]" in a message is text, not markup; soft-wrapped, so a long fix stays one pasteable line.
    err.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    raise typer.Exit(code)


def _show_table(run: Path, code: int) -> None:
    """The run's table once it finished (kit report's); a damaged run directory is named, not a traceback."""
    if code == EXIT_OK and RunDir(run).stage_states().get(None) == "finished":
        try:
            show(run, console)
        except KitError as e:
            fail(str(e))


def run(**options: Any) -> None:
    """Run a case's stages into a new run directory, with live progress.

    By default each stage runs in containers of the kit's image (one per node); --native runs on this host; --launcher
    slurm submits a batch job.

    Examples:

      kit run llava1_5_7b --config tiny --synthetic --native

      kit run llava1_5_7b --nodes 1 --gpus 8 --data /data/llava --models /models

      kit run llava1_5_7b --nodes 2 --gpus 8 --hosts gpu1,gpu2 --data /shared/llava --models /shared/models --dry-run

      kit run llava1_5_7b --config H200x1x1 --synthetic --native --max-steps 30 --no-save

      kit run llava1_5_7b --config tiny --synthetic --native --set pretrain.micro_batch=2

      kit run llava1_5_7b --stage eval --model-dir runs/RUN/finetune/model --models /models --eval-data /data/MMMU

      kit run llava1_5_7b --launcher slurm --nodes 2 --partition gpu --container-image /shared/kit.sqsh --data /shared/llava --models /shared/models
    """
    lists = {f.name for f in cli_fields() if _annotation(f) == list[str]}
    req = RunRequest(**{k: ([] if v is None and k in lists else v) for k, v in options.items()})
    stops: list[Stop] | None = [] if req.dry_run else None  # a dry run lists what is missing, with the plan
    try:
        req, cfg = resolve(req, launcher_class(req), stops)
        if req.dry_run:  # the whole plan, then every check a launch would stop on; its exit code is the launch's
            raise typer.Exit(stages.dry_run(req, cfg, console, stops))
        run_dir, code = stages.start(req, cfg, console)
    except KitError as e:
        fail(str(e), e.exit_code)
    except ValueError as e:  # a config's own checks (ConfigError) and the global batch check
        fail(str(e))
    _show_table(run_dir, code)
    raise typer.Exit(code)


def _annotation(f: Any) -> Any:
    """The option's Python type for Typer, from the field's annotation text."""
    text = str(f.type)
    for name, tp in (("list[str]", list[str]), ("Path", Path), ("bool", bool), ("float", float), ("int", int)):
        if name in text:
            return tp
    return str


def _signature() -> inspect.Signature:
    """`kit run`'s parameters, one per RunRequest field that is an option: the flags and help live there."""
    params = []
    for f in cli_fields():
        meta = f.metadata
        tp = _annotation(f)
        if f.name == "case":
            default = typer.Argument(..., help=meta["help"])
        else:
            d = field_default(f)
            flags = list(meta.get("flags") or ())
            if tp is bool:  # --x/--no-x
                base = flags[0] if flags else flag_of(f)
                flags = [f"{base}/--no-{base.removeprefix('--')}"]
            extra = {"metavar": meta["metavar"]} if meta.get("metavar") else {}
            default = typer.Option(d if d is not ... else None, *flags, help=meta["help"],
                                   show_default=d not in (None, [], ...), **extra)  # fmt: skip
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=tp))
    return inspect.Signature(params)


run.__signature__ = _signature()  # type: ignore[attr-defined]


def resume(
    run_ref: str = typer.Argument(None, metavar="RUN", help="Run directory or id (default: the newest)."),
    results: Path = typer.Option(Path("runs"), help="Where run directories are."),
    python: str = typer.Option(None, help="A corrected Python for a --native run (the first one moved or broke)."),
    data: Path = typer.Option(None, help="A corrected data root (the same data at a new path)."),
    models: Path = typer.Option(None, help="A corrected checkpoint directory (the same weights at a new path)."),
    follow: bool = typer.Option(True, help="A Slurm run: follow the new job to its end (--no-follow: submit only)."),
) -> None:
    """Continue an interrupted or failed run from its stages' last checkpoints.

    Finished stages are kept; the others resume from their newest checkpoint into the same run directory.
    --python, --data and --models correct a path that moved; they are recorded in the run's status.jsonl
    (run.json keeps the first request) and hold for every later resume.

    Examples:

      kit resume runs/20261129-101500-llava1_5_7b-tiny-1a2b

      kit resume runs/20261129-101500-llava1_5_7b-tiny-1a2b --python .venv/bin/python
    """
    try:
        run_dir = find_run(run_ref, results)
        if RunDir(run_dir).stage_states().get(None) == "finished":
            fail(f"{run_dir} has finished; nothing to resume (start a new run with `kit run`)")
        overrides = stages.resume_overrides(run_dir, python, data, models)
        code = stages.execute(run_dir, console, resumed=True, overrides=overrides, follow=follow)
    except KitError as e:
        fail(str(e), e.exit_code)
    _show_table(run_dir, code)
    raise typer.Exit(code)


def slurm_job(run_dir: Path = typer.Argument(..., metavar="RUN")) -> None:
    """The batch script's command, inside the run's allocation: the run's stages, one srun step each."""

    if not in_allocation():
        fail("kit slurm-job runs inside the run's Slurm job (its batch script); use `kit resume RUN` to submit it")
    try:  # `kit resume` recorded the resume (and its corrections) when it submitted the job
        code = stages.execute(run_dir, console)
    except KitError as e:
        fail(str(e), e.exit_code)
    _show_table(run_dir, code)
    raise typer.Exit(code)


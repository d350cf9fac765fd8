"""The `kit` command line (Typer). Exit codes: 0 ok, 1 a stage or check failed, 2 bad usage or input,
3 the environment cannot run the case, 130 interrupted."""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

import typer
from rich.console import Console

from kit import __version__

app = typer.Typer(
    name="kit",
    help="Reproduce training benchmarks in containers and report them beside the reference.",
    no_args_is_help=True,
    add_completion=True,  # --install-completion and --show-completion (bash, zsh, fish, PowerShell)
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)
console = Console()
err = Console(stderr=True)


def _version(value: bool) -> None:
    if value:
        console.print(f"kit {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """Reproduce training benchmarks in containers and report them beside the reference.

    Examples:

      kit run llava1_5_7b --config tiny --synthetic --native    # a tiny run on this CPU

      kit report                                                # the newest run's table
    """


def fail(message: str, code: int = 2) -> None:
    from rich.markup import escape

    # Escaped: "[pretrain]" in a message is text, not markup; soft-wrapped, so a long fix stays one pasteable line.
    err.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    raise typer.Exit(code)


@app.command()
def run(
    case: str = typer.Argument(..., help="The case to run, e.g. llava1_5_7b."),
    nodes: int = typer.Option(1, help="Nodes (one container each)."),
    gpus: int = typer.Option(None, help="GPUs per node (ranks per node on CPU); default: the config's."),
    stage: str = typer.Option("all", help="all, train (pretrain + finetune), pretrain, finetune or eval."),
    config: str = typer.Option(
        None,
        help="Config name (cases/CASE/configs/NAME.toml) or a .toml path; default: A800x{nodes}x{gpus} where one ships "
        "(A800x1x1, A800x1x8, A800x2x8), else A800x1x8.",
    ),
    data: Path = typer.Option(None, help="Data root in the real layout (not needed with --synthetic)."),
    models: Path = typer.Option(None, help="Directory with the LLM and CLIP checkpoint directories."),
    results: Path = typer.Option(Path("runs"), help="Where run directories are created."),
    synthetic: bool = typer.Option(False, help="Random-init model and generated data: no downloads."),
    max_steps: int = typer.Option(0, help="Stop each stage after this many optimizer steps (0: one epoch)."),
    native: bool = typer.Option(False, help="Run on this host with torchrun instead of in containers."),
    save: bool = typer.Option(True, help="Save each stage's output (projector, 16-bit model)."),
    python: str = typer.Option(sys.executable, help="Python that runs the case with --native."),
    set_: list[str] = typer.Option(
        None, "--set", metavar="KEY=VALUE", help="Override a config value, e.g. --set finetune.micro_batch=8."
    ),
    mmmu: Path = typer.Option(None, help="MMMU validation (local copy of MMMU/MMMU); default DATA/MMMU."),
    model_dir: Path = typer.Option(None, help="With --stage eval alone: the finetuned model (a run's finetune/model)."),
    mmmu_decoding: str = typer.Option("greedy", help="greedy (deterministic) or reference (5 beams, sampling)."),
    eval_limit: int = typer.Option(0, help="Evaluate only the first K MMMU questions (0: all 900)."),
    image: str = typer.Option(None, help="Container image (default: the newest `kit build` recorded under RESULTS)."),
    hosts: str = typer.Option(
        None, help="One Docker host per node, node 0 first: local, user@host[:port] (ssh://), or a base URL."
    ),
    ssh_option: list[str] = typer.Option(None, "--ssh-option", help="Extra ssh option for ssh:// hosts, e.g. '-i KEY'."),
    master_addr: str = typer.Option(None, help="Rendezvous address of node 0 as the others reach it (several nodes)."),
    master_port: int = typer.Option(None, help="Rendezvous port (default: a free one on node 0, or 29500 remotely)."),
    env: list[str] = typer.Option(
        None, "--env", metavar="KEY=VALUE", help="Set in every container (NCCL_*/GLOO_* of this shell pass on anyway)."
    ),
    ulimit: list[str] = typer.Option(
        None, "--ulimit", metavar="NAME=SOFT[:HARD]", help="Container limit over kit's (memlock=-1, stack=64 MiB)."
    ),
    dry_run: bool = typer.Option(
        False, help="Print the plan (containers, mounts, commands), then every check a launch would stop on; start "
        "nothing, write nothing. Exit 0 when a launch would go, else the code the launch would exit with."
    ),
    launcher: str = typer.Option(
        "local", help="local (this host: --native, or Docker containers on --hosts) or slurm (sbatch/srun)."
    ),
    partition: str = typer.Option(None, help="Slurm partition (--launcher slurm; default: the cluster's)."),
    account: str = typer.Option(None, help="Slurm account to charge (--launcher slurm)."),
    time_limit: str = typer.Option(None, "--time", help="Slurm time limit, e.g. 04:00:00 (--launcher slurm)."),
    sbatch_arg: list[str] = typer.Option(
        None, "--sbatch-arg", metavar="ARG", help="One more sbatch option for the batch script, e.g. --qos=bench."
    ),
    container_image: str = typer.Option(
        None, help="With --launcher slurm: the image pyxis runs the stages in (e.g. a squashfs made by enroot import)."
    ),
    follow: bool = typer.Option(True, help="With --launcher slurm: follow the job to its end (--no-follow: submit, print the job id)."),
    hang_timeout: float = typer.Option(
        0.0, help="Seconds without a step before a stage is declared hung, its stacks dumped and it is stopped "
        "(0: the larger of 600 s and 20 x the median step time)."
    ),
) -> None:
    """Run a case's stages into a new run directory, with live progress.

    By default each stage runs in containers of the kit's image (one per node); --native runs on this host.

    Examples:

      kit run llava1_5_7b --config tiny --synthetic --native

      kit run llava1_5_7b --nodes 1 --gpus 8 --data /data/llava --models /models

      kit run llava1_5_7b --nodes 2 --gpus 8 --hosts gpu1,gpu2 --data /shared/llava --models /shared/models --dry-run

      kit run llava1_5_7b --config H200x1x1 --synthetic --native --max-steps 30 --no-save

      kit run llava1_5_7b --config tiny --synthetic --native --set pretrain.micro_batch=2

      kit run llava1_5_7b --stage eval --model-dir runs/RUN/finetune/model --models /models --mmmu /data/MMMU

      kit run llava1_5_7b --launcher slurm --nodes 2 --partition gpu --container-image /shared/kit.sqsh --data /shared/llava --models /shared/models
    """
    from kit.case import UnknownCase
    from kit.commands import run as run_cmd
    from kit.launchers.containers import ContainerError
    from kit.launchers.slurm import SlurmError
    from kit.run.dir import RunDirError

    stops: list[run_cmd.Stop] | None = [] if dry_run else None  # a dry run lists what is missing, with the plan
    try:
        req, cfg = run_cmd.plan(
            case, config, stage, nodes=nodes, gpus=gpus, results=results, data=data, models=models,
            synthetic=synthetic, max_steps=max_steps, native=native, save=save, python=python, overrides=set_ or [],
            mmmu=mmmu, model_dir=model_dir, mmmu_decoding=mmmu_decoding, eval_limit=eval_limit, image=image,
            hosts=hosts, ssh_options=ssh_option or [], master_addr=master_addr, master_port=master_port, env=env or [],
            ulimits=ulimit or [], hang_timeout=hang_timeout, launcher=launcher, partition=partition, account=account,
            time_limit=time_limit, sbatch_args=sbatch_arg or [], container_image=container_image, stops=stops,
        )
        if req.slurm is not None:
            req.slurm["follow"] = follow
        if dry_run:  # the whole plan, then every check a launch would stop on; its exit code is the launch's
            code = run_cmd.dry_run(req, cfg, console, stops)
        else:
            # GPUs, disk under --results, the record files: before anything is created
            run_cmd.preflight(req, cfg, console)
            _, code = run_cmd.start(req, cfg, console)
    except (ContainerError, SlurmError, run_cmd.EnvironmentProblem) as e:
        fail(str(e), 3)
    except (run_cmd.UsageError, UnknownCase, ValueError, RunDirError) as e:
        fail(str(e))
    raise typer.Exit(code)


@app.command()
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
    from kit.commands import run as run_cmd
    from kit.launchers.containers import ContainerError
    from kit.launchers.slurm import SlurmError
    from kit.run.dir import RunDir, RunDirError, find_run

    try:
        run_dir = find_run(run_ref, results)
        if RunDir(run_dir).stage_states().get(None) == "finished":
            fail(f"{run_dir} has finished; nothing to resume (start a new run with `kit run`)")
        overrides = run_cmd.resume_overrides(run_dir, python, data, models)
        code = run_cmd.execute(run_dir, console, resumed=True, overrides=overrides, follow=follow)
    except (ContainerError, SlurmError) as e:
        fail(str(e), 3)
    except (RunDirError, run_cmd.UsageError) as e:
        fail(str(e))
    raise typer.Exit(code)


@app.command("slurm-job", hidden=True)
def slurm_job(run_dir: Path = typer.Argument(..., metavar="RUN")) -> None:
    """The batch script's command, inside the run's allocation: the run's stages, one srun step each."""
    from kit.commands import run as run_cmd
    from kit.launchers.slurm import SlurmError, in_allocation
    from kit.run.dir import RunDirError

    if not in_allocation():
        fail("kit slurm-job runs inside the run's Slurm job (its batch script); use `kit resume RUN` to submit it")
    try:  # `kit resume` recorded the resume (and its corrections) when it submitted the job
        code = run_cmd.execute(run_dir, console)
    except SlurmError as e:
        fail(str(e), 3)
    except (RunDirError, run_cmd.UsageError) as e:
        fail(str(e))
    raise typer.Exit(code)


@app.command()
def report(
    run_refs: list[str] = typer.Argument(
        None, metavar="[RUN]...", help="Run directories or ids (default: the newest). Several runs of one config: "
        "their mean and spread."
    ),
    format: str = typer.Option("table", "--format", "-f", help="table, json, csv or markdown."),
    results: Path = typer.Option(Path("runs"), help="Where run directories are."),
    peak_flops: float = typer.Option(
        None, "--peak-flops", help="Peak dense bf16 FLOP/s per device for MFU (default: env/accelerators.toml's row)."
    ),
) -> None:
    """The run's results in the shape of the reference table, with the reference rows beside them.

    Derived numbers are recomputed from the run's raw facts every time (summary.json and plots are
    rewritten), so a report works on finished, failed, interrupted and running runs alike. A run that is
    not the reference's (synthetic or other data, random weights, another model shape) is labelled, and
    its ratios against the seed are not shown. Several runs of one config give the mean and the spread.

    Examples:

      kit report

      kit report runs/20261129-101500-llava1_5_7b-tiny-1a2b --format markdown

      kit report runs/RUN_A runs/RUN_B runs/RUN_C
    """
    from kit.commands.report import show_many
    from kit.results.report import MixedRunsError
    from kit.run.dir import RunDirError, find_run

    if format not in ("table", "json", "csv", "markdown"):
        fail(f"--format {format!r}: expected table, json, csv or markdown")
    if peak_flops is not None and peak_flops <= 0:
        fail(f"--peak-flops {peak_flops:g}: expected a positive FLOP/s figure, e.g. 312e12")
    try:
        runs = [find_run(r, results) for r in run_refs] if run_refs else [find_run(None, results)]
        if len({r.resolve() for r in runs}) < len(runs):
            fail("the same run is given more than once: each run counts once in a multi-run report")
        show_many(runs, console, format, peak_flops)
    except (RunDirError, MixedRunsError) as e:
        fail(str(e))


@app.command()
def configs(case: str = typer.Argument("llava1_5_7b", help="The case.")) -> None:
    """List a case's configs and what each sets (devices, batches and GAS at the config's own scale, ZeRO stages).

    Example:

      kit configs llava1_5_7b
    """
    from rich.table import Table

    from kit import case as cases
    from kit.tables import print_table, whole

    try:
        c = cases.get(case)
    except cases.UnknownCase as e:
        fail(str(e))
    mod = c.config
    table = Table(title=f"{case} configs")
    # Headers in short lines: a narrow terminal wraps them between words, never cuts one ("micro/GAS/glob…").
    for col in ("name", "description", "nodes x\ngpus", "pretrain ZeRO,\nmicro/GAS/global",
                "finetune ZeRO,\nmicro/GAS/global"):  # fmt: skip
        table.add_column(col, overflow="fold")

    def batches(cfg, stage: str) -> str:
        s = cfg.stage(stage)
        try:
            gas = cfg.grad_accum(stage, cfg.nodes * cfg.gpus_per_node)  # GAS on the config's own nodes x gpus
        except ValueError:
            gas = "?"  # its global batch does not divide on its own scale: `kit run` refuses it with the fix
        return f"{s.zero_stage}, {s.micro_batch}/{gas}/{s.global_batch}"

    for name in mod.available():
        cfg = mod.load(name)
        table.add_row(
            name, cfg.description, f"{cfg.nodes} x {cfg.gpus_per_node}", batches(cfg, "pretrain"),
            batches(cfg, "finetune"),
        )  # fmt: skip
    print_table(console, whole(table, "name"))


def _register_subcommands() -> None:
    from kit.commands import build, check_host, compare, data, env, ls, mmmu, submit, verify

    app.command("build")(build.build)
    app.command("check-host")(check_host.check_host)
    app.command("env")(env.env)
    app.command("submit")(submit.submit)
    app.command("verify")(verify.verify)
    app.command("compare")(compare.compare)
    app.command("ls")(ls.ls)
    app.add_typer(data.app, name="data", help="The case's data and weights: fetch, verify, fix.")
    app.add_typer(mmmu.app, name="mmmu", help="MMMU validation: score raw responses with the official rules.")


_register_subcommands()


def _reflow(doc: str | None) -> str | None:
    """One line per paragraph. Typer's rich help keeps a docstring's single line breaks, so a paragraph written
    over several source lines came out hard-wrapped mid-sentence ("Exits 0 when" / "every source is there").
    Indented paragraphs (the examples) are kept as written."""
    if not doc:
        return doc
    paras = inspect.cleandoc(doc).split("\n\n")
    return "\n\n".join(p if any(ln[:1] in (" ", "\b") for ln in p.split("\n")) else " ".join(p.split("\n"))
                       for p in paras)  # fmt: skip


def _reflow_help(typer_app: typer.Typer) -> None:
    """Every command's help, the sub-apps' too (`kit data fetch`), reflowed where the command line reads it."""
    for info in typer_app.registered_commands:
        if info.help:
            info.help = _reflow(info.help)
        elif info.callback is not None:
            info.callback.__doc__ = _reflow(info.callback.__doc__)
    for group in typer_app.registered_groups:
        if group.typer_instance is not None:
            _reflow_help(group.typer_instance)


_reflow_help(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()

"""The `kit` command line (Typer). Exit codes: 0 ok, 1 a stage or check failed, 2 bad usage or input,
3 the environment cannot run the case, 130 interrupted."""

from __future__ import annotations

import inspect
from pathlib import Path

import typer
from rich.console import Console

from kit import __version__
from kit.commands import build, check_host, compare, configs, data, env, ls, score, submit, verify
from kit.commands import run as run_cmd
from kit.commands.report import show_many
from kit.results.entries import MixedRunsError
from kit.run.dir import RunDirError, find_run

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


def _register_run() -> None:
    """`kit run`, `kit resume` and `kit slurm-job` first, so they lead `kit --help` and completion."""

    app.command("run", context_settings={"help_option_names": ["-h", "--help"]})(run_cmd.run)
    app.command("resume")(run_cmd.resume)
    app.command("slurm-job", hidden=True)(run_cmd.slurm_job)


_register_run()


@app.command()
def report(
    run_refs: list[str] = typer.Argument(
        None, metavar="[RUN]...", help="Run directories or ids (default: the newest). Several runs of one config: "
        "their olympic mean (the headline a submission states), plain mean and spread."
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
    its ratios against the seed are not shown. Several runs of one config give the olympic mean (the
    headline, as a submission states it), the plain mean and the spread.

    Examples:

      kit report

      kit report runs/20261129-101500-llava1_5_7b-tiny-1a2b --format markdown

      kit report runs/RUN_A runs/RUN_B runs/RUN_C
    """

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


def _register_subcommands() -> None:

    app.command("build")(build.build)
    app.command("check-host")(check_host.check_host)
    app.command("env")(env.env)
    app.command("submit")(submit.submit)
    app.command("verify")(verify.verify)
    app.command("compare")(compare.compare)
    app.command("ls")(ls.ls)
    app.add_typer(data.app, name="data", help="The case's data and weights: fetch, verify, fix.")
    app.add_typer(configs.app, name="configs")  # `kit configs [CASE]` lists; `kit configs new` derives
    for group in score.groups():  # `kit <eval set> score`, one per registered case's scorer
        app.add_typer(group, name=group.info.name)


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
            callback = group.typer_instance.registered_callback
            if callback is not None and callback.callback is not None:  # a group's own help (`kit configs --help`)
                callback.callback.__doc__ = _reflow(callback.callback.__doc__)
            _reflow_help(group.typer_instance)


_reflow_help(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()

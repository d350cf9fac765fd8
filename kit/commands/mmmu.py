"""`kit mmmu`: score raw MMMU responses on the host, so the same responses always give the same score and a
corrected parser rescored old runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cases.llava1_5_7b.plugin import scoring as mmmu

app = typer.Typer(
    name="mmmu",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)
console = Console()
err = Console(stderr=True)


@app.callback()
def main() -> None:
    """MMMU validation: score raw model responses with the official parsing and judging rules.

    Examples:

      kit mmmu score runs/RUN/eval/responses.json

      kit mmmu score responses.json --subjects --out runs/RUN/eval/mmmu
    """


def table(result: dict[str, Any], subjects: bool = False) -> Table:
    """Per discipline (micro average), optionally its subjects, then the overall."""
    t = Table(title="MMMU validation", title_justify="left")
    t.add_column("discipline / subject")
    t.add_column("questions", justify="right")
    t.add_column("correct", justify="right")
    t.add_column("accuracy", justify="right")
    for d, agg in result["disciplines"].items():
        t.add_row(
            f"[bold]{d}[/]", str(agg["num"]), str(agg["correct"]), f"[bold]{100 * agg['accuracy']:.2f}%[/]"
        )
        if subjects:
            for s in agg["subjects"]:
                sa = result["subjects"][s]
                t.add_row(f"  {s}", str(sa["num"]), str(sa["correct"]), f"{100 * sa['accuracy']:.2f}%")
    t.add_section()
    t.add_row(
        "[bold]overall[/]",
        str(result["num"]),
        str(result["correct"]),
        f"[bold]{100 * result['overall']:.2f}%[/]",
    )
    n_mc = result["question_types"].get("multiple-choice", {}).get("num", 0)
    t.caption = (
        f"{result['random_fallbacks']} of {n_mc} multiple-choice responses named no letter and got a "
        f"seeded random one (random.Random({result['seed']}), official order)"
    )
    t.caption_justify = "left"
    return t


@app.command()
def score(
    predictions: Path = typer.Argument(
        ..., help="JSON list (or .jsonl) of raw responses: id, question_type, answer, all_choices and index2ans (or "
        "options), response; a run's are in runs/RUN/eval/responses.json."
    ),
    json_: bool = typer.Option(
        False, "--json", help="Print per-subject, per-discipline and overall as JSON."
    ),
    out: Path = typer.Option(
        None, "--out", help="Write predictions.jsonl, judgements.jsonl, summary.json, disciplines.md here."
    ),
    subjects: bool = typer.Option(False, "--subjects", help="Show each subject's row under its discipline."),
) -> None:
    """Score raw MMMU responses: parse each (official rules, seeded random fallback), judge, aggregate.

    Accuracy is per subject, then instance-weighted (micro) per discipline and overall.

    Records are scored in the official order whatever the file's order, so the random fallback repeats.
    A question_type other than "multiple-choice" (such as "open" or "short-answer") is scored as open, as the
    official scorer does; the summary counts the records of each type.

    Exit 0, or 2 on a bad file (the message names the file, the record and the field).

    Examples:

      kit mmmu score runs/RUN/eval/responses.json

      kit mmmu score responses.json --subjects

      kit mmmu score responses.json --json --out runs/RUN/eval/mmmu
    """
    try:
        result = mmmu.score(mmmu.load_predictions(predictions), source=str(predictions))
        if out is not None:
            mmmu.write_outputs(out, result, protect=[predictions])
    except mmmu.MMMUError as e:
        err.print(f"[bold red]error:[/] {escape(str(e))}")
        raise typer.Exit(2) from None
    if json_:
        typer.echo(json.dumps(mmmu.jsonable(mmmu.summary(result)), indent=2))
    else:
        console.print(table(result, subjects))
        console.print(f"records by question type: {escape(mmmu.declared_types_text(result))}", soft_wrap=True,
                      highlight=False)  # fmt: skip
    if out is not None and not json_:
        console.print(f"wrote {', '.join(mmmu.OUTPUT_FILES)} to {escape(str(out))}")

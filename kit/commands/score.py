"""`kit <eval set> score`: score raw responses on the host with the case's own scorer, so the same responses always
give the same score and a corrected parser rescores old runs. One command group per registered case's scorer,
named by the case (kit/case `Scorer.command`); the host draws the table the scorer describes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from kit import case as cases

console = Console()
err = Console(stderr=True)


def render(table: dict[str, Any]) -> Table:
    """A scorer's table description (title, columns, rows with cells and marks, caption) as a Rich table."""
    t = Table(title=table["title"], title_justify="left")
    for i, col in enumerate(table["columns"]):
        t.add_column(col, justify="left" if i == 0 else "right")
    for row in table["rows"]:
        if row.get("section"):
            t.add_section()
        cells = [escape(c) for c in row["cells"]]
        t.add_row(*([f"[bold]{c}[/]" for c in cells] if row.get("bold") else cells))
    if table.get("caption"):
        t.caption, t.caption_justify = table["caption"], "left"
    return t


def group(scorer: Any) -> typer.Typer:
    """The command group of one scorer: `kit <scorer.command> score`."""
    app = typer.Typer(name=scorer.command, no_args_is_help=True, add_completion=False,
                      rich_markup_mode="rich", context_settings={"help_option_names": ["-h", "--help"]})  # fmt: skip

    def score(
        responses: Path = typer.Argument(..., metavar="RESPONSES", help=scorer.file_help),
        json_: bool = typer.Option(False, "--json", help="Print the scores (every level) as JSON."),
        out: Path = typer.Option(None, "--out", help=f"Write {', '.join(scorer.outputs)} here."),
        subjects: bool = typer.Option(False, "--subjects", help="Show the finer rows under each group."),
    ) -> None:
        try:
            result = scorer.score_file(responses)
            if out is not None:
                scorer.write(out, result, protect=(responses,))
        except scorer.error as e:
            err.print(f"[bold red]error:[/] {escape(str(e))}")
            raise typer.Exit(2) from None
        if json_:
            typer.echo(json.dumps(scorer.summary(result), indent=2))
        else:
            table = scorer.table(result, subjects)
            console.print(render(table))
            for note in table.get("notes") or []:
                console.print(escape(note), soft_wrap=True, highlight=False)
        if out is not None and not json_:
            console.print(f"wrote {', '.join(scorer.outputs)} to {escape(str(out))}")

    def main() -> None:
        pass

    main.__doc__ = f"{scorer.about}\n\n{getattr(scorer, 'examples', '')}".strip()
    app.callback()(main)  # a group, so `kit mmmu score FILE` keeps its subcommand even with one command
    score.__doc__ = scorer.score_help
    app.command("score")(score)
    return app


def groups() -> list[typer.Typer]:
    """A group per registered case that has a scorer (one command name once, whichever case registers it first)."""
    seen, out = set(), []
    for c in cases.registered().values():
        scorer = getattr(c, "scorer", None)
        if scorer is not None and scorer.command not in seen:
            seen.add(scorer.command)
            out.append(group(scorer))
    return out

"""`kit data`: fetch, verify and fix a case's data and weights (kit/data/)."""

from __future__ import annotations

import typer

from kit.commands.data_fetch import fetch
from kit.commands.data_verify import fix, verify

app = typer.Typer(
    help="The case's data and weights: fetch them, verify a copy record by record, fix what can be fixed.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.command("fetch")(fetch)
app.command("verify")(verify)
app.command("fix")(fix)

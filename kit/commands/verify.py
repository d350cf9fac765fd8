"""`kit verify`: check a submission from its raw facts; it changes nothing in it."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

console = Console()
err = Console(stderr=True)
STYLE = {"pass": "green", "warn": "yellow", "fail": "bold red"}


def verify(
    submission: Path = typer.Argument(..., metavar="SUBMISSION", help="A submission folder or its .tar.gz."),
    allowed_signers: Path = typer.Option(None, "--allowed-signers", help="ssh allowed_signers file: check the signature."),
    as_json: bool = typer.Option(False, "--json", help="The checker report as JSON."),
) -> None:
    """Check a submission: manifest, signature, system, layout, completeness, the rules, every figure recomputed.

    Exits 0 only when every check passes (warnings allowed), 1 when any fails, 2 when it is not a submission.

    Examples:

      kit verify submissions/acme.tar.gz

      kit verify submissions/acme --allowed-signers allowed_signers --json
    """
    from ..submission import SubmissionError
    from ..verify import verify as run_verify

    try:
        rep = run_verify(submission, allowed_signers)
    except SubmissionError as e:
        err.print(f"[bold red]error:[/] {escape(str(e))}")
        raise typer.Exit(2) from None
    if as_json:
        print(json.dumps(rep.to_dict(), indent=2))
        raise typer.Exit(0 if rep.ok else 1)
    sub = rep.submission
    title = (f"{sub.get('submitter', '?')} / {sub.get('system', '?')}: {sub.get('case', '?')}, "
             f"{sub.get('division', '?')} division, {sub.get('category', '?')} category"
             + (", SYNTHETIC" if sub.get("synthetic") else ""))  # fmt: skip
    table = Table(title=title, title_justify="left")
    for col in ("check", "result", "where", "detail"):
        table.add_column(col, overflow="fold")
    for f in rep.findings:
        table.add_row(f.check, f"[{STYLE[f.status]}]{f.status}[/]", escape(f.where), escape(f.detail))
    console.print(table)
    fails = sum(f.status == "fail" for f in rep.findings)
    if rep.ok:
        console.print(f"[green]verified[/]: {escape(str(submission))} passes every check")
    else:
        console.print(f"[bold red]{fails} check(s) failed[/]: {escape(str(submission))} is not a valid submission")
    raise typer.Exit(0 if rep.ok else 1)

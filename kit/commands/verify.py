"""`kit verify`: check a submission from its raw facts; it changes nothing in it."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from kit.run.guard import Stop, stop_on_signals
from kit.submission import SubmissionError
from kit.submission.verifier import verify as run_verify
from kit.tables import print_table, whole

console = Console()
err = Console(stderr=True)
STYLE = {"pass": "green", "warn": "yellow", "fail": "bold red"}


def verify(
    submission: Path = typer.Argument(..., metavar="SUBMISSION", help="A submission folder or its .tar.gz."),
    allowed_signers: Path = typer.Option(None, "--allowed-signers", help="ssh allowed_signers file: check the signature."),
    strict: bool = typer.Option(False, "--strict", help="A reviewer's mode: fail what a reviewer must not accept "
                                "(synthetic runs, no signature, a declared peak, other rules, NaN losses)."),
    as_json: bool = typer.Option(False, "--json", help="The checker report as JSON."),
) -> None:
    """Check a submission: bounds, manifest, signature, layout, each run's completeness, consistency, clocks and
    devices, the rules, the runs against each other, the system description, every figure recomputed.

    Every check that ran is listed with its result, passes included. Exits 0 only when no check fails (warnings
    allowed; --strict fails them), 1 when any fails, 2 when the path is not a submission or crosses a bound.

    Examples:

      kit verify submissions/acme.tar.gz

      kit verify submissions/acme.tar.gz --allowed-signers allowed_signers --strict

      kit verify submissions/acme --json
    """

    try:
        with stop_on_signals():
            rep = run_verify(submission, allowed_signers, strict=strict)
    except SubmissionError as e:
        err.print(f"[bold red]error:[/] {escape(str(e))}")
        raise typer.Exit(2) from None
    except KeyboardInterrupt as e:
        err.print(f"kit verify: interrupted ({e.args[0] if isinstance(e, Stop) else 'SIGINT'}); nothing was changed")
        raise typer.Exit(128 + (e.signum if isinstance(e, Stop) else 2)) from None
    if as_json:
        print(json.dumps(rep.to_dict(), indent=2))
        raise typer.Exit(0 if rep.ok else 1)
    sub = rep.submission
    title = (f"{sub.get('submitter', '?')} / {sub.get('system', '?')}: {sub.get('case', '?')}, "
             f"{sub.get('division', '?')} division, {sub.get('category', '?')} category"
             + (", SYNTHETIC" if sub.get("synthetic") else "") + (", strict" if strict else ""))  # fmt: skip
    table = Table(title=title, title_justify="left")
    for col in ("check", "result", "where", "detail"):
        table.add_column(col, overflow="fold")
    for f in rep.findings:
        table.add_row(f.check, f"[{STYLE[f.status]}]{f.status}[/]", escape(f.where), escape(f.detail))
    print_table(console, whole(table, "where"))  # paths stay whole, so they can be copied
    fails = sum(f.status == "fail" for f in rep.findings)
    warns = sum(f.status == "warn" for f in rep.findings)
    passes = len({f.check for f in rep.findings if f.status == "pass"})
    if rep.ok:
        console.print(f"[green]verified[/]: {escape(str(submission))} passes every check ({passes} checks passed, "
                      f"{warns} warning(s){'' if strict else '; --strict fails those a reviewer must not accept'})")
    else:
        console.print(f"[bold red]{fails} check(s) failed[/]: {escape(str(submission))} is not a valid submission")
    raise typer.Exit(0 if rep.ok else 1)

"""`kit compare`: several submissions or runs side by side, in the reference table's shape, with ratios."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from kit.results.entries import Comparison, build
from kit.results.render_compare import render_csv, render_json, render_markdown, render_text, table_renderable
from kit.results.render_html import render_html
from kit.submission import SubmissionError

err = Console(stderr=True)
RENDERERS = {"table": render_text, "markdown": render_markdown, "json": render_json, "csv": render_csv,
             "html": render_html}  # fmt: skip
FORMATS = tuple(RENDERERS)


def render(c: Comparison, fmt: str = "table") -> str:
    """The comparison as text in one of FORMATS (table: plain text without colour codes)."""
    if fmt not in RENDERERS:
        raise ValueError(f"unknown format {fmt!r}: choose one of {', '.join(FORMATS)}")
    return RENDERERS[fmt](c)


def compare(
    inputs: list[Path] = typer.Argument(
        ..., metavar="SUBMISSION|RUN...", help="Submission folders, submission .tar.gz files or run directories."
    ),
    reference: bool = typer.Option(False, "--reference", help="Add the seed's published rows (A800 1x8)."),
    baseline: str = typer.Option(
        None, "--baseline", metavar="LABEL",
        help="The entry every ratio is against: its label (or a unique part, or its position 1..N), or 'seed' with "
        "--reference. Default: the first input.",
    ),  # fmt: skip
    format: str = typer.Option("table", "--format", "-f", help="table, markdown, json, csv or html."),
    out: Path = typer.Option(None, "--out", "-o", metavar="FILE", help="Write the output to FILE instead of stdout."),
) -> None:
    """Compare systems: one row per system and stage, the olympic mean over each system's runs, ratios to a baseline.

    Every figure is recomputed from the runs' raw facts. Ratios between entries that differ in synthetic data,
    category, division or model shape say "not comparable: <why>" instead of a number.

    Examples:

      kit compare submissions/acme.tar.gz submissions/globex --reference

      kit compare submissions/acme runs/20261129-101500-llava1_5_7b-tiny-1a2b --baseline 2

      kit compare submissions/acme.tar.gz --reference --baseline seed --format markdown --out compare.md

      kit compare submissions/acme submissions/globex --format html --out compare.html
    """
    if format not in FORMATS:
        err.print(f"[bold red]error:[/] --format {escape(format)!r}: expected {', '.join(FORMATS)}")
        raise typer.Exit(2)
    try:
        c = build(list(inputs), reference=reference, baseline=baseline)
    except SubmissionError as e:
        err.print(f"[bold red]error:[/] {escape(str(e))}", soft_wrap=True)
        raise typer.Exit(2) from None
    if out is not None:
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(render(c, format), encoding="utf-8")
        except OSError as e:
            err.print(f"[bold red]error:[/] --out {escape(str(out))}: {escape(str(e))}", soft_wrap=True)
            raise typer.Exit(2) from None
        err.print(f"wrote {escape(str(out))} ({format}, {len(c.entries)} system(s))")
        return
    if format == "table":
        # A pipe or a file gets the whole table rather than one squeezed to 80 columns.
        wide = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 200
        Console(width=wide).print(table_renderable(c))
    else:
        sys.stdout.write(render(c, format))

"""`kit data fetch`: download the case's data and weights into the layout `kit run --data/--models` reads."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from kit.commands.data_verify import signals_as_interrupts
from kit.data import fetch as f
from kit.data.http import human
from kit.run.guard import Stop, exit_code

console = Console()
err = Console(stderr=True)
STYLE = {"fetched": "green", "already there": "green", "would fetch": "cyan", "failed": "bold red", "skipped": "yellow"}


def fetch(
    data: Path = typer.Option(None, "--data", help="Data root: what `kit run --data` reads."),
    models: Path = typer.Option(None, "--models", help="Weights root (what `kit run --models` reads); without it the weights are left out."),
    only: list[str] = typer.Option(None, "--only", metavar="SOURCE", help="Fetch only these sources (repeat, or comma-separated)."),
    mirror: str = typer.Option("", "--mirror", metavar="URL", help="Serve every http and covers source from URL/<source>/<file name>."),
    url: list[str] = typer.Option(None, "--url", metavar="SOURCE=URL", help="Replace one http or covers source's URL (repeatable)."),
    hf_endpoint: str = typer.Option("", "--hf-endpoint", metavar="URL", help="Hugging Face hub or mirror (default: HF_ENDPOINT, else huggingface.co)."),
    keep_archives: bool = typer.Option(False, "--keep-archives", help="Keep each zip after it is unpacked."),
    jobs: int = typer.Option(16, "--jobs", help="Covers fetched at once (a covers source, e.g. OCR-VQA)."),
    case: str = typer.Option(None, "--case", help="The case whose data-sources.toml is read (default: the only case registered)."),
    sources: Path = typer.Option(None, "--sources", metavar="FILE", help="Another data-sources.toml (a site's own URLs)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print what would be fetched, from where, to where, and the disk it needs; write nothing."),
) -> None:
    """Download every source of the case's data-sources.toml: resumable, checksummed, unpacked in place.

    An interrupted run continues where it stopped; a second run finds everything done and says so. Exits 0 when
    every source is there (warnings allowed), 1 when a source failed (the others are still fetched), 2 on bad
    usage, 130 when interrupted.

    Examples:

      kit data fetch --data /data/llava --models /models --url ocr_vqa=file:///tmp/dataset.json

      kit data fetch --data /data/llava --only coco,gqa --dry-run

      HF_TOKEN=hf_... kit data fetch --data /data/llava --models /models --only vicuna,clip
    """

    names = [n.strip() for item in (only or []) for n in item.split(",") if n.strip()]
    opts = f.Options(data=data, models=models, only=names, mirror=mirror, hf_endpoint=hf_endpoint,
                     keep_archives=keep_archives, jobs=jobs, case=case, sources_file=sources, dry_run=dry_run)
    try:
        with signals_as_interrupts():
            outcomes, left_out, verdict = f.fetch(opts, console, urls=list(url or []))
    except f.UsageError as e:
        err.print(f"[bold red]error:[/] {escape(str(e))}", soft_wrap=True)
        raise typer.Exit(2) from None
    except f.FetchError as e:
        err.print(f"[bold red]error:[/] {escape(str(e))}", soft_wrap=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt as e:  # Ctrl-C, SIGTERM, SIGHUP: the download threads end with this process
        by = f" by {e}" if isinstance(e, Stop) else " by SIGINT (Ctrl-C)"
        try:
            err.print(f"[yellow]interrupted[/]{by}: the partial downloads are kept under .kit-data/downloads/ in the "
                      "data and models folders; the next `kit data fetch` continues where this one stopped",
                      soft_wrap=True)  # fmt: skip
        except OSError:
            pass  # the terminal is gone (SIGHUP): the exit code still says it
        raise typer.Exit(exit_code(e, 130)) from None
    table = Table(title="kit data fetch" + (" (dry run)" if dry_run else ""), title_justify="left")
    for col in ("source", "status", "size", "checksum", "where"):
        table.add_column(col, overflow="fold")

    for o in outcomes:
        table.add_row(o.name, f"[{STYLE.get(o.status, '')}]{o.status}[/]", human(o.size) if o.size else "",
                      escape(o.checksum), escape(o.where))
    for s in left_out:
        table.add_row(s.name, "[yellow]skipped[/]", "", "", "weights: pass --models DIR")
    console.print(table)
    for o in outcomes:
        if o.status == "failed":
            console.print(f"[bold red]{o.name} failed:[/] {escape(o.message)}\n  fix: {escape(o.fix)}", soft_wrap=True)
        elif o.warning:
            console.print(f"[yellow]{o.name}:[/] {escape(o.warning)}", soft_wrap=True)
        elif o.message and o.status in ("would fetch", "already there"):
            console.print(f"{o.name}: {escape(o.message)}", soft_wrap=True, highlight=False)
    if left_out:
        console.print(f"left out: {', '.join(s.name for s in left_out)} (weights go under --models DIR, which was not "
                      "given)", soft_wrap=True, highlight=False)
    failed = any(o.status == "failed" for o in outcomes)
    console.print(f"[{'bold red' if failed else 'green'}]{escape(verdict)}[/]", soft_wrap=True)
    raise typer.Exit(1 if failed else 0)

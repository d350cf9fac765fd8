"""`kit submit`: pack finished runs of a case into a submission (raw facts, system description, manifest, tarball)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from kit.case import rules as rules_mod
from kit.errors import KitError
from kit.run.dir import RunDir
from kit.run.guard import Stop, stop_on_signals
from kit.submission import pack

console = Console()
err = Console(stderr=True)


def submit(
    runs: list[Path] = typer.Argument(..., metavar="RUN...", help="Finished run directories of one system and image."),
    system: Path = typer.Option(..., "--system", help="SYSTEM.toml: submitter, system_name, division, status, cooling."),
    out: Path = typer.Option(..., "--out", help="Where the submission folder, its .tar.gz and .sha256 are written."),
    allow_synthetic: bool = typer.Option(False, help="Pack synthetic runs (marked synthetic wherever shown)."),
    sign_key: Path = typer.Option(None, "--sign-key", help="ssh private key: sign manifest.json (ssh-keygen -Y sign)."),
    case: str = typer.Option(None, help="The case whose rules apply (default: the one the runs name)."),
) -> None:
    """Pack runs into a submission that `kit verify` checks and `kit compare` tabulates.

    Before it writes anything, kit submit runs every check kit verify will run on the runs (completeness,
    consistency, clocks, devices, the rules, the runs against each other, duplicates, the number of runs the
    category needs) and refuses, listing each failure, exit 2. The submission carries each run's raw facts
    (run.json, environment.json, inputs.json, config, status, every stage's events.log, rank logs and monitor
    samples, the MMMU responses and judgements, the build record), a system description filled from the runs'
    facts plus SYSTEM.toml, and a manifest with the sha256 and size of every file. Checkpoints, weights and
    generated data stay out (their sha256 is recorded). It is written under temporary names and renamed last:
    an interrupted or failed submit leaves nothing behind.

    Examples:

      kit submit runs/RUN1 runs/RUN2 runs/RUN3 --system system.toml --out submissions/

      kit submit runs/RUN1 runs/RUN2 runs/RUN3 --system system.toml --out submissions/ --sign-key ~/.ssh/id_ed25519
    """

    try:
        with stop_on_signals():
            rules = rules_mod.load(case or str(RunDir(runs[0]).request().get("case") or ""))
            packed = pack(list(runs), system, out, rules, allow_synthetic=allow_synthetic, sign_key=sign_key)
    except KitError as e:
        err.print(f"[bold red]error:[/] {escape(str(e))}")
        raise typer.Exit(2) from None
    except KeyboardInterrupt as e:
        err.print(f"kit submit: interrupted ({e.args[0] if isinstance(e, Stop) else 'SIGINT'}); nothing was left "
                  f"under {escape(str(out))}")  # fmt: skip
        raise typer.Exit(128 + (e.signum if isinstance(e, Stop) else 2)) from None
    mark = " [yellow](synthetic: measures the kit, not the case)[/]" if packed.synthetic else ""
    console.print(f"submission [bold]{escape(str(packed.root))}[/]{mark}: {len(runs)} run(s), category {packed.category}")
    if packed.breaks:
        console.print(f"open division: {len(packed.breaks)} break(s) of the fixed rules, listed in submission.json:")
        for b in packed.breaks:
            console.print(f"  - {escape(str(b))}")
    for f in [f for f in (packed.findings.items if packed.findings else []) if f.status == "warn"]:
        console.print(f"[yellow]warning[/] {escape(f'[{f.check}] {f.detail}')}")
    console.print(f"tarball   {escape(str(packed.tarball))}")
    console.print(f"sha256    {packed.sha256}")
    if packed.signature:
        console.print(f"signature {escape(str(packed.signature))}")
    console.print(f"check it: kit verify {escape(str(packed.tarball))}")

"""`kit submit`: placeholder while it is being written."""

from __future__ import annotations

import typer


def submit() -> None:
    """(being written)"""
    raise typer.Exit(2)

"""`kit compare`: placeholder while it is being written."""

from __future__ import annotations

import typer


def compare() -> None:
    """(being written)"""
    raise typer.Exit(2)

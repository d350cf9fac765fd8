"""`kit data fetch` (being written)."""

from __future__ import annotations

import typer


def fetch() -> None:
    """Download the case's data and weights."""
    raise typer.Exit(2)

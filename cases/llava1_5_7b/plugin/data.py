"""This case's data as the host sees it: the record validator and the data sources (standard library only)."""

from __future__ import annotations

from pathlib import Path

from ..records import CATEGORIES, ESCAPES, image_path_problem, record_issue, record_problem

SOURCES_TOML = Path(__file__).resolve().parent.parent / "data-sources.toml"

__all__ = ["CATEGORIES", "ESCAPES", "SOURCES_TOML", "image_path_problem", "record_issue", "record_problem"]

"""The reference a case's runs are set beside: its published rows (the case's reference.toml), its reference config
and the olympic-mean parameters of its rules, each read from the case, never named here."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from kit import case as cases
from kit.case import rules as rules_mod

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DEFAULT_OLYMPIC = {"drop": 1, "min_runs": 3}


def case_of(name: Any) -> cases.Case | None:
    """The registered case of that name, or None (a run of a case not installed here, or no case at all)."""
    if not isinstance(name, str) or not name:
        return None
    try:
        return cases.get(name)
    except cases.UnknownCase:
        return None


def load_reference(case: str | None, path: str | Path | None = None) -> list[dict[str, Any]]:
    """Rows of the case's reference.toml ([] for an unknown case or a case without one)."""
    if path is None:
        c = case_of(case)
        if c is None:
            return []
        path = Path(c.root) / "reference.toml"
    p = Path(path)
    if not p.is_file():
        return []
    return list(tomllib.loads(p.read_text()).get("row", []))


def primary(rows: list[dict[str, Any]], stage: str) -> dict[str, Any] | None:
    """The primary published row of one stage (the one every table sets beside a run), or None."""
    return next((r for r in rows if r.get("primary") and r.get("stage") == stage), None)


def row_label(row: dict[str, Any], case: str | None = None) -> str:
    """"seed A800 1x8 pretrain"; a row of another model than the case's names it ("... LLaVA-1.5-13B pretrain")."""
    c = case_of(case)
    model = "" if row.get("model") in (None, getattr(c, "title", None)) else f" {row['model']}"
    return f"{seed_label(row)}{model} {row.get('stage')}"


def seed_label(row: dict[str, Any]) -> str:
    """"seed A800 1x8": what the published system is called in every table."""
    return f"seed {row.get('device')} {row.get('nodes')}x{row.get('gpus_per_node')}"


def rules_of(case: str | None) -> tuple[rules_mod.Rules | None, str | None]:
    """(the case's rules, or None and why not)."""
    if not case:
        return None, "the run names no case"
    try:
        return rules_mod.load(case), None
    except Exception as e:  # noqa: BLE001 - an unknown case, a case without rules: nothing to compare with, say why
        return None, f"the case's rules cannot be read ({e})"


def reference_config(rules: rules_mod.Rules | None) -> dict[str, Any] | None:
    """The rules' reference config as a dict (the model and data a comparable run must have), or None."""
    if rules is None:
        return None
    try:
        return rules_mod.reference_for(rules, {}, False)
    except Exception:  # noqa: BLE001 - a rules file naming a config that does not load: no reference shape
        return None


def olympic(case: str | None) -> tuple[dict[str, int], str | None]:
    """The olympic-mean parameters of the case's rules ([olympic] drop, min_runs), or the default and why."""
    rules, why = rules_of(case)
    if rules is None:
        return dict(DEFAULT_OLYMPIC), f"olympic mean with drop 1, min_runs 3 (no rules for case {case!r}: {why})"
    return {"drop": int(rules.olympic["drop"]), "min_runs": int(rules.olympic["min_runs"])}, None

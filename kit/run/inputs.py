"""What a run reads, by content (inputs.json): collected before the first stage, and held against a resume's
corrected --data or --models, which may move the inputs but never change them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console

from kit.data import identity
from kit.run.dir import RunDir
from kit.run.request import RunRequest


def same_inputs(run: Path, req: RunRequest, cfg: Any, console: Console) -> str | None:
    """A corrected --data or --models may move the inputs, never change them: their digests must equal inputs.json's."""
    with console.status("hashing the corrected inputs: a resumed run must read the same bytes"):
        now = collect_inputs(req, cfg, None)
    before = RunDir(run).inputs() or {}
    for part, flag in (("data", "--data"), ("weights", "--models")):
        a, b = identity.digests(before).get(part), identity.digests(now).get(part)
        if a != b:
            return (f"{flag} {req.data if part == 'data' else req.models} holds other {part} than the run started with "
                    f"(digest {str(b)[:16]} vs {str(a)[:16]} in {run / 'inputs.json'}): a resumed run must read the same "
                    "inputs; point it at the same files, or start a new run")  # fmt: skip
    return None


def collect_inputs(req: RunRequest, cfg: Any, synthetic_dir: Path | None) -> dict[str, Any]:
    """inputs.json's facts: the sha256 of what the run reads, as the case declares it (kit/data/identity.py)."""
    return identity.collect(
        case=req.case, data=Path(req.data) if req.data else None, models=Path(req.models) if req.models else None,
        eval_data=Path(req.eval_data) if req.eval_data else None, synthetic_dir=synthetic_dir, stages=req.stages,
        config=cfg.to_dict(), cache_path=Path(req.results) / identity.CACHE_NAME,
    )  # fmt: skip

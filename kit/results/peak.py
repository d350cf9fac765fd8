"""The peak dense bf16 FLOP/s of an accelerator, from the data table env/accelerators.toml (MFU's denominator)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from kit.io import ENV

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ACCELERATORS_TOML = ENV / "accelerators.toml"


def load_accelerators(path: str | Path | None = None) -> list[dict[str, Any]]:
    """Rows of env/accelerators.toml (empty when the file is absent, e.g. a wheel without env/)."""
    p = Path(path) if path else ACCELERATORS_TOML
    if not p.is_file():
        return []
    return list(tomllib.loads(p.read_text()).get("accelerator", []))


def lookup_peak(
    device_name: str | None, device_type: str | None = None, table: list[dict[str, Any]] | None = None
) -> tuple[float | None, str]:
    """(peak dense bf16 FLOP/s, where it came from or why there is none). First matching row wins."""
    if device_type == "cpu" or (device_name or "").strip().lower() == "cpu":
        return None, "CPU has no peak FLOP/s in env/accelerators.toml (MFU is for accelerators)"
    if not device_name:
        return None, "the device name is unknown (no kit_facts yet); pass --peak-flops"
    rows = load_accelerators() if table is None else table
    norm = device_name.upper().replace("_", " ")
    for row in rows:
        if any(str(m).upper().replace("_", " ") in norm for m in row.get("match", [])):
            return float(row["peak_bf16_flops"]), f"{row.get('name', '?')}: {row.get('source', 'env/accelerators.toml')}"
    return None, f"device {device_name!r} is not in env/accelerators.toml; add a row or pass --peak-flops"

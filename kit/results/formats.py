"""One number format: the same figure prints the same way in `kit report`, `kit compare` and `kit ls`.

Every renderer formats a number through `fmt(value, kind)` (or the helper of its kind); a value that is not a
finite number prints as NA. Raw formats (json, csv) carry the numbers themselves, fractions as 0..1.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

NA = "n/a"


def is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def tps(v: Any) -> str:
    """Tokens per second: whole numbers with thousands separators from 100 up ("4,013"), one decimal below."""
    if not is_num(v):
        return NA
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:,.1f}"


def pct(v: Any) -> str:
    """A fraction as a percentage with two decimals, as the seed prints MFU; tiny values (CPU-sized models) keep
    two significant digits."""
    if not is_num(v):
        return NA
    return f"{v * 100:.2f}%" if v == 0 or abs(v) >= 1e-4 else f"{v * 100:.2g}%"


def acc(v: Any) -> str:
    """An accuracy (0..1) as a percentage with one decimal."""
    return f"{v * 100:.1f}%" if is_num(v) else NA


def ratio(v: Any) -> str:
    return f"{v:.2f}x" if is_num(v) else NA


def loss(v: Any) -> str:
    return f"{v:.4f}" if is_num(v) else NA


def gib(v: Any) -> str:
    return f"{v:.1f}" if is_num(v) else NA


def seconds(v: Any) -> str:
    """A step time: three significant digits."""
    return f"{v:.3g}" if is_num(v) else NA


def duration(v: Any) -> str:
    """A start-up or a wall time: one decimal."""
    return f"{v:.1f}" if is_num(v) else NA


def cv(v: Any) -> str:
    """A coefficient of variation (or a drift): a whole percentage."""
    return f"{v:.0%}" if is_num(v) else NA


def count(v: Any) -> str:
    return f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) else NA


KINDS: dict[str, Callable[[Any], str]] = {
    "tps": tps, "pct": pct, "acc": acc, "x": ratio, "loss": loss, "gib": gib, "s": seconds, "duration": duration,
    "cv": cv, "count": count,
}  # fmt: skip


def fmt(v: Any, kind: str) -> str:
    """`v` as its kind prints (KINDS); NA when it is no finite number."""
    return KINDS[kind](v)


def mem(used: Any, total: Any, published: bool = False) -> str:
    """Memory used/total: GiB measured by the kit ("60.9/80.0 GiB"), or a published row's GB as printed ("74/81 GB")."""
    if published:
        if not is_num(used):
            return "-"
        return f"{used:.0f}/{total:.0f} GB" if is_num(total) else f"{used:.0f} GB"
    if not is_num(used):
        return NA
    return f"{used:.1f}/{gib(total)} GiB"


def runtime_text(runtime: Any) -> str:
    """A vendor runtime (kit_facts `runtime`) in one cell: "ascend: import torch_npu; DS_ACCELERATOR=npu", the vendor
    alone when it declares nothing, NA for runs from before the device layer."""
    if not isinstance(runtime, dict) or not runtime.get("vendor"):
        return NA
    parts = [f"import {', '.join(map(str, runtime['imports']))}"] if runtime.get("imports") else []
    env = runtime.get("environment") if isinstance(runtime.get("environment"), dict) else {}
    parts += [f"{k}={v}" for k, v in sorted(env.items())]
    return f"{runtime['vendor']}: {'; '.join(parts)}" if parts else f"{runtime['vendor']} (nothing declared)"

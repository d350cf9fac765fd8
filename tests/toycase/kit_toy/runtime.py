"""The vendor's runtime, as the toy case applies it: what the host hands every rank in KIT_DEVICE_RUNTIME (JSON
{"vendor", "imports", "environment"}), applied before torch is imported, and recorded in kit_facts `runtime` as
the LLaVA case's device layer does (cases/llava1_5_7b/device.py). The toy computes on the CPU whatever the vendor;
the record says whose runtime was set up around it."""

from __future__ import annotations

import importlib
import json
import os
from typing import Any

RUNTIME_ENV = "KIT_DEVICE_RUNTIME"


def apply() -> dict[str, Any] | None:
    """Set the runtime's variables, then import its modules; what was applied, or None when none was given. A
    runtime the toy cannot read is an error that names the variable (a silent skip would make the record untrue)."""
    raw = os.environ.get(RUNTIME_ENV, "").strip()
    if not raw:
        return None
    try:
        data = json.loads(raw)
    except ValueError as e:
        raise SystemExit(f"{RUNTIME_ENV} is not JSON ({e}): {raw[:200]!r}") from None
    if not isinstance(data, dict) or not isinstance(data.get("vendor"), str):
        raise SystemExit(f"{RUNTIME_ENV} names no vendor: {raw[:200]!r}")
    env = {str(k): str(v) for k, v in (data.get("environment") or {}).items()}
    imports = [str(m) for m in data.get("imports") or []]
    os.environ.update(env)
    for module in imports:
        importlib.import_module(module)
    return {"vendor": data["vendor"], "imports": imports, "environment": env}


def line(runtime: dict[str, Any] | None) -> str:
    """The rank log's line about it."""
    if runtime is None:
        return f"{RUNTIME_ENV}: none given"
    return f"{RUNTIME_ENV} ({runtime['vendor']}) applied: environment {sorted(runtime['environment'])}, imports {runtime['imports']}"

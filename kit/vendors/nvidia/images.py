"""NVIDIA's image variants: which CUDA variant of a software stack this host's driver runs.

The variants are env/stacks.toml's rows with vendor = "nvidia" (a CUDA toolkit version each: 12.1 and 11.8 of the
reference stack, 13.0 of the current one); whether a driver runs one is env/cuda-drivers.toml's verdict (driver.py:
fully, only through minor-version compatibility, or not at all). `kit build --cuda auto` takes a stack's first
variant the driver runs fully, else its first run through minor-version compatibility (with a warning), else
refuses with the driver upgrade that makes one run, or another stack that runs here.
"""

from __future__ import annotations

import re
from typing import Any

from kit.image.stacks import stacks
from kit.vendors.base import Probe, VariantChoice
from kit.vendors.images import not_yet, variants_of
from kit.vendors.nvidia import driver as drv

VENDOR = "nvidia"
OPTION = "--cuda"
# nvidia/cuda:12.1.1-cudnn8-devel-ubuntu20.04, registry.local:5000/nvidia/cuda:11.8.0-runtime-ubuntu22.04
BASE_RE = re.compile(r"^(?:[\w.-]+(?::\d+)?/)*nvidia/cuda:(\d+\.\d+)")


def base_variant(image: str) -> str | None:
    """'nvidia/cuda:11.8.0-cudnn8-...' -> '11.8'; None for images whose name does not say."""
    m = BASE_RE.match(image or "")
    return m.group(1) if m else None


def reading(source: Any) -> tuple[str | None, int | None, str | None]:
    """(driver version, the CUDA version NVML reports as its integer, why there is no driver) from a Probe, a driver
    version string, or an opened NVML (pynvml, or a replay of a recording)."""
    if isinstance(source, Probe):
        cuda = None
        if source.toolkit and re.fullmatch(r"\d+\.\d+", source.toolkit):
            major, minor = source.toolkit.split(".")
            cuda = int(major) * 1000 + int(minor) * 10
        return source.driver, cuda, None if source.driver else (source.reason or "no driver reported")
    if isinstance(source, str):
        return source, None, None
    version = source.nvmlSystemGetDriverVersion()
    version = version.decode() if isinstance(version, bytes) else version
    try:
        return version, source.nvmlSystemGetCudaDriverVersion(), None
    except Exception:  # noqa: BLE001 - older drivers lack it; the table still answers
        return version, None, None


def _floor(cuda: str, table: dict[str, Any]) -> str | None:
    """The lowest driver that runs a CUDA variant at all (its major version's minor-version compatibility floor)."""
    return table["compat"].get(cuda.split(".")[0])


def choose(vendor: Any, source: Any, stack: str) -> VariantChoice:
    """The variant of `stack` the driver in `source` (a Probe, a driver version, an opened NVML) runs."""

    rows = variants_of(VENDOR, stack)
    if not rows:
        return not_yet(vendor, stack)
    order = [v.name for v in rows]
    table = drv.load_table()
    version, cuda_reported, missing_why = reading(source)
    if version is None:
        floors = [f"{OPTION} {c}" + (f" (driver >= {_floor(c, table)})" if _floor(c, table) else "") for c in order]
        return VariantChoice(None, f"{OPTION} auto reads the driver through NVML, and NVML is not available here "
                             f"({missing_why})", fix=f"pass {' or '.join(floors)} for the host the image will run on")  # fmt: skip
    try:
        verdict = drv.assess(version, cuda_reported)
    except ValueError as e:
        return VariantChoice(None, f"cannot read the driver version: {e}",
                             fix=f"pass {' or '.join(f'{OPTION} {c}' for c in order)}")  # fmt: skip
    by = {v.cuda: v for v in verdict.variants}
    missing = [c for c in order if c not in by]
    if missing:
        return VariantChoice(None, f"env/cuda-drivers.toml has no [[variant]] for CUDA {', '.join(missing)} of the "
                             f"{stack} stack", fix="add it there (cuda, stack, build), as for the others")  # fmt: skip
    first = by[order[0]]
    for want in ("full", "compat"):
        for c in order:
            v = by[c]
            if v.support != want:
                continue
            warns = [f"{v.detail}; {v.fix}"] if want == "compat" else []
            if c != order[0]:
                why = f"driver {version} cannot run CUDA {order[0]} fully ({first.detail}); {v.detail}"
            elif want == "full":
                why = f"driver {version} fully supports CUDA {c} (newest full: {verdict.newest_full})"
            else:
                why = f"driver {version}: {v.detail}"
            return VariantChoice(c, why, warns)
    toolkits = {t["cuda"]: drv.parse_version(t["min_driver"]) for t in table["toolkits"]}
    easiest = min(order, key=lambda c: toolkits.get(c, (1 << 30,)))
    all_stacks = stacks()
    what = (f"no image variant runs on driver {version}" if stack == all_stacks.default
            else f"no variant of the {stack} stack runs on driver {version}")  # fmt: skip
    fix = by[easiest].fix
    for name in all_stacks.names():
        runs = [v.name for v in all_stacks.get(name).of_vendor(VENDOR) if v.name in by and by[v.name].support != "none"]
        if name != stack and runs:
            fix += f"; or build the {name} stack (`kit build --stack {name}`), whose CUDA {runs[0]} variant runs on this driver"
            break
    return VariantChoice(None, f"{what}: " + "; ".join(by[c].detail for c in sorted(order, key=lambda c: c != easiest)),
                         fix=fix)  # fmt: skip

"""Driver verdicts: which CUDA the driver fully supports, and whether each image variant runs on it.

The most common reason a reproduction kit fails on a user's host is a driver too old for the image's CUDA.
The table of minimum drivers is data (`env/cuda-drivers.toml`, from the CUDA release notes); this module
only compares versions. A variant runs

- fully: the driver supports its toolkit (the driver's own CUDA version, as NVML reports it, is at least the
  variant's, or the driver is at least the table's minimum);
- only through minor-version compatibility: the driver is at or above the floor of the variant's major
  version (11.x: 450.80.02, 12.x: 525.60.13). Limited: no PTX JIT, so every kernel must ship SASS for the GPU,
  and APIs newer than the driver fail;
- not at all.

Each variant belongs to a software stack (env/stacks.toml: `reference`, `current`); `kit check-host` also says,
per stack, whether this driver runs it and which variant `kit build --stack NAME --cuda auto` would take.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from kit.checks import Check

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

CUDA_DRIVERS_TOML = Path(__file__).resolve().parents[3] / "env" / "cuda-drivers.toml"
COMPAT_LIMITS = "no PTX JIT: every kernel must ship SASS for this GPU; APIs newer than the driver fail"

Support = Literal["full", "compat", "none"]


def parse_version(text: str) -> tuple[int, ...]:
    """'470.141.10' -> (470, 141, 10); '455.32' -> (455, 32, 0), so that versions compare as tuples."""
    parts = text.strip().split(".")
    if not parts or not all(p.isdigit() for p in parts):
        raise ValueError(f"not a driver version: {text!r} (expected digits and dots, e.g. 535.104.05)")
    nums = tuple(int(p) for p in parts)
    return nums + (0,) * (3 - len(nums))


def cuda_from_nvml(value: int | None) -> str | None:
    """nvmlSystemGetCudaDriverVersion's integer (13000, 12020) as '13.0', '12.2'."""
    if value is None:
        return None
    return f"{value // 1000}.{(value % 1000) // 10}"


def _cuda_key(cuda: str) -> tuple[int, int]:
    major, minor = cuda.split(".")[:2]
    return int(major), int(minor)


@functools.lru_cache(maxsize=4)
def load_table(path: Path = CUDA_DRIVERS_TOML) -> dict[str, Any]:
    """env/cuda-drivers.toml as {'toolkits': [...], 'compat': {major: floor}, 'variants': [...]}."""
    data = tomllib.loads(Path(path).read_text())
    toolkits = sorted(data["toolkit"], key=lambda t: _cuda_key(t["cuda"]))
    return {"toolkits": toolkits, "compat": dict(data["minor_version_compatibility"]), "variants": data["variant"]}


@dataclass
class VariantVerdict:
    cuda: str
    support: Support
    detail: str
    fix: str = ""


@dataclass
class DriverVerdict:
    driver: str
    cuda_reported: str | None  # what the driver says it supports (NVML), None when not asked
    newest_full: str | None  # the newest toolkit this driver fully supports
    compat_majors: list[str]  # major versions reachable through minor-version compatibility
    variants: list[VariantVerdict] = field(default_factory=list)


def assess(driver: str, cuda_reported: int | None = None, table: dict[str, Any] | None = None) -> DriverVerdict:
    """Compare a driver version (and the CUDA version NVML reports for it) with the table."""
    table = table or load_table()
    d = parse_version(driver)
    reported = cuda_from_nvml(cuda_reported)

    def full_driver(t: dict[str, str]) -> tuple[int, ...]:
        return parse_version(t.get("ga_driver", t["min_driver"]))

    full = [t["cuda"] for t in table["toolkits"] if d >= full_driver(t)]
    newest = full[-1] if full else None
    if reported and (newest is None or _cuda_key(reported) > _cuda_key(newest)):
        newest = reported  # a driver newer than the table: trust what it says it supports
    compat = sorted((m for m, floor in table["compat"].items() if d >= parse_version(floor)), key=int)
    by_cuda = {t["cuda"]: t for t in table["toolkits"]}
    verdicts = [_variant(d, driver, v, by_cuda.get(v["cuda"]), newest, table) for v in table["variants"]]
    return DriverVerdict(driver, reported, newest, compat, verdicts)


def _variant(
    d: tuple[int, ...], driver: str, variant: dict[str, str], row: dict[str, str] | None, newest: str | None,
    table: dict[str, Any],
) -> VariantVerdict:
    cuda = variant["cuda"]
    need = row["min_driver"] if row else "?"
    floor = table["compat"].get(cuda.split(".")[0])
    fully = (newest is not None and _cuda_key(newest) >= _cuda_key(cuda)) or (row is not None and d >= parse_version(need))
    if fully:
        return VariantVerdict(cuda, "full", f"CUDA {cuda} image runs fully on driver {driver}")
    if floor and d >= parse_version(floor):
        return VariantVerdict(
            cuda, "compat",
            f"CUDA {cuda} image runs only through minor-version compatibility on driver {driver} ({COMPAT_LIMITS})",
            f"upgrade the NVIDIA driver to >= {need} for full CUDA {cuda} support",
        )  # fmt: skip
    reach = f" (>= {floor} runs it through minor-version compatibility)" if floor else ""
    return VariantVerdict(
        cuda, "none", f"CUDA {cuda} image cannot run on driver {driver}: it needs >= {need}{reach}",
        f"upgrade the NVIDIA driver to >= {need}{reach}",
    )  # fmt: skip


def driver_checks(driver: str, cuda_reported: int | None = None) -> list[Check]:
    """The driver's verdict and one check per image variant. A variant that cannot run fails the host only
    when no variant can: the host is ready if one of the kit's images runs on it."""
    try:
        v = assess(driver, cuda_reported)
    except ValueError as e:
        return [Check("driver", "driver", "fail", str(e), "reinstall the NVIDIA driver (nvidia-smi must print its version)")]
    reach = ", ".join(f"{m}.x (>= {load_table()['compat'][m]})" for m in v.compat_majors) or "none"
    data = {"driver": driver, "cuda_reported": v.cuda_reported, "newest_full": v.newest_full, "compat": v.compat_majors}
    checks = [
        Check(
            "driver", "driver",
            "ok" if v.newest_full else "fail",
            f"{driver}: full support up to CUDA {v.newest_full or 'none'}; minor-version compatibility: {reach}",
            "" if v.newest_full else f"upgrade the NVIDIA driver to >= {load_table()['toolkits'][0]['min_driver']}",
            data,
        )  # fmt: skip
    ]
    runnable = [x for x in v.variants if x.support != "none"]
    rows = load_table()["variants"]
    builds = {b["cuda"]: b["build"] for b in rows}
    stack_of = {b["cuda"]: b.get("stack", "reference") for b in rows}
    best = next((x for x in v.variants if x.support == "full"), runnable[0] if runnable else None)
    best_build = builds.get(best.cuda) if best else None
    for x in v.variants:
        status = {"full": "ok", "compat": "warn", "none": "warn" if runnable else "fail"}[x.support]
        fix = x.fix
        if x.support == "none" and best_build:
            fix = f"{fix}; or use an image variant that runs here: {best_build}"
        stack = stack_of.get(x.cuda, "reference")
        name = f"image CUDA {x.cuda}" + ("" if stack == "reference" else f" ({stack} stack)")
        checks.append(Check("driver", name, status, x.detail, fix, {"cuda": x.cuda, "support": x.support, "stack": stack}))
    checks += stack_checks(v, rows)
    return checks


def stack_verdicts(verdict: DriverVerdict, rows: list[dict[str, str]] | None = None) -> dict[str, dict[str, Any]]:
    """Per stack (in the table's order): the variant `kit build --stack NAME --cuda auto` would take on this
    driver (its first variant run fully, else the first run through minor-version compatibility) and how it
    runs, or None when none of its variants runs."""
    rows = rows if rows is not None else load_table()["variants"]
    by = {x.cuda: x for x in verdict.variants}
    out: dict[str, dict[str, Any]] = {}
    for row in rows:
        stack = row.get("stack", "reference")
        out.setdefault(stack, {"stack": stack, "variants": [], "variant": None, "support": "none"})
        out[stack]["variants"].append(row["cuda"])
    for st in out.values():
        for want in ("full", "compat"):
            pick = next((c for c in st["variants"] if c in by and by[c].support == want), None)
            if pick:
                st["variant"], st["support"] = pick, want
                break
    return out


def stack_checks(verdict: DriverVerdict, rows: list[dict[str, str]] | None = None) -> list[Check]:
    """One row per software stack: which variant of it this driver runs. A stack that cannot run warns while
    another stack runs (the host can run the kit), and fails when none can."""
    stacks = stack_verdicts(verdict, rows)
    any_runs = any(st["variant"] for st in stacks.values())
    by = {x.cuda: x for x in verdict.variants}
    out = []
    for name, st in stacks.items():
        flag = "" if name == "reference" else f" --stack {name}"
        if st["variant"]:
            how = "fully" if st["support"] == "full" else "only through minor-version compatibility"
            detail = (f"runs {how} on driver {verdict.driver} with its CUDA {st['variant']} variant "
                      f"(`kit build{flag} --cuda auto` takes it)")  # fmt: skip
            status, fix = ("ok", "") if st["support"] == "full" else ("warn", by[st["variant"]].fix)
        else:
            first = by.get(st["variants"][0])
            detail = f"no variant runs on driver {verdict.driver} (CUDA {', '.join(st['variants'])})"
            status = "warn" if any_runs else "fail"
            fix = first.fix if first else "add the variant to env/cuda-drivers.toml"
            others = [n for n, o in stacks.items() if o["variant"] and n != name]
            if others:
                fix += f"; or use the {others[0]} stack, which runs here"
        out.append(Check("driver", f"stack {name}", status, detail, fix,
                         {"stack": name, "variant": st["variant"], "support": st["support"]}))  # fmt: skip
    return out


def nvml_driver_checks(nvml: Any) -> list[Check]:
    """driver_checks from NVML's readings (nvmlSystemGetDriverVersion, nvmlSystemGetCudaDriverVersion)."""
    driver = nvml.nvmlSystemGetDriverVersion()
    driver = driver.decode() if isinstance(driver, bytes) else driver
    try:
        cuda = nvml.nvmlSystemGetCudaDriverVersion()
    except nvml.NVMLError:
        cuda = None
    return driver_checks(driver, cuda)


def driver_from_proc(root: str | Path = "/") -> str | None:
    """The loaded kernel module's version (root/proc/driver/nvidia/version), for hosts where NVML is missing."""
    try:
        text = (Path(root) / "proc/driver/nvidia/version").read_text()
    except OSError:
        return None
    m = re.search(r"Kernel Module(?: for \S+)?\s+(\d+\.\d+(?:\.\d+)?)", text)
    return m.group(1) if m else None


def no_driver_check() -> Check:
    """The driver row of a host with no NVIDIA kernel module loaded: the lowest driver the kit's images need."""
    table = load_table()
    need = table["variants"]
    floor = min((r["min_driver"] for r in table["toolkits"] if r["cuda"] in {v["cuda"] for v in need}), key=parse_version)
    return Check(
        "driver", "driver", "fail", "no NVIDIA driver loaded (/proc/driver/nvidia/version is missing)",
        f"install an NVIDIA driver >= {floor} (the kit's images need CUDA {' or '.join(v['cuda'] for v in need)}) "
        "and reboot",
    )

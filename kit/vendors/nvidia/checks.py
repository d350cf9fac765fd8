"""GPU checks from NVML: the GPUs a run will use, read the way the driver sees them (no nvidia-smi parsing).

Every reading goes through the binding (`pynvml`, or `kit.vendors.nvidia.nvml.ReplayNVML` of a recording), so the same code
runs on a GPU host and in tests. An NVML error on one reading (NOT_SUPPORTED on a consumer GPU, say) means
"not reported": the check says so instead of failing the host.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from kit.checks import Check

GIB = 1024**3
# The seed's reference run peaked at 78 GB of 81 (nvidia-smi) on A800-80GB with micro batches 32 / 16.
REFERENCE_PEAK_GIB = 78

# Clock event ("throttle") reasons: bit -> (name, status, meaning). pynvml's nvmlClocksEventReason* values.
CLOCK_EVENTS: dict[int, tuple[str, str, str]] = {
    0x1: ("idle", "ok", "GPU idle (nothing running): clocks are low by design"),
    0x2: ("applications clocks setting", "warn", "application clocks are set below the maximum"),
    0x4: ("SW power cap", "warn", "software power capping holds clocks down (power limit reached or lowered)"),
    0x8: ("HW slowdown", "fail", "hardware slowdown: clocks cut by half or more (temperature, power brake or PSU)"),
    0x10: ("sync boost", "ok", "clocks synced with other GPUs of a sync-boost group"),
    0x20: ("SW thermal slowdown", "warn", "the driver lowers clocks to keep the GPU under its temperature target"),
    0x40: ("HW thermal slowdown", "fail", "the GPU is too hot: hardware cuts its clocks"),
    0x80: ("HW power brake", "fail", "an external power brake signal (system power supply) cuts the clocks"),
    0x100: ("display clock setting", "ok", "clocks follow the display clock setting"),
}
CLOCK_FIX = (
    "check cooling and power: `nvidia-smi -q -d PERFORMANCE,TEMPERATURE,POWER`; "
    "reset clocks with `nvidia-smi -rac` / restore the default power limit with `nvidia-smi -pl`"
)


class NotReported:
    """An NVML reading the device or driver does not give (NVMLError: NOT_SUPPORTED and the like)."""

    def __repr__(self) -> str:
        return "not reported"


NOT_REPORTED = NotReported()


def read(nvml: Any, fn: str, *args: Any) -> Any:
    """One NVML reading, or NOT_REPORTED when NVML answers with an error or the binding lacks the function."""
    try:
        func = getattr(nvml, fn)
    except AttributeError:
        return NOT_REPORTED
    try:
        value = func(*args)
    except nvml.NVMLError:
        return NOT_REPORTED
    return value.decode() if isinstance(value, bytes) else value


def decode_clock_events(mask: int) -> list[tuple[str, str, str]]:
    """The set bits of a clocks-event-reasons mask as (name, status, meaning)."""
    out = [CLOCK_EVENTS[bit] for bit in sorted(CLOCK_EVENTS) if mask & bit]
    unknown = mask & ~sum(CLOCK_EVENTS)
    if unknown:
        out.append(("unknown", "warn", f"reason bits {unknown:#x} this kit does not know"))
    return out


def gpu_checks(nvml: Any, expected: int, device: str = "") -> list[Check]:
    """All GPU checks on an opened NVML; `expected` is the config's GPUs per node, `device` its short name."""
    count = nvml.nvmlDeviceGetCount()
    handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
    checks = [_count(count, expected)]
    if not handles:
        return checks
    checks += [
        _models(nvml, handles, device),
        _memory(nvml, handles, device),
        _ecc(nvml, handles),
        _clocks(nvml, handles),
        _nvlink(nvml, handles),
        _processes(nvml, handles),
        _persistence(nvml, handles),
        _mig(nvml, handles),
    ]
    return checks


def _count(count: int, expected: int) -> Check:
    data = {"found": count, "expected": expected}
    if count >= expected:
        extra = f" ({count - expected} more than the config uses)" if count > expected else ""
        return Check("gpu", "GPU count", "ok", f"{count} GPUs, the config needs {expected}{extra}", data=data)
    fix = (
        f"run on a host with {expected} GPUs, or pick a config for {count} GPU(s) (`kit configs`), or pass "
        f"`--gpus {count}` to `kit run` (the global batch is kept through gradient accumulation)"
        if count
        else "install the NVIDIA driver and check `nvidia-smi` lists the GPUs"
    )
    return Check("gpu", "GPU count", "fail", f"{count} GPUs found, the config needs {expected} per node", fix, data)


def _models(nvml: Any, handles: list, device: str) -> Check:
    names = [read(nvml, "nvmlDeviceGetName", h) for h in handles]
    caps = [read(nvml, "nvmlDeviceGetCudaComputeCapability", h) for h in handles]
    counted = Counter(str(n) for n in names)
    shown = ", ".join(f"{k} x{v}" for k, v in counted.items())
    cc = {f"sm_{c[0]}{c[1]}" for c in caps if c is not NOT_REPORTED}
    data = {"names": [str(n) for n in names], "compute_capability": sorted(cc)}
    detail = f"{shown} ({', '.join(sorted(cc))})"
    if len(counted) > 1:
        return Check(
            "gpu", "GPU model", "warn", f"mixed GPU models: {detail}; the slowest paces every step",
            "use GPUs of one model (select them with CUDA_VISIBLE_DEVICES)", data,
        )  # fmt: skip
    if device and device.lower() != "cpu" and device.upper() not in str(names[0]).upper():
        detail += f"; the config was written for {device} (batches and offload are tuned for it)"
    return Check("gpu", "GPU model", "ok", detail, data=data)


def _memory(nvml: Any, handles: list, device: str) -> Check:
    infos = [read(nvml, "nvmlDeviceGetMemoryInfo", h) for h in handles]
    totals = [i.total for i in infos if i is not NOT_REPORTED]
    used = [i.used for i in infos if i is not NOT_REPORTED]
    if not totals:
        return Check("gpu", "GPU memory", "warn", "not reported by NVML", "check `nvidia-smi -q -d MEMORY`")
    data = {"total_bytes": totals, "used_bytes": used}
    detail = f"{min(totals) / GIB:.0f} GiB per GPU"
    if min(totals) < REFERENCE_PEAK_GIB * GIB and device.lower() != "cpu":
        return Check(
            "gpu", "GPU memory", "warn",
            f"{detail}: the reference batches peaked at {REFERENCE_PEAK_GIB} GB per GPU (A800-80GB, seed)",
            "lower the micro batch (`--set STAGE.micro_batch=N`, the global batch is kept) or offload optimizer "
            "state (`--set STAGE.offload_optimizer=0.3`) of the stage that needs the most memory", data,
        )  # fmt: skip
    return Check("gpu", "GPU memory", "ok", detail, data=data)


def _ecc(nvml: Any, handles: list) -> Check:
    unc, vol, agg = nvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, nvml.NVML_VOLATILE_ECC, nvml.NVML_AGGREGATE_ECC
    volatile, aggregate, disabled, unknown = [], [], [], []
    for i, h in enumerate(handles):
        mode = read(nvml, "nvmlDeviceGetEccMode", h)
        if mode is NOT_REPORTED:
            unknown.append(i)
            continue
        if not mode[0]:
            disabled.append(i)
            continue
        v = read(nvml, "nvmlDeviceGetTotalEccErrors", h, unc, vol)
        a = read(nvml, "nvmlDeviceGetTotalEccErrors", h, unc, agg)
        if v is not NOT_REPORTED and v > 0:
            volatile.append(f"GPU{i}: {v}")
        if a is not NOT_REPORTED and a > 0:
            aggregate.append(f"GPU{i}: {a}")
    data = {"volatile_uncorrected": volatile, "aggregate_uncorrected": aggregate, "disabled": disabled}
    if volatile:
        return Check(
            "gpu", "ECC", "fail",
            f"uncorrected ECC errors since the last driver load ({', '.join(volatile)}): results and runs are unreliable",
            "drain the GPU: `nvidia-smi -q -d ECC,PAGE_RETIREMENT,ROW_REMAPPER`, reset it (`nvidia-smi -r -i N`) "
            "or reboot; if errors return, have the GPU replaced", data,
        )  # fmt: skip
    if aggregate:
        return Check(
            "gpu", "ECC", "warn", f"uncorrected ECC errors in the GPU's lifetime ({', '.join(aggregate)}), none since the last driver load",
            "watch `nvidia-smi -q -d ECC,ROW_REMAPPER`; a GPU that keeps accumulating errors needs service", data,
        )  # fmt: skip
    if disabled:
        gpus = ", ".join(f"GPU{i}" for i in disabled)
        return Check(
            "gpu", "ECC", "warn", f"ECC disabled on {gpus}: memory errors would go unnoticed",
            "enable it: `sudo nvidia-smi -e 1` then reboot (consumer GPUs have no ECC)", data,
        )  # fmt: skip
    if unknown and len(unknown) == len(handles):
        return Check("gpu", "ECC", "ok", "not reported (GPU without ECC)", data=data)
    return Check("gpu", "ECC", "ok", "enabled, no uncorrected errors", data=data)


def _clocks(nvml: Any, handles: list) -> Check:
    worst, lines, masks = "ok", [], []
    for i, h in enumerate(handles):
        mask = read(nvml, "nvmlDeviceGetCurrentClocksEventReasons", h)
        if mask is NOT_REPORTED:
            mask = read(nvml, "nvmlDeviceGetCurrentClocksThrottleReasons", h)  # the older name
        masks.append(None if mask is NOT_REPORTED else mask)
        if mask is NOT_REPORTED:
            continue
        for name, status, meaning in decode_clock_events(mask):
            if status != "ok":
                lines.append(f"GPU{i}: {name} ({meaning})")
                worst = "fail" if "fail" in (worst, status) else "warn"
    data = {"masks": masks}
    if worst != "ok":
        return Check("gpu", "clock events", worst, "; ".join(lines), CLOCK_FIX, data)
    seen = sorted({n for m in masks if m for n, _, _ in decode_clock_events(m)})
    detail = "none" if not seen else ", ".join(seen)
    if all(m is None for m in masks):
        detail = "not reported"
    return Check("gpu", "clock events", "ok", detail, data=data)


def _nvlink(nvml: Any, handles: list) -> Check:
    max_links = getattr(nvml, "NVML_NVLINK_MAX_LINKS", 18)
    per_gpu: list[tuple[int, int]] = []  # (links up, links present)
    for h in handles:
        up = present = 0
        for link in range(max_links):
            state = read(nvml, "nvmlDeviceGetNvLinkState", h, link)
            if state is NOT_REPORTED:
                continue
            present += 1
            up += 1 if state else 0
        per_gpu.append((up, present))
    data = {"links_up": [u for u, _ in per_gpu], "links_present": [p for _, p in per_gpu]}
    if not any(p for _, p in per_gpu):
        return Check("gpu", "NVLink", "skip", "no NVLink (GPUs talk over PCIe)", data=data)
    shown = ", ".join(f"GPU{i} {u}/{p}" for i, (u, p) in enumerate(per_gpu))
    down = [i for i, (u, p) in enumerate(per_gpu) if u < p]
    if down:
        return Check(
            "gpu", "NVLink", "warn", f"links down: {shown} (up/present); traffic falls back to slower paths",
            "check `nvidia-smi nvlink -s` and `nvidia-smi topo -m`; on NVSwitch systems check nvidia-fabricmanager "
            "is running; reseat or service the GPU baseboard if links stay down", data,
        )  # fmt: skip
    return Check("gpu", "NVLink", "ok", f"all links up: {shown}", data=data)


def _processes(nvml: Any, handles: list) -> Check:
    found: list[dict[str, Any]] = []
    for i, h in enumerate(handles):
        seen: set[int] = set()
        for fn in ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetGraphicsRunningProcesses"):
            procs = read(nvml, fn, h)
            for p in [] if procs is NOT_REPORTED else procs:
                if p.pid in seen:
                    continue
                seen.add(p.pid)
                mem = getattr(p, "usedGpuMemory", None)
                found.append({"gpu": i, "pid": p.pid, "used_bytes": mem if isinstance(mem, int) else None})
    if not found:
        return Check("gpu", "other processes", "ok", "none on the GPUs", data={"processes": []})
    shown = ", ".join(
        f"GPU{p['gpu']} pid {p['pid']}" + (f" ({p['used_bytes'] / GIB:.1f} GiB)" if p["used_bytes"] is not None else "")
        for p in found
    )
    return Check(
        "gpu", "other processes", "warn", f"{shown}: they take memory and time from the run",
        "stop them (`nvidia-smi --query-compute-apps=pid,process_name,used_memory --format=csv`, then `kill PID`) "
        "or give the run other GPUs with CUDA_VISIBLE_DEVICES", {"processes": found},
    )  # fmt: skip


def _persistence(nvml: Any, handles: list) -> Check:
    modes = [read(nvml, "nvmlDeviceGetPersistenceMode", h) for h in handles]
    off = [i for i, m in enumerate(modes) if m is not NOT_REPORTED and not m]
    if off:
        return Check(
            "gpu", "persistence mode", "warn",
            f"off on {', '.join(f'GPU{i}' for i in off)}: every start re-initialises the GPU (seconds, and state is lost)",
            "`sudo nvidia-smi -pm 1`, or enable nvidia-persistenced", {"off": off},
        )  # fmt: skip
    return Check("gpu", "persistence mode", "ok", "on" if modes and all(m is not NOT_REPORTED for m in modes) else "not reported")


def _mig(nvml: Any, handles: list) -> Check:
    on = []
    for i, h in enumerate(handles):
        mode = read(nvml, "nvmlDeviceGetMigMode", h)
        if mode is not NOT_REPORTED and mode[0]:
            on.append(i)
    if on:
        return Check(
            "gpu", "MIG mode", "warn",
            f"MIG on for {', '.join(f'GPU{i}' for i in on)}: a run sees slices, not whole GPUs",
            "disable it: `sudo nvidia-smi -i N -mig 0` (then reset the GPU or reboot)", {"on": on},
        )  # fmt: skip
    return Check("gpu", "MIG mode", "ok", "off")


def no_nvml_check(reason: str, device: str = "") -> Check:
    """The single verdict of a host where NVML cannot start."""
    if device.lower() == "cpu":
        return Check("gpu", "GPUs", "skip", f"no NVML ({reason}); this config runs on CPU")
    return Check(
        "gpu", "GPUs", "fail", f"no NVIDIA GPU/driver: {reason}",
        "install the NVIDIA driver (`nvidia-smi` must list the GPUs) and the nvidia-ml-py package "
        "(`pip install nvidia-ml-py`)",
    )  # fmt: skip

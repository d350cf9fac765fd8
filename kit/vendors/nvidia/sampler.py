"""The monitor's NVIDIA sampler: every GPU through NVML each few seconds, as the vendor-neutral `Reading`.

A reading NVML refuses on a device (NOT_SUPPORTED and the like), or that an older recording does not hold, is None.
Clock-event ("throttle") bits are given by name (pynvml's nvmlClocksEventReason* names, upper case); the idle bit is
not throttling and is left out. `reasons()` gives the status of each name for kit/results/samples.py.
"""

from __future__ import annotations

from typing import Any

from kit.vendors.base import Reading
from kit.vendors.nvidia.checks import CLOCK_EVENTS, NOT_REPORTED, read

# NVML's clock-event bits by name (kit/vendors/nvidia/checks.py holds their meanings and statuses).
EVENT_NAMES = {
    0x1: "GPU_IDLE",
    0x2: "APPLICATIONS_CLOCKS_SETTING",
    0x4: "SW_POWER_CAP",
    0x8: "HW_SLOWDOWN",
    0x10: "SYNC_BOOST",
    0x20: "SW_THERMAL_SLOWDOWN",
    0x40: "HW_THERMAL_SLOWDOWN",
    0x80: "HW_POWER_BRAKE_SLOWDOWN",
    0x100: "DISPLAY_CLOCK_SETTING",
}
IDLE = "GPU_IDLE"
ORDER = {"ok": 0, "warn": 1, "fail": 2}


def event_names(mask: int) -> list[str]:
    """The set bits of a clocks-event-reasons mask, by name (unknown bits as hex)."""
    names = [EVENT_NAMES[bit] for bit in sorted(EVENT_NAMES) if mask & bit]
    unknown = mask & ~sum(EVENT_NAMES)
    if unknown:
        names.append(f"UNKNOWN_{unknown:#x}")
    return names


def reasons() -> dict[str, str]:
    """Each clock-event name's status: ok (by design), warn (clocks held down) or fail (hardware cuts them)."""
    return {EVENT_NAMES[bit]: status for bit, (_, status, _) in CLOCK_EVENTS.items()}


def _value(nvml: Any, fn: str, *args: Any) -> Any:
    """One reading, or None: NVML refused it, or (ReplayNVML's KeyError) an older recording does not hold it."""
    try:
        v = read(nvml, fn, *args)
    except KeyError:
        return None
    return None if v is NOT_REPORTED else v


class NvmlSampler:
    """One reading of every GPU through an opened NVML (pynvml, or a ReplayNVML of a recording)."""

    vendor = "nvidia"  # the monitor's start line names it as its source
    device_word = "GPU"

    def __init__(self, nvml: Any, owns_nvml: bool = True) -> None:
        self.nvml = nvml
        self.owns_nvml = owns_nvml
        self.count = nvml.nvmlDeviceGetCount()
        self.handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(self.count)]
        sm = getattr(nvml, "NVML_CLOCK_SM", 1)
        self._fixed = [
            {"index": i, "name": _value(nvml, "nvmlDeviceGetName", h),
             "clock_max_mhz": _value(nvml, "nvmlDeviceGetMaxClockInfo", h, sm)}
            for i, h in enumerate(self.handles)
        ]  # fmt: skip

    def fixed(self) -> list[dict[str, Any]]:
        return [dict(f) for f in self._fixed]

    def reasons(self) -> dict[str, str]:
        return reasons()

    def sample(self) -> list[Reading]:
        nvml = self.nvml
        sm = getattr(nvml, "NVML_CLOCK_SM", 1)
        temp = getattr(nvml, "NVML_TEMPERATURE_GPU", 0)
        status = reasons()
        out = []
        for i, h in enumerate(self.handles):
            util = _value(nvml, "nvmlDeviceGetUtilizationRates", h)
            mem = _value(nvml, "nvmlDeviceGetMemoryInfo", h)
            power = _value(nvml, "nvmlDeviceGetPowerUsage", h)
            limit = _value(nvml, "nvmlDeviceGetEnforcedPowerLimit", h)
            mask = _value(nvml, "nvmlDeviceGetCurrentClocksEventReasons", h)
            if mask is None:
                mask = _value(nvml, "nvmlDeviceGetCurrentClocksThrottleReasons", h)  # the older name
            names = [n for n in event_names(mask) if n != IDLE] if isinstance(mask, int) else None
            procs, seen = [], set()
            for fn in ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetGraphicsRunningProcesses"):
                for p in _value(nvml, fn, h) or []:
                    if p.pid in seen:
                        continue
                    seen.add(p.pid)
                    used = getattr(p, "usedGpuMemory", None)
                    procs.append({"pid": p.pid, "used_bytes": used if isinstance(used, int) and used >= 0 else None})
            worst = max((status.get(n, "warn") for n in names or []), key=ORDER.__getitem__, default="ok")
            out.append(Reading(
                index=i,
                util_pct=getattr(util, "gpu", None),
                mem_util_pct=getattr(util, "memory", None),
                mem_used_bytes=getattr(mem, "used", None),
                mem_total_bytes=getattr(mem, "total", None),
                power_w=power / 1000 if isinstance(power, (int, float)) else None,
                power_limit_w=limit / 1000 if isinstance(limit, (int, float)) else None,
                clock_mhz=_value(nvml, "nvmlDeviceGetClockInfo", h, sm),
                clock_max_mhz=self._fixed[i]["clock_max_mhz"],
                temp_c=_value(nvml, "nvmlDeviceGetTemperature", h, temp),
                throttle=names,
                throttle_status=worst if names is not None else None,
                processes=procs,
            ))  # fmt: skip
        return out

    def close(self) -> None:
        if self.owns_nvml:
            try:
                self.nvml.nvmlShutdown()
            except Exception:  # noqa: BLE001 - shutting down a binding that already failed is not news
                pass

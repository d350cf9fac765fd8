"""What a stage's monitor.jsonl says: the samples kit/run/monitor.py wrote, read back into counts, per-device and
host figures, the processes that were not the run's, and one-line warnings (docs/monitoring.md).

`monitor_summary()` is what `kit report` shows beside a stage's figures (its warnings join the stage's);
kit/results/plots.py draws the same samples over time.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from kit import vendors
from kit.run.monitor import GIB, MONITOR_NAME

# Warning thresholds (docs/monitoring.md).
OTHERS_CPU_WARN = 0.10  # other processes' mean share of the host's CPU capacity
STEAL_WARN = 0.10  # the hypervisor's mean share (steal time)
THROTTLE_WARN = 0.05  # fraction of samples with a "warn" throttle reason (a power cap, a clock setting)
# "fail" reasons (the vendor's hardware slowdowns: thermal, power brake) are flagged from a single sample.
BUSY_OTHER_PCT = 5.0  # an other process is "busy" when its mean CPU is at least this much of one core
# A device reading under the names of older runs' monitor.jsonl (written before the vendor seam): new -> old.
OLD_KEYS = {"util_pct": "util_gpu_pct", "mem_util_pct": "util_mem_pct", "clock_mhz": "sm_clock_mhz",
            "clock_max_mhz": "sm_clock_max_mhz", "throttle": "clock_event_names"}  # fmt: skip


def reading(d: dict[str, Any], key: str) -> Any:
    """One device reading of a sample, under its current name or the one older runs wrote."""
    v = d.get(key)
    return d.get(OLD_KEYS[key]) if v is None and key in OLD_KEYS else v


def _vendor_of(start: dict[str, Any]) -> Any:
    """The registered vendor whose samples carry the start line's `source` (None: the host alone, or not known)."""
    source = start.get("source")
    for name in vendors.names():
        try:
            v = vendors.get(name)
        except vendors.UnknownVendor:
            continue
        if source in getattr(v, "sources", (v.name,)):
            return v
    return None


def throttle_reasons(start: dict[str, Any]) -> dict[str, str]:
    """The statuses of the throttle reasons the samples name: the start line's table, or (older runs, which
    wrote none) the table of the vendor whose source the start line names."""
    table = start.get("throttle_reasons")
    if isinstance(table, dict):
        return {str(k): str(v) for k, v in table.items()}
    v = _vendor_of(start)
    return dict(v.reasons()) if v is not None and callable(getattr(v, "reasons", None)) else {}


def device_word(start: dict[str, Any]) -> str:
    """What the samples' devices are called ("GPU", "NPU"): the start line's word, or its vendor's."""
    v = None if start.get("device_word") else _vendor_of(start)
    return str(start.get("device_word") or getattr(v, "device_word", None) or "device")


def read_monitor(stage_dir: Path) -> tuple[list[dict[str, Any]], list[int]]:
    """The file's records and the numbers of lines that did not parse (a torn last line after a crash)."""
    path = Path(stage_dir) / MONITOR_NAME
    records, bad = [], []
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return [], []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            bad.append(n)
            continue
        if isinstance(rec, dict):
            records.append(rec)
        else:
            bad.append(n)
    return records, bad


def _num(values: list[Any]) -> list[float]:
    return [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]


def _mean(values: list[Any]) -> float | None:
    v = _num(values)
    return sum(v) / len(v) if v else None


def _max(values: list[Any]) -> float | None:
    v = _num(values)
    return max(v) if v else None


def _min(values: list[Any]) -> float | None:
    v = _num(values)
    return min(v) if v else None


def _median(values: list[Any]) -> float | None:
    v = _num(values)
    return statistics.median(v) if v else None


def _gib(n: float | None) -> str:
    return f"{n / GIB:.1f} GiB" if n is not None else "memory not reported"


def _who(p: dict[str, Any]) -> str:
    return f"{p.get('name') or '?'} (pid {p['pid']}"


def monitor_summary(stage_dir: Path) -> dict | None:
    """What `<stage>/monitor.jsonl` says: counts, per-device or host figures, foreign processes, and one-line
    warnings; None when the stage has no monitor file or no sample in it."""
    records, bad = read_monitor(stage_dir)
    samples = [r for r in records if r.get("type") == "sample" and isinstance(r.get("t"), (int, float))]
    errors = [r for r in records if r.get("type") == "error"]
    start = next((r for r in records if r.get("type") == "start"), {})
    if not samples:
        if errors:
            return {"samples": 0, "source": start.get("source"), "errors": [e.get("error") for e in errors],
                    "unreadable_lines": bad, "warnings": [f"the monitor stopped before its first sample: "
                                                          f"{errors[0].get('error')}"]}  # fmt: skip
        return None
    ts = [r["t"] for r in samples]
    gaps = [b - a for a, b in zip(ts, ts[1:], strict=False)]
    out: dict[str, Any] = {
        "samples": len(samples),
        "source": start.get("source") or ("device" if any("devices" in s for s in samples) else "host"),
        "interval_s": round(statistics.median(gaps), 3) if gaps else start.get("interval_s"),
        "span_s": round(ts[-1] - ts[0], 3),
        "errors": [e.get("error") for e in errors],
        "unreadable_lines": bad,
    }
    warnings: list[str] = []
    if errors:
        warnings.append(f"the monitor stopped early after {errors[0].get('samples', '?')} samples: {errors[0].get('error')}")
    if any("devices" in s for s in samples):
        _device_summary(samples, out, warnings, throttle_reasons(start), device_word(start))
    _host_summary(samples, out, warnings)
    out["warnings"] = warnings
    return out


def _device_summary(samples: list[dict[str, Any]], out: dict[str, Any], warnings: list[str],
                    reasons: dict[str, str], word: str = "device") -> None:
    per: dict[int, list[dict[str, Any]]] = {}
    for s in samples:
        for d in s.get("devices") or []:
            if isinstance(d, dict) and isinstance(d.get("index"), int):
                per.setdefault(d["index"], []).append(d)
    run_devices = sorted(i for i, ds in per.items() if any(p.get("ours") for d in ds for p in d.get("processes") or []))
    watched = run_devices or sorted(per)  # no process of the run seen on any GPU: judge them all
    devices: dict[str, Any] = {}
    foreign: list[dict[str, Any]] = []
    for i, ds in sorted(per.items()):
        lists = [reading(d, "throttle") for d in ds if isinstance(reading(d, "throttle"), list)]
        counts: dict[str, int] = {}
        for names in lists:
            for name in set(names):
                if reasons.get(name, "warn") != "ok":  # "ok" reasons are by design (idle, a sync group): not throttling
                    counts[name] = counts.get(name, 0) + 1
        throttle = {k: round(v / len(lists), 4) for k, v in sorted(counts.items())} if lists else {}
        devices[str(i)] = {
            "samples": len(ds),
            "util_pct_mean": _mean([reading(d, "util_pct") for d in ds]),
            "util_pct_max": _max([reading(d, "util_pct") for d in ds]),
            "mem_util_pct_mean": _mean([reading(d, "mem_util_pct") for d in ds]),
            "mem_used_bytes_max": _max([d.get("mem_used_bytes") for d in ds]),
            "mem_total_bytes": _max([d.get("mem_total_bytes") for d in ds]),
            "power_w_mean": _mean([d.get("power_w") for d in ds]),
            "power_w_max": _max([d.get("power_w") for d in ds]),
            "power_limit_w": _max([d.get("power_limit_w") for d in ds]),
            "clock_mhz_min": _min([reading(d, "clock_mhz") for d in ds]),
            "clock_mhz_median": _median([reading(d, "clock_mhz") for d in ds]),
            "clock_max_mhz": _max([reading(d, "clock_max_mhz") for d in ds]),
            "temp_c_max": _max([d.get("temp_c") for d in ds]),
            "throttle": throttle,
            "used_by_run": i in run_devices,
        }
        for name, frac in throttle.items():
            status = reasons.get(name, "warn")
            if i in watched and status != "ok" and (status == "fail" or frac >= THROTTLE_WARN):
                warnings.append(f"{word} {i} throttled ({name}) in {100 * frac:.0f}% of samples")
        seen: dict[int, dict[str, Any]] = {}
        for d in ds:
            for p in d.get("processes") or []:
                if p.get("ours") or not isinstance(p.get("pid"), int):
                    continue
                f = seen.setdefault(p["pid"], {"device": i, "pid": p["pid"], "name": p.get("name"),
                                               "used_bytes_max": None, "samples": 0})  # fmt: skip
                f["samples"] += 1
                f["name"] = f["name"] or p.get("name")
                if isinstance(p.get("used_bytes"), int):
                    f["used_bytes_max"] = max(f["used_bytes_max"] or 0, p["used_bytes"])
        foreign += seen.values()
        if i in watched and seen:
            who = ", ".join(
                _who(f) + (f", up to {_gib(f['used_bytes_max'])})" if f["used_bytes_max"] is not None else ")")
                for f in seen.values()
            )
            warnings.append(f"other processes used {word} {i} during the stage: {who}")
    out["devices"] = devices
    out["run_devices"] = run_devices
    out["foreign_processes"] = foreign


def _host_summary(samples: list[dict[str, Any]], out: dict[str, Any], warnings: list[str]) -> None:
    cpus = [s.get("cpu") or {} for s in samples]
    cores = _max([c.get("cores") for c in cpus])
    runs = [s.get("run") or {} for s in samples]
    others_pct = _mean([s.get("others_cpu_pct") for s in samples])
    share = others_pct / (100.0 * cores) if others_pct is not None and cores else None
    by_pid: dict[int, dict[str, Any]] = {}
    for s in samples:
        for o in s.get("others") or []:
            if not isinstance(o.get("pid"), int):
                continue
            b = by_pid.setdefault(o["pid"], {"pid": o["pid"], "name": o.get("name"), "cpu_pcts": []})
            b["cpu_pcts"].append(o.get("cpu_pct") or 0.0)
    busy = []
    for b in by_pid.values():
        mean = sum(b["cpu_pcts"]) / len(samples)  # a sample where the process was not among the top counts as 0
        if mean >= BUSY_OTHER_PCT:
            busy.append({"pid": b["pid"], "name": b["name"], "cpu_pct_mean": round(mean, 1),
                         "cpu_pct_max": max(b["cpu_pcts"]), "samples": len(b["cpu_pcts"])})  # fmt: skip
    busy.sort(key=lambda b: -b["cpu_pct_mean"])
    steal = _mean([c.get("steal_pct") for c in cpus])
    out["host"] = {
        "cores": int(cores) if cores else None,
        "cpu_busy_pct_mean": _mean([c.get("busy_pct") for c in cpus]),
        "cpu_busy_pct_max": _max([c.get("busy_pct") for c in cpus]),
        "steal_pct_mean": steal,
        "load1_max": _max([(c.get("load") or [None])[0] for c in cpus]),
        "mem_used_bytes_max": _max([(s.get("mem") or {}).get("used_bytes") for s in samples]),
        "mem_total_bytes": _max([(s.get("mem") or {}).get("total_bytes") for s in samples]),
        "run_cpu_pct_mean": _mean([r.get("cpu_pct") for r in runs]),
        "run_rss_bytes_max": _max([r.get("rss_bytes") for r in runs]),
        "others_cpu_pct_mean": others_pct,
        "others_cpu_share_mean": share,
        "other_busy_processes": busy,
    }
    if share is not None and share >= OTHERS_CPU_WARN:
        who = ", ".join(f"{_who(b)}, {b['cpu_pct_mean']:.0f}% of a core)" for b in busy[:3]) or "many small ones"
        warnings.append(
            f"other processes used {100 * share:.0f}% of the CPU during the stage "
            f"({int(cores)} cores, mean over {len(samples)} samples): {who}"
        )
    if steal is not None and steal / 100 >= STEAL_WARN:
        warnings.append(f"the hypervisor took {steal:.0f}% of the CPU time (steal) during the stage: "
                        "other virtual machines share these cores")  # fmt: skip


def samples(stage_dir: Path) -> list[dict[str, Any]]:
    """The file's sample records, in order (what a plot draws)."""
    records, _ = read_monitor(stage_dir)
    return [r for r in records if r.get("type") == "sample" and isinstance(r.get("t"), (int, float))]

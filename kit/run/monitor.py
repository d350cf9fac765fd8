"""What the devices (or the host) did while a stage ran: a sampler beside every stage, and what its samples say.

A benchmark figure is only as good as the machine was quiet: a GPU that throttled, or another job on the same
GPUs or cores, changes the step time without changing anything the run logs. `Monitor` runs as a thread of the
kit process for the life of each stage (started and stopped by `launchers.base.supervise()`, so native and container
stages get it alike) and appends one JSON line every `MONITOR_INTERVAL_S` seconds to `<stage>/monitor.jsonl`:

- where the host's accelerator vendor gives a sampler (kit/vendors: the vendor's own management library or tool):
  per device utilization, memory, power and its limit, clock and its maximum, temperature, throttle reasons by the
  vendor's names (their statuses in the start line), and the processes on it, each marked as the run's or not;
  and the host's CPU, load and memory besides;
- without one (a CPU host, or a library that cannot start): the host's CPU overall and per core (from /proc/stat),
  load, memory, the run's process tree (RSS, CPU) and the busiest other processes.

Which processes are the run's: the kit process and its descendants (the native launcher and its ranks); any
process whose environment holds the run's `KIT_HEARTBEAT` (every stage process gets it, in containers too, where
the processes are children of the engine's shim, not of kit); and any process in the same container cgroup as
one of those (a container process whose environment this user cannot read). docs/monitoring.md has the rest.

The sampler never disturbs the stage: every error is written to the file as an `error` line and ends the
sampler, never the stage. Reading the file back is results work: kit/results/samples.py (`monitor_summary`) and
kit/results/plots.py (`plot_monitor`).
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from kit import vendors
from kit.run.guard import HEARTBEAT_NAME
from kit.vendors.base import Sampler

MONITOR_NAME = "monitor.jsonl"
MONITOR_INTERVAL_S = 5.0
INTERVAL_ENV = "KIT_MONITOR_INTERVAL"  # seconds between samples; 0 turns the sampler off
MARKER_ENV = "KIT_HEARTBEAT"  # set in every stage process by `kit run` (the run's heartbeat file)
TOP_OTHERS = 5  # other processes kept per host sample (by CPU)
OTHER_MIN_CPU_PCT = 1.0  # ... those using at least this much of one core
STOP_JOIN_S = 5.0
GIB = 1024**3

CONTAINER_ID = re.compile(r"(?:docker[-/]|cri-containerd-|crio-|libpod-|containerd/)([0-9a-f]{64})")


def configured_interval() -> float:
    """MONITOR_INTERVAL_S, or KIT_MONITOR_INTERVAL when set to a number (0: no sampler)."""
    raw = os.environ.get(INTERVAL_ENV, "").strip()
    try:
        return max(0.0, float(raw)) if raw else MONITOR_INTERVAL_S
    except ValueError:
        return MONITOR_INTERVAL_S


# ---- /proc ----

CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _read(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace")
    except OSError:
        return None


def proc_table(proc: str = "/proc") -> dict[int, dict[str, Any]]:
    """Every process now: {pid: {ppid, name, ticks (user+system), start (ticks since boot), rss (bytes)}}."""
    table: dict[int, dict[str, Any]] = {}
    for entry in os.scandir(proc):
        if not entry.name.isdigit():
            continue
        text = _read(f"{proc}/{entry.name}/stat")
        if not text:
            continue  # gone between the listing and the read
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split at the last ')'.
        head, _, rest = text.rpartition(")")
        fields = rest.split()
        if len(fields) < 22:
            continue
        table[int(entry.name)] = {
            "ppid": int(fields[1]),
            "name": head.partition("(")[2],
            "ticks": int(fields[11]) + int(fields[12]),
            "start": int(fields[19]),
            "rss": int(fields[21]) * PAGE,
        }
    return table


def cpu_times(proc: str = "/proc") -> dict[str, list[int]]:
    """/proc/stat's cpu lines: {"cpu": [...], "cpu0": [...], ...} (user nice system idle iowait irq softirq steal)."""
    out = {}
    for line in (_read(f"{proc}/stat") or "").splitlines():
        if line.startswith("cpu"):
            name, *values = line.split()
            out[name] = [int(v) for v in values[:8]] + [0] * (8 - len(values[:8]))
    return out


def _cpu_delta(old: list[int], new: list[int]) -> dict[str, float] | None:
    d = [b - a for a, b in zip(old, new, strict=True)]
    total = sum(d)
    if total <= 0:
        return None
    user, nice, system, idle, iowait, irq, softirq, steal = d
    return {
        "busy": 100.0 * (user + nice + system + irq + softirq) / total,
        "iowait": 100.0 * iowait / total,
        "steal": 100.0 * steal / total,
    }


def meminfo(proc: str = "/proc") -> dict[str, int]:
    out = {}
    for line in (_read(f"{proc}/meminfo") or "").splitlines():
        key, _, value = line.partition(":")
        parts = value.split()
        if parts and parts[0].isdigit():
            out[key] = int(parts[0]) * 1024
    return out


class Ownership:
    """Tells the run's processes from foreign ones (module docstring); answers are cached per process."""

    def __init__(self, roots: set[int], marker: str | None, proc: str = "/proc") -> None:
        self.roots = set(roots)
        self.marker = f"{MARKER_ENV}={marker}\0".encode() if marker else None
        self.proc = proc
        self.containers: set[str] = set()  # container ids (from cgroups) holding a process of the run
        self._cache: dict[tuple[int, int], tuple[bool, int]] = {}

    def _container(self, pid: int) -> str | None:
        m = CONTAINER_ID.search(_read(f"{self.proc}/{pid}/cgroup") or "")
        return m.group(1) if m else None

    def _environ_marked(self, pid: int) -> bool:
        if self.marker is None:
            return False
        try:
            with open(f"{self.proc}/{pid}/environ", "rb") as f:
                env = f.read()
        except OSError:  # another user's process: not readable, and not ours by this rule
            return False
        return (b"\0" + env).find(b"\0" + self.marker) >= 0

    def ours(self, pid: int, table: dict[int, dict[str, Any]]) -> bool | None:
        """True: the run's; False: foreign; None: not a process of this host's view (a pid NVML gave)."""
        info = table.get(pid)
        if info is None:
            return None
        key = (pid, info["start"])
        cached = self._cache.get(key)
        if cached is not None and (cached[0] or cached[1] == len(self.containers)):
            return cached[0]
        verdict = self._decide(pid, table)
        self._cache[key] = (verdict, len(self.containers))
        return verdict

    def _decide(self, pid: int, table: dict[int, dict[str, Any]]) -> bool:
        p, hops = pid, 0
        while p in table and hops < 512:
            if p in self.roots:
                return True
            p, hops = table[p]["ppid"], hops + 1
        if self._environ_marked(pid):
            cid = self._container(pid)
            if cid:
                self.containers.add(cid)
            return True
        return bool(self.containers) and self._container(pid) in self.containers

    def forget(self, table: dict[int, dict[str, Any]]) -> None:
        """Drop the answers of processes that ended (pids are reused)."""
        live = {(pid, info["start"]) for pid, info in table.items()}
        for key in [k for k in self._cache if k not in live]:
            del self._cache[key]


class HostSampler:
    """The host's CPU, load and memory, the run's processes and the busiest others, as rates since the last call."""

    def __init__(self, owner: Ownership, proc: str = "/proc") -> None:
        self.owner = owner
        self.proc = proc
        self.table = proc_table(proc)
        self._cpu = cpu_times(proc)
        self._t = time.monotonic()
        self.wall = time.time()

    def sample(self) -> dict[str, Any]:
        table, cpu, now = proc_table(self.proc), cpu_times(self.proc), time.monotonic()
        # The sample's wall time is taken with `now`, so the gap between two samples' times is their `dt` (kit verify
        # holds one against the other).
        self.wall = time.time()
        dt = max(now - self._t, 1e-6)
        cores = [k for k in cpu if k != "cpu"]
        overall = _cpu_delta(self._cpu.get("cpu", []), cpu.get("cpu", [])) if "cpu" in self._cpu else None
        per_core = []
        for k in cores:
            d = _cpu_delta(self._cpu[k], cpu[k]) if k in self._cpu else None
            per_core.append(round(d["busy"], 1) if d else None)
        run_ticks = run_rss = run_pids = 0
        others_ticks = 0
        others: list[dict[str, Any]] = []
        for pid, info in table.items():
            before = self.table.get(pid)
            # a process born since the last sample spent all its CPU time within this interval
            ticks = info["ticks"] - before["ticks"] if before and before["start"] == info["start"] else info["ticks"]
            if self.owner.ours(pid, table):
                run_ticks += ticks
                run_rss += info["rss"]
                run_pids += 1
            else:
                others_ticks += ticks
                pct = 100.0 * ticks / CLK_TCK / dt
                if pct >= OTHER_MIN_CPU_PCT:
                    others.append({"pid": pid, "name": info["name"], "cpu_pct": round(pct, 1)})
        self.owner.forget(table)
        self.table, self._cpu, self._t = table, cpu, now
        others.sort(key=lambda o: -o["cpu_pct"])
        mem = meminfo(self.proc)
        try:
            load = [round(x, 2) for x in os.getloadavg()]
        except OSError:
            load = None
        total, avail = mem.get("MemTotal"), mem.get("MemAvailable")
        return {
            "dt": round(dt, 3),
            "cpu": {
                "cores": len(cores),
                "busy_pct": round(overall["busy"], 1) if overall else None,
                "iowait_pct": round(overall["iowait"], 1) if overall else None,
                "steal_pct": round(overall["steal"], 1) if overall else None,
                "per_core_pct": per_core,
                "load": load,
            },
            "mem": {
                "total_bytes": total,
                "available_bytes": avail,
                "used_bytes": total - avail if total is not None and avail is not None else None,
            },
            "run": {"pids": run_pids, "rss_bytes": run_rss, "cpu_pct": round(100.0 * run_ticks / CLK_TCK / dt, 1)},
            "others_cpu_pct": round(100.0 * others_ticks / CLK_TCK / dt, 1),
            "others": others[:TOP_OTHERS],
        }


AUTO = object()  # Monitor(sampler=AUTO): the sampler of this host's vendor, when it gives one; else the host alone


def device_records(readings: list[Any], owner: Ownership, table: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
    """A vendor's readings as the sample's `devices`: each process named (from /proc) and marked as the run's."""
    out = []
    for r in readings:
        d = r.to_dict() if hasattr(r, "to_dict") else dict(r)
        procs = []
        for p in d.get("processes") or []:
            info = table.get(p.get("pid"))
            procs.append({**p, "name": p.get("name") or (info["name"] if info else None),
                          "ours": owner.ours(p["pid"], table) if isinstance(p.get("pid"), int) else None})  # fmt: skip
        d["processes"] = procs
        out.append(d)
    return out


class Monitor:
    """The sampler of one stage: `start()`, then `stop()` when the stage ends (or a `with` block)."""

    def __init__(
        self, stage_dir: Path, interval: float = MONITOR_INTERVAL_S, roots: set[int] | None = None,
        marker: str | None = None, sampler: Any = AUTO, proc: str = "/proc",
    ) -> None:  # fmt: skip
        self.path = Path(stage_dir) / MONITOR_NAME
        self.interval = interval
        self.owner = Ownership(roots if roots is not None else {os.getpid()}, marker, proc)
        self._sampler_arg = sampler
        self.proc = proc
        self.source = "host"
        self.device_word = "device"
        self.devices: Sampler | None = None
        self.host: HostSampler | None = None
        self.samples = 0
        self.failed: str | None = None
        self._last = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # -- writing --
    def _write(self, record: dict[str, Any]) -> None:
        """One whole line per write (O_APPEND): readers never see half a line, unless the host dies mid-write."""
        data = (json.dumps(record, separators=(",", ":")) + "\n").encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)

    def _fail(self, where: str, e: BaseException) -> None:
        self.failed = f"{where}: {type(e).__name__}: {e}"
        try:
            frame = traceback.extract_tb(e.__traceback__)[-1] if e.__traceback__ else None
            at = f"{Path(frame.filename).name}:{frame.lineno}" if frame else ""
            self._write({"type": "error", "t": round(time.time(), 3), "error": self.failed, "at": at,
                         "samples": self.samples})  # fmt: skip
        except Exception:  # noqa: BLE001 - nowhere left to say it; the stage goes on
            pass

    # -- sampling --
    def open(self) -> None:
        """Choose the source (the vendor's sampler, or the host alone), take the baseline, write the start line."""
        error = None
        if self._sampler_arg is AUTO:
            try:
                vendor, _ = vendors.detect()
                self.devices = vendor.sampler()
                self.source = vendor.name if self.devices is not None else "host"
                self.device_word = vendor.device_word
            except Exception as e:  # noqa: BLE001 - the library started but cannot list its devices: the host still is
                error = f"{type(e).__name__}: {e}"
        elif self._sampler_arg is not None:
            self.devices = self._sampler_arg
            self.source = getattr(self._sampler_arg, "vendor", None) or "device"
            self.device_word = getattr(self._sampler_arg, "device_word", None) or "device"
        self.host = HostSampler(self.owner, self.proc)
        fixed: list[dict[str, Any]] = []
        reasons: dict[str, str] = {}
        if self.devices is not None:
            try:
                fixed = self.devices.fixed()
                reasons = dict(getattr(self.devices, "reasons", dict)())
            except Exception as e:  # noqa: BLE001
                error = f"{type(e).__name__}: {e}"
                self.devices, self.source = None, "host"
        self._last = time.monotonic()
        self._write({
            "type": "start", "t": round(self.host.wall, 3), "source": self.source,
            **({"sampler_error": error} if error else {}),
            "interval_s": self.interval, "pid": os.getpid(), "roots": sorted(self.owner.roots),
            "marker": MARKER_ENV if self.owner.marker else None,
            "devices": fixed,
            **({"device_word": self.device_word, "throttle_reasons": reasons} if self.devices is not None else {}),
        })  # fmt: skip

    def sample_once(self) -> dict[str, Any]:
        """Take and write one sample; returns it."""
        with self._lock:
            assert self.host is not None, "open() first"
            host = self.host.sample()
            record: dict[str, Any] = {"type": "sample", "t": round(self.host.wall, 3), **host}
            if self.devices is not None:
                record["devices"] = device_records(self.devices.sample(), self.owner, self.host.table)
            self._write(record)
            self.samples += 1
            self._last = time.monotonic()
            return record

    def _loop(self) -> None:
        try:
            while not self._stop.wait(self.interval):
                self.sample_once()
        except Exception as e:  # noqa: BLE001 - a sampler never fails the stage
            self._fail("sample", e)

    def start(self) -> Monitor:
        try:
            self.open()
        except Exception as e:  # noqa: BLE001
            self._fail("start", e)
            return self
        self._thread = threading.Thread(target=self._loop, name="kit-monitor", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """End the sampler: a last sample when the tail since the previous one is long enough, then the stop line."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(STOP_JOIN_S)
            if self._thread.is_alive():
                return  # stuck in a driver call: left behind (a daemon thread); nothing more is written
        if self.failed is None and self.host is not None:
            try:
                if time.monotonic() - self._last >= self.interval / 2 or self.samples == 0:
                    self.sample_once()
                self._write({"type": "stop", "t": round(time.time(), 3), "samples": self.samples})
            except Exception as e:  # noqa: BLE001
                self._fail("stop", e)
        if self.devices is not None:
            try:
                self.devices.close()
            except Exception:  # noqa: BLE001 - a library that fails to close is not the stage's business
                pass

    def __enter__(self) -> Monitor:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_stage_monitor(stage_dir: Path) -> Monitor | None:
    """The sampler `supervise()` runs beside a stage of a run: ours are this kit process's tree and the processes
    carrying the run's heartbeat path; None when KIT_MONITOR_INTERVAL=0. Never raises."""
    try:
        interval = configured_interval()
        if interval <= 0:
            return None
        return Monitor(stage_dir, interval, marker=str(Path(stage_dir).parent / HEARTBEAT_NAME)).start()
    except Exception:  # noqa: BLE001 - no sampler, but the stage runs
        return None

"""kit.run.monitor: the sampler beside every stage, its summary, warnings and plot.

NVML is faked only at the binding's boundary: `kit.vendors.nvidia.nvml.ReplayNVML` answers from
tests/fixtures/hosts/nvml-h200x2.json (2 idle NVIDIA H200, recorded on a real machine); the variants below change
single readings of it (a clock-event bit, the compute processes), each said where it is made. The processes a
GPU reading names are real processes of this host (a "run" subprocess and a spinning "foreign" one), so telling
ours from foreign goes through the real /proc. The host sampler runs for real on this CPU host.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from rich.console import Console

from kit import vendors
from kit.launchers import base as launch
from kit.results import samples as readback
from kit.results.plots import plot_monitor
from kit.results.samples import monitor_summary, read_monitor
from kit.run import monitor
from kit.run.guard import HEARTBEAT_NAME
from kit.run.monitor import GIB, MONITOR_NAME, Monitor
from kit.run.progress import StageProgress
from kit.vendors.nvidia.nvml import ReplayNVML
from kit.vendors.nvidia.sampler import NvmlSampler, event_names, reasons

RECORDING = Path(__file__).resolve().parents[1] / "fixtures" / "hosts" / "nvml-h200x2.json"
SPIN = "import time\nwhile True: pass"


def recording() -> dict:
    return json.loads(RECORDING.read_text())


def key(fn: str, *args) -> str:
    return json.dumps([fn, list(args)])


def proc_struct(pid: int, used: int) -> dict:
    return {"__struct__": {"pid": pid, "usedGpuMemory": used, "gpuInstanceId": 4294967295,
                           "computeInstanceId": 4294967295}}  # fmt: skip


def sampler(nvml: ReplayNVML) -> NvmlSampler:
    """NVIDIA's sampler on a replay (the vendor's own, as the monitor gets it from kit/vendors)."""
    return NvmlSampler(nvml, owns_nvml=False)


def variant(procs: dict[int, list[dict]], masks: dict[int, int] | None = None) -> ReplayNVML:
    """The real recording with the compute processes of each GPU set, and optionally its clock-event masks."""
    rec = copy.deepcopy(recording())
    for gpu, plist in procs.items():
        rec["calls"][key("nvmlDeviceGetComputeRunningProcesses", {"device": gpu})] = {"result": plist}
    for gpu, mask in (masks or {}).items():
        rec["calls"][key("nvmlDeviceGetCurrentClocksEventReasons", {"device": gpu})] = {"result": mask}
    return ReplayNVML(rec)


@pytest.fixture
def spinner():
    """A real foreign process: burns a core, not started by the 'run'."""
    p = subprocess.Popen([sys.executable, "-c", SPIN])
    yield p
    p.kill()
    p.wait()


@pytest.fixture
def run_tree():
    """A real 'run': a parent holding 64 MiB that starts a spinning child (its rank)."""
    code = textwrap.dedent(f"""
        import subprocess, sys, time
        block = bytearray(64 << 20)
        for i in range(0, len(block), 4096):
            block[i] = 1
        child = subprocess.Popen([sys.executable, "-c", {SPIN!r}])
        print(child.pid, flush=True)
        time.sleep(60)
    """)
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    child = int(p.stdout.readline())
    yield p, child
    os.kill(child, 9)
    p.kill()
    p.wait()


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, read from /proc/<pid>/stat here (not through kit.run.monitor)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def lines(stage: Path) -> list[dict]:
    return [json.loads(x) for x in (stage / MONITOR_NAME).read_text().splitlines()]


# ---- NVML, from the replay ----


def test_replay_sample_reads_every_device(tmp_path, run_tree):
    run, _ = run_tree
    m = Monitor(tmp_path, roots={run.pid}, sampler=sampler(variant({0: [proc_struct(run.pid, 5 * GIB)]})))
    m.open()
    s = m.sample_once()
    d0, d1 = s["devices"]
    assert d0 == {
        "index": 0, "util_pct": 0, "mem_util_pct": 0, "mem_used_bytes": 644939776,
        "mem_total_bytes": 150754820096, "power_w": 81.597, "power_limit_w": 700.0, "clock_mhz": 345,
        "clock_max_mhz": 1980, "temp_c": 34, "throttle": [], "throttle_status": "ok",  # the idle bit is by design
        "processes": [{"pid": run.pid, "used_bytes": 5 * GIB, "name": "python", "ours": True}],
    }  # fmt: skip
    assert d1["processes"] == [] and d1["index"] == 1
    start = lines(tmp_path)[0]
    assert start["type"] == "start" and start["source"] == "nvidia" and start["device_word"] == "GPU"
    assert start["devices"][1] == {"index": 1, "name": "NVIDIA H200", "clock_max_mhz": 1980}
    assert start["throttle_reasons"]["HW_SLOWDOWN"] == "fail" and start["throttle_reasons"]["GPU_IDLE"] == "ok"


def test_replay_throttle_and_foreign_process(tmp_path, run_tree, spinner):
    """4 samples: the run on both GPUs; GPU 1 shows HW slowdown + SW power cap in one sample, and a foreign
    process (the spinner, 3 GiB) in two."""
    run, _ = run_tree
    ours = [proc_struct(run.pid, 20 * GIB)]
    foreign = proc_struct(spinner.pid, 3 * GIB)
    plain = variant({0: ours, 1: ours})
    seq = [
        plain,
        variant({0: ours, 1: ours + [foreign]}, masks={1: 0x8 | 0x4}),
        variant({0: ours, 1: ours + [foreign]}),
        plain,
    ]
    m = Monitor(tmp_path, roots={run.pid}, sampler=sampler(plain))
    m.open()
    for nv in seq:
        m.devices.nvml = nv
        m.sample_once()
    got = [p for p in lines(tmp_path)[2]["devices"][1]["processes"]]
    assert got[1] == {"pid": spinner.pid, "name": "python", "used_bytes": 3 * GIB, "ours": False}
    s = monitor_summary(tmp_path)
    assert s["source"] == "nvidia" and s["samples"] == 4 and s["run_devices"] == [0, 1]
    assert s["devices"]["1"]["throttle"] == {"HW_SLOWDOWN": 0.25, "SW_POWER_CAP": 0.25}
    assert s["devices"]["0"]["throttle"] == {}  # the idle bit is not throttling
    assert s["foreign_processes"] == [
        {"device": 1, "pid": spinner.pid, "name": "python", "used_bytes_max": 3 * GIB, "samples": 2}
    ]
    # (the host's CPU is judged too: this shared host may be busy, so only the GPU warnings are compared)
    assert [w for w in s["warnings"] if "GPU" in w] == [
        "GPU 1 throttled (HW_SLOWDOWN) in 25% of samples",
        "GPU 1 throttled (SW_POWER_CAP) in 25% of samples",
        f"other processes used GPU 1 during the stage: python (pid {spinner.pid}, up to 3.0 GiB)",
    ]


def test_gpu_the_run_does_not_use_is_not_flagged(tmp_path, run_tree, spinner):
    """The run on GPU 0 only: a foreign process and a HW slowdown on GPU 1 are recorded, not warned about."""
    run, _ = run_tree
    nv = variant({0: [proc_struct(run.pid, GIB)], 1: [proc_struct(spinner.pid, GIB)]}, masks={1: 0x8})
    m = Monitor(tmp_path, roots={run.pid}, sampler=sampler(nv))
    m.open()
    m.sample_once()
    s = monitor_summary(tmp_path)
    assert s["run_devices"] == [0] and s["devices"]["1"]["throttle"] == {"HW_SLOWDOWN": 1.0}
    assert [f["pid"] for f in s["foreign_processes"]] == [spinner.pid]
    assert [w for w in s["warnings"] if "GPU" in w] == []


def test_recording_without_a_reading_still_replays(tmp_path):
    """An older recording without power readings: those fields are null, the rest is read."""
    rec = recording()
    for gpu in (0, 1):
        del rec["calls"][key("nvmlDeviceGetPowerUsage", {"device": gpu})]
    m = Monitor(tmp_path, sampler=sampler(ReplayNVML(rec)))
    m.open()
    d0 = m.sample_once()["devices"][0]
    assert d0["power_w"] is None and d0["clock_mhz"] == 345


def test_nvml_that_cannot_list_the_gpus_leaves_the_host_sampled(tmp_path, monkeypatch):
    """NVML starts but its device count fails (here: a recording without it, the vendor chosen as on a host):
    host samples, the error noted."""
    rec = recording()
    del rec["calls"][key("nvmlDeviceGetCount")]
    (tmp_path / "rec.json").write_text(json.dumps(rec))
    monkeypatch.setenv("KIT_NVML_RECORDING", str(tmp_path / "rec.json"))
    monkeypatch.setenv("KIT_VENDOR", "nvidia")
    vendors.reset()
    try:
        m = Monitor(tmp_path)
        m.open()
        assert "devices" not in m.sample_once()
    finally:
        vendors.reset()
    start = lines(tmp_path)[0]
    assert start["source"] == "host" and "nvmlDeviceGetCount" in start["sampler_error"]


# ---- the host, for real ----


def test_host_sampler_tells_the_run_from_a_busy_foreign_process(tmp_path, run_tree, spinner, monkeypatch):
    monkeypatch.setattr(monitor, "TOP_OTHERS", 100)  # other tests on this host may be busier than the spinner
    run, child = run_tree
    run_before, spin_before = cpu_seconds(run.pid) + cpu_seconds(child), cpu_seconds(spinner.pid)
    m = Monitor(tmp_path, interval=0.5, roots={run.pid}, sampler=None).start()
    time.sleep(2.2)
    m.stop()
    recs = lines(tmp_path)
    assert recs[0]["type"] == "start" and recs[0]["source"] == "host" and recs[-1]["type"] == "stop"
    samples = [r for r in recs if r["type"] == "sample"]
    assert len(samples) >= 3
    for s in samples:
        assert s["cpu"]["cores"] == os.cpu_count() and len(s["cpu"]["per_core_pct"]) == os.cpu_count()
        assert 0 <= s["cpu"]["busy_pct"] <= 100 and len(s["cpu"]["load"]) == 3
        assert s["mem"]["used_bytes"] == s["mem"]["total_bytes"] - s["mem"]["available_bytes"]
        assert s["run"]["pids"] == 2 and s["run"]["rss_bytes"] >= 64 << 20  # the parent's 64 MiB, and its child
        pids = {o["pid"] for o in s["others"]}
        assert run.pid not in pids and child not in pids
    # The CPU time the samples account to the run and to the spinner is what the kernel counted for them over the
    # same window (this host is shared, so how much each got varies; the accounting must not). The tail after the
    # last sample (under interval/2) and the tick resolution bound the difference.
    run_s = sum(s["run"]["cpu_pct"] * s["dt"] / 100 for s in samples)
    spin_s = sum(next((o["cpu_pct"] for o in s["others"] if o["pid"] == spinner.pid), 0.0) * s["dt"] / 100
                 for s in samples)  # fmt: skip
    run_used = cpu_seconds(run.pid) + cpu_seconds(child) - run_before
    spin_used = cpu_seconds(spinner.pid) - spin_before
    assert spin_used > 0.1 and run_used > 0.1, (spin_used, run_used)
    assert abs(run_s - run_used) < 0.3 and abs(spin_s - spin_used) < 0.3, (run_s, run_used, spin_s, spin_used)
    summary = monitor_summary(tmp_path)
    assert summary["host"]["cores"] == os.cpu_count()
    busy = {b["pid"]: b for b in summary["host"]["other_busy_processes"]}
    assert spinner.pid in busy and busy[spinner.pid]["name"] == "python"
    share = summary["host"]["others_cpu_share_mean"]
    cpu_warnings = [w for w in summary["warnings"] if w.startswith("other processes used ")]
    assert len(cpu_warnings) == (1 if share >= readback.OTHERS_CPU_WARN else 0)
    if cpu_warnings and list(busy)[:3].count(spinner.pid):  # named when among the three busiest
        assert f"python (pid {spinner.pid}, {busy[spinner.pid]['cpu_pct_mean']:.0f}% of a core)" in cpu_warnings[0]


def test_container_processes_by_marker_and_cgroup(tmp_path, spinner):
    """A stage process that is not kit's descendant (a container's, under the engine's shim) is ours when its
    environment holds the run's heartbeat path; one in the same container cgroup is ours even when its
    environment cannot be read. /proc here is a real tree of files written for the case."""
    cid = "ab" * 32
    marker = str(tmp_path / "run" / HEARTBEAT_NAME)
    root = tmp_path / "proc"

    def proc(pid: int, ppid: int, name: str, cgroup: str, environ: bytes | None) -> None:
        d = root / str(pid)
        d.mkdir(parents=True)
        (d / "stat").write_text(f"{pid} ({name}) S {ppid} " + " ".join(["0"] * 9) + " 7 3 0 0 0 0 0 0 100 0 25\n")
        (d / "cgroup").write_text(cgroup)
        if environ is not None:
            (d / "environ").write_bytes(environ)

    proc(1, 0, "systemd", "0::/init.scope\n", None)
    proc(900, 1, "containerd-shim", "0::/system.slice/containerd.service\n", b"PATH=/bin\0")
    proc(901, 900, "docker-init", f"0::/system.slice/docker-{cid}.scope\n", f"HOME=/\0KIT_HEARTBEAT={marker}\0".encode())
    proc(902, 901, "pt_main_thread", f"0::/system.slice/docker-{cid}.scope\n", None)  # unreadable environ
    proc(950, 1, "python", "0::/user.slice\n", f"KIT_HEARTBEAT={marker}.old\0".encode())  # another run's
    proc(960, 1, "python", f"0::/system.slice/docker-{'cd' * 32}.scope\n", None)  # another container
    owner = monitor.Ownership({12345}, marker, str(root))
    table = monitor.proc_table(str(root))
    assert table[902] == {"ppid": 901, "name": "pt_main_thread", "ticks": 10, "start": 100, "rss": 25 * monitor.PAGE}
    assert owner.ours(902, table) is False  # before any of the container's marked processes was seen
    assert owner.ours(901, table) is True and owner.containers == {cid}
    assert owner.ours(902, table) is True  # asked again once the container is known
    assert [owner.ours(p, table) for p in (1, 900, 950, 960)] == [False] * 4
    assert owner.ours(4242, table) is None  # not in this host's view


def test_marker_makes_a_real_non_descendant_ours(tmp_path, spinner):
    marker = str(tmp_path / HEARTBEAT_NAME)
    marked = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"],
                              env={**os.environ, "KIT_HEARTBEAT": marker})  # fmt: skip
    try:
        owner = monitor.Ownership({1 << 30}, marker)
        table = monitor.proc_table()
        assert owner.ours(marked.pid, table) is True
        assert owner.ours(spinner.pid, table) is False
    finally:
        marked.kill()
        marked.wait()


# ---- summary and warnings from a written file ----


def gpu_sample(t: float, util: int, power: float, clock: int, mask: int, procs: list[dict]) -> dict:
    dev = {"index": 0, "util_pct": util, "mem_util_pct": util // 2, "mem_used_bytes": (util // 10) * GIB,
           "mem_total_bytes": 80 * GIB, "power_w": power, "power_limit_w": 700.0, "clock_mhz": clock,
           "clock_max_mhz": 1980, "temp_c": 40 + util // 10, "throttle": event_names(mask), "processes": procs}  # fmt: skip
    return {"type": "sample", "t": t, "dt": 5.0, "devices": [dev]}


def old_gpu_sample(t: float, util: int, power: float, clock: int, mask: int, procs: list[dict]) -> dict:
    """A sample as runs before the vendor seam wrote it (NVML's names; the start line without a reasons table)."""
    dev = {"index": 0, "util_gpu_pct": util, "util_mem_pct": util // 2, "mem_used_bytes": (util // 10) * GIB,
           "mem_total_bytes": 80 * GIB, "power_w": power, "power_limit_w": 700.0, "sm_clock_mhz": clock,
           "sm_clock_max_mhz": 1980, "temp_c": 40 + util // 10, "clock_events": mask,
           "clock_event_names": event_names(mask), "processes": procs}  # fmt: skip
    return {"type": "sample", "t": t, "dt": 5.0, "devices": [dev]}


NVIDIA_START = {"type": "start", "t": 995.0, "source": "nvidia", "interval_s": 5.0, "device_word": "GPU",
                "throttle_reasons": reasons()}  # fmt: skip


def write(stage: Path, records: list[dict], tail: str = "") -> None:
    stage.mkdir(parents=True, exist_ok=True)
    (stage / MONITOR_NAME).write_text("".join(json.dumps(r) + "\n" for r in records) + tail)


@pytest.mark.parametrize("layout", ["current", "older runs"])
def test_gpu_summary_numbers_hand_computed(tmp_path, layout):
    gpu_sample = globals()["gpu_sample"] if layout == "current" else old_gpu_sample
    start = NVIDIA_START if layout == "current" else {"type": "start", "t": 995.0, "source": "nvml", "interval_s": 5.0}
    ours = {"pid": 100, "name": "python", "used_bytes": 30 * GIB, "ours": True}
    foreign = {"pid": 4242, "name": "python", "used_bytes": int(3.1 * GIB), "ours": False}
    small = {"pid": 4242, "name": "python", "used_bytes": GIB, "ours": False}
    write(tmp_path, [
        start,
        gpu_sample(1000.0, 50, 300.0, 1980, 0x0, [ours]),
        gpu_sample(1005.0, 70, 400.0, 1980, 0x8, [ours, small]),
        gpu_sample(1010.0, 90, 500.0, 1500, 0x4, [ours, foreign]),
        gpu_sample(1016.0, 100, 600.0, 1200, 0x1 | 0x4, [ours]),
        {"type": "stop", "t": 1016.5, "samples": 4},
    ])  # fmt: skip
    s = monitor_summary(tmp_path)
    assert (s["samples"], s["source"], s["interval_s"], s["span_s"]) == (4, start["source"], 5.0, 16.0)  # gaps 5, 5, 6
    d = s["devices"]["0"]
    assert d["util_pct_mean"] == 77.5 and d["util_pct_max"] == 100  # (50+70+90+100)/4
    assert d["mem_util_pct_mean"] == 38.75  # (25+35+45+50)/4
    assert d["mem_used_bytes_max"] == 10 * GIB and d["mem_total_bytes"] == 80 * GIB
    assert (d["power_w_mean"], d["power_w_max"], d["power_limit_w"]) == (450.0, 600.0, 700.0)
    assert (d["clock_mhz_min"], d["clock_mhz_median"], d["clock_max_mhz"]) == (1200, 1740.0, 1980)
    assert d["temp_c_max"] == 50
    assert d["throttle"] == {"HW_SLOWDOWN": 0.25, "SW_POWER_CAP": 0.5}
    assert s["foreign_processes"] == [{"device": 0, "pid": 4242, "name": "python", "used_bytes_max": int(3.1 * GIB),
                                       "samples": 2}]  # fmt: skip
    assert s["warnings"] == [
        "GPU 0 throttled (HW_SLOWDOWN) in 25% of samples",
        "GPU 0 throttled (SW_POWER_CAP) in 50% of samples",
        "other processes used GPU 0 during the stage: python (pid 4242, up to 3.1 GiB)",
    ]


def test_power_cap_in_few_samples_is_not_a_warning(tmp_path):
    """A "warn" clock event (SW power cap) below THROTTLE_WARN of the samples is counted, not flagged; a "fail"
    one (HW slowdown) is flagged from one sample."""
    samples = [gpu_sample(1000.0 + 5 * i, 90, 650.0, 1980, 0x4 if i == 0 else 0, []) for i in range(25)]
    write(tmp_path, [NVIDIA_START, *samples])
    s = monitor_summary(tmp_path)
    assert s["devices"]["0"]["throttle"] == {"SW_POWER_CAP": 0.04} and s["warnings"] == []
    samples[3] = gpu_sample(1015.0, 90, 650.0, 1000, 0x8, [])
    write(tmp_path, [NVIDIA_START, *samples])
    assert monitor_summary(tmp_path)["warnings"] == ["GPU 0 throttled (HW_SLOWDOWN) in 4% of samples"]


def host_sample(t: float, busy: float, run_pct: float, others_pct: float, others: list[dict], steal: float = 0.0):
    return {"type": "sample", "t": t, "dt": 5.0,
            "cpu": {"cores": 2, "busy_pct": busy, "iowait_pct": 0.0, "steal_pct": steal,
                    "per_core_pct": [busy, busy], "load": [2.5, 2.0, 1.0]},
            "mem": {"total_bytes": 16 * GIB, "available_bytes": 12 * GIB, "used_bytes": 4 * GIB},
            "run": {"pids": 3, "rss_bytes": 2 * GIB, "cpu_pct": run_pct},
            "others_cpu_pct": others_pct, "others": others}  # fmt: skip


def test_host_summary_numbers_and_warning_hand_computed(tmp_path):
    spin = {"pid": 4242, "name": "python", "cpu_pct": 60.0}
    cc = {"pid": 77, "name": "cc1plus", "cpu_pct": 20.0}
    write(tmp_path, [
        {"type": "start", "t": 0.0, "source": "host", "interval_s": 5.0},
        host_sample(5.0, 100.0, 130.0, 70.0, [spin, {"pid": 9, "name": "sshd", "cpu_pct": 2.0}]),
        host_sample(10.0, 100.0, 130.0, 70.0, [spin]),
        host_sample(15.0, 90.0, 110.0, 70.0, [spin, cc]),
        host_sample(20.0, 90.0, 110.0, 70.0, [{**spin, "cpu_pct": 80.0}, cc], steal=30.0),
    ])  # fmt: skip
    s = monitor_summary(tmp_path)
    h = s["host"]
    assert (s["samples"], s["source"], s["interval_s"], s["span_s"]) == (4, "host", 5.0, 15.0)
    assert h["cores"] == 2 and h["cpu_busy_pct_mean"] == 95.0 and h["cpu_busy_pct_max"] == 100.0
    assert h["run_cpu_pct_mean"] == 120.0 and h["run_rss_bytes_max"] == 2 * GIB
    assert h["others_cpu_pct_mean"] == 70.0 and h["others_cpu_share_mean"] == 0.35  # 70% of a core / 2 cores
    assert h["steal_pct_mean"] == 7.5 and h["load1_max"] == 2.5 and h["mem_used_bytes_max"] == 4 * GIB
    # spinner: (60+60+60+80)/4 = 65; cc1plus: (0+0+20+20)/4 = 10; sshd: 0.5, under BUSY_OTHER_PCT
    assert h["other_busy_processes"] == [
        {"pid": 4242, "name": "python", "cpu_pct_mean": 65.0, "cpu_pct_max": 80.0, "samples": 4},
        {"pid": 77, "name": "cc1plus", "cpu_pct_mean": 10.0, "cpu_pct_max": 20.0, "samples": 2},
    ]
    assert s["warnings"] == [
        "other processes used 35% of the CPU during the stage (2 cores, mean over 4 samples): "
        "python (pid 4242, 65% of a core), cc1plus (pid 77, 10% of a core)"
    ]
    assert "devices" not in s


def test_steal_warning(tmp_path):
    write(tmp_path, [host_sample(5.0 * i, 90.0, 180.0, 0.0, [], steal=20.0) for i in range(3)])
    assert monitor_summary(tmp_path)["warnings"] == [
        "the hypervisor took 20% of the CPU time (steal) during the stage: other virtual machines share these cores"
    ]


def test_torn_last_line_is_tolerated(tmp_path):
    write(tmp_path, [host_sample(5.0, 50.0, 100.0, 0.0, []), host_sample(10.0, 70.0, 140.0, 0.0, [])],
          tail='{"type": "sample", "t": 15.0, "cpu": {"co')  # fmt: skip
    s = monitor_summary(tmp_path)
    assert s["samples"] == 2 and s["unreadable_lines"] == [3] and s["host"]["cpu_busy_pct_mean"] == 60.0


def test_no_file_or_no_sample_is_none(tmp_path):
    assert monitor_summary(tmp_path) is None
    write(tmp_path, [{"type": "start", "t": 0.0, "source": "host"}])
    assert monitor_summary(tmp_path) is None


# ---- stopping with the stage; failing without failing it ----


def supervise(stage_dir: Path, wait, stop=lambda: None):
    display = StageProgress(Console(file=open(os.devnull, "w")), plain=True)
    return launch.supervise("pretrain", stage_dir, 1, display, wait, stop, 0.0, "rank")


def test_sampler_runs_and_stops_with_the_stage(tmp_path, monkeypatch):
    monkeypatch.setenv("KIT_MONITOR_INTERVAL", "0.3")
    stage = tmp_path / "run" / "pretrain"
    stage.mkdir(parents=True)
    seen = {}

    def wait(watch):
        time.sleep(1.1)
        seen["lines"] = len(lines(stage))
        return 0

    assert supervise(stage, wait) == (0, None)
    recs = lines(stage)
    assert seen["lines"] >= 3  # the start line and samples while the stage ran
    assert recs[0]["type"] == "start" and recs[0]["marker"] == "KIT_HEARTBEAT" and recs[-1]["type"] == "stop"
    assert all(t.name != "kit-monitor" for t in __import__("threading").enumerate())
    size = (stage / MONITOR_NAME).stat().st_size
    time.sleep(0.7)
    assert (stage / MONITOR_NAME).stat().st_size == size  # nothing written after the stage ended


def test_sampler_stops_on_ctrl_c(tmp_path, monkeypatch):
    monkeypatch.setenv("KIT_MONITOR_INTERVAL", "0.2")
    stage = tmp_path / "pretrain"
    stage.mkdir()
    stopped = []

    def wait(watch):
        time.sleep(0.5)
        raise KeyboardInterrupt

    code, result = supervise(stage, wait, lambda: stopped.append(1))
    assert code is None and result.state == "interrupted" and stopped == [1]
    assert lines(stage)[-1]["type"] == "stop"
    assert all(t.name != "kit-monitor" for t in __import__("threading").enumerate())


def test_sampler_off_with_zero_interval(tmp_path, monkeypatch):
    monkeypatch.setenv("KIT_MONITOR_INTERVAL", "0")
    assert supervise(tmp_path, lambda watch: 0) == (0, None)
    assert not (tmp_path / MONITOR_NAME).exists()


def test_sampler_failure_is_recorded_and_the_stage_goes_on(tmp_path, monkeypatch):
    """The sampler reads a /proc that disappears under it: an error line, the sampler ends, the stage finishes."""
    fake = tmp_path / "proc"
    (fake / "1").mkdir(parents=True)
    for src, dst in (("self/stat", "1/stat"), ("stat", "stat"), ("meminfo", "meminfo")):
        (fake / dst).write_text(Path("/proc", src).read_text())
    stage = tmp_path / "pretrain"
    stage.mkdir()
    monkeypatch.setattr(launch, "start_stage_monitor",
                        lambda d: Monitor(d, interval=0.2, sampler=None, proc=str(fake)).start())  # fmt: skip

    def wait(watch):
        time.sleep(0.5)
        shutil.rmtree(fake)
        time.sleep(0.6)
        return 0

    assert supervise(stage, wait) == (0, None)
    recs = lines(stage)
    assert recs[-1]["type"] == "error" and "FileNotFoundError" in recs[-1]["error"]
    assert recs[-1]["samples"] >= 1 and not any(r["type"] == "stop" for r in recs)
    s = monitor_summary(stage)
    assert s["errors"] == [recs[-1]["error"]]
    assert s["warnings"][0].startswith(f"the monitor stopped early after {recs[-1]['samples']} samples: sample: ")


def test_unwritable_stage_dir_does_not_fail_the_stage(tmp_path, monkeypatch):
    monkeypatch.setenv("KIT_MONITOR_INTERVAL", "0.2")
    missing = tmp_path / "not-there"
    assert supervise(missing, lambda watch: 7) == (7, None)
    assert not missing.exists()


# ---- plot ----


def test_plot_written_for_gpu_and_host_samples(tmp_path):
    gpu, host = tmp_path / "gpu", tmp_path / "host"
    write(gpu, [NVIDIA_START, *[gpu_sample(1000.0 + 5 * i, 10 * i, 100.0 * i, 1980, 0, []) for i in range(5)]])
    write(host, [host_sample(5.0 * i, 50.0, 100.0, 10.0, []) for i in range(5)])
    for stage in (gpu, host):
        png = tmp_path / f"{stage.name}.png"
        assert plot_monitor(stage, png) is True
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left
    assert plot_monitor(tmp_path / "empty", tmp_path / "none.png") is False


def test_plot_without_matplotlib_is_false(tmp_path, monkeypatch):
    write(tmp_path, [host_sample(5.0, 50.0, 100.0, 10.0, [])])
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)
    assert plot_monitor(tmp_path, tmp_path / "m.png") is False and not (tmp_path / "m.png").exists()


# ---- a real run ----


def test_tiny_run_writes_monitor_in_every_stage(tiny_run):
    """The session's real tiny native run (kit run llava1_5_7b --config tiny --synthetic --native)."""
    for stage in ("pretrain", "finetune", "eval"):
        records, bad = read_monitor(tiny_run / stage)
        assert bad == [], stage
        assert records[0]["type"] == "start" and records[0]["source"] == "host", stage
        assert records[-1]["type"] == "stop", stage
        samples = [r for r in records if r["type"] == "sample"]
        assert samples, stage
        # kit's process tree: the launcher (torchrun) and its two ranks, at least in the busiest sample
        assert max(s["run"]["pids"] for s in samples) >= 4, stage
        assert max(s["run"]["rss_bytes"] for s in samples) > 200 << 20, stage
        s = monitor_summary(tiny_run / stage)
        assert s["samples"] == len(samples) and s["host"]["run_cpu_pct_mean"] > 0, stage

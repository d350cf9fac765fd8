"""`kit check-host` and `kit env`: GPU, driver, system and data verdicts, each with its fix.

NVML is faked only at the binding's boundary: `kit.vendors.nvidia.nvml.ReplayNVML` answers from
tests/fixtures/hosts/nvml-h200x2.json, recorded on a real machine with 2 NVIDIA H200 (driver 580.159.04,
NVLink). The variants below are that recording with single readings changed (an ECC count, a clock event bit,
a foreign process, an old driver string), each documented where it is made. /proc and /sys are real files in
a temporary root.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import socket
import sys
from pathlib import Path

import pytest
import typer
from rich.console import Console
from typer.testing import CliRunner

from kit import case as cases
from kit.case import data as case_data
from kit.checks import Check, system
from kit.checks import data as data_mod
from kit.commands import check_host as ch
from kit.commands.env import env, env_block
from kit.data.sources import Reference
from kit.vendors.nvidia import NvidiaVendor, driver, nvml
from kit.vendors.nvidia import checks as gpu
from kit.vendors.nvidia.nvml import NVMLUnavailable, ReplayNVML, open_nvml

RECORDING = Path(__file__).resolve().parents[1] / "fixtures" / "hosts" / "nvml-h200x2.json"
CASE = cases.get("llava1_5_7b")
runner = CliRunner()


def cfg(name: str = "A800x1x8"):
    return cases.load_config(CASE, name)


def recording() -> dict:
    return json.loads(RECORDING.read_text())


def variant(tmp_path: Path, edit) -> Path:
    """A copy of the real H200x2 recording with `edit(calls)` applied; returns its path."""
    rec = copy.deepcopy(recording())
    edit(rec["calls"])
    p = tmp_path / "nvml-variant.json"
    p.write_text(json.dumps(rec))
    return p


def key(fn: str, *args) -> str:
    return json.dumps([fn, list(args)])


def by_name(checks: list[Check]) -> dict[str, Check]:
    return {c.name: c for c in checks}


def nvml_works() -> bool:
    try:
        open_nvml().nvmlShutdown()
        return True
    except NVMLUnavailable:
        return False


@pytest.fixture(autouse=True)
def no_docker(monkeypatch):
    """The Docker checks belong to kit/checks/docker.py and its tests; here the verdicts must not depend on
    whether this machine runs an engine."""
    monkeypatch.setattr(ch, "extra_checks", [])


def app() -> typer.Typer:
    a = typer.Typer()
    a.command("check-host")(ch.check_host)
    a.command("env")(env)
    return a


# ---------------------------------------------------------------- the real recording


def test_recorded_h200x2_gpus_are_all_ok():
    checks = by_name(gpu.gpu_checks(ReplayNVML.load(RECORDING), expected=2, device="H200"))
    assert all(c.status == "ok" for c in checks.values()), [c for c in checks.values() if c.status != "ok"]
    assert checks["GPU count"].data == {"found": 2, "expected": 2}
    assert checks["GPU model"].detail.startswith("NVIDIA H200 x2 (sm_90)")
    assert checks["GPU memory"].detail == "140 GiB per GPU"
    assert checks["NVLink"].detail == "all links up: GPU0 18/18, GPU1 18/18"  # nvidia-smi topo -m: NV18
    assert checks["clock events"].detail == "idle"
    assert checks["ECC"].detail == "enabled, no uncorrected errors"


def test_recorded_driver_580_supports_cuda_13_and_runs_both_variants():
    checks = driver.nvml_driver_checks(ReplayNVML.load(RECORDING))
    d = by_name(checks)
    assert d["driver"].status == "ok" and d["driver"].data["newest_full"] == "13.0"
    assert d["driver"].data["cuda_reported"] == "13.0" and d["driver"].data["compat"] == ["11", "12", "13"]
    for cuda in ("11.8", "12.1"):
        assert d[f"image CUDA {cuda}"].status == "ok" and d[f"image CUDA {cuda}"].data["support"] == "full"
    # The current stack's CUDA 13.0 variant runs fully too; each stack says which variant it would take.
    assert d["image CUDA 13.0 (current stack)"].status == "ok"
    assert d["stack reference"].status == "ok" and d["stack reference"].data["variant"] == "12.1"
    assert d["stack current"].status == "ok" and d["stack current"].data["variant"] == "13.0"
    assert "kit build --stack current --cuda auto" in d["stack current"].detail


def test_driver_older_than_cuda_13_runs_the_reference_stack_only():
    # 535.104.05: CUDA 12.2 fully (an LTS branch), below the 580 floor of CUDA 13.x.
    d = by_name(driver.driver_checks("535.104.05"))
    assert d["stack reference"].status == "ok" and d["stack reference"].data["variant"] == "12.1"
    cur = d["stack current"]
    assert cur.status == "warn" and cur.data["variant"] is None  # warn: the reference stack still runs here
    assert ">= 580.95.05" in cur.fix and "580.65.06" in cur.fix and "reference stack, which runs here" in cur.fix
    assert d["image CUDA 13.0 (current stack)"].data["support"] == "none"
    # Between 13.0 GA's driver and its Update 2's, the table says full support (GA's driver is the floor).
    assert by_name(driver.driver_checks("580.65.06"))["stack current"].status == "ok"
    assert by_name(driver.driver_checks("580.65.05"))["stack current"].status == "warn"
    # No stack at all: every stack row fails with the upgrade.
    none = by_name(driver.driver_checks("450.80.01"))
    assert none["stack reference"].status == none["stack current"].status == "fail"


def test_recorded_host_from_the_command(tmp_path):
    r = runner.invoke(app(), ["check-host", "--config", "H200x1x1", "--results", str(tmp_path), "--json"],
                      env={"KIT_NVML_RECORDING": str(RECORDING)})  # fmt: skip
    doc = json.loads(r.output)
    [host] = doc["hosts"]
    rows = {c["name"]: c for c in doc["hosts"][host]}
    assert rows["GPU count"]["status"] == "ok" and rows["image CUDA 12.1"]["status"] == "ok"
    assert rows["NVLink"]["data"]["links_up"] == [18, 18]


# ---------------------------------------------------------------- variants of the recording


def test_count_against_the_reference_configs_eight_gpus_fails_with_fix(tmp_path):
    checks = ch.run_checks("llava1_5_7b", "A800x1x8", None, None, tmp_path, 1, vendor=NvidiaVendor(RECORDING))
    count = by_name(checks)["GPU count"]
    assert count.status == "fail" and "2 GPUs found, the config needs 8" in count.detail
    assert "--gpus 2" in count.fix and "kit configs" in count.fix


def test_volatile_uncorrected_ecc_fails(tmp_path):
    # GPU 1 reports 3 uncorrected errors since the driver loaded (volatile counter; aggregate follows).
    def edit(calls):
        calls[key("nvmlDeviceGetTotalEccErrors", {"device": 1}, 1, 0)] = {"result": 3}
        calls[key("nvmlDeviceGetTotalEccErrors", {"device": 1}, 1, 1)] = {"result": 3}

    ecc = by_name(gpu.gpu_checks(ReplayNVML.load(variant(tmp_path, edit)), 2))["ECC"]
    assert ecc.status == "fail" and "GPU1: 3" in ecc.detail and "nvidia-smi -r" in ecc.fix


def test_aggregate_only_ecc_warns_and_disabled_ecc_warns(tmp_path):
    def aggregate(calls):  # errors in the GPU's lifetime, none since the last driver load
        calls[key("nvmlDeviceGetTotalEccErrors", {"device": 0}, 1, 1)] = {"result": 2}

    ecc = by_name(gpu.gpu_checks(ReplayNVML.load(variant(tmp_path, aggregate)), 2))["ECC"]
    assert ecc.status == "warn" and "lifetime" in ecc.detail and ecc.fix

    def disabled(calls):  # ECC mode (current, pending) = (0, 0) on GPU 0
        calls[key("nvmlDeviceGetEccMode", {"device": 0})] = {"result": [0, 0]}

    ecc = by_name(gpu.gpu_checks(ReplayNVML.load(variant(tmp_path, disabled)), 2))["ECC"]
    assert ecc.status == "warn" and "disabled on GPU0" in ecc.detail and "nvidia-smi -e 1" in ecc.fix


@pytest.mark.parametrize(
    "mask, status, words",
    [
        (0x1, "ok", "idle"),
        (0x8, "fail", "HW slowdown"),
        (0x40, "fail", "HW thermal slowdown"),
        (0x80, "fail", "HW power brake"),
        (0x20, "warn", "SW thermal slowdown"),
        (0x4, "warn", "SW power cap"),
    ],
)
def test_clock_event_bits_are_decoded(tmp_path, mask, status, words):
    # GPU 0's clocks-event-reasons mask replaced (the recording has 0x1: idle).
    def edit(calls):
        calls[key("nvmlDeviceGetCurrentClocksEventReasons", {"device": 0})] = {"result": mask}

    c = by_name(gpu.gpu_checks(ReplayNVML.load(variant(tmp_path, edit)), 2))["clock events"]
    assert c.status == status and words in c.detail
    assert bool(c.fix) == (status != "ok")


def test_foreign_process_warns_with_pid_and_memory(tmp_path):
    # A process (pid 4242, 20 GiB) running on GPU 1, in pynvml's process-info shape.
    proc = {"__struct__": {"pid": 4242, "usedGpuMemory": 20 * 1024**3, "gpuInstanceId": 4294967295,
                           "computeInstanceId": 4294967295}}  # fmt: skip

    def edit(calls):
        calls[key("nvmlDeviceGetComputeRunningProcesses", {"device": 1})] = {"result": [proc]}

    c = by_name(gpu.gpu_checks(ReplayNVML.load(variant(tmp_path, edit)), 2))["other processes"]
    assert c.status == "warn" and "GPU1 pid 4242 (20.0 GiB)" in c.detail and "kill PID" in c.fix


def test_nvlink_down_mig_on_persistence_off(tmp_path):
    # Link 5 of GPU 0 down; MIG enabled and persistence off on GPU 1.
    def edit(calls):
        calls[key("nvmlDeviceGetNvLinkState", {"device": 0}, 5)] = {"result": 0}
        calls[key("nvmlDeviceGetMigMode", {"device": 1})] = {"result": [1, 1]}
        calls[key("nvmlDeviceGetPersistenceMode", {"device": 1})] = {"result": 0}

    c = by_name(gpu.gpu_checks(ReplayNVML.load(variant(tmp_path, edit)), 2))
    assert c["NVLink"].status == "warn" and "GPU0 17/18" in c["NVLink"].detail and c["NVLink"].fix
    assert c["MIG mode"].status == "warn" and "GPU1" in c["MIG mode"].detail and "-mig 0" in c["MIG mode"].fix
    assert c["persistence mode"].status == "warn" and "nvidia-smi -pm 1" in c["persistence mode"].fix


def test_mixed_models_warn(tmp_path):
    def edit(calls):
        calls[key("nvmlDeviceGetName", {"device": 1})] = {"result": "NVIDIA H100 80GB HBM3"}

    c = by_name(gpu.gpu_checks(ReplayNVML.load(variant(tmp_path, edit)), 2))["GPU model"]
    assert c.status == "warn" and "mixed" in c.detail and "CUDA_VISIBLE_DEVICES" in c.fix


def test_not_supported_readings_are_not_reported(tmp_path):
    # Consumer-GPU style: NVML answers NOT_SUPPORTED (code 3) for ECC mode and NVLink state.
    def edit(calls):
        for k in list(calls):
            if "nvmlDeviceGetEccMode" in k or "nvmlDeviceGetNvLinkState" in k:
                calls[k] = {"error": "NVMLError_NotSupported", "code": 3}

    c = by_name(gpu.gpu_checks(ReplayNVML.load(variant(tmp_path, edit)), 2))
    assert c["ECC"].status == "ok" and "not reported" in c["ECC"].detail
    assert c["NVLink"].status == "skip" and "PCIe" in c["NVLink"].detail


def test_old_driver_recording_the_reference_hosts_470(tmp_path):
    # The seed's A800 host ran driver 470.141.10; its NVML reports CUDA 11.4 (11040).
    def edit(calls):
        calls[key("nvmlSystemGetDriverVersion")] = {"result": "470.141.10"}
        calls[key("nvmlSystemGetCudaDriverVersion")] = {"result": 11040}

    d = by_name(driver.nvml_driver_checks(ReplayNVML.load(variant(tmp_path, edit))))
    assert d["driver"].data["newest_full"] == "11.4"
    assert d["image CUDA 11.8"].status == "warn" and "minor-version compatibility" in d["image CUDA 11.8"].detail
    assert "no PTX JIT" in d["image CUDA 11.8"].detail and "SASS" in d["image CUDA 11.8"].detail
    assert ">= 520.61.05" in d["image CUDA 11.8"].fix
    v121 = d["image CUDA 12.1"]
    assert v121.data["support"] == "none" and v121.status == "warn"  # the 11.8 variant still runs
    assert ">= 530.30.02" in v121.fix and ">= 525.60.13" in v121.fix


# ---------------------------------------------------------------- driver table edges


def support(version: str, cuda: int | None = None) -> dict[str, str]:
    return {v.cuda: v.support for v in driver.assess(version, cuda).variants}


@pytest.mark.parametrize(
    "version, newest, s118, s121, s130",
    [
        ("470.141.10", "11.4", "compat", "none", "none"),
        ("450.80.01", "11.0", "none", "none", "none"),
        ("450.80.02", "11.0", "compat", "none", "none"),
        ("525.60.12", "11.8", "full", "none", "none"),
        ("525.60.13", "12.0", "full", "compat", "none"),
        ("520.61.05", "11.8", "full", "none", "none"),
        ("520.61.04", "11.7", "compat", "none", "none"),
        ("530.30.02", "12.1", "full", "full", "none"),
        ("530.30.01", "12.0", "full", "compat", "none"),
        ("570.124.06", "12.8", "full", "full", "none"),
        ("580.65.06", "13.0", "full", "full", "full"),  # 13.0 GA's driver
        ("580.159.04", "13.0", "full", "full", "full"),  # without NVML's answer, the table's newest row
    ],
)
def test_driver_table_edges(version, newest, s118, s121, s130):
    v = driver.assess(version)
    assert v.newest_full == newest
    assert support(version) == {"11.8": s118, "12.1": s121, "13.0": s130}


def test_nvml_cuda_version_extends_the_table():
    assert driver.assess("580.159.04", 13000).newest_full == "13.0"
    assert driver.assess("590.44.01", 13010).newest_full == "13.1"  # newer than the table's last row
    assert driver.cuda_from_nvml(12020) == "12.2"


def test_no_variant_runs_fails_with_the_upgrade():
    d = by_name(driver.driver_checks("450.80.01"))
    assert d["image CUDA 11.8"].status == "fail" and d["image CUDA 12.1"].status == "fail"
    assert "upgrade the NVIDIA driver to >= 520.61.05" in d["image CUDA 11.8"].fix


def test_variant_that_does_not_run_points_at_the_one_that_does():
    d = by_name(driver.driver_checks("525.60.12"))
    assert d["image CUDA 12.1"].status == "warn" and "kit build --cuda 11.8" in d["image CUDA 12.1"].fix


def test_bad_driver_string_fails():
    [c] = driver.driver_checks("garbage")
    assert c.status == "fail" and c.fix


# ---------------------------------------------------------------- a host without GPUs (this one)


@pytest.mark.skipif(nvml_works(), reason="this machine has NVIDIA GPUs")
def test_no_gpus_here_fails_with_hints_and_exit_1(tmp_path):
    checks = ch.run_checks("llava1_5_7b", "A800x1x8", None, None, tmp_path, 1, root=str(tmp_path))
    g = by_name(checks)["GPUs"]
    assert g.status == "fail" and "no NVIDIA GPU/driver" in g.detail
    assert "install the NVIDIA driver" in g.fix and "nvidia-ml-py" in g.fix
    assert by_name(checks)["driver"].status == "fail"
    assert all(c.fix for c in checks if c.status == "fail"), [c for c in checks if c.status == "fail" and not c.fix]
    r = runner.invoke(app(), ["check-host", "--results", str(tmp_path)], env={"COLUMNS": "200"})
    assert r.exit_code == 1, r.output
    assert "no NVIDIA GPU/driver" in r.output and "fix: install the NVIDIA driver" in r.output


def test_driver_read_from_proc_when_nvml_is_missing(tmp_path):
    # /proc/driver/nvidia/version as the H200 host prints it (tests/fixtures/hosts/host-h200x2.txt).
    (tmp_path / "proc/driver/nvidia").mkdir(parents=True)
    (tmp_path / "proc/driver/nvidia/version").write_text(
        "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.159.04  Release Build  (nixbld@)\n"
    )
    assert driver.driver_from_proc(str(tmp_path)) == "580.159.04"


def test_cpu_config_asks_the_cpu_vendor_and_no_driver(tmp_path, monkeypatch):
    def unavailable(recording=None):
        raise NVMLUnavailable("no driver")

    monkeypatch.setattr(nvml, "open_nvml", unavailable)
    rows, vendor, _ = ch.device_checks(cfg("tiny"))
    c = by_name(rows)
    assert vendor.name == "cpu" and c["Accelerators"].status == "ok" and "driver" not in c


def test_every_failing_check_of_a_bad_host_has_a_fix(tmp_path):
    # A bad host: ECC errors, HW slowdown, too few GPUs; small /dev/shm, IB down on 2 nodes, missing data.
    def edit(calls):
        calls[key("nvmlDeviceGetTotalEccErrors", {"device": 0}, 1, 0)] = {"result": 1}
        calls[key("nvmlDeviceGetCurrentClocksEventReasons", {"device": 1})] = {"result": 0x8}
        calls[key("nvmlSystemGetDriverVersion")] = {"result": "450.80.01"}
        calls[key("nvmlSystemGetCudaDriverVersion")] = {"result": 11000}

    root = fake_root(tmp_path / "root", shm="65536k", ib_state="1: DOWN", memlock="65536")
    checks = ch.run_checks("llava1_5_7b", "A800x1x8", tmp_path / "nodata", tmp_path / "nomodels", tmp_path, 2,
                           vendor=NvidiaVendor(variant(tmp_path, edit), root=str(root)), root=str(root))  # fmt: skip
    failing = [c for c in checks if c.status == "fail"]
    assert {c.name for c in failing} >= {"GPU count", "ECC", "clock events", "image CUDA 11.8", "/dev/shm", "data", "weights"}
    assert all(c.fix for c in failing)


# ---------------------------------------------------------------- system: a fake /proc and /sys


def fake_root(root: Path, shm: str | None = "65536k", ib_state: str | None = None, memlock: str = "unlimited",
              stack: str = "8388608", cores: int = 32, mem_kb: int = 263998500) -> Path:  # fmt: skip
    """A real tree of the files the system checks read; numbers from the H200 host's readings by default."""
    (root / "proc/self").mkdir(parents=True, exist_ok=True)
    (root / "proc/sys/kernel").mkdir(parents=True, exist_ok=True)
    (root / "etc").mkdir(parents=True, exist_ok=True)
    mounts = "proc /proc proc rw 0 0\n"
    if shm:
        mounts += f"tmpfs /dev/shm tmpfs rw,nosuid,nodev,size={shm},inode64 0 0\n"
    (root / "proc/mounts").write_text(mounts)
    (root / "proc/self/limits").write_text(
        "Limit                     Soft Limit           Hard Limit           Units     \n"
        f"Max stack size            {stack}              unlimited            bytes     \n"
        f"Max locked memory         {memlock}            {memlock}            bytes     \n"
    )
    (root / "proc/cpuinfo").write_text("".join(f"processor\t: {i}\nmodel name\t: Intel(R) Xeon(R) Processor\n\n" for i in range(cores)))
    (root / "proc/meminfo").write_text(f"MemTotal:       {mem_kb} kB\nMemFree:        1 kB\n")
    (root / "proc/sys/kernel/osrelease").write_text("6.18.44-fc-v657-gpu\n")
    (root / "etc/os-release").write_text('NAME="Ubuntu"\nPRETTY_NAME="Ubuntu 24.04.3 LTS"\n')
    if ib_state:
        port = root / "sys/class/infiniband/mlx5_0/ports/1"
        port.mkdir(parents=True)
        (port / "state").write_text(ib_state + "\n")
        (port / "rate").write_text("200 Gb/sec (4X HDR)\n")
        (port / "link_layer").write_text("InfiniBand\n")
    return root


def test_shm_docker_default_fails_with_bus_error_hint(tmp_path):
    root = fake_root(tmp_path, shm="65536k")  # docker's default 64 MiB
    c = system.shm_check(cfg(), root)
    need, _ = system.shm_need(cfg())
    # 8 GPUs x 4 workers x 4 prefetched x 32 samples x (3x336x336x4 B image + 2048 x 17 B tokens)
    assert need == 8 * 4 * 4 * 32 * (3 * 336 * 336 * 4 + 2048 * 17)
    assert c.status == "fail" and "bus error" in c.detail and "--ipc=host" in c.fix and "--shm-size" in c.fix


def test_shm_sizes_ok_and_warn(tmp_path):
    need, _ = system.shm_need(cfg())
    assert system.shm_check(cfg(), fake_root(tmp_path / "a", shm="256g")).status == "ok"  # the H200 host: 256 GiB
    assert system.shm_check(cfg(), fake_root(tmp_path / "b", shm=f"{need // 1024 + 1024}k")).status == "warn"


def test_limits_from_proc_self_limits(tmp_path):
    ok = by_name(system.limits_checks(1, True, fake_root(tmp_path / "a")))  # the H200 host: unlimited, 8 MiB
    assert ok["memlock limit"].status == "ok" and ok["stack limit"].status == "ok"
    low = fake_root(tmp_path / "b", memlock="65536", stack="1048576")
    single = by_name(system.limits_checks(1, True, low))
    multi = by_name(system.limits_checks(2, True, low))
    assert single["memlock limit"].status == "warn" and multi["memlock limit"].status == "fail"
    assert "memlock=-1" in multi["memlock limit"].fix and "limits.conf" in multi["memlock limit"].fix
    assert single["stack limit"].status == "warn" and "stack=67108864" in single["stack limit"].fix
    assert by_name(system.limits_checks(2, False, low))["memlock limit"].status == "ok"  # no IB: not charged


@pytest.mark.parametrize(
    "state, nodes, status",
    [("4: ACTIVE", 1, "ok"), ("4: ACTIVE", 2, "ok"), ("1: DOWN", 2, "warn"), ("1: DOWN", 1, "skip"), (None, 2, "warn"), (None, 1, "skip")],
)
def test_infiniband_from_sysfs(tmp_path, state, nodes, status):
    c = system.ib_check(nodes, fake_root(tmp_path, ib_state=state))
    assert c.status == status
    if state and "ACTIVE" in state:
        assert "mlx5_0/1 ACTIVE 200 Gb/sec (4X HDR) InfiniBand" in c.detail
    if status == "warn":
        assert f"{nodes} nodes" in c.detail and "ibstat" in c.fix


def test_cpu_memory_os_from_proc(tmp_path):
    c = by_name(system.host_checks(cfg("H200x1x1"), fake_root(tmp_path)))
    assert c["CPU"].status == "ok" and "Intel(R) Xeon(R) Processor, 32 cores" in c["CPU"].detail
    assert c["memory"].status == "ok" and c["OS"].detail == "Ubuntu 24.04.3 LTS, kernel 6.18.44-fc-v657-gpu"
    small = by_name(system.host_checks(cfg(), fake_root(tmp_path / "s", cores=8, mem_kb=8 * 1024**2)))
    assert small["CPU"].status == "warn" and "under 2 per GPU" in small["CPU"].detail and small["CPU"].fix
    assert small["memory"].status == "warn"


def test_host_memory_against_the_offload_estimate(tmp_path):
    """H100x1x1's finetune keeps 0.6 of its optimizer state on the host: the fit's host estimate (115 GiB, measured
    114.2 GiB on one H100 machine, bench/results/h100x1-finetune-H100x1x1.json) is what check-host asks of the host."""
    big = by_name(system.host_checks(cfg("H100x1x1"), fake_root(tmp_path, mem_kb=100 * 1024**2)))["memory"]
    assert big.status == "warn" and "finetune keeps 0.6 of its fp32 optimizer state on the host" in big.detail
    assert "about 115 GiB per node" in big.detail and "at least 115 GiB" in big.fix and "kit configs new" in big.fix
    ok = by_name(system.host_checks(cfg("H100x1x1"), fake_root(tmp_path / "b", mem_kb=125 * 1024**2)))["memory"]
    assert ok.status == "ok" and round(ok.data["need_bytes"] / 2**30) == 115  # the machine it ran on
    plain = by_name(system.host_checks(cfg("H100x1x8"), fake_root(tmp_path / "c", mem_kb=32 * 1024**2)))["memory"]
    assert plain.status == "ok" and "16-bit LLM" in plain.detail  # no offload: the model's load alone


def test_model_sizes_and_results_need():
    sz = CASE.data.model_sizes(cfg())  # the case counts its parameters; the host asks it (results_need)
    assert sz.llm == 6_738_415_616  # LLaMA-2 7B
    assert 0.30e9 < sz.vision < 0.31e9 and 20e6 < sz.projector < 22e6
    full, minimum, how = system.results_need(cfg())
    assert 14.0e9 < 2 * (sz.llm + sz.vision + sz.projector) < 14.2e9  # the 16-bit finetune model, ~14 GB
    assert 290e9 < full < 310e9 and minimum < full and "16-bit model 14.1 GB" in how


def test_disk_against_the_need(tmp_path):
    ok = by_name(system.disk_checks(cfg("tiny"), tmp_path, tmp_path / "runs" / "not-yet"))
    assert ok["disk (results)"].status == "ok" and ok["disk (results)"].data["path"] == str(tmp_path)
    assert ok["disk (data)"].status == "ok"
    huge = cfg()
    huge = dataclasses.replace(huge, model=dataclasses.replace(
        huge.model, llm=dataclasses.replace(huge.model.llm, layers=10**7)))  # fmt: skip
    c = by_name(system.disk_checks(huge, None, tmp_path))["disk (results)"]
    assert c.status == "fail" and "--results DIR" in c.fix


# ---------------------------------------------------------------- data and weights


def record(i: int | str, image: str | None = None) -> dict:
    """A record `kit run` accepts under both templates (a text-only one only under v1)."""
    return {"id": str(i), **({"image": image} if image else {}),
            "conversations": [{"from": "human", "value": ("<image>\n" if image else "") + 'say "conversations"'},
                              {"from": "gpt", "value": "red ball"}]}  # fmt: skip


def write_records(path: Path, n: int, image: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([record(i, image) for i in range(n)]))


def jpeg(path: Path, truncated: bool = False) -> None:
    """A real JPEG file; truncated: cut in half, so its header opens and its pixels do not decode."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (64, 48), (200, 40, 40)).save(path, "JPEG")
    if truncated:
        path.write_bytes(path.read_bytes()[:300])


def data_tree(root: Path, pretrain: int = 5, finetune: int = 7) -> Path:
    c = cfg()
    write_records(root / c.data.pretrain_json, pretrain, image="00000/a.jpg")
    jpeg(root / c.data.pretrain_images / "00000/a.jpg")
    write_records(root / c.data.finetune_json, finetune)
    for f in case_data.stage(CASE, c, "finetune").folders:
        (root / f).mkdir(parents=True)
    return root


def test_record_count_streams_across_chunks(tmp_path):
    write_records(tmp_path / "x.json", 1000)
    assert CASE.data.count_records(tmp_path / "x.json", chunk=7) == 1000  # the case counts its own records


def test_data_present_and_record_counts(tmp_path, monkeypatch):
    monkeypatch.setattr(case_data, "reference", lambda case: Reference({"pretrain": 5, "finetune": 9}))
    c = by_name(data_mod.data_checks(cfg(), data_tree(tmp_path)))
    assert c["pretrain JSON"].status == "ok" and "5 records" in c["pretrain JSON"].detail
    ft = c["finetune JSON"]
    assert ft.status == "warn" and "7 records, 2 fewer than the reference's 9" in ft.detail and ft.fix
    assert c["pretrain images"].status == "ok" and c["finetune images"].status == "ok"


def test_reference_counts_are_the_published_ones():
    """One place holds them, the case's data-sources.toml; check-host, data verify and the rules read it."""
    assert case_data.reference(CASE).records == {"pretrain": 558_128, "finetune": 665_298}
    from kit.case import rules

    assert rules.load(CASE.name).records == case_data.reference_records(CASE)


def test_data_missing_names_the_path(tmp_path):
    root = data_tree(tmp_path)
    (root / cfg().data.finetune_json).unlink()
    (root / "gqa/images").rmdir()
    c = by_name(data_mod.data_checks(cfg(), root))
    assert c["finetune JSON"].status == "fail" and str(root / "llava_v1_5_mix665k.json") in c["finetune JSON"].detail
    assert "--synthetic" in c["finetune JSON"].fix
    assert c["finetune images"].status == "fail" and "gqa/images" in c["finetune images"].detail


def test_deep_finds_missing_images(tmp_path):
    root = data_tree(tmp_path)
    write_records(root / cfg().data.pretrain_json, 3, image="00000/missing.jpg")
    c = by_name(data_mod.data_checks(cfg(), root, deep=True))
    row = c["verify: images: missing"]
    assert row.status == "fail" and row.detail.startswith("pretrain: 1 missing file(s) named by 3 record(s)")
    assert c["data manifest"].status == "fail"  # --deep is `kit data verify`: it wrote the manifest


def test_deep_on_good_data_validates_records_and_decodes_images(tmp_path):
    root = data_tree(tmp_path)
    c = by_name(data_mod.data_checks(cfg(), root, deep=True))
    assert c["verify: images"].status == "ok"
    assert c["verify: images"].detail == "all 1 images named by 5 records are present and decode"
    assert not [n for n, row in c.items() if n.startswith("verify: ") and row.status == "fail"]
    assert c["data manifest"].status == "ok" and (root / "kit-data-manifest.json").is_file()


def bad_tree(root: Path) -> Path:
    """The real layout with two truncated JPEGs (pretrain) and three records `kit run` rejects (finetune)."""
    c = cfg()
    images = root / c.data.pretrain_images
    jpeg(images / "00000/a.jpg")
    jpeg(images / "00000/b.jpg", truncated=True)
    jpeg(images / "00000/c.jpg", truncated=True)
    pre = [record("p0", "00000/a.jpg"), record("p1", "00000/b.jpg"), record("p2", "00000/a.jpg"), record("p3", "00000/c.jpg")]
    (root / c.data.pretrain_json).write_text(json.dumps(pre))
    jpeg(root / "coco/train2017/1.jpg")
    alternating = record("f2")
    alternating["conversations"] = [alternating["conversations"][1], alternating["conversations"][0]]
    ft = [record("f0", "coco/train2017/1.jpg"), {"id": "f1", "image": "coco/train2017/1.jpg"}, alternating,
          {**record("f3"), "image": 123}]  # fmt: skip
    (root / c.data.finetune_json).write_text(json.dumps(ft))
    for f in case_data.stage(CASE, c, "finetune").folders:
        (root / f).mkdir(parents=True, exist_ok=True)
    return root


def test_deep_names_undecodable_images_and_records_kit_run_rejects(tmp_path):
    root = bad_tree(tmp_path / "data")
    argv = ["check-host", "--config", "H200x1x1", "--results", str(tmp_path), "--data", str(root), "--deep"]
    r = runner.invoke(app(), [*argv, "--json"], env={"KIT_NVML_RECORDING": str(RECORDING)})
    assert r.exit_code == 1 and not isinstance(r.exception, TypeError)
    rows = {c["name"]: c for c in next(iter(json.loads(r.stdout)["hosts"].values()))}
    assert not any("the check itself failed" in c["detail"] for c in rows.values())
    images = rows["verify: images: unreadable"]
    assert images["status"] == "fail" and images["detail"].startswith("pretrain: 2 unreadable file(s) named by 2 record(s)")
    for i, name in ((1, "b"), (3, "c")):
        assert f"pretrain record #{i} (id 'p{i}'): LLaVA-Pretrain/images/00000/{name}.jpg: OSError" in images["detail"]
    assert "#0 (id 'p0')" not in images["detail"]
    schema = rows["verify: finetune records: schema"]
    assert schema["status"] == "fail" and schema["detail"].startswith("2 record(s) in llava_v1_5_mix665k.json")
    assert "finetune record #1 (id 'f1'): missing 'conversations'" in schema["detail"]
    assert "finetune record #3 (id 'f3'): 'image' must be a non-empty relative path, got 123" in schema["detail"]
    order = rows["verify: finetune records: gpt-first"]
    assert order["status"] == "fail" and "finetune record #2 (id 'f2'): turns must alternate human, gpt" in order["detail"]
    assert "#0 (id 'f0')" not in schema["detail"] + order["detail"] and schema["fix"]
    shown = runner.invoke(app(), argv, env={"COLUMNS": "250"})  # what a user reads
    assert shown.exit_code == 1 and "Traceback" not in shown.output
    assert "Truncated File Read" in shown.output and "missing 'conversations'" in shown.output and "got 123" in shown.output


def test_deep_lists_the_first_problems_then_a_count(tmp_path):
    root = data_tree(tmp_path)
    (root / cfg().data.finetune_json).write_text(json.dumps([{"id": f"x{i}"} for i in range(12)]))
    d = by_name(data_mod.data_checks(cfg(), root, deep=True))["verify: finetune records: schema"].detail
    assert d.startswith("12 record(s) in llava_v1_5_mix665k.json")
    assert d.count("missing 'conversations'") == data_mod.SHOWN and d.endswith("; and 7 more")
    assert "#4 (id 'x4')" in d and "#5 (id 'x5')" not in d


def test_deep_without_pillow_says_what_to_install(tmp_path, monkeypatch):
    root = data_tree(tmp_path)
    monkeypatch.setitem(sys.modules, "PIL", None)  # as if Pillow were not installed on this host
    c = by_name(data_mod.data_checks(cfg(), root, deep=True))["data verify"]
    assert c.status == "fail" and "Pillow" in c.detail and c.fix == "pip install pillow"


def test_mmmu_checked_when_its_folder_exists(tmp_path):
    root = data_tree(tmp_path)
    assert "MMMU" not in by_name(data_mod.data_checks(cfg(), root))
    (root / "MMMU/Art").mkdir(parents=True)
    (root / "MMMU/Art/validation-00000-of-00001.parquet").write_bytes(b"PAR1")
    c = by_name(data_mod.data_checks(cfg(), root))["MMMU"]
    assert c.status == "warn" and "1 of 30 subjects" in c.detail


def test_skip_without_data_or_models():
    [d] = data_mod.data_checks(cfg(), None)
    [m] = data_mod.model_checks(cfg(), None)
    assert d.status == m.status == "skip" and "--synthetic" in d.detail and "--synthetic" in m.detail


def test_model_dirs(tmp_path):
    c = cfg()
    llm, clip = tmp_path / c.model.llm_dir, tmp_path / c.model.vision_dir
    for d in (llm, clip):
        d.mkdir()
        (d / "config.json").write_text("{}")
        (d / "model.safetensors").write_bytes(b"x")
    (llm / "tokenizer.model").write_bytes(b"x")
    assert all(x.status == "ok" for x in data_mod.model_checks(c, tmp_path))
    (llm / "tokenizer.model").unlink()
    (clip / "model.safetensors").unlink()
    got = by_name(data_mod.model_checks(c, tmp_path))
    assert got["LLM weights"].status == "fail" and "tokenizer.model" in got["LLM weights"].detail
    assert got["CLIP weights"].status == "fail" and "weights" in got["CLIP weights"].detail
    (tmp_path / c.model.vision_dir / "config.json").unlink()
    (tmp_path / c.model.vision_dir / "config.json").parent.rmdir()
    missing = by_name(data_mod.model_checks(c, tmp_path))["CLIP weights"]
    assert missing.status == "fail" and f"missing folder: {tmp_path / c.model.vision_dir}" in missing.detail
    [none] = data_mod.model_checks(c, tmp_path / "none")
    assert none.status == "fail" and "no such directory" in none.detail and c.model.llm_dir in none.fix


# ---------------------------------------------------------------- output, hooks, remote, env


def test_json_shape(tmp_path):
    r = runner.invoke(app(), ["check-host", "--config", "A800x1x8", "--results", str(tmp_path), "--json"],
                      env={"KIT_NVML_RECORDING": str(RECORDING)})  # fmt: skip
    assert r.exit_code == 1  # 2 GPUs of the 8 the config needs
    doc = json.loads(r.output)
    assert set(doc) == {"case", "config", "ready", "status", "hosts"} and doc["ready"] is False
    [(host, checks)] = doc["hosts"].items()
    assert doc["status"][host] == "fail"
    assert all(set(c) == {"group", "name", "status", "detail", "fix", "data"} for c in checks)
    from kit.checks.remote import parse_report  # the remote side reads exactly this shape

    assert [c.name for c in parse_report(r.output)] == [c["name"] for c in checks]


def test_render_one_table_a_column_per_host_then_fixes():
    results = {
        "node1": [Check("gpu", "GPU count", "ok", "8 GPUs"), Check("system", "/dev/shm", "fail", "64 MiB", "--ipc=host")],
        "node2": [Check("gpu", "GPU count", "fail", "2 GPUs found", "use 8"), Check("system", "/dev/shm", "fail", "64 MiB", "--ipc=host")],
    }  # fmt: skip
    console = Console(record=True, width=200)
    ch.render(results, console)
    out = console.export_text()
    assert out.count("kit check-host") == 1 and "node1" in out and "node2" in out
    assert "✓ 8 GPUs" in out and "✗ 2 GPUs found" in out
    assert "/dev/shm (node1, node2): 64 MiB" in out and "fix: --ipc=host" in out  # the same fix, grouped
    assert "node2: not ready" in out
    assert ch.exit_code(results) == 1 and ch.exit_code({"a": [Check("g", "n", "warn", "x", "y")]}) == 0


def test_extra_checks_hook_sees_earlier_checks(tmp_path, monkeypatch):
    seen = {}

    def mine(ctx: ch.CheckContext) -> list[Check]:
        seen["found"] = next(c.data["found"] for c in ctx.checks if c.name == "GPU count")
        return [Check("docker", "engine", "ok", "fake")]

    monkeypatch.setattr(ch, "extra_checks", [mine])
    checks = ch.run_checks("llava1_5_7b", "H200x1x1", None, None, tmp_path, 1, vendor=NvidiaVendor(RECORDING))
    assert seen == {"found": 2} and by_name(checks)["engine"].detail == "fake"


def test_a_crashing_check_becomes_a_failing_row(tmp_path, monkeypatch):
    def broken(ctx):
        raise RuntimeError("boom")

    monkeypatch.setattr(ch, "extra_checks", [broken])
    c = by_name(ch.run_checks("llava1_5_7b", "H200x1x1", None, None, tmp_path, 1, vendor=NvidiaVendor(RECORDING)))["broken"]
    assert c.status == "fail" and "boom" in c.detail and c.fix


def test_remote_host_without_the_remote_module(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "kit.checks.remote", None)  # as if the module were not there
    args = ch.CheckArgs(data="/d", nodes=2)
    out = ch.remote_checks(["gpu-node-7"], args)
    [c] = out["gpu-node-7"]
    assert c.status == "fail" and "remote checks not available" in c.detail and "kit check-host" in c.fix
    assert args.remote_argv() == ["--case", "llava1_5_7b", "--config", "A800x1x8", "--results", "runs", "--nodes", "2",
                                  "--data", "/d"]  # fmt: skip


def test_local_host_names_are_checked_here(tmp_path):
    assert ch.is_local("localhost") and ch.is_local(socket.gethostname())
    r = runner.invoke(app(), ["check-host", "--config", "H200x1x1", "--hosts", "localhost", "--results",
                              str(tmp_path), "--json"], env={"KIT_NVML_RECORDING": str(RECORDING)})  # fmt: skip
    doc = json.loads(r.output)
    assert list(doc["hosts"]) == ["localhost"] and any(c["name"] == "GPU count" for c in doc["hosts"]["localhost"])


def test_unknown_config_is_exit_2():
    r = runner.invoke(app(), ["check-host", "--config", "nope"])
    assert r.exit_code == 2


def test_env_block_contents():
    from kit.vendors.nvidia import NvidiaVendor

    block = env_block(NvidiaVendor(recording=RECORDING))
    assert block.startswith("```text\n") and block.endswith("\n```")
    for label in ("kit:", "Python:", "OS:", "CPU:", "Memory:", "torch:", "deepspeed:", "transformers:", "flash-attn:",
                  "nvidia-ml-py:", "docker:", "Docker engine:"):  # fmt: skip
        assert f"- {label}" in block, label
    assert "580.159.04" in block and "CUDA (driver): 13.0" in block and "NVIDIA H200, 140 GiB" in block
    lines = block.splitlines()
    assert lines.index(next(ln for ln in lines if "torch:" in ln)) < lines.index(next(ln for ln in lines if "NVIDIA driver" in ln))


def test_env_and_check_host_never_import_the_training_stack():
    import subprocess

    code = (
        "import sys, kit.commands.env as e, kit.commands.check_host as c\n"
        "from kit.vendors.nvidia import NvidiaVendor\n"
        f"e.env_block(NvidiaVendor(recording={str(RECORDING)!r}))\n"
        "bad = sorted(m for m in ('torch', 'deepspeed', 'transformers') if m in sys.modules)\n"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_env_command_prints_the_block():
    r = runner.invoke(app(), ["env"], env={"KIT_NVML_RECORDING": str(RECORDING)})  # NVIDIA's vendor replays it
    assert r.exit_code == 0 and "```text" in r.output and "NVIDIA driver: 580.159.04" in r.output

"""The AMD vendor (kit/vendors/amd.py) on recordings of the amdsmi library.

amdsmi cannot run here (no AMD GPU, no ROCm), so `ReplayAmdSmi` answers its calls from
tests/fixtures/vendors/amd/amdsmi-mi300x-x8.json: an 8x MI300X host as AMD's ROCm blog shows it through amd-smi
(the fixture's `source` names every command each answer comes from, and what the post leaves out). The variants
below are that recording with answers added or changed, each documented where it is made; /dev and /opt/rocm are
real files in a temporary root.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest

from kit.checks import Check
from kit.vendors import amd
from kit.vendors.amd import AmdVendor, decode_indep_throttle

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "vendors" / "amd"
MI300X = FIXTURES / "amdsmi-mi300x-x8.json"
NO_DRIVER = FIXTURES / "amdsmi-no-driver.json"
GIB = 1024**3


def key(fn: str, *args) -> str:
    return json.dumps([fn, list(args)])


def g(i: int) -> dict:
    return {"gpu": i}


def by_name(checks: list[Check]) -> dict[str, Check]:
    return {c.name: c for c in checks}


def variant(tmp_path: Path, edit, name: str = "variant.json") -> Path:
    rec = copy.deepcopy(json.loads(MI300X.read_text()))
    edit(rec)
    p = tmp_path / name
    p.write_text(json.dumps(rec))
    return p


def complete(rec: dict) -> None:
    """The post truncates `amd-smi static` after GPU 0 and shows no per-pair link type: GPU 0's static answers are
    copied to GPUs 1-7 (the monitor shows eight alike GPUs), and every pair gets the xGMI link type the 8-GPU MI300
    host of AMD's amdsmi changelog (ROCm 6.3, `amd-smi topology` LINK TYPE TABLE) shows for every pair."""
    calls = rec["calls"]
    for fn in ("amdsmi_get_gpu_asic_info", "amdsmi_get_gpu_vram_info"):
        for i in range(1, 8):
            calls[key(fn, g(i))] = copy.deepcopy(calls[key(fn, g(0))])
    for i in range(8):
        for j in range(8):
            if i != j:
                calls[key("amdsmi_topo_get_link_type", g(i), g(j))] = {"result": {"hops": 1, "type": amd.AMDSMI_IOLINK_TYPE_XGMI}}


@pytest.fixture(autouse=True)
def no_env(monkeypatch):
    monkeypatch.delenv(amd.RECORDING_ENV, raising=False)
    monkeypatch.delenv("ROCM_PATH", raising=False)


# ---------------------------------------------------------------- the recording as published


def test_probe_reads_what_the_recording_shows_and_no_more():
    p = AmdVendor(MI300X).probe()
    assert p.available and p.vendor == "amd" and p.link_kind == "xGMI" and p.replayed_from == str(MI300X)
    assert [d.bus_id for d in p.devices] == ["0000:05:00.0", "0000:26:00.0", "0000:46:00.0", "0000:65:00.0",
                                             "0000:85:00.0", "0000:a6:00.0", "0000:c6:00.0", "0000:e5:00.0"]  # fmt: skip
    d0 = p.devices[0]
    assert d0.name == "MI300X-O" and d0.memory_bytes == 196592 * 1024**2  # vram_size 196592 MB (MiB)
    assert d0.uuid == "afff74a1-0000-1000-8054-e92b0a5d57c8" and d0.extra["device_id"] == "0x74a1"
    assert [d.uuid is not None for d in p.devices] == [True] * 3 + [False] * 5  # `amd-smi list` stops at GPU 2
    # Not in the post: names and memory of GPUs 1-7, the driver, ROCm, link types. Not reported, not invented.
    assert all(d.name == "" and d.memory_bytes is None for d in p.devices[1:])
    assert p.driver is None and p.toolkit is None and all(d.links is None for d in p.devices)
    assert p.devices[5].extra["processes"] == [{"pid": 207597, "name": "pt_main_thread", "used_bytes": 7822381056}]
    json.dumps(p.to_dict())  # plain data: written to environment.json as it is


def test_sampler_reading_prefers_gpu_metrics_like_amd_smi_monitor():
    s = AmdVendor(MI300X).sampler()
    assert s is not None
    assert s.fixed()[0] == {"index": 0, "name": "MI300X-O", "clock_max_mhz": 2102.0}
    r = s.sample()
    s.close()
    assert len(r) == 8
    # GPU 0: gpu_metrics (the monitor's 83 %, 182 W) wins over amdsmi_get_gpu_activity's 100 % of another moment.
    assert (r[0].util_pct, r[0].power_w, r[0].temp_c, r[0].clock_mhz, r[0].clock_max_mhz) == (83, 182, 42, 1613, 2102)
    assert r[0].throttle == [] and r[0].throttle_status == "ok"  # THROTTLE_STATUS: UNTHROTTLED
    assert r[0].processes == [{"pid": 207590, "used_bytes": 7889485824}]
    assert (r[7].util_pct, r[7].power_w, r[7].clock_mhz) == (0, 118, 120)
    # Not reported: VRAM use, the power cap, GPU 1's throttle status and maximum clock.
    assert r[0].mem_used_bytes is None and r[0].power_limit_w is None
    assert r[1].throttle is None and r[1].throttle_status is None and r[1].clock_max_mhz is None


def test_host_checks_say_what_is_not_reported():
    v = AmdVendor(MI300X)
    c = by_name(v.host_checks(v.probe(), expected=8, device="MI300X"))
    assert c["GPU count"].status == "ok" and c["GPU count"].data == {"found": 8, "expected": 8}
    assert c["GPU model"].status == "ok" and c["GPU model"].detail.startswith("MI300X-O x1; not reported for GPU1")
    assert c["GPU memory"].detail.startswith("192 GiB per GPU (not reported for GPU1")
    assert c["ECC"].detail == "not reported by amdsmi" and c["xGMI"].status == "skip"
    # A training process on every GPU (the post's process list): the run would share them.
    procs = c["other processes"]
    assert procs.status == "warn" and procs.detail.startswith("GPU0 pid 207590 (7.3 GiB), GPU1 pid 207591")
    assert "amd-smi process" in procs.fix and "ROCR_VISIBLE_DEVICES" in procs.fix
    assert not any("nvidia" in (x.detail + x.fix).lower() for x in c.values())


def test_driver_checks_on_a_recording_do_not_judge_this_machine():
    v = AmdVendor(MI300X)
    d = by_name(v.driver_checks(v.probe()))
    assert d["amdgpu driver"].status == "warn" and "amd-smi static --driver" in d["amdgpu driver"].fix
    assert d["ROCm"].status == "skip" and d["/dev/kfd"].status == "skip"  # this machine's /dev is not the host's


# ---------------------------------------------------------------- variants of the recording


def test_complete_host_is_all_ok(tmp_path):
    v = AmdVendor(variant(tmp_path, complete))
    c = by_name(v.host_checks(v.probe(), expected=8, device="MI300X"))
    assert c["GPU model"].detail == "MI300X-O x8" and c["GPU memory"].detail == "192 GiB per GPU"
    assert c["xGMI"].status == "ok" and c["xGMI"].detail.startswith("all links up: GPU0 7/7, GPU1 7/7")


def test_a_missing_gpu_fails_the_count(tmp_path):
    # GPU 7 gone (the library lists seven handles), as on a host where one OAM dropped off the bus.
    def edit(rec):
        complete(rec)
        rec["device_count"] = 7

    v = AmdVendor(variant(tmp_path, edit))
    c = by_name(v.host_checks(v.probe(), 8, "MI300X"))
    assert c["GPU count"].status == "fail" and c["GPU count"].detail == "7 GPUs found, the config needs 8 per node"
    assert "--gpus 7" in c["GPU count"].fix


def test_xgmi_link_that_cannot_reach_its_peer_warns(tmp_path):
    # GPU 3 -> GPU 5: xGMI present, but not peer-to-peer accessible (the ACCESS table would read DISABLED).
    def edit(rec):
        complete(rec)
        rec["calls"][key("amdsmi_is_P2P_accessible", g(3), g(5))] = {"result": False}

    v = AmdVendor(variant(tmp_path, edit))
    c = by_name(v.host_checks(v.probe(), 8))
    assert c["xGMI"].status == "warn" and "GPU3 6/7" in c["xGMI"].detail and "amd-smi topology" in c["xGMI"].fix


def test_throttled_gpus_by_violation_status(tmp_path):
    # amdsmi_get_violation_status (MI300, ROCm 6.3+), shaped as amdsmi returns it: GPU 2 at its power cap (PPT),
    # GPU 4 with PROCHOT asserted. The changelog's example shows the same fields "NOT ACTIVE".
    def violation(**active):
        flags = ["active_prochot_thrm", "active_ppt_pwr", "active_socket_thrm", "active_vr_thrm", "active_hbm_thrm"]
        return {"result": {f: active.get(f, False) for f in flags}}

    def edit(rec):
        rec["calls"][key("amdsmi_get_violation_status", g(2))] = violation(active_ppt_pwr=True)
        rec["calls"][key("amdsmi_get_violation_status", g(4))] = violation(active_prochot_thrm=True)
        rec["calls"][key("amdsmi_get_violation_status", g(5))] = violation()

    v = AmdVendor(variant(tmp_path, edit))
    c = by_name(v.host_checks(v.probe(), 8))["clock events"]
    assert c.status == "fail" and c.detail == "clocks held down: GPU2: PPT; GPU4: PROCHOT"
    assert "amd-smi metric --throttle" in c.fix
    readings = v.sampler().sample()
    assert (readings[2].throttle, readings[2].throttle_status) == (["PPT"], "warn")
    assert (readings[4].throttle, readings[4].throttle_status) == (["PROCHOT"], "fail")
    assert (readings[5].throttle, readings[5].throttle_status) == ([], "ok")


def test_indep_throttle_bits_are_the_drivers():
    # SMU_THROTTLER_*_BIT of drivers/gpu/drm/amd/pm/swsmu/inc/amdgpu_smu.h: PPT0 0, TEMP_HOTSPOT 36, VRHOT0 44.
    assert decode_indep_throttle((1 << 0) | (1 << 36)) == [("PPT0", "warn"), ("TEMP_HOTSPOT", "warn")]
    assert decode_indep_throttle(1 << 44) == [("VRHOT0", "fail")]
    assert decode_indep_throttle(1 << 60) == [("UNKNOWN_0x1000000000000000", "warn")]


def test_uncorrectable_ecc_fails(tmp_path):
    def edit(rec):
        rec["calls"][key("amdsmi_get_gpu_total_ecc_count", g(6))] = {
            "result": {"correctable_count": 0, "uncorrectable_count": 2, "deferred_count": 0}}

    v = AmdVendor(variant(tmp_path, edit))
    ecc = by_name(v.host_checks(v.probe(), 8))["ECC"]
    assert ecc.status == "fail" and "GPU6: 2" in ecc.detail and "amd-smi bad-pages" in ecc.fix


def test_driver_rocm_and_device_nodes_in_a_root(tmp_path, monkeypatch):
    # driver_version 6.7.0: what rocm-smi printed as "Driver version" on a 4x MI300X host (thamada/nvidia-smi,
    # gls/MI300X_x4_smi.py); target_graphics_version gfx942: amd-smi static --asic on MI300 (amdsmi changelog).
    def edit(rec):
        rec["calls"][key("amdsmi_get_gpu_driver_info", g(0))] = {
            "result": {"driver_name": "amdgpu", "driver_version": "6.7.0", "driver_date": "N/A"}}
        rec["calls"][key("amdsmi_get_gpu_asic_info", g(0))]["result"]["target_graphics_version"] = "gfx942"

    root = tmp_path / "root"
    (root / "dev" / "dri").mkdir(parents=True)
    (root / "dev" / "kfd").write_text("")
    (root / "dev" / "dri" / "renderD128").write_text("")
    (root / "opt" / "rocm" / ".info").mkdir(parents=True)
    (root / "opt" / "rocm" / ".info" / "version").write_text("5.7.1-98\n")
    v = AmdVendor(variant(tmp_path, edit), root=root)
    d = by_name(v.driver_checks(v.probe()))
    assert d["amdgpu driver"].status == "ok" and d["amdgpu driver"].detail == "amdgpu 6.7.0"
    assert d["ROCm"].status == "warn" and "supported from ROCm 6.0" in d["ROCm"].detail
    assert d["/dev/kfd"].status == "ok" and d["/dev/dri"].detail == "1 render nodes open to this user"
    (root / "opt" / "rocm" / ".info" / "version").write_text("6.2.0-66\n")
    assert by_name(v.driver_checks(v.probe()))["ROCm"].status == "ok"
    # A user outside the render and video groups (this test runs as root, who may open anything: ask as another).
    monkeypatch.setattr(amd.os, "access", lambda path, mode: False)
    d = by_name(v.driver_checks(v.probe()))
    assert d["/dev/kfd"].status == "fail" and "usermod -a -G render,video" in d["/dev/kfd"].fix
    (root / "dev" / "kfd").unlink()
    d = by_name(v.driver_checks(v.probe()))
    assert d["/dev/kfd"].status == "fail" and "modprobe amdgpu" in d["/dev/kfd"].fix


def test_container_access(tmp_path):
    v = AmdVendor(MI300X, root=tmp_path)
    all8 = v.container_access(8)
    assert all8.devices == ["/dev/kfd:/dev/kfd:rwm", "/dev/dri:/dev/dri:rwm"] and all8.environment == {}
    assert all8.group_add == ["video", "render"] and not all8.device_requests  # no nodes here to ask for gids
    two = v.container_access(2)
    assert two.devices[-1] == "/dev/dri:/dev/dri:rwm" and two.environment == {"ROCR_VISIBLE_DEVICES": "0,1"}
    # The render node of GPU 0 as amdsmi 6.4's enumeration info gives it (the changelog's `amd-smi list -e`:
    # RENDER renderD128 for GPU 0): one GPU gets that node alone.
    p = variant(tmp_path, lambda rec: rec["calls"].__setitem__(key("amdsmi_get_gpu_enumeration_info", g(0)), {
        "result": {"drm_render": 128, "drm_card": 0, "hsa_id": 1, "hip_id": 0, "hip_uuid": "GPU-XXXXXXXXXXXXXXXX"}}))
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev" / "kfd").write_text("")
    one = AmdVendor(p, root=tmp_path).container_access(1)
    assert one.devices == ["/dev/kfd:/dev/kfd:rwm", "/dev/dri/renderD128:/dev/dri/renderD128:rwm"]
    assert one.group_add == [str(os.getgid())]  # the group owning /dev/kfd, by number


# ---------------------------------------------------------------- no library, no driver


def test_no_driver_is_a_reason_not_a_traceback():
    v = AmdVendor(NO_DRIVER)
    p = v.probe()
    assert not p.available and "AMDSMI_STATUS_DRIVER_NOT_LOADED - Driver not loaded" in p.reason
    [row] = v.host_checks(p, 8, "MI300X")
    assert row.status == "fail" and "modprobe amdgpu" in row.fix and "amd-smi list" in row.fix
    assert v.driver_checks(p)[0].status == "fail" and v.sampler() is None
    [cpu] = v.host_checks(p, 2, "cpu")
    assert cpu.status == "skip"


def test_missing_library_says_how_to_install_it():
    p = AmdVendor().probe()  # no amdsmi package here, and no recording named
    assert not p.available and p.replayed_from is None
    assert "amdsmi Python package is not installed" in p.reason and "/opt/rocm/share/amd_smi" in p.reason
    assert "pip install /opt/rocm/share/amd_smi" in AmdVendor().host_checks(p, 8)[0].fix
    assert AmdVendor().sampler() is None


def test_recording_from_the_environment_and_a_damaged_one(tmp_path, monkeypatch):
    monkeypatch.setenv(amd.RECORDING_ENV, str(MI300X))
    assert AmdVendor().probe().replayed_from == str(MI300X)
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2")
    p = AmdVendor(bad).probe()
    assert not p.available and p.reason.startswith(f"{amd.RECORDING_ENV}={bad}:")
    assert "python -m kit.vendors.amd record" in AmdVendor(bad).driver_checks(p)[0].fix


def test_record_round_trips_through_the_replay(tmp_path):
    # `python -m kit.vendors.amd record` calls the library the way the vendor reads it: recording the replay of
    # the completed recording and replaying that gives the same probe.
    lib = amd.ReplayAmdSmi.load(variant(tmp_path, complete))
    again = tmp_path / "again.json"
    again.write_text(json.dumps(amd.record(lib)))
    assert AmdVendor(again).probe().devices == AmdVendor(variant(tmp_path, complete)).probe().devices


def test_what_the_case_is_told_matches_deepspeed():
    # ROCm's PyTorch keeps torch.cuda, and DeepSpeed's accelerator there is its CUDA one: "cuda" over "nccl" (RCCL).
    from deepspeed.accelerator.cuda_accelerator import CUDA_Accelerator

    v, acc = AmdVendor(), CUDA_Accelerator()
    assert (v.torch_device, v.dist_backend) == (acc.device_name(), acc.communication_backend_name())
    assert v.runtime.imports == [] and v.runtime.environment == {} and v.slurm_gres == "gpu"
    assert v.owns("AMD Instinct MI300X") and v.owns("MI300X-O") and v.owns("MI250X")
    assert not v.owns("NVIDIA H100 80GB HBM3") and not v.owns("A800") and not v.owns("910B3")


def test_peaks_are_data_with_a_vendor_and_a_source():
    import tomllib

    from kit.results.peak import lookup_peak

    rows = tomllib.loads((Path(__file__).resolve().parents[2] / "env" / "accelerators.toml").read_text())["accelerator"]
    assert all({"vendor", "name", "match", "peak_bf16_flops", "source"} <= set(r) for r in rows)
    assert {r["vendor"] for r in rows} >= {"nvidia", "amd", "ascend"}
    # The names amdsmi and ROCm's torch.cuda give: the MI300X data sheet's 1307.4 TFLOPs dense.
    for name in ("AMD Instinct MI300X", "MI300X-O"):
        peak, why = lookup_peak(name, "cuda")
        assert peak == 1307.4e12 and "MI300X" in why
    assert lookup_peak("AMD Instinct MI325X", "cuda")[0] == 1307.4e12
    assert lookup_peak("AMD Instinct MI250X", "cuda")[0] == 191.5e12  # per device: one of the card's two GCDs
    assert lookup_peak("NVIDIA A800-SXM4-80GB", "cuda")[0] == 312e12  # NVIDIA's rows as before

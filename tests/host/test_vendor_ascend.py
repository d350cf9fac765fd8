"""The Ascend vendor (kit/vendors/ascend.py) on outputs of npu-smi recorded on real hosts.

npu-smi cannot run here, so tests/fixtures/vendors/ascend/bin/npu-smi, a real executable put first on PATH, prints
what a real npu-smi printed: KIT_NPU_SMI_RECORDING names the recording folder, whose recording.json names the
source of every output (an 8x 910B3 host busy with a job, from a vllm-ascend issue; an 8x 910B1 Huawei Cloud host
from Arthur Chiao's notes; one 910B NPU's -t answers from telegraf's test data; a container where npu-smi failed
with dcmi error -8005; Huawei's own samples from MindCluster). Variants are copies of a recording with single lines
changed, each documented where it is made.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from kit.checks import Check
from kit.vendors import ascend
from kit.vendors.ascend import AscendVendor, chip_block, parse_info, parse_kv

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "vendors" / "ascend"
BIN = FIXTURES / "bin"
BUSY = FIXTURES / "910b3-x8-vllm-ascend"
CLOUD = FIXTURES / "910b1-x8-huaweicloud"
BOARD = FIXTURES / "910b-board-telegraf"
DCMI = FIXTURES / "dcmi-8005-container"
HUAWEI = FIXTURES / "mind-cluster"
GIB, MIB = 1024**3, 1024**2


def by_name(checks: list[Check]) -> dict[str, Check]:
    return {c.name: c for c in checks}


@pytest.fixture
def replay(monkeypatch):
    """Put the stand-in npu-smi first on PATH and point it at a recording folder; returns a vendor reading it."""

    def use(folder: Path) -> AscendVendor:
        monkeypatch.setenv("PATH", f"{BIN}{os.pathsep}{os.environ['PATH']}")
        monkeypatch.setenv(ascend.RECORDING_ENV, str(folder))
        return AscendVendor(root=folder / "root", fallbacks=())

    monkeypatch.delenv("ASCEND_HOME_PATH", raising=False)
    monkeypatch.delenv("ASCEND_TOOLKIT_HOME", raising=False)
    return use


def copy_of(folder: Path, tmp_path: Path) -> Path:
    dst = tmp_path / folder.name
    shutil.copytree(folder, dst)
    return dst


def add_command(folder: Path, command: str, text: str, rc: int = 0) -> None:
    rec = json.loads((folder / "recording.json").read_text())
    name = command.replace(" ", "_") + ".txt"
    (folder / name).write_text(text)
    rec["commands"][command] = {"stdout": name, "rc": rc}
    (folder / "recording.json").write_text(json.dumps(rec))


# ---------------------------------------------------------------- an 8x 910B3 host running a job


def test_probe_of_a_busy_910b3_host(replay):
    p = replay(BUSY).probe()
    assert p.available and p.vendor == "ascend" and p.link_kind == "HCCS" and p.replayed_from == str(BUSY)
    assert [d.name for d in p.devices] == ["910B3"] * 8
    assert [d.bus_id for d in p.devices] == ["0000:C1:00.0", "0000:C2:00.0", "0000:81:00.0", "0000:82:00.0",
                                             "0000:01:00.0", "0000:02:00.0", "0000:41:00.0", "0000:42:00.0"]  # fmt: skip
    assert all(d.memory_bytes == 65536 * MIB for d in p.devices)  # HBM-Usage(MB) ... / 65536
    assert p.driver == "24.1.rc2.1"  # npu-smi's header: no version.info was recorded
    assert p.toolkit == "8.0.0"  # ascend_toolkit_install.info's version=
    assert p.devices[4].extra["processes"] == [{"pid": 13610, "name": "python", "used_bytes": 54819 * MIB}]
    # Not recorded: the -t queries. Firmware and HCCS links are not reported, not guessed.
    assert all(d.firmware is None and d.links is None for d in p.devices)
    json.dumps(p.to_dict())


def test_sampler_reading_from_the_table(replay):
    s = replay(BUSY).sampler()
    assert s is not None and s.fixed()[0] == {"index": 0, "name": "910B3", "clock_max_mhz": None}
    r = s.sample()
    assert len(r) == 8
    assert (r[0].util_pct, r[0].power_w, r[0].temp_c) == (10, 121.6, 40)
    assert (r[0].mem_used_bytes, r[0].mem_total_bytes) == (57895 * MIB, 65536 * MIB)
    assert r[6].util_pct == 15 and r[0].processes == [{"pid": 13128, "used_bytes": 54601 * MIB}]
    assert r[0].clock_mhz is None and r[0].power_limit_w is None and r[0].throttle is None  # npu-smi gives none


def test_host_checks_of_the_busy_host(replay):
    v = replay(BUSY)
    c = by_name(v.host_checks(v.probe(), expected=8, device="Atlas800TA2"))
    assert c["NPU count"].status == "ok" and c["NPU count"].data == {"found": 8, "expected": 8}
    assert c["NPU model"].detail.startswith("910B3 x8")
    assert c["NPU memory"].status == "ok" and c["NPU memory"].detail == "64 GiB per NPU"
    assert c["NPU health"].status == "ok" and c["HCCS"].status == "skip" and c["clock events"].status == "skip"
    procs = c["other processes"]
    assert procs.status == "warn" and procs.detail.startswith("NPU0 pid 13128 (53.3 GiB), NPU1 pid 13604")
    assert "ASCEND_RT_VISIBLE_DEVICES" in procs.fix
    assert not any(w in (x.detail + x.fix).lower() for x in c.values() for w in ("nvidia", "cuda", "nvml"))


def test_driver_checks_of_the_busy_host(replay):
    v = replay(BUSY)
    d = by_name(v.driver_checks(v.probe()))
    assert d["NPU driver"].detail == "Ascend driver 24.1.rc2.1" and d["CANN"].detail == "CANN toolkit 8.0.0"
    # A recording: neither this process's environment nor this machine's /dev is the recorded host's.
    assert d["CANN environment"].status == "skip" and d["NPU device nodes"].status == "skip"


def test_cann_environment_and_device_nodes_on_this_host(replay, tmp_path, monkeypatch):
    v = replay(BUSY)
    live = replace(v.probe(), replayed_from=None)  # judged as a live probe, against a root made here
    root = tmp_path / "root"
    v.root = root
    d = by_name(v.driver_checks(live))
    assert d["CANN environment"].status == "warn" and "set_env.sh" in d["CANN environment"].fix
    assert d["NPU device nodes"].status == "fail" and "/dev/davinci_manager" in d["NPU device nodes"].detail
    monkeypatch.setenv("ASCEND_HOME_PATH", "/usr/local/Ascend/ascend-toolkit/latest")
    (root / "dev").mkdir(parents=True)
    for n in ("davinci_manager", "devmm_svm", "hisi_hdc"):
        (root / "dev" / n).write_text("")
    d = by_name(v.driver_checks(live))
    assert d["CANN environment"].status == "ok" and d["NPU device nodes"].status == "ok"
    # A user outside HwHiAiUser (this test runs as root, who may open anything: ask as another).
    monkeypatch.setattr(ascend.os, "access", lambda path, mode: False)
    nodes = by_name(v.driver_checks(live))["NPU device nodes"]
    assert nodes.status == "fail" and "HwHiAiUser" in nodes.fix


def test_container_access(replay):
    v = replay(BUSY)
    a = v.container_access(8)
    assert a.devices[:2] == ["/dev/davinci0:/dev/davinci0:rwm", "/dev/davinci1:/dev/davinci1:rwm"]
    assert a.devices[8:] == ["/dev/davinci_manager:/dev/davinci_manager:rwm", "/dev/devmm_svm:/dev/devmm_svm:rwm",
                             "/dev/hisi_hdc:/dev/hisi_hdc:rwm"]  # fmt: skip
    assert a.volumes == {p: p for p in ("/usr/local/Ascend/driver", "/usr/local/dcmi", "/usr/local/bin/npu-smi",
                                        "/etc/ascend_install.info")}  # fmt: skip
    # No ASCEND_VISIBLE_DEVICES: Ascend Docker Runtime, where it is the default runtime, mounts nothing without it.
    assert a.environment == {} and not a.device_requests and not a.group_add
    assert len(v.container_access(2).devices) == 2 + 3


# ---------------------------------------------------------------- other recordings


def test_huawei_cloud_host_topology_clocks_and_an_elided_table(replay):
    v = replay(CLOUD)
    p = v.probe()
    # The post elides NPUs 2-6 with "...": the kit reads the three rows printed and invents none.
    assert [d.extra["npu_id"] for d in p.devices] == [0, 1, 7] and p.driver == "23.0.rc2" and p.toolkit is None
    assert [d.links for d in p.devices] == [7, 7, 7]  # `npu-smi info -t topo`: HCCS to every other NPU
    c = by_name(v.host_checks(p, expected=8))
    assert c["HCCS"].status == "ok" and c["HCCS"].detail == "HCCS peers per NPU: NPU0 7, NPU1 7, NPU7 7"
    assert c["NPU count"].status == "fail" and c["NPU count"].detail == "3 NPUs found, the config needs 8 per node"
    assert c["other processes"].detail == "none on the NPUs"
    s = v.sampler()
    assert [f["clock_max_mhz"] for f in s.fixed()] == [None, 1800, None]  # only NPU 1's -t common was recorded
    assert s.sample()[1].clock_mhz == 800  # Aicore curFreq(MHZ): idle
    usages = chip_block(parse_kv(v.run("info", "-t", "usages", "-i", "0")))
    assert usages["HBM Capacity(MB)"] == "65536" and usages["HBM Usage Rate(%)"] == "4"


def test_fewer_hccs_peers_warn(replay, tmp_path):
    # NPU 3 reaches NPU 7 over the CPU's PCIe root (PHB) instead of HCCS, in both rows of the matrix.
    folder = copy_of(CLOUD, tmp_path)
    topo = (folder / "topo.txt").read_text().splitlines()
    for row, col in ((4, 8), (8, 4)):
        cells = topo[row].split()
        cells[col] = "PHB"
        topo[row] = "       ".join(cells)
    (folder / "topo.txt").write_text("\n".join(topo) + "\n")
    v = replay(folder)
    hccs = by_name(v.host_checks(v.probe(), 8))["HCCS"]
    assert hccs.status == "warn" and "NPU7" in hccs.detail and "npu-smi info -t topo" in hccs.fix


def test_board_and_other_queries_parse(replay):
    v = replay(BOARD)
    board = chip_block(parse_kv(v.run("info", "-t", "board", "-i", "0")))
    assert board["Firmware Version"] == "7.8.0.6.201" and board["Software Version"] == "25.5.1"
    assert board["Product Name"] == "IT21HMDC_Bin5" and board["PCI Device ID"] == "0xD802"
    temp = chip_block(parse_kv(v.run("info", "-t", "temp", "-i", "0")))
    assert temp["NPU Temperature (C)"] == "39" and "LM75A_TE (C)" not in temp  # the MCU's block is not the chip's
    assert chip_block(parse_kv(v.run("info", "-t", "power", "-i", "0")))["NPU Real-time Power(W)"] == "103.5"
    usages = chip_block(parse_kv(v.run("info", "-t", "usages", "-i", "0")))
    assert usages["NPU Utilization(%)"] == "0" and usages["Ctrlcpu Usage Rate(%)"] == "6"
    # No `npu-smi info` table was recorded on that host: the probe says the tool failed, in its words.
    p = v.probe()
    assert not p.available and "is not in the recording" in p.reason


def test_huawei_sample_with_ddr_and_hbm_and_no_processes(replay):
    v = replay(HUAWEI)
    p = v.probe()
    assert [d.extra["npu_id"] for d in p.devices] == [0, 7] and p.driver == "23.0.5"
    assert p.devices[0].memory_bytes == 32768 * MIB and p.devices[0].extra["processes"] == []
    table = parse_info((HUAWEI / "info.txt").read_text())
    assert (table["devices"][1]["mem_used_mb"], table["devices"][1]["mem_total_mb"]) == (2346, 15567)
    assert p.devices[0].firmware is None  # `-t board -i 0` answered "Invalid card id.": not reported
    health = chip_block(parse_kv((HUAWEI / "health-alarm.txt").read_text()))
    assert health["Health Status"] == "Alarm" and health["Error Code"] == "A4025021 8C03A000 8C084E00"
    assert health["Error Information"] == (
        "ascend_monitor adda heart beat lost error; node type=process-manager, sensor type=General Software, "
        "event state=The process start failed or exit abnormally; node type=adda, sensor type=Heartbeat Sensor, "
        "event state=Heartbeat Lost."
    )


def test_a_chip_in_alarm_fails_health_with_its_error_code(replay, tmp_path):
    # NPU 3 of the busy host reads Alarm in the table, and its -t health query answers with MindCluster's Alarm
    # sample (error codes A4025021 8C03A000 8C084E00); NPU 5 reads Warning.
    folder = copy_of(BUSY, tmp_path)
    text = (folder / "info.txt").read_text()
    text = text.replace("| 3     910B3               | OK     ", "| 3     910B3               | Alarm  ")
    text = text.replace("| 5     910B3               | OK     ", "| 5     910B3               | Warning")
    (folder / "info.txt").write_text(text)
    add_command(folder, "info -c 0 -i 3 -t health", (HUAWEI / "health-alarm.txt").read_text())
    v = replay(folder)
    h = by_name(v.host_checks(v.probe(), 8))["NPU health"]
    assert h.status == "fail"
    assert h.detail.startswith("NPU3: Alarm, error code A4025021 8C03A000 8C084E00 (ascend_monitor adda heart beat")
    assert h.detail.endswith("event state=Heartbeat Lost.); NPU5: Warning")
    assert "npu-smi info -t health -i N -c 0" in h.fix


def test_a_missing_npu_fails_the_count(replay, tmp_path):
    # NPU 5's two rows and its process row removed, as npu-smi prints a host where one NPU left the bus.
    folder = copy_of(BUSY, tmp_path)
    lines = (folder / "info.txt").read_text().splitlines(keepends=True)
    drop = [i for i, line in enumerate(lines) if line.startswith(("| 5     910B3", "| 5       0"))]
    drop += [drop[0] + 1, drop[0] + 2]
    (folder / "info.txt").write_text("".join(line for i, line in enumerate(lines) if i not in drop))
    v = replay(folder)
    p = v.probe()
    assert [d.extra["npu_id"] for d in p.devices] == [0, 1, 2, 3, 4, 6, 7]
    count = by_name(v.host_checks(p, 8))["NPU count"]
    assert count.status == "fail" and "7 NPUs found" in count.detail and "--gpus 7" in count.fix


# ---------------------------------------------------------------- npu-smi failing or missing


def test_dcmi_error_is_a_reason_not_a_traceback(replay):
    v = replay(DCMI)
    p = v.probe()
    assert not p.available and "dcmi module initialize failed. ret is -8005" in p.reason
    [row] = v.host_checks(p, 8)
    assert row.status == "fail" and "no other container holds them" in row.fix
    assert v.driver_checks(p)[0].status == "fail" and v.sampler() is None


def test_missing_npu_smi(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv(ascend.RECORDING_ENV, raising=False)
    v = AscendVendor(fallbacks=())
    p = v.probe()
    assert not p.available and p.replayed_from is None
    assert p.reason.startswith("npu-smi is not installed or not on PATH") and "/usr/local/bin/npu-smi" in p.reason
    [row] = v.host_checks(p, 8)
    assert "Ascend NPU driver" in row.fix and v.sampler() is None
    assert v.host_checks(p, 1, "cpu")[0].status == "skip"


def test_what_the_case_is_told_matches_deepspeed():
    # DeepSpeed's NPU accelerator (the one DS_ACCELERATOR=npu selects) names the device "npu" over "hccl".
    from deepspeed.accelerator.npu_accelerator import NPU_Accelerator

    v, acc = AscendVendor(), NPU_Accelerator()
    assert (v.torch_device, v.dist_backend) == (acc.device_name(), acc.communication_backend_name())
    assert v.runtime.imports == ["torch_npu"] and v.runtime.environment == {"DS_ACCELERATOR": "npu"}
    assert "torch_npu.contrib.transfer_to_npu" not in v.runtime.imports and v.slurm_gres == "npu"
    assert v.owns("910B3") and v.owns("Ascend910B3") and v.owns("Atlas 800T A2")
    assert not v.owns("NVIDIA A800-SXM4-80GB") and not v.owns("A800") and not v.owns("AMD Instinct MI300X")


def test_the_atlas_800t_a2_peak_is_flagperfs_and_matches_the_machine_only():
    from kit.results.peak import lookup_peak

    peak, why = lookup_peak("Atlas 800T A2", "npu")
    assert peak == 304.277e12 and "FlagPerf" in why
    assert lookup_peak("Atlas800TA2", "npu")[0] == 304.277e12  # a config's short device name
    # npu-smi and torch_npu name the chip, which FlagPerf's figure does not: those declare their peak.
    for chip in ("910B3", "Ascend910B3"):
        peak, why = lookup_peak(chip, "npu")
        assert peak is None and "--peak-flops" in why

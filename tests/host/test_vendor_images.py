"""Images and containers through the vendor seam, for the vendors other than NVIDIA (NVIDIA's own paths are
test_build.py, test_stacks.py, test_seed_host.py and test_docker_checks.py).

- `kit build`: each variant of env/stacks.toml is one vendor's; a vendor with none (AMD, Ascend, the CPU today) is
  refused with what to do, also on a host whose devices are that vendor's; a row for AMD, added to a copy of the
  stacks file, is planned from data alone (its build args, tag, base image check, `--variant auto`).
- `kit check-host`'s Docker rows: the CPU needs nothing; AMD and Ascend need their device nodes and driver mounts on
  the host, and the real engine (.ci/services.sh) refuses a --deep container given ones that are missing here.
- The --deep smoke commands' outputs, recorded on real hosts (each recording names its source): `nvidia-smi -L`,
  `amd-smi list`, `npu-smi info`.
- Slurm counts an Ascend config's devices under GRES `npu`; `kit env` reports the vendor's probe.

AMD answers from tests/fixtures/vendors/amd/amdsmi-mi300x-x8.json (AMD's ROCm blog), Ascend from the npu-smi
stand-in and the 910b3-x8-vllm-ascend recording (vllm-ascend issue #374): see test_vendor_amd.py and
test_vendor_ascend.py for what each holds.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import typer
from typer.testing import CliRunner

from kit import __version__, vendors
from kit.checks import docker as dc
from kit.checks import slurm as sl
from kit.checks import worst
from kit.commands import build as build_cmd
from kit.commands.env import env_block
from kit.image import builder as b
from kit.image import stacks as st
from kit.vendors.amd import AmdVendor
from kit.vendors.ascend import AscendVendor
from kit.vendors.cpu import CpuVendor

from .services import docker_engine_env
from .test_seams import VENDOR_MODULES, VENDOR_WORDS, hits
from .test_slurm_checks import PART_LINE

ROOT = Path(__file__).resolve().parents[2]
FIX = ROOT / "tests" / "fixtures" / "vendors"
AMD_REC = FIX / "amd" / "amdsmi-mi300x-x8.json"
ASCEND_REC = FIX / "ascend" / "910b3-x8-vllm-ascend"
ASCEND_BIN = FIX / "ascend" / "bin"
SMOKE = FIX / "smoke"
RECORDING_VARS = ("KIT_VENDOR", "KIT_NVML_RECORDING", "KIT_AMDSMI_RECORDING", "KIT_NPU_SMI_RECORDING")
runner = CliRunner()


@pytest.fixture(autouse=True)
def clean_vendors(monkeypatch):
    """No recording or forced vendor from the caller's environment; the registry forgets what it detected."""
    for var in RECORDING_VARS:
        monkeypatch.delenv(var, raising=False)
    vendors.reset()
    yield
    vendors.reset()


@pytest.fixture
def amd_host(monkeypatch):
    """This host as the 8x MI300X host of the recording (amdsmi answers from it)."""
    monkeypatch.setenv("KIT_AMDSMI_RECORDING", str(AMD_REC))
    vendors.reset()


@pytest.fixture
def ascend_host(monkeypatch):
    """This host as the 8x 910B3 host of the recording (the npu-smi stand-in first on PATH)."""
    monkeypatch.setenv("PATH", f"{ASCEND_BIN}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("KIT_NPU_SMI_RECORDING", str(ASCEND_REC))
    vendors.reset()


def by_name(checks):
    return {c.name: c for c in checks}


def build_cli(*args: str, env: dict[str, str] | None = None):
    app = typer.Typer()
    app.command()(build_cmd.build)
    return runner.invoke(app, list(args), env={"COLUMNS": "250", **(env or {})})


# ---------------------------------------------------------------- kit build


def test_each_vendor_says_its_variants_and_kit_build_takes_their_options():
    got = {n: [v.name for v in vendors.get(n).image_variants("reference")] for n in vendors.names()}
    assert got == {"nvidia": ["12.1", "11.8"], "amd": [], "ascend": [], "cpu": []}
    assert [v.name for v in vendors.get("nvidia").image_variants("current")] == ["13.0"]
    assert {n: vendors.get(n).variant_option for n in vendors.names()} == {
        "nvidia": "--cuda", "amd": "", "ascend": "", "cpu": ""}  # fmt: skip
    assert build_cmd.variant_flags() == ["--variant", "--cuda"]
    # --variant and --cuda are one option: the same plan either way.
    a = build_cli("--variant", "12.1", "--dry-run", "--json")
    c = build_cli("--cuda", "12.1", "--dry-run", "--json")
    assert a.exit_code == 0 and json.loads(a.stdout) == json.loads(c.stdout)
    assert json.loads(a.stdout)["vendor"] == "nvidia" and json.loads(a.stdout)["variant_title"] == "CUDA 12.1"


@pytest.mark.parametrize(("name", "devices"), [("amd", "AMD GPUs"), ("ascend", "Huawei Ascend NPUs"),
                                               ("cpu", "CPU ranks")])  # fmt: skip
def test_a_vendor_without_a_variant_is_told_how_to_get_one(name, devices):
    for asked in ("auto", "12.1"):
        with pytest.raises(b.BuildRequestError) as e:
            b.plan_build(ROOT, asked, vendor=name)
        assert e.value.message == f"the reference stack has no image variant for {devices} yet"
        assert f'vendor = "{name}"' in e.value.fix and "docs/vendors.md" in e.value.fix
        assert "--vendor NAME --variant VARIANT" in e.value.fix
    with pytest.raises(b.BuildRequestError) as e:
        b.plan_build(ROOT, "auto", vendor="acme")
    assert "no accelerator vendor 'acme' is registered" in e.value.message and "--vendor nvidia" in e.value.fix


def test_kit_build_on_an_amd_host_says_not_yet_instead_of_asking_for_nvml(amd_host, tmp_path):
    r = build_cli("--dry-run", "--results", str(tmp_path))
    assert r.exit_code == 2, r.output
    assert "the reference stack has no image variant for AMD GPUs yet" in r.output and "docs/vendors.md" in r.output
    assert "NVML" not in r.output
    # Building for another host's devices still works: the variant names its vendor.
    r = build_cli("--cuda", "12.1", "--dry-run", "--results", str(tmp_path))
    assert r.exit_code == 0 and re.search(r"vendor\s+nvidia", r.output) and re.search(r"variant\s+CUDA 12\.1", r.output)


def test_kit_build_on_an_ascend_host_says_not_yet(ascend_host, tmp_path):
    r = build_cli("--stack", "current", "--dry-run", "--results", str(tmp_path))
    assert r.exit_code == 2, r.output
    assert "the current stack has no image variant for Huawei Ascend NPUs yet" in r.output
    assert 'vendor = "ascend"' in r.output


AMD_ROW = """
[[stack.reference.variant]]
vendor = "amd"
name = "6.2"
title = "ROCm 6.2"
short = "rocm62"
locks = ["env/lock-rocm62.txt"]
base = "rocm/pytorch:rocm6.2.3_ubuntu22.04_py3.10_pytorch_release_2.3.0"
args = { ROCM_VARIANT = "6.2" }
"""


@pytest.fixture
def amd_stack(tmp_path, monkeypatch):
    """A copy of env/stacks.toml with a ROCm 6.2 row for the reference stack (its base image is a real tag of ROCm's
    rocm/pytorch repository), and a build context holding its lock (hash-pinned lines, as env/lock.sh writes)."""
    text = (ROOT / "env" / "stacks.toml").read_text()
    at = text.index("[stack.reference.provides]")
    stacks_file = tmp_path / "stacks.toml"
    stacks_file.write_text(text[:at] + AMD_ROW.lstrip() + "\n" + text[at:])
    monkeypatch.setattr(st, "STACKS_TOML", stacks_file)
    st._cached.cache_clear()
    project = tmp_path / "kit"
    (project / "env").mkdir(parents=True)
    shutil.copy(ROOT / "Dockerfile", project / "Dockerfile")
    shutil.copy(ROOT / "env" / "lock-cu121.txt", project / "env" / "lock-cu121.txt")
    (project / "env" / "lock-rocm62.txt").write_text("# the ROCm 6.2 variant's lock\nsix==1.16.0 --hash=sha256:"
                                                    + "ab" * 32 + "\n")  # fmt: skip
    (project / ".dockerignore").write_text(".venv\n")
    yield project
    st._cached.cache_clear()


def test_an_amd_row_is_planned_from_data_alone(amd_stack):
    plan = b.plan_build(amd_stack, "6.2")
    assert (plan.vendor, plan.variant, plan.variant_title) == ("amd", "6.2", "ROCm 6.2")
    assert plan.base_image == "rocm/pytorch:rocm6.2.3_ubuntu22.04_py3.10_pytorch_release_2.3.0"
    assert plan.build_args["ROCM_VARIANT"] == "6.2" and "CUDA_VARIANT" not in plan.build_args
    assert plan.labels["kit.build.variant"] == "6.2" and plan.variant_reason == "--variant 6.2"
    assert re.fullmatch(rf"kit-llava:{re.escape(__version__)}-rocm62-[0-9a-f]{{12}}", plan.tag)
    assert st.describe({"name": "reference", "lock_sha256": plan.lock_sha256, "variant": "6.2"}).endswith(", ROCm 6.2)")
    # NVIDIA's rows are untouched by the new one.
    assert b.plan_build(amd_stack, "12.1").vendor == "nvidia"
    # The variant's build arg is kit build's to set; a base image of another ROCm is refused.
    with pytest.raises(b.BuildRequestError) as e:
        b.plan_build(amd_stack, "6.2", build_args=["ROCM_VARIANT=6.1"])
    assert "ROCM_VARIANT is set by kit build" in e.value.message and e.value.fix == "use --variant instead"
    with pytest.raises(b.BuildRequestError) as e:
        b.plan_build(amd_stack, "6.2", base_image="rocm/pytorch:rocm6.1_ubuntu22.04_py3.10_pytorch_release_2.1.2")
    assert "is a ROCm 6.1 image, but the variant is ROCm 6.2" in e.value.message and "--variant 6.1" in e.value.fix
    assert b.plan_build(amd_stack, "6.2", base_image="registry.local/rocm/dev-ubuntu-22.04:6.2.4").variant == "6.2"
    with pytest.raises(b.BuildRequestError) as e:
        b.plan_build(amd_stack, "6.3")
    assert "--variant '6.3' is not a variant of the reference stack" in e.value.message
    assert "nvidia: 12.1, 11.8 (--cuda)" in e.value.message and "amd: 6.2 (--variant)" in e.value.message


def test_auto_on_an_amd_host_takes_its_variant_and_says_the_driver_match_is_unchecked(amd_stack, amd_host):
    plan = b.plan_build(amd_stack, "auto")
    assert plan.vendor == "amd" and plan.variant == "6.2"
    assert plan.variant_reason.startswith("the reference stack's first AMD variant")
    [warning] = plan.warnings
    assert "no table of which ROCm versions AMD's drivers run" in warning and "compatibility matrix" in warning


def test_auto_with_two_vendors_and_no_devices_asks_for_the_variant(amd_stack):
    with pytest.raises(b.BuildRequestError) as e:
        b.plan_build(amd_stack, "auto")
    assert "--variant auto reads this host's devices, and no vendor finds any here" in e.value.message
    assert "--cuda 12.1 or 11.8 (--vendor nvidia)" in e.value.fix and "--variant 6.2 (--vendor amd)" in e.value.fix


# ---------------------------------------------------------------- Docker rows and the --deep container


@pytest.fixture(scope="module")
def engine() -> dict[str, str]:
    return docker_engine_env()


def leftovers(url: str) -> list:
    import docker

    client = docker.DockerClient(base_url=url, timeout=5)
    try:
        return client.containers.list(all=True, filters={"label": "=".join(dc.DEEP_LABEL)})
    finally:
        client.close()


def test_the_cpu_needs_no_device_in_a_container(engine):
    url, image = engine["KIT_TEST_DOCKER_HOST"], engine["KIT_TEST_DOCKER_IMAGE"]
    checks = dc.docker_checks(deep=True, image=image, base_url=url, gpus=0, vendor=CpuVendor())
    assert [c.name for c in checks] == ["engine", "version", "devices", "disk", "container"]
    rows = by_name(checks)
    assert rows["devices"].status == "ok" and "containers run the ranks on the CPU" in rows["devices"].detail
    assert rows["container"].status == "ok" and dc.MARKER in rows["container"].detail
    assert worst(checks) == "ok" and leftovers(url) == []


def _touch(root: Path, *paths: str) -> None:
    for p in paths:
        f = root / p.lstrip("/")
        f.parent.mkdir(parents=True, exist_ok=True)
        f.touch()


def test_amd_containers_need_kfd_and_dri_on_the_host(engine, amd_host, tmp_path):
    url = engine["KIT_TEST_DOCKER_HOST"]
    amd = AmdVendor(root=tmp_path)
    row = by_name(dc.docker_checks(base_url=url, gpus=8, cdi_root=tmp_path, vendor=amd))["gpu devices"]
    assert row.status == "fail" and row.data["missing"] == ["/dev/kfd", "/dev/dri"]
    assert "containers cannot see this host's 8 GPU(s)" in row.detail and "sudo modprobe amdgpu" in row.fix
    assert "nvidia" not in (row.detail + row.fix).lower()
    _touch(tmp_path, "/dev/kfd", "/dev/dri/renderD128")
    row = by_name(dc.docker_checks(base_url=url, gpus=8, cdi_root=tmp_path, vendor=amd))["gpu devices"]
    assert row.status == "ok" and row.detail.startswith("no runtime needed: containers get /dev/kfd, /dev/dri")
    assert row.data["group_add"] and row.fix == ""


def test_the_engine_refuses_an_amd_container_without_kfd_here(engine, amd_host):
    url, image = engine["KIT_TEST_DOCKER_HOST"], engine["KIT_TEST_DOCKER_IMAGE"]
    assert not Path("/dev/kfd").exists(), "this host has /dev/kfd: the refusal below cannot happen here"
    row = by_name(dc.docker_checks(deep=True, image=image, base_url=url, gpus=8, vendor=AmdVendor()))["container"]
    assert row.status == "fail" and "/dev/kfd" in row.detail  # the engine's own words
    assert row.fix.startswith("the container must get /dev/kfd and /dev/dri") and "journalctl -u docker" in row.fix
    assert row.data["command"] == ["amd-smi", "list"] and leftovers(url) == []


ASCEND_PATHS = ["/dev/davinci_manager", "/dev/devmm_svm", "/dev/hisi_hdc", "/usr/local/Ascend/driver/version.info",
                "/usr/local/dcmi/dcmi_interface_api.h", "/usr/local/bin/npu-smi", "/etc/ascend_install.info"]


def test_ascend_containers_need_the_davinci_nodes_and_driver_mounts(engine, ascend_host, tmp_path):
    url = engine["KIT_TEST_DOCKER_HOST"]
    npu = AscendVendor(root=ASCEND_REC / "root", fallbacks=())
    row = by_name(dc.docker_checks(base_url=url, gpus=8, cdi_root=tmp_path, vendor=npu))["npu devices"]
    assert row.status == "fail" and "containers cannot see this host's 8 NPU(s)" in row.detail
    assert row.data["missing"][:8] == [f"/dev/davinci{i}" for i in range(8)]
    assert "/usr/local/Ascend/driver" in row.data["missing"] and "npu-smi info" in row.fix
    _touch(tmp_path, *(f"/dev/davinci{i}" for i in range(8)), *ASCEND_PATHS)
    row = by_name(dc.docker_checks(base_url=url, gpus=8, cdi_root=tmp_path, vendor=npu))["npu devices"]
    assert row.status == "ok" and "/dev/davinci7, /dev/davinci_manager" in row.detail
    # No NPU counted (npu-smi did not answer): a warning, not a failure.
    row = by_name(dc.docker_checks(base_url=url, gpus=0, cdi_root=tmp_path / "empty", vendor=npu))["npu devices"]
    assert row.status == "warn" and "no Huawei Ascend NPUs found here" in row.detail


def test_the_engine_refuses_an_ascend_container_without_davinci_here(engine, ascend_host):
    url, image = engine["KIT_TEST_DOCKER_HOST"], engine["KIT_TEST_DOCKER_IMAGE"]
    npu = AscendVendor(root=ASCEND_REC / "root", fallbacks=())
    row = by_name(dc.docker_checks(deep=True, image=image, base_url=url, gpus=8, vendor=npu))["container"]
    # The engine's own words: a driver mount or a device node that is not on this host.
    assert row.status == "fail" and re.search(r"/usr/local/Ascend/driver|/dev/davinci\d", row.detail)
    assert "/dev/davinci_manager" in row.fix and row.data["command"] == ["npu-smi", "info"]
    assert not Path("/usr/local/Ascend/driver").exists()  # a bind mount is refused, never created on the host
    assert leftovers(url) == []


class OlderPackage:
    """A vendor package written before images and containers were the vendor's: the first protocol's members only
    (tests/vendorpkg holds the kit's full test package; this one stands for a third party's older release)."""

    name, title, device_word, slurm_gres = "older", "Older", "XPU", "xpu"

    def probe(self):
        from kit.vendors.base import Device, Probe

        return Probe(self.name, True, driver="1.2", toolkit="3.4", devices=[Device(0, "Older X1", 16 * 1024**3)])

    def container_access(self, count: int):
        from kit.vendors.base import ContainerAccess

        return ContainerAccess(devices=[f"/dev/older{i}:/dev/older{i}:rwm" for i in range(count)])


def test_a_vendor_package_without_the_image_members_still_gets_docker_rows_and_env(engine, tmp_path):
    url, image = engine["KIT_TEST_DOCKER_HOST"], engine["KIT_TEST_DOCKER_IMAGE"]
    old = OlderPackage()
    rows = by_name(dc.docker_checks(base_url=url, gpus=2, cdi_root=tmp_path, vendor=old))
    assert rows["devices"].status == "fail" and rows["devices"].data["missing"] == ["/dev/older0", "/dev/older1"]
    assert "vendor package's documentation" in rows["devices"].fix
    _touch(tmp_path, "/dev/older0", "/dev/older1")
    assert by_name(dc.docker_checks(base_url=url, gpus=2, cdi_root=tmp_path, vendor=old))["devices"].status == "ok"
    # --deep without a smoke command: the container only has to start and exit 0 (here it cannot: no /dev/older0).
    deep = by_name(dc.docker_checks(deep=True, image=image, base_url=url, gpus=2, cdi_root=tmp_path, vendor=old))
    assert deep["container"].status == "fail" and "/dev/older0" in deep["container"].detail
    assert leftovers(url) == []
    block = env_block(old)
    assert re.search(r"- Older toolkit:\s+3\.4\n", block) and re.search(r"-   XPU 0:\s+Older X1, 16 GiB", block)


def _recorded(name: str) -> dict:
    rec = json.loads((SMOKE / name).read_text())
    assert rec["source"] and rec["stdout"]
    return rec


def test_the_smoke_commands_count_the_devices_in_recorded_outputs():
    nv = _recorded("nvidia-smi-L-a100x4.json")
    smoke = vendors.get("nvidia").smoke()
    assert smoke.command == nv["command"] and smoke.seen(nv["stdout"]) == ["NVIDIA A100 80GB PCIe"] * 4
    amd = _recorded("amd-smi-list-mi300x.json")
    smoke = AmdVendor().smoke()
    assert smoke.command == amd["command"]
    assert smoke.seen(amd["stdout"]) == ["0000:05:00.0", "0000:26:00.0", "0000:46:00.0"]  # the post shows 3 of 8
    table = (ASCEND_REC / "info.txt").read_text()  # `npu-smi info`: 8 NPUs, then the process table
    assert AscendVendor().smoke().seen(table) == ["910B3"] * 8
    assert CpuVendor().smoke() is None


# ---------------------------------------------------------------- Slurm and kit env


# `sinfo -h -N -o '%N|%T|%G|%c|%E'` lines for nodes declared `Gres=npu:8` in slurm.conf (with GresTypes=npu), as
# the Slurm deployments of Ascend servers declare them; sinfo prints a node's GRES as declared (the form of the
# recorded gpu strings of test_slurm_checks.py). Composed, not captured: no sinfo of an Ascend cluster is public here.
NPU_PART = """\
npu01|idle|npu:8|192|none
npu02|mixed|npu:8|192|none
gpu01|idle|gpu:a100:8(S:0-1)|128|none
"""


def test_slurm_counts_an_ascend_configs_devices_under_gres_npu():
    [p] = sl.parse_partitions(PART_LINE)
    p.nodes = sl.parse_nodes(NPU_PART)
    atlas = SimpleNamespace(name="Atlas800TA2x2x8", device="Atlas800TA2", gpus_per_node=8, nodes=2)
    row = sl.gpu_check(atlas, p, 2)
    assert row.name == "NPUs per node" and row.status == "ok" and row.data["gres_name"] == "npu"
    assert row.data["fitting"] == ["npu01", "npu02"] and "have >= 8 NPUs" in row.detail
    short = sl.gpu_check(atlas, p, 3)
    assert short.status == "fail" and "3 nodes with 8 NPUs asked" in short.detail and "Gres=npu:8" in short.fix
    a100 = SimpleNamespace(name="A800x1x8", device="A800", gpus_per_node=8, nodes=1)
    row = sl.gpu_check(a100, p, 1)
    assert row.name == "GPUs per node" and row.data["fitting"] == ["gpu01"] and row.data["gres_name"] == "gpu"


def test_kit_env_reports_the_vendor_of_this_host(amd_host, monkeypatch):
    block = env_block()
    assert re.search(rf"- Accelerators:\s+AMD \(amd\) \(replayed from {re.escape(str(AMD_REC))}\)", block)
    assert re.search(r"- GPUs:\s+8\n", block) and re.search(r"-   GPU 0:\s+MI300X-O, 192 GiB", block)
    assert re.search(r"-   GPU 7:\s+name not reported", block)  # the post shows GPU 0's name only
    assert re.search(r"- amdsmi:\s", block) and re.search(r"- torch-npu:\s", block)
    monkeypatch.delenv("KIT_AMDSMI_RECORDING")
    monkeypatch.setenv("PATH", f"{ASCEND_BIN}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("KIT_NPU_SMI_RECORDING", str(ASCEND_REC))
    vendors.reset()  # AMD's vendor read its recording variable when it was made
    block = env_block()
    assert re.search(r"- Accelerators:\s+Huawei Ascend \(ascend\)", block) and re.search(r"- NPUs:\s+8\n", block)
    assert re.search(r"- Huawei Ascend driver:\s+24\.1\.rc2\.1\n", block)
    # CANN's version is read from the toolkit's install file, under the recorded host's file tree.
    block = env_block(AscendVendor(root=ASCEND_REC / "root", fallbacks=()))
    assert re.search(r"- CANN:\s+8\.0\.0\n", block)
    assert re.search(r"-   NPU 7:\s+910B3", block)


def test_kit_env_on_a_host_without_accelerators_says_why_each_vendor_found_none():
    if vendors.detect()[0].name != "cpu":
        pytest.skip("this host has accelerators")
    lines = env_block().splitlines()
    first = next(i for i, ln in enumerate(lines) if ln.startswith("- Accelerators:"))
    assert "no accelerator: the ranks compute on the CPU" in lines[first]
    assert sorted(ln.split(":")[0].strip("- ") for ln in lines[first + 1:first + 4]) == ["amd", "ascend", "nvidia"]


# ---------------------------------------------------------------- the seam


MINE = ("kit/image/", "kit/commands/build.py", "kit/commands/env.py", "kit/checks/docker.py", "kit/checks/slurm.py",
        "kit/checks/system.py", "kit/vendors/images.py", "kit/vendors/cpu.py", "kit/vendors/base.py")


def test_images_and_containers_name_no_vendor():
    """The host side of images and containers holds no vendor word in a literal (tests/host/test_seams.py's rule)."""
    found = [h for h in hits(VENDOR_WORDS, VENDOR_MODULES) if h.startswith(MINE)]
    assert not found, "\n".join(found)

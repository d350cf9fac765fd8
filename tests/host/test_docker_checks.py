"""Docker checks against the real engine that .ci/services.sh starts (no mocks), on this GPU-less host.

The device rows are the vendor's: these tests ask NVIDIA's (the container toolkit's runtime or CDI specs, `nvidia-smi
-L` in the --deep container); tests/host/test_vendor_images.py asks AMD's, Ascend's and the CPU's."""

from __future__ import annotations

import sys

import pytest

from kit.checks import docker as dc
from kit.checks import worst
from kit.vendors.nvidia import NvidiaVendor

from .services import docker_engine_env

docker = pytest.importorskip("docker")
LABEL = "=".join(dc.DEEP_LABEL)
NV = NvidiaVendor()


@pytest.fixture(scope="module")
def engine() -> dict[str, str]:
    return docker_engine_env()


def by_name(checks):
    return {c.name: c for c in checks}


def leftovers(url: str) -> list:
    client = docker.DockerClient(base_url=url, timeout=5)
    try:
        return client.containers.list(all=True, filters={"label": LABEL})
    finally:
        client.close()


def test_engine_reachable_version_and_drivers(engine, tmp_path):
    url = engine["KIT_TEST_DOCKER_HOST"]
    checks = by_name(dc.docker_checks(base_url=url, gpus=0, cdi_root=tmp_path, vendor=NV))
    assert checks["engine"].status == "ok" and url in checks["engine"].detail
    data = checks["engine"].data
    assert data["storage_driver"] in ("overlay2", "vfs")  # services.sh: overlay2 where overlayfs mounts, else vfs
    assert data["cgroup_driver"] in {"cgroupfs", "systemd"}
    assert checks["version"].status == "ok"
    assert dc.parse_version(data["server_version"])[:2] >= (20, 10)
    assert data["server_version"] in checks["version"].detail and "20.10.18" in checks["version"].detail
    assert checks["disk"].status == "ok" and "GiB free" in checks["disk"].detail
    assert checks["container"].status == "skip" and "--deep" in checks["container"].detail


def test_no_gpu_runtime_is_a_warn_without_gpus_and_a_fail_with_them(engine, tmp_path):
    url = engine["KIT_TEST_DOCKER_HOST"]
    runtime = by_name(dc.docker_checks(base_url=url, gpus=0, cdi_root=tmp_path, vendor=NV))["gpu runtime"]
    assert runtime.status == "warn", runtime
    assert "no nvidia runtime" in runtime.detail and "no GPUs" in runtime.detail
    assert "nvidia-container-toolkit" in runtime.fix
    assert "nvidia-ctk runtime configure --runtime=docker" in runtime.fix
    with_gpus = by_name(dc.docker_checks(base_url=url, gpus=8, cdi_root=tmp_path, vendor=NV))["gpu runtime"]
    assert with_gpus.status == "fail" and "8 GPU" in with_gpus.detail and with_gpus.fix == runtime.fix


@pytest.mark.parametrize("where", ["etc/cdi/nvidia.yaml", "var/run/cdi/nvidia.json"])
def test_cdi_spec_counts_as_configured(engine, tmp_path, where):
    spec = tmp_path / where
    spec.parent.mkdir(parents=True)
    spec.write_text('cdiVersion: "0.5.0"\nkind: nvidia.com/gpu\ndevices: []\n')
    runtime = by_name(dc.docker_checks(base_url=engine["KIT_TEST_DOCKER_HOST"], gpus=8, cdi_root=tmp_path, vendor=NV))[
        "gpu runtime"
    ]
    assert runtime.status == "ok" and str(spec) in runtime.detail
    assert runtime.data["cdi_specs"] == [str(spec)]


def test_deep_runs_a_throwaway_container_and_removes_it(engine, tmp_path):
    url, image = engine["KIT_TEST_DOCKER_HOST"], engine["KIT_TEST_DOCKER_IMAGE"]
    checks = dc.docker_checks(deep=True, image=image, base_url=url, gpus=0, cdi_root=tmp_path, vendor=NV)
    container = by_name(checks)["container"]
    assert container.status == "ok", container
    assert "kit-deep-check-ok" in container.detail and container.data["exit_code"] == 0
    assert worst(checks) == "warn"  # only the missing GPU runtime
    assert leftovers(url) == []


def test_deep_removes_the_container_on_timeout_and_on_failure(engine, tmp_path):
    url, image = engine["KIT_TEST_DOCKER_HOST"], engine["KIT_TEST_DOCKER_IMAGE"]
    hung = by_name(dc.docker_checks(deep=True, image=image, base_url=url, gpus=0, cdi_root=tmp_path,
                                    deep_command=["sleep", "60"], deep_timeout=1, vendor=NV))["container"]
    assert hung.status == "fail" and "did not finish within 1 s" in hung.detail and image in hung.fix
    failed = by_name(dc.docker_checks(deep=True, image=image, base_url=url, gpus=0, cdi_root=tmp_path,
                                      deep_command=["sh", "-c", "echo broken >&2; exit 3"], vendor=NV))["container"]
    assert failed.status == "fail" and "exited 3" in failed.detail and "broken" in failed.detail
    # A GPU request on an engine without the NVIDIA runtime: refused, with the toolkit fix.
    gpu = by_name(dc.docker_checks(deep=True, image=image, base_url=url, gpus=1, cdi_root=tmp_path, vendor=NV))["container"]
    assert gpu.status == "fail" and "nvidia-ctk" in gpu.fix
    assert leftovers(url) == []


def test_deep_without_a_usable_image_says_which(engine, tmp_path):
    url = engine["KIT_TEST_DOCKER_HOST"]
    none = by_name(dc.docker_checks(deep=True, base_url=url, gpus=0, cdi_root=tmp_path, vendor=NV))["container"]
    assert none.status == "fail" and "--deep-image" in none.fix
    missing = by_name(dc.docker_checks(deep=True, image="kit-test/absent:0", base_url=url, gpus=0,
                                       cdi_root=tmp_path, vendor=NV))["container"]
    assert missing.status == "fail" and "kit-test/absent:0 is not on host" in missing.detail
    assert "docker pull kit-test/absent:0" in missing.fix


def test_unreachable_engine_names_the_socket_and_the_fix(tmp_path):
    sock = tmp_path / "docker.sock"
    checks = dc.docker_checks(base_url=f"unix://{sock}", gpus=0)
    assert [c.name for c in checks] == ["engine"]
    assert checks[0].status == "fail" and str(sock) in checks[0].detail and "not running" in checks[0].detail
    assert "systemctl start docker" in checks[0].fix


def test_refused_tcp_engine(tmp_path):
    import socket

    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    check = dc.docker_checks(base_url=f"tcp://127.0.0.1:{port}", gpus=0)[0]
    assert check.status == "fail" and "connection refused" in check.detail and "systemctl start docker" in check.fix


def test_permission_denied_is_told_apart_from_not_running(engine):
    """A non-root user outside the docker group, against the real socket (root:docker 0660)."""
    import os
    import subprocess

    if os.geteuid() != 0:
        pytest.skip("needs root to run a probe as user nobody")
    url = engine["KIT_TEST_DOCKER_HOST"]
    code = (f"from kit.checks.docker import docker_checks; c = docker_checks(base_url={url!r}, gpus=0)[0]; "
            "print(c.status, '|', c.detail, '|', c.fix)")
    sock = engine["KIT_TEST_DOCKER_HOST"].removeprefix("unix://")
    if os.stat(sock).st_mode & 0o006:
        pytest.skip(f"{sock} is world-accessible here")
    proc = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", sys.executable, "-c", code],
                          capture_output=True, text=True, timeout=60, cwd="/")
    if proc.returncode != 0 and "No module named" in proc.stderr:
        pytest.skip(f"user nobody cannot import kit from this checkout: {proc.stderr.strip()[-200:]}")
    assert proc.returncode == 0, proc.stderr
    status, detail, fix = (s.strip() for s in proc.stdout.split("|"))
    assert status == "fail" and "permission denied" in detail and "nobody" in detail and sock in detail
    assert "usermod -aG docker nobody" in fix


def test_missing_sdk_fails_with_the_pip_fix(monkeypatch):
    monkeypatch.setitem(sys.modules, "docker", None)  # what `import docker` meets when it is not installed
    checks = dc.docker_checks()
    assert [(c.name, c.status) for c in checks] == [("sdk", "fail")]
    assert "pip install 'docker" in checks[0].fix and sys.executable in checks[0].fix

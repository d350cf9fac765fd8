"""`kit build`: the plan (variant from NVML replays of a real H200x2 recording, hashes, tag, build args, dry run),
then real builds on the real engine that .ci/services.sh starts (a tiny Dockerfile on kit-test/busybox)."""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
import sys
import uuid
from pathlib import Path

import pytest
import typer
from rich.console import Console
from typer.testing import CliRunner

from kit import __version__
from kit.commands.build import build as build_command
from kit.image import builder as b
from kit.vendors.nvidia.nvml import open_nvml

from .services import docker_engine_env

REPO = Path(__file__).resolve().parents[2]
RECORDING = REPO / "tests" / "fixtures" / "hosts" / "nvml-h200x2.json"
FAKE_TORCH_HASH = "torch==2.1.2+cu118 --hash=sha256:" + "ab" * 32
PEM = "-----BEGIN CERTIFICATE-----\nMIIBfake\n-----END CERTIFICATE-----\n"


def cli(*args: str, env: dict[str, str] | None = None) -> typer.testing.Result:
    app = typer.Typer()
    app.command()(build_command)
    return CliRunner().invoke(app, list(args), env=env)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A copy of what the plan reads: the Dockerfile, the locks (the 11.8 torch lock hashed), .dockerignore."""
    root = tmp_path / "kit"
    (root / "env").mkdir(parents=True)
    for name in ("lock-cu121.txt", "lock-cu118.txt"):
        shutil.copy(REPO / "env" / name, root / "env" / name)
    (root / "env" / "lock-cu118-torch.txt").write_text("# torch for 11.8\n" + FAKE_TORCH_HASH + "\n")
    if (REPO / "Dockerfile").is_file():
        shutil.copy(REPO / "Dockerfile", root / "Dockerfile")
    else:
        (root / "Dockerfile").write_text("ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\n")
    (root / ".dockerignore").write_text(".venv\nruns\n")
    return root


def replay_with_driver(tmp_path: Path, driver: str, cuda: int) -> object:
    """The H200x2 recording with another driver (and the CUDA version NVML reports for it)."""
    rec = json.loads(RECORDING.read_text())
    rec["calls"]['["nvmlSystemGetDriverVersion", []]'] = {"result": driver}
    rec["calls"]['["nvmlSystemGetCudaDriverVersion", []]'] = {"result": cuda}
    path = tmp_path / f"nvml-{driver}.json"
    path.write_text(json.dumps(rec))
    return open_nvml(path)


# --- the plan -----------------------------------------------------------------------------------------


def test_auto_on_the_h200_recording_picks_12_1(project):
    plan = b.plan_build(project, "auto", driver=open_nvml(RECORDING))
    assert plan.variant == "12.1" and "580.159.04 fully supports CUDA 12.1" in plan.variant_reason
    assert plan.base_image == "nvidia/cuda:12.1.1-cudnn8-devel-ubuntu20.04"
    assert plan.locks == [project / "env" / "lock-cu121.txt"] and plan.warnings == []


def test_auto_on_driver_470_picks_11_8_through_minor_version_compatibility(project, tmp_path):
    plan = b.plan_build(project, "auto", driver=replay_with_driver(tmp_path, "470.141.10", 11040))
    assert plan.variant == "11.8" and plan.base_image == "nvidia/cuda:11.8.0-cudnn8-devel-ubuntu20.04"
    assert "cannot run CUDA 12.1" in plan.variant_reason and "minor-version compatibility" in plan.variant_reason
    assert plan.locks == [project / "env" / "lock-cu118.txt", project / "env" / "lock-cu118-torch.txt"]
    assert any("no PTX JIT" in w and ">= 520.61.05" in w for w in plan.warnings)
    assert re.fullmatch(rf"kit-llava:{re.escape(__version__)}-cu118-[0-9a-f]{{12}}", plan.tag)


def test_auto_on_driver_440_is_refused_with_the_fix(project, tmp_path):
    with pytest.raises(b.BuildRequestError) as e:
        b.plan_build(project, "auto", driver=replay_with_driver(tmp_path, "440.100", 10020))
    assert "no image variant runs on driver 440.100" in e.value.message
    assert e.value.fix.startswith("upgrade the NVIDIA driver to >= 520.61.05") and "450.80.02" in e.value.fix


def test_auto_without_nvml_asks_for_cuda(project, monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # what `import pynvml` meets without nvidia-ml-py
    with pytest.raises(b.BuildRequestError) as e:
        b.plan_build(project, "auto")
    assert "NVML is not available" in e.value.message and "--cuda 12.1" in e.value.fix and "--cuda 11.8" in e.value.fix


def test_unhashed_or_missing_lock_is_refused_with_the_fix(project):
    (project / "env" / "lock-cu118-torch.txt").write_text("# NOT LOCKED YET\ntorch==2.1.2+cu118\n")
    with pytest.raises(b.BuildRequestError) as e:
        b.plan_build(project, "11.8")
    assert "pins torch==2.1.2+cu118 without its sha256" in e.value.message
    assert "bash env/lock.sh" in e.value.fix and "download.pytorch.org" in e.value.fix
    assert b.plan_build(project, "12.1").variant == "12.1"  # the other variant is unaffected
    (project / "env" / "lock-cu121.txt").unlink()
    with pytest.raises(b.BuildRequestError, match="lock .*lock-cu121.txt is missing"):
        b.plan_build(project, "12.1")


def test_hash_follows_the_dockerfile_and_the_lock_only(project):
    plan = b.plan_build(project, "12.1")
    assert re.fullmatch(rf"kit-llava:{re.escape(__version__)}-cu121-{plan.content_hash[:12]}", plan.tag)
    lock = project / "env" / "lock-cu121.txt"
    assert plan.lock_sha256 == hashlib.sha256(lock.read_bytes()).hexdigest()  # = `sha256sum env/lock-cu121.txt`
    assert b.plan_build(project, "12.1").tag == plan.tag  # deterministic
    # Fetching differently (a mirror, a CA, more compile jobs) is not different content.
    ca = project.parent / "ca.pem"
    ca.write_text(PEM)
    same = b.plan_build(project, "12.1", pip_index_url="https://mirror.example/simple", ca_bundle=ca,
                        build_args=["MAX_JOBS=16"])
    assert same.content_hash == plan.content_hash
    # What changes the image changes the tag.
    assert b.plan_build(project, "12.1", build_args=["FLASH_ATTN_WHEEL_URL=https://x/fa.whl"]).tag != plan.tag
    assert b.plan_build(project, "12.1", base_image="registry.local/cuda-base:1").tag != plan.tag
    with (project / "Dockerfile").open("a") as f:
        f.write("\n# a comment is a change too\n")
    after_dockerfile = b.plan_build(project, "12.1")
    assert after_dockerfile.tag != plan.tag and after_dockerfile.lock_sha256 == plan.lock_sha256
    with lock.open("a") as f:
        f.write("einops==0.7.0 --hash=sha256:" + "cd" * 32 + "\n")
    after_lock = b.plan_build(project, "12.1")
    assert after_lock.tag not in (plan.tag, after_dockerfile.tag) and after_lock.lock_sha256 != plan.lock_sha256
    torch_lock = project / "env" / "lock-cu118-torch.txt"
    before = b.plan_build(project, "11.8")
    torch_lock.write_text(FAKE_TORCH_HASH.replace("ab", "ef") + "\n")
    assert b.plan_build(project, "11.8").content_hash != before.content_hash  # both 11.8 locks count


def test_build_args_labels_and_the_sdk_call(project):
    ca = project.parent / "corp.pem"
    ca.write_text(PEM)
    plan = b.plan_build(project, "12.1", tag="kit-llava:mine", build_args=["MAX_JOBS=8"],
                        pip_index_url="https://user:s3cret@mirror.example/simple", ca_bundle=ca)
    assert plan.tag == "kit-llava:mine"
    assert plan.build_args == {
        "CUDA_VARIANT": "12.1", "BASE_IMAGE": "nvidia/cuda:12.1.1-cudnn8-devel-ubuntu20.04",
        "KIT_VERSION": __version__, "KIT_LOCK_SHA256": plan.lock_sha256,
        "PIP_INDEX_URL": "https://user:s3cret@mirror.example/simple", "CA_BUNDLE": b.CA_IN_CONTEXT, "MAX_JOBS": "8",
    }  # fmt: skip
    assert plan.ca_bundle == ca.resolve()
    call = plan.sdk_call()
    assert call["path"] == str(project) and call["dockerfile"] == "Dockerfile" and call["tag"] == "kit-llava:mine"
    assert call["rm"] and call["forcerm"] and call["decode"] and call["pull"] is False
    assert call["labels"]["kit.build.content-hash"] == plan.content_hash
    assert "s3cret" not in plan.sdk_call_text() and "user:***@mirror.example" in plan.sdk_call_text()
    assert "s3cret" not in json.dumps(plan.to_dict()) and any("docker history" in w for w in plan.warnings)


@pytest.mark.parametrize(
    ("kwargs", "message", "fix"),
    [
        ({"variant": "12.4"}, "--cuda '12.4' is not a variant", "--cuda auto, 12.1 or 11.8"),
        ({"build_args": ["CUDA_VARIANT=11.8"]}, "CUDA_VARIANT is set by kit build", "--cuda"),
        ({"build_args": ["PIP_INDEX_URL=x"]}, "PIP_INDEX_URL is set by kit build", "--pip-index-url"),
        ({"build_args": ["NOVALUE"]}, "is not KEY=VALUE", "--build-arg MAX_JOBS=8"),
        ({"base_image": "nvidia/cuda:11.8.0-cudnn8-devel-ubuntu20.04"}, "is a CUDA 11.8 image", "--cuda 11.8"),
        ({"tag": "Kit:Bad Tag"}, "not a valid image reference", "--tag"),
        ({"pip_index_url": "mirror.example/simple"}, "not an http(s) URL", "simple/"),
        ({"dockerfile": "/nonexistent/Dockerfile"}, "no Dockerfile at /nonexistent/Dockerfile", "--file"),
    ],
)
def test_bad_requests_are_refused_with_the_fix(project, kwargs, message, fix):
    with pytest.raises(b.BuildRequestError) as e:
        b.plan_build(project, **{"variant": "12.1", **kwargs})
    assert message in e.value.message and fix in e.value.fix


def test_ca_bundle_must_be_pem_and_reach_the_context(project):
    der = project.parent / "ca.der"
    der.write_bytes(b"\x30\x82\x01\x0a")
    with pytest.raises(b.BuildRequestError, match="holds no PEM certificate"):
        b.plan_build(project, "12.1", ca_bundle=der)
    pem = project.parent / "ca.pem"
    pem.write_text(PEM)
    (project / ".dockerignore").write_text(".*\n")
    with pytest.raises(b.BuildRequestError) as e:
        b.plan_build(project, "12.1", ca_bundle=pem)
    assert f"!{b.CA_IN_CONTEXT}" in e.value.fix


def test_dry_run_prints_the_plan_and_builds_nothing(project, tmp_path):
    r = cli("--cuda", "12.1", "--context", str(project), "--results", str(tmp_path / "runs"), "--dry-run")
    assert r.exit_code == 0, r.output
    plan = b.plan_build(project, "12.1", results=tmp_path / "runs")
    assert "nothing is sent to the engine" in r.output
    for text in (plan.tag, plan.content_hash, "build arg KIT_LOCK_SHA256", "client.api.build(", "forcerm=True",
                 str(plan.record_path)):
        assert text in r.output, text
    assert not (tmp_path / "runs").exists()
    r = cli("--cuda", "auto", "--context", str(project), "--dry-run", "--json", env={"KIT_NVML_RECORDING": str(RECORDING)})
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert data["variant"] == "12.1" and data["tag"] == plan.tag and data["sdk_call"].startswith("client.api.build(")
    r = cli("--cuda", "10.2", "--context", str(project), "--dry-run")
    assert r.exit_code == 2 and "not a variant" in r.output and "fix:" in r.output


# --- real builds on the real engine --------------------------------------------------------------------

docker = pytest.importorskip("docker")

TINY = """\
ARG BASE_IMAGE=kit-test/busybox:latest
FROM ${BASE_IMAGE}
ARG CUDA_VARIANT
ARG KIT_VERSION=unknown
ARG KIT_LOCK_SHA256=unknown
ARG CA_BUNDLE=""
COPY .dockerignore ${CA_BUNDLE} /tmp/kit-ca/
RUN echo "tiny-build variant=${CUDA_VARIANT} lock=${KIT_LOCK_SHA256}" && ls -a /tmp/kit-ca
LABEL kit.cuda="${CUDA_VARIANT}" kit.version="${KIT_VERSION}" kit.lock.sha256="${KIT_LOCK_SHA256}"
"""


@pytest.fixture(scope="module")
def engine() -> dict[str, str]:
    return docker_engine_env()


@pytest.fixture
def client(engine):
    c = docker.DockerClient(base_url=engine["KIT_TEST_DOCKER_HOST"], timeout=60)
    tags: list[str] = []
    c.test_tags = tags  # the tests name what they build; all of it is removed afterwards
    yield c
    for tag in tags:
        try:
            c.images.remove(tag, force=True)
        except docker.errors.ImageNotFound:
            pass
    c.close()


@pytest.fixture
def tiny(project: Path) -> Path:
    (project / "Dockerfile").write_text(TINY)
    return project


def test_real_build_streams_labels_and_records(engine, client, tiny, tmp_path):
    base = engine["KIT_TEST_DOCKER_IMAGE"]
    ca = tmp_path / "corp.pem"
    ca.write_text(PEM)
    tag = f"kit-test/build:{uuid.uuid4().hex[:8]}"
    client.test_tags.append(tag)
    plan = b.plan_build(tiny, "12.1", base_image=base, tag=tag, ca_bundle=ca, results=tmp_path / "runs")
    out = io.StringIO()
    record = b.run_build(plan, client, Console(file=out, width=200))
    text = out.getvalue()
    assert f"tiny-build variant=12.1 lock={plan.lock_sha256}" in text  # the RUN's output reached the console
    assert b.CA_IN_CONTEXT in text  # the CA bundle was in the context, under the name the Dockerfile was given
    assert not (tiny / b.CA_IN_CONTEXT).exists()  # and is gone again

    image = client.images.get(tag)
    assert image.labels["kit.cuda"] == "12.1" and image.labels["kit.lock.sha256"] == plan.lock_sha256
    assert image.labels["kit.version"] == __version__
    assert image.labels["kit.build.content-hash"] == plan.content_hash
    base_image = client.images.get(base)
    assert base_image.attrs.get("RepoDigests") == []  # imported locally: no registry digest, the id stands in
    assert image.labels["org.opencontainers.image.base.digest"] == base_image.id

    on_disk = json.loads(plan.record_path.read_text())
    assert on_disk == record and plan.record_path.parent == tmp_path / "runs" / "builds"
    assert record["tag"] == tag and record["image_id"] == image.id and record["variant"] == "12.1"
    assert record["base_image"]["ref"] == base and record["base_image"]["id"] == base_image.id
    assert record["base_image"]["digest"] == base_image.id and record["base_image"]["digest_kind"].startswith("image-id")
    assert record["lock_sha256"] == plan.lock_sha256 and record["content_hash"] == plan.content_hash
    assert record["build_args"]["CA_BUNDLE"] == b.CA_IN_CONTEXT and record["ca_bundle"] == str(ca)
    assert "MIIBfake" not in plan.record_path.read_text()  # the path, never the content
    assert record["kit_version"] == __version__ and record["engine"]["version"]
    assert "tiny-build variant=12.1" in Path(record["log"]).read_text()


def test_failing_step_is_named_and_exits_1(engine, client, tiny, tmp_path):
    (tiny / "Dockerfile").write_text("FROM kit-test/busybox:latest\nRUN echo before-the-failure && false\n")
    tag = f"kit-test/build-fail:{uuid.uuid4().hex[:8]}"
    client.test_tags.append(tag)
    r = cli("--cuda", "12.1", "--context", str(tiny), "--base-image", engine["KIT_TEST_DOCKER_IMAGE"], "--tag", tag,
            "--results", str(tmp_path / "runs"), "--docker-host", engine["KIT_TEST_DOCKER_HOST"])
    assert r.exit_code == 1, r.output
    # The engine counts the SDK's labels as steps too: Step 2/N.
    assert re.search(r"failed at Step 2/\d+ : RUN echo before-the-failure && false", r.output), r.output
    assert "returned a non-zero code: 1" in r.output and "before-the-failure" in r.output
    log = tmp_path / "runs" / "builds" / f"{b.safe_name(tag)}.log"
    assert f"the whole log: {log}" in r.output and "non-zero code" in log.read_text()
    assert not (log.with_suffix(".json")).exists()  # no record for a build that did not happen
    with pytest.raises(docker.errors.ImageNotFound):
        client.images.get(tag)


def test_missing_base_image_exits_3_naming_it(engine, client, tiny, tmp_path):
    r = cli("--cuda", "12.1", "--context", str(tiny), "--base-image", "kit-test/absent:0", "--tag", "kit-test/x:0",
            "--results", str(tmp_path / "runs"), "--docker-host", engine["KIT_TEST_DOCKER_HOST"])
    assert r.exit_code == 3, r.output
    assert "the base image kit-test/absent:0 is not on this host and cannot be pulled" in r.output
    assert "docker pull kit-test/absent:0" in r.output and "--base-image" in r.output


def test_unreachable_engine_exits_3_with_the_fix(tiny, tmp_path):
    sock = tmp_path / "docker.sock"
    r = cli("--cuda", "12.1", "--context", str(tiny), "--base-image", "kit-test/busybox:latest",
            "--docker-host", f"unix://{sock}", "--results", str(tmp_path / "runs"))
    assert r.exit_code == 3, r.output
    assert f"no socket at {sock}" in r.output and "systemctl start docker" in r.output

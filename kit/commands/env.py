"""`kit env`: a block to paste into a bug report (as `accelerate env` does).

Library versions come from installed package metadata, never from importing them: importing torch on a
host costs seconds and the host side must work without it. Every probe tolerates absence.
"""

from __future__ import annotations

import importlib.metadata as md
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import typer

from kit import __version__
from kit.checks.system import human, mem_total, os_info

LIBRARIES = ("torch", "deepspeed", "transformers", "flash-attn", "nvidia-ml-py", "docker", "typer", "rich")
DOCKER_TIMEOUT_S = 2


def _version(dist: str) -> str:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return "not installed"


GIT_TIMEOUT_S = 5


def _git(root: Path, *args: str) -> str | None:
    """One read-only git query in `root`, or None (no git, not a checkout, a tree git refuses, too slow)."""
    git = shutil.which("git")
    if git is None:
        return None
    # No optional locks: `git status` would otherwise refresh the index, a write in the user's checkout.
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0", "LC_ALL": "C"}
    try:
        r = subprocess.run([git, "-C", str(root), *args], capture_output=True, text=True, timeout=GIT_TIMEOUT_S,
                           env=env, check=False)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout if r.returncode == 0 else None


def source_revision(root: Path | None = None) -> dict[str, Any]:
    """Which source of the kit is running: the git commit and whether the tree differs from it, when the kit runs
    from a checkout; else the installed distribution's version. Never raises: a run must start without git.

    {"kind": "git", "commit": sha, "dirty": bool, "changed": n, "path": root, "version": v} or
    {"kind": "installed", "version": v, "path": package dir, "reason": why not a checkout}. `dirty` counts
    modified, staged and untracked files (ignored ones aside), as they all change what runs."""
    package = Path(__file__).resolve().parent.parent
    root = Path(root) if root is not None else package.parent
    try:
        version = md.version("kit")
    except md.PackageNotFoundError:
        version = __version__
    base: dict[str, Any] = {"version": version}
    if not (root / ".git").exists():
        return {"kind": "installed", **base, "path": str(package), "reason": f"{root} is not a git checkout"}
    top = _git(root, "rev-parse", "--show-toplevel")
    commit = _git(root, "rev-parse", "--verify", "HEAD")
    if top is None or commit is None:
        why = "git is not installed" if shutil.which("git") is None else "git cannot read it (no commit yet, or an unsafe owner)"
        return {"kind": "installed", **base, "path": str(package), "reason": f"{root}: {why}"}
    status = _git(root, "status", "--porcelain", "--untracked-files=normal")
    changed = None if status is None else len([ln for ln in status.splitlines() if ln.strip()])
    return {"kind": "git", "commit": commit.strip(), "dirty": None if changed is None else changed > 0,
            "changed": changed, "path": top.strip(), **base}  # fmt: skip


def revision_text(rev: dict[str, Any]) -> str:
    """`git 769860c1a2b3 (dirty: 4 files changed)`, or `installed 0.1.0 (not a checkout)`, for a line of text."""
    if rev.get("kind") == "git":
        if rev.get("dirty") is None:
            state = "dirty: unknown"
        else:
            state = f"dirty: {rev['changed']} file(s) changed" if rev["dirty"] else "clean"
        return f"git {rev['commit'][:12]} ({state}) at {rev['path']}"
    return f"installed {rev.get('version')} ({rev.get('reason', 'not a checkout')})"


def _nvml_lines(nvml_recording: str | None = None) -> list[tuple[str, str]]:
    from kit.checks.driver import cuda_from_nvml
    from kit.vendors.nvml import NVMLUnavailable, open_nvml

    try:
        nvml = open_nvml(nvml_recording)
    except NVMLUnavailable as e:
        return [("NVIDIA driver", f"none ({e})"), ("CUDA (driver)", "n/a"), ("GPUs", "none")]
    try:
        driver = nvml.nvmlSystemGetDriverVersion()
        try:
            cuda = cuda_from_nvml(nvml.nvmlSystemGetCudaDriverVersion()) or "?"
        except nvml.NVMLError:
            cuda = "not reported"
        gpus: list[tuple[str, str]] = []
        for i in range(nvml.nvmlDeviceGetCount()):
            h = nvml.nvmlDeviceGetHandleByIndex(i)
            name = nvml.nvmlDeviceGetName(h)
            mem = nvml.nvmlDeviceGetMemoryInfo(h).total
            gpus.append((f"  GPU {i}", f"{name.decode() if isinstance(name, bytes) else name}, {mem / 1024**3:.0f} GiB"))
    except nvml.NVMLError as e:
        return [("NVIDIA driver", f"error: {e}")]
    finally:
        try:
            nvml.nvmlShutdown()
        except Exception:  # noqa: BLE001
            pass
    driver = driver.decode() if isinstance(driver, bytes) else driver
    return [("NVIDIA driver", driver), ("CUDA (driver)", cuda), ("GPUs", str(len(gpus))), *gpus]


def _docker_engine() -> str:
    """The engine's version through the docker SDK, with a short timeout: a dead socket must not hang `kit env`."""
    try:
        import docker
    except ImportError:
        return "n/a (the docker package is not installed)"
    try:
        client = docker.from_env(timeout=DOCKER_TIMEOUT_S)
        try:
            v: dict[str, Any] = client.version()
        finally:
            client.close()
    except Exception as e:  # noqa: BLE001 - every way of not reaching an engine is "unreachable"
        return f"unreachable ({type(e).__name__})"
    return f"{v.get('Version', '?')} (API {v.get('ApiVersion', '?')})"


def env_block(nvml_recording: str | None = None) -> str:
    """The report as a fenced plain-text block, in a fixed order."""
    pretty, kernel = os_info()
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    mem = mem_total()
    rows: list[tuple[str, str]] = [
        ("kit", __version__),
        ("kit source", revision_text(source_revision())),
        ("Python", f"{platform.python_version()} ({sys.executable})"),
        ("OS", f"{pretty}; kernel {kernel}" if pretty != "unknown" else platform.platform()),
        ("CPU", f"{cpu}, {os.cpu_count()} cores"),
        ("Memory", human(mem) if mem else "unknown"),
        *((lib, _version(lib)) for lib in LIBRARIES),
        *_nvml_lines(nvml_recording),
        ("Docker engine", _docker_engine()),
    ]
    width = max(len(k) for k, _ in rows)
    body = "\n".join(f"- {k + ':':<{width + 1}} {v}" for k, v in rows)
    return f"```text\n{body}\n```"


def env(
    nvml_recording: Path = typer.Option(None, "--nvml-recording", hidden=True, help="Read GPUs from an NVML recording."),
) -> None:
    """Print the environment as a block to paste into a bug report.

    Example:

      kit env
    """
    typer.echo(env_block(None if nvml_recording is None else str(nvml_recording)))

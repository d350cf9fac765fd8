"""How Docker hands NVIDIA GPUs to a container, checked on this host: the NVIDIA Container Toolkit.

A container gets GPUs through a device request (`--gpus`), which the engine serves through the `nvidia` runtime
the toolkit configures (`nvidia-ctk runtime configure`), or through CDI specs the toolkit generates (`nvidia-ctk cdi
generate`, under /etc/cdi or /var/run/cdi). `kit check-host` says which is present; `--deep` starts a throwaway
container given the GPUs and counts what `nvidia-smi -L` lists inside it.
"""

from __future__ import annotations

import glob
from pathlib import Path
from typing import Any

from kit.checks import Check
from kit.vendors.base import Smoke

GROUP = "docker"
CDI_DIRS = ("etc/cdi", "var/run/cdi")
TOOLKIT_FIX = (
    "install the NVIDIA Container Toolkit (package nvidia-container-toolkit, "
    "https://docs.nvidia.com/datacenter/cloud-native/container-toolkit/latest/install-guide.html), then "
    "`sudo nvidia-ctk runtime configure --runtime=docker && sudo systemctl restart docker`"
)
# `nvidia-smi -L` prints one line per GPU: "GPU 0: NVIDIA H200 (UUID: GPU-...)".
SMOKE = Smoke(["nvidia-smi", "-L"], r"^GPU \d+: (.*?) \(UUID", TOOLKIT_FIX)


def cdi_specs(root: Path) -> list[str]:
    """CDI spec files (the other way, besides the nvidia runtime, to hand GPUs to containers)."""
    found: list[str] = []
    for d in CDI_DIRS:
        base = root / d
        for pattern in ("*.yaml", "*.yml", "*.json"):
            found += sorted(str(p) for p in base.glob(pattern) if p.is_file())
    return found


def gpu_nodes(root: Path) -> int:
    """GPUs counted by their device nodes (/dev/nvidia0, ...), for a host where NVML did not answer."""
    return len(glob.glob(str(root / "dev" / "nvidia[0-9]*")))


def runtime_check(info: dict[str, Any], gpus: int | None, root: Path) -> Check:
    """The nvidia runtime, or a CDI spec; without either, a warn on a host with no GPUs, else a fail."""
    gpus = gpu_nodes(root) if gpus is None else gpus
    runtimes = sorted(info.get("Runtimes") or {})
    specs = cdi_specs(root)
    data = {"runtimes": runtimes, "default_runtime": info.get("DefaultRuntime"), "cdi_specs": specs, "gpus": gpus}
    if "nvidia" in runtimes:
        default = info.get("DefaultRuntime")
        return Check(GROUP, "gpu runtime", "ok",
                     f"nvidia runtime configured (default runtime: {default})"
                     + (f"; CDI specs: {', '.join(specs)}" if specs else ""), data=data)  # fmt: skip
    if specs:
        return Check(GROUP, "gpu runtime", "ok", f"CDI specs present: {', '.join(specs)}", data=data)
    where = " or ".join(str(root / d) for d in CDI_DIRS)
    detail = f"no nvidia runtime (runtimes: {', '.join(runtimes) or 'none'}) and no CDI spec under {where}"
    if gpus == 0:
        return Check(GROUP, "gpu runtime", "warn",
                     detail + "; this host has no GPUs, so containers here run on the CPU only", TOOLKIT_FIX, data)
    return Check(GROUP, "gpu runtime", "fail", detail + f"; containers cannot see this host's {gpus} GPU(s)",
                 TOOLKIT_FIX, data)  # fmt: skip

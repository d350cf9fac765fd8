"""NVIDIA GPUs: the vendor the host asks about them, through NVML (the nvidia-ml-py binding, or a replay of a
recording made on a real host: nvml.py).

- nvml.py: opening NVML, recording a host's answers, replaying them (`KIT_NVML_RECORDING=FILE`, for tests and
  rehearsals; a run made so is marked and `kit submit` refuses it);
- checks.py: check-host's GPU rows (count, model, memory, ECC, clocks, NVLink, other processes, persistence, MIG);
- driver.py: the driver and CUDA rows against env/cuda-drivers.toml;
- sampler.py: the monitor's readings.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from kit.checks import Check
from kit.vendors.base import ContainerAccess, Device, Probe, Runtime
from kit.vendors.images import variants_of
from kit.vendors.nvidia import checks as gpu_checks
from kit.vendors.nvidia import containers, images
from kit.vendors.nvidia import driver as driver_checks
from kit.vendors.nvidia import nvml as nvml_lib
from kit.vendors.nvidia.checks import NOT_REPORTED, read
from kit.vendors.nvidia.nvml import NVMLUnavailable, ReplayNVML
from kit.vendors.nvidia.sampler import NvmlSampler
from kit.vendors.nvidia.sampler import reasons as throttle_reasons

RECORDING_ENV = "KIT_NVML_RECORDING"
# Models this vendor's devices are named by, as configs and kit_facts spell them (upper case).
MODELS = ("A100", "A800", "H100", "H200", "H800", "H20", "B100", "B200", "GB200", "L40", "L20", "A10", "A30", "A40",
          "V100", "T4", "RTX")  # fmt: skip


def _close(nvml: Any) -> None:
    try:
        nvml.nvmlShutdown()
    except Exception:  # noqa: BLE001 - shutting down a binding that already failed is not news
        pass


class NvidiaVendor:
    name = "nvidia"
    title = "NVIDIA"
    device_word = "GPU"
    torch_device = "cuda"
    dist_backend = "nccl"
    slurm_gres = "gpu"
    sources = ("nvidia", "nvml")  # the monitor's start-line `source` of this vendor's samples (older runs: nvml)
    forward_env = ("NCCL_", "TORCH_NCCL_", "CUDA_DEVICE_MAX_CONNECTIONS", "CUDA_LAUNCH_BLOCKING", "CUDA_MODULE_LOADING")  # travels into containers
    runtime = Runtime()  # torch's CUDA device needs nothing imported or set first

    def __init__(self, recording: str | Path | None = None, root: str | Path = "/") -> None:
        self._recording = str(recording) if recording else None
        self.root = Path(root)

    @property
    def recording(self) -> str | None:
        return self._recording or os.environ.get(RECORDING_ENV) or None

    def open(self) -> Any:
        """An opened NVML (or the replay of the recording); raises NVMLUnavailable, or OSError/ValueError for a bad
        recording."""
        return ReplayNVML.load(self.recording) if self.recording else nvml_lib.open_nvml()

    def probe(self) -> Probe:
        """Driver, CUDA driver version and each GPU (name, memory, NVLink links up), or why NVML cannot answer."""
        replayed = {"replayed_from": self.recording} if self.recording else {}
        try:
            nvml = self.open()
        except NVMLUnavailable as e:
            return Probe(self.name, False, reason=str(e), driver=driver_checks.driver_from_proc(self.root), **replayed)
        except (OSError, ValueError) as e:
            return Probe(self.name, False, reason=f"{RECORDING_ENV}={self.recording}: {e}", **replayed)
        try:
            count = read(nvml, "nvmlDeviceGetCount")
            devices = []
            max_links = getattr(nvml, "NVML_NVLINK_MAX_LINKS", 18)
            for i in range(count if isinstance(count, int) else 0):
                h = nvml.nvmlDeviceGetHandleByIndex(i)
                mem = read(nvml, "nvmlDeviceGetMemoryInfo", h)
                links = [read(nvml, "nvmlDeviceGetNvLinkState", h, k) for k in range(max_links)]
                present = [s for s in links if s is not NOT_REPORTED]
                uuid = read(nvml, "nvmlDeviceGetUUID", h)
                devices.append(Device(
                    index=i, name=str(read(nvml, "nvmlDeviceGetName", h)),
                    memory_bytes=getattr(mem, "total", None) if mem is not NOT_REPORTED else None,
                    uuid=None if uuid is NOT_REPORTED else str(uuid),
                    links_up=sum(1 for s in present if s), links=len(present),
                ))  # fmt: skip
            cuda = read(nvml, "nvmlSystemGetCudaDriverVersion")
            driver = read(nvml, "nvmlSystemGetDriverVersion")
        finally:
            _close(nvml)
        return Probe(
            self.name, True, driver=None if driver is NOT_REPORTED else str(driver),
            toolkit=driver_checks.cuda_from_nvml(cuda) if isinstance(cuda, int) else None,
            devices=devices, link_kind="NVLink", **replayed,
        )  # fmt: skip

    def reasons(self) -> dict[str, str]:
        """The statuses of the sampler's throttle names (for runs whose monitor start line holds no table)."""
        return throttle_reasons()

    def sampler(self) -> NvmlSampler | None:
        try:
            return NvmlSampler(self.open())
        except (NVMLUnavailable, OSError, ValueError):
            return None

    def host_checks(self, probe: Probe, expected: int, device: str = "") -> list[Check]:
        if not probe.available:
            return [gpu_checks.no_nvml_check(probe.reason or "", device)]
        nvml = self.open()
        try:
            return gpu_checks.gpu_checks(nvml, expected, device)
        finally:
            _close(nvml)

    def driver_checks(self, probe: Probe) -> list[Check]:
        if probe.available:
            nvml = self.open()
            try:
                return driver_checks.nvml_driver_checks(nvml)
            finally:
                _close(nvml)
        if probe.driver:  # the kernel module is loaded, NVML is not there
            return driver_checks.driver_checks(probe.driver)
        return [driver_checks.no_driver_check()]

    def container_access(self, count: int) -> ContainerAccess:
        return ContainerAccess(device_requests=[{"driver": "nvidia", "count": count, "capabilities": [["gpu"]]}],
                               note=f"{count} GPU(s) through the NVIDIA container toolkit")  # fmt: skip

    def owns(self, device_name: str) -> bool:
        n = (device_name or "").upper()
        return "NVIDIA" in n or any(re.search(rf"(?<![A-Z0-9]){m}(?![0-9])", n) for m in MODELS)

    # -- images and containers (images.py, containers.py) --
    variant_label = "CUDA"
    variant_option = "--cuda"  # `kit build --cuda 12.1`, as before vendors
    toolkit_label = "CUDA (driver)"  # Probe.toolkit: the CUDA version the driver supports (NVML)
    libraries = ("nvidia-ml-py",)

    def image_variants(self, stack: str) -> list[Any]:

        return variants_of(self.name, stack)

    def choose_variant(self, probe: Any, stack: str) -> Any:
        """`probe`: this host's Probe, or (tests, `kit build`'s callers) a driver version or an opened NVML."""

        return images.choose(self, probe, stack)

    def base_variant(self, image: str) -> str | None:

        return images.base_variant(image)

    def docker_checks(self, info: dict[str, Any], count: int | None, root: str | Path | None = None) -> list[Check]:

        return [containers.runtime_check(info, count, Path(root) if root is not None else self.root)]

    def smoke(self) -> Any:

        return containers.SMOKE

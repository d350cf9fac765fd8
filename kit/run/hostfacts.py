"""The host a run ran on, as `kit run` records it in environment.json and `kit submit` reads it back.

The accelerators and the driver through NVML (absent on a host without it), the CPU, memory, OS and kernel from
/proc, InfiniBand ports from /sys: the facts a system description is filled from, taken when the run ran rather
than typed in later.
"""

from __future__ import annotations

import getpass
import os
import platform
import socket
import sys
from typing import Any

from kit import __version__
from kit.checks.gpu import NOT_REPORTED, read
from kit.checks.system import cpu_info, ib_ports, mem_total, os_info


def gpu_facts(nvml: Any = None) -> dict[str, Any]:
    """Driver, CUDA driver version and each GPU (name, memory, NVLink links up) through NVML, or why not."""
    from kit.vendors.nvml import NVMLUnavailable, ReplayNVML, open_nvml

    # KIT_NVML_RECORDING=PATH: answer from a recorded host (`python -m kit.vendors.nvml record`), for tests and rehearsals.
    recording = os.environ.get("KIT_NVML_RECORDING") if nvml is None else None
    try:
        nvml = nvml or (ReplayNVML.load(recording) if recording else open_nvml())
    except NVMLUnavailable as e:
        return {"available": False, "reason": str(e), "devices": []}
    except (OSError, ValueError) as e:
        if not recording:
            raise
        return {"available": False, "reason": f"KIT_NVML_RECORDING={recording}: {e}", "devices": []}
    count = read(nvml, "nvmlDeviceGetCount")
    devices = []
    max_links = getattr(nvml, "NVML_NVLINK_MAX_LINKS", 18)
    for i in range(count if isinstance(count, int) else 0):
        h = nvml.nvmlDeviceGetHandleByIndex(i)
        mem = read(nvml, "nvmlDeviceGetMemoryInfo", h)
        links = [read(nvml, "nvmlDeviceGetNvLinkState", h, k) for k in range(max_links)]
        present = [s for s in links if s is not NOT_REPORTED]
        devices.append({
            "index": i,
            "name": str(read(nvml, "nvmlDeviceGetName", h)),
            "memory_bytes": getattr(mem, "total", None) if mem is not NOT_REPORTED else None,
            "nvlink_links_up": sum(1 for s in present if s),
            "nvlink_links": len(present),
        })
    cuda = read(nvml, "nvmlSystemGetCudaDriverVersion")
    driver = read(nvml, "nvmlSystemGetDriverVersion")
    return {
        "available": True,
        **({"replayed_from": recording} if recording else {}),  # never a real host's facts: kit submit refuses them
        "driver": None if driver is NOT_REPORTED else str(driver),
        "cuda_driver": f"{cuda // 1000}.{cuda % 1000 // 10}" if isinstance(cuda, int) else None,
        "devices": devices,
    }


def host_facts(nvml: Any = None) -> dict[str, Any]:
    cpu_model, cores = cpu_info()
    pretty, kernel = os_info()
    return {
        "hostname": socket.gethostname(),
        "user": getpass.getuser(),
        "os": platform.platform(),
        "os_name": pretty,
        "kernel": kernel,
        "python": sys.version.split()[0],
        "cpu": platform.processor() or platform.machine(),
        "cpu_model": cpu_model,
        "cpus": os.cpu_count(),
        "cpus_usable": cores,
        "memory_bytes": mem_total(),
        "gpus": gpu_facts(nvml),
        "infiniband": ib_ports(),
        "kit_version": __version__,
    }

"""The CPU as a vendor: the host's own processor, for the tiny runs, the tests and any host without accelerators.

Every rank computes on the CPU (torch's "cpu" device, gloo collectives), so the CPU has no devices to count, sample
or hand to a container: its probe lists none and says why, check-host's rows are about cores and memory (kit/checks/
system.py, asked for every vendor), and the monitor samples the host alone. It is the registry's fallback: the vendor
of a host where no other one finds devices.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kit.checks import Check
from kit.checks.system import cpu_info
from kit.vendors.base import ContainerAccess, Probe, Runtime, Sampler, VariantChoice
from kit.vendors.images import not_yet, variants_of


class CpuVendor:
    name = "cpu"
    title = "CPU"
    device_word = "CPU rank"
    torch_device = "cpu"
    dist_backend = "gloo"
    slurm_gres = None  # ranks are scheduled by CPUs, not by a generic resource
    forward_env = ()  # travels into containers
    runtime = Runtime()  # the case's CPU path needs nothing imported or set (cases/*/device.py)

    def probe(self) -> Probe:
        model, cores = cpu_info()
        return Probe(self.name, True, reason=f"no accelerator: the ranks compute on the CPU ({model}, {cores} cores)",
                     devices=[])  # fmt: skip

    def sampler(self) -> Sampler | None:
        return None  # the monitor's host sampler reads the CPU already

    def host_checks(self, probe: Probe, expected: int, device: str = "") -> list[Check]:
        if (device or "cpu").lower() == "cpu":
            return [Check("gpu", "Accelerators", "ok", f"none needed: the config runs {expected} rank(s) on the CPU")]
        return [Check("gpu", "Accelerators", "fail", f"the config needs {expected} x {device} per node; this host has no "
                      "accelerator that any installed vendor package finds",
                      fix="run on a host with those devices, install the vendor's kit package (docs/vendors.md), or "
                          "choose a config for this host (`kit configs`)")]  # fmt: skip

    def driver_checks(self, probe: Probe) -> list[Check]:
        return []

    def container_access(self, count: int) -> ContainerAccess:
        return ContainerAccess(note=f"{count} rank(s) on the CPU: no device is passed in")

    def owns(self, device_name: str) -> bool:
        return (device_name or "").strip().lower() in ("cpu", "")

    # -- images and containers --
    variant_label = "CPU"
    variant_option = ""
    toolkit_label = "toolkit"  # the CPU has none: its probe's toolkit is always None
    libraries = ()

    def image_variants(self, stack: str) -> list[Any]:
        """env/stacks.toml's rows with vendor = "cpu": none (the CPU test image is made by .ci/test-image.sh)."""

        return variants_of(self.name, stack)

    def choose_variant(self, probe: Probe, stack: str) -> Any:
        """The stack's first CPU variant (no driver to match), else why there is none."""

        rows = self.image_variants(stack)
        if rows:
            return VariantChoice(rows[0].name, f"the {stack} stack's CPU variant (no accelerator here)")
        return not_yet(self, stack)

    def base_variant(self, image: str) -> str | None:
        return None  # any base image with a Python runs the CPU path

    def docker_checks(self, info: dict[str, Any], count: int | None, root: str | Path | None = None) -> list[Check]:
        return [Check("docker", "devices", "ok", "none to pass in: containers run the ranks on the CPU")]

    def smoke(self) -> None:
        return None  # no device to look for: --deep runs a command that only has to exit 0

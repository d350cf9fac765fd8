"""What the host asks of an accelerator vendor: one interface, one implementation per vendor.

The host knows no vendor by name. It asks the registered vendors (kit/vendors/__init__.py: the built-in ones and
any package that registers under the `kit.vendors` entry point group) which of them finds devices here, and from
then on talks to that one only:

- `probe()`: the devices (count, model, memory, driver and firmware, links between devices), read through the
  vendor's own management library or tool, or why it cannot (no driver, no library);
- `sampler()`: readings for the monitor every few seconds (utilization, memory, power, clocks, throttling, the
  processes on each device);
- `host_checks()` and `driver_checks()`: `kit check-host`'s rows, each fix in the vendor's own words;
- `container_access()`: how a container gets the devices (device requests, device nodes, driver mounts, env);
- `image_variants()`, `choose_variant()`, `base_variant()`: its image variants of each software stack and which one
  this host's driver runs (`kit build`); `docker_checks()`, `smoke()`: check-host's Docker rows and the `--deep`
  container's listing of the devices;
- `slurm_gres`, `torch_device`, `dist_backend`, `runtime`: how Slurm counts them, what the case's device layer
  calls them, and what the case must import or set before its first rank touches a device;
- `peak()`: the dense bf16 FLOP/s of a device model, from env/accelerators.toml (rows carry a `vendor`).

Every reading a vendor gives is plain data (dataclasses of str, int, float, lists), so it is written to
environment.json and monitor.jsonl as it is, and replayed in tests from recordings of real machines.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from kit.checks import Check

# The environment variable that carries a vendor's Runtime to the case's processes, as JSON {"vendor": NAME,
# "imports": [...], "environment": {...}} (the case's device layer applies it before torch touches a device).
RUNTIME_ENV = "KIT_DEVICE_RUNTIME"


@dataclass
class Device:
    """One device as the vendor's management library reports it."""

    index: int
    name: str  # the marketing name, as the library spells it ("NVIDIA H100 80GB HBM3", "AMD Instinct MI300X")
    memory_bytes: int | None = None
    uuid: str | None = None
    bus_id: str | None = None  # PCI bus id
    links_up: int | None = None  # device-to-device links up (NVLink, xGMI/Infinity Fabric, HCCS)
    links: int | None = None  # such links present
    firmware: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # anything else the vendor reads (compute capability, ...)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Probe:
    """What one vendor found on this host."""

    vendor: str  # the vendor's name ("nvidia", "amd", "ascend", "cpu", ...)
    available: bool  # the management library answered
    reason: str | None = None  # why not (no driver loaded, library missing), in the vendor's words
    driver: str | None = None  # kernel driver version
    toolkit: str | None = None  # the runtime the driver supports (CUDA driver API version, ROCm, CANN)
    devices: list[Device] = field(default_factory=list)
    link_kind: str | None = None  # what `links_up` counts: "NVLink", "xGMI", "HCCS"
    replayed_from: str | None = None  # a recording, never a real host's facts (kit submit refuses it)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["devices"] = [x.to_dict() for x in self.devices]
        return d


@dataclass
class Reading:
    """One device in one monitor sample. None: the library does not report it on this device."""

    index: int
    util_pct: float | None = None
    mem_util_pct: float | None = None  # the memory controller's busy share, where the vendor reports one
    mem_used_bytes: int | None = None
    mem_total_bytes: int | None = None
    power_w: float | None = None
    power_limit_w: float | None = None
    clock_mhz: float | None = None
    clock_max_mhz: float | None = None
    temp_c: float | None = None
    throttle: list[str] | None = None  # reasons the clocks are held down, by name, as the vendor names them
    throttle_status: str | None = None  # ok | warn | fail: the worst of `throttle` (the vendor decides)
    processes: list[dict[str, Any]] = field(default_factory=list)  # {pid, used_bytes}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Sampler(Protocol):
    def fixed(self) -> list[dict[str, Any]]:
        """Per device, what does not change while a stage runs (name, maximum clock): the monitor's start line."""

    def sample(self) -> list[Reading]:
        """Every device, now."""

    def reasons(self) -> dict[str, str]:
        """Each throttle reason this vendor names, with its status (ok, warn, fail): written to the monitor's start
        line, so a run's samples are judged by the table they were taken under."""

    def close(self) -> None: ...


@dataclass
class ContainerAccess:
    """What a container needs to see the devices: Docker SDK arguments, each optional."""

    device_requests: list[dict[str, Any]] = field(default_factory=list)  # docker.types.DeviceRequest keyword args
    devices: list[str] = field(default_factory=list)  # "HOST:CONTAINER:PERMS" device nodes
    volumes: dict[str, str] = field(default_factory=dict)  # host path -> container path, read-only driver mounts
    environment: dict[str, str] = field(default_factory=dict)
    group_add: list[str] = field(default_factory=list)
    note: str = ""  # one line for the plan ("8 GPUs through the NVIDIA container toolkit")


@dataclass
class Runtime:
    """What the case must do before its first rank touches a device, declared by the vendor and recorded in the
    run directory (kit_facts `runtime`): a free change under the rules, shown in every table and submission."""

    imports: list[str] = field(default_factory=list)  # modules imported first, in order ("torch_npu", ...)
    environment: dict[str, str] = field(default_factory=dict)  # set in every rank's environment

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Vendor(Protocol):
    name: str  # lower case, a word: "nvidia"
    title: str  # as people write it: "NVIDIA"
    device_word: str  # "GPU", "NPU", "CPU rank": what the tables call one device
    torch_device: str  # the device type DeepSpeed's accelerator reports there: "cuda", "npu", "xpu", "cpu"
    dist_backend: str  # "nccl", "hccl", "gloo"
    slurm_gres: str | None  # the GRES name Slurm counts these devices under ("gpu", "npu"); None: not scheduled
    runtime: Runtime
    # Settings of the vendor's runtime and collectives that travel from the host's environment into every container
    # (and into run.json), names or prefixes ending in "_": ("NCCL_", "CUDA_LAUNCH_BLOCKING", ...).
    forward_env: tuple[str, ...]

    def probe(self) -> Probe:
        """The devices here, or `available=False` with the reason. Never raises for a missing driver."""

    def sampler(self) -> Sampler | None:
        """A sampler for the monitor, or None when the library cannot be opened (the host is sampled alone)."""

    def host_checks(self, probe: Probe, expected: int, device: str = "") -> list[Check]:
        """check-host's device rows: count against the config's `expected` per node, model (against the config's
        short `device` name), memory, errors, clocks and throttling, links, other processes."""

    def driver_checks(self, probe: Probe) -> list[Check]:
        """The driver and toolkit: present, recent enough for the stacks (env/stacks.toml), each fix in the
        vendor's words."""

    def container_access(self, count: int) -> ContainerAccess:
        """How a container on this host gets `count` devices."""

    def owns(self, device_name: str) -> bool:
        """Whether a device name (kit_facts `device_name`, a config's `device`) is one of this vendor's."""

    # ---- images and containers: `kit build`, check-host's Docker rows, `kit env` (kit/image, kit/checks/docker.py)

    # What the vendor's image variants are named by in reports ("CUDA", "ROCm", "CANN") and the option `kit build`
    # takes a variant by besides --variant ("--cuda"; "" for none); what Probe.toolkit is, for `kit env` ("CUDA
    # (driver)", "ROCm"); the Python distributions it reads its devices through, whose versions `kit env` prints.
    variant_label: str
    variant_option: str
    toolkit_label: str
    libraries: tuple[str, ...]

    def image_variants(self, stack: str) -> list[Any]:
        """The image variants (kit.image.stacks.Variant) of the software stack `stack` that run on this vendor's
        devices, in order of preference: env/stacks.toml's rows with this vendor's name, or a vendor package's own.
        Empty: the stack has no image for these devices yet (`kit build` says so, naming docs/vendors.md)."""

    def choose_variant(self, probe: Probe, stack: str) -> VariantChoice:
        """`kit build --variant auto`: which of `image_variants(stack)` this host's driver runs (NVIDIA: the CUDA
        variants of env/cuda-drivers.toml against the driver), or why none, with the fix."""

    def base_variant(self, image: str) -> str | None:
        """The variant a base image reference is built for, when its name says (NVIDIA: nvidia/cuda:12.1.1-... is
        12.1), so that `kit build --base-image` is refused for the wrong variant; None when the name does not say."""

    def docker_checks(self, info: dict[str, Any], count: int | None, root: str | Path | None = None) -> list[Check]:
        """check-host's Docker rows about these devices, from the engine's `docker info` (`info`): whether a
        container can be given `count` of them (None: the probe could not count them) as `container_access`
        would (a runtime, CDI specs, device nodes, driver mounts present on this host), each fix in the vendor's
        words. `root`: where /dev, /etc and the driver's paths are looked up (None: the vendor's own, "/")."""

    def smoke(self) -> Smoke | None:
        """What `kit check-host --deep` runs in a throwaway container given the devices, and how to read its
        output; None: no devices to hand in (the CPU)."""


@dataclass
class VariantChoice:
    """A vendor's answer to `kit build --variant auto`: the variant, or None with the reason and the fix."""

    variant: str | None  # a Variant's `name`
    reason: str  # why this one ("driver 580.159.04 fully supports CUDA 12.1"), or why none
    warnings: list[str] = field(default_factory=list)  # printed with the plan (a variant run with limits)
    fix: str = ""  # with variant None: what to do


@dataclass
class Smoke:
    """A command that lists the devices a container sees, and how to count them in what it prints."""

    command: list[str]  # ["nvidia-smi", "-L"]: it must be in the --deep image (or mounted by container_access)
    device_line: str  # a regular expression (multi-line) matching once per device; group 1, if any, names it
    fix: str  # what to do when a container does not get the devices (the runtime, the device nodes)

    def seen(self, output: str) -> list[str]:
        """One entry per device the output lists: its name (group 1), else the matched text."""
        out = []
        for m in re.finditer(self.device_line, output, re.M):
            out.append((m.group(1) if m.re.groups else m.group(0)).strip())
        return out

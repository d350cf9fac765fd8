"""The case's one device layer: everything the case asks of the accelerator goes through here, and nothing else in
cases/ touches a device API (tests/case/test_device.py holds the other files to that).

It stands on DeepSpeed's own accelerator abstraction (`deepspeed.accelerator.get_accelerator()`), the object DeepSpeed
itself uses for CUDA (and ROCm, which torch presents as CUDA), NPU, XPU, HPU, MPS, MLU and the CPU, so the case asks
its questions of the same object that DeepSpeed's engine does:

- which device a rank uses (`init(local_rank)`, `Device.torch_device`), and binding the rank to it (`set_device`);
- `synchronize`, `empty_cache`, the RNG (`seed`), the communication backend (`backend`);
- memory: peaks of allocated and reserved bytes and their reset, the device's total, and its use as the vendor's
  management tool counts it (total minus free), for kit_step;
- what the stage ran on, for kit_facts (`facts`), and what the environment probe reports (`stack_facts`).

Which accelerator: `DS_ACCELERATOR` when it is set (a vendor's runtime sets it: Ascend's says "npu"), else "cuda"
when torch sees a CUDA device, else the CPU, which is a device like any other here: DeepSpeed's CPU accelerator
from 0.14.1 on, the case's own under older DeepSpeed releases (compat.py). Before the first device touch, and before
torch is imported where the process has not done so yet, the layer applies the vendor's runtime that the host hands
every rank in `KIT_DEVICE_RUNTIME` (environment variables first, then the imports, in order); kit_facts records it.

Where an accelerator has no answer, the layer's own is written in the method's docstring (a CPU has no device
memory: its figures are the rank's resident memory and the host's RAM, as the case always counted them).
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any

RUNTIME_ENV = "KIT_DEVICE_RUNTIME"
RUNTIME_KEYS = ("vendor", "imports", "environment")
HOST = "cpu"  # DeepSpeed's name for the host's CPU as the device


class DeviceError(RuntimeError):
    """The device or the vendor's runtime cannot serve the case here; the message says what, where, and what to do."""


# ---------------------------------------------------------------------------------------------- the vendor's runtime


@dataclass
class Runtime:
    """A vendor's runtime set-up, as the host hands it to every rank (kit/vendors/base.py `Runtime`, plus the
    vendor's name): environment variables set, then modules imported, before the first device touch."""

    vendor: str
    imports: list[str] = field(default_factory=list)
    environment: dict[str, str] = field(default_factory=dict)

    def facts(self) -> dict[str, Any]:
        """kit_facts `runtime`: what was applied, in the order it was applied."""
        return {"vendor": self.vendor, "imports": list(self.imports), "environment": dict(self.environment)}


def _bad(why: str, raw: str) -> DeviceError:
    shown = raw if len(raw) <= 300 else raw[:300] + "..."
    return DeviceError(f"{RUNTIME_ENV} {why}; it holds {shown!r}. The host writes it from the vendor's runtime "
                       f"declaration as JSON {{\"vendor\": NAME, \"imports\": [MODULE, ...], \"environment\": "
                       f"{{KEY: VALUE}}}}: fix the vendor's `runtime`, or unset {RUNTIME_ENV} to run without one")


def read_runtime(environ: Mapping[str, str] | None = None) -> Runtime | None:
    """The runtime in `KIT_DEVICE_RUNTIME`, or None when it is unset or empty. Refuses what it could not apply
    exactly, unknown keys included: a declared step skipped in silence would make the record in kit_facts untrue."""
    raw = (os.environ if environ is None else environ).get(RUNTIME_ENV, "")
    if not raw.strip():
        return None
    try:
        data = json.loads(raw)
    except ValueError as e:
        raise _bad(f"is not JSON ({e})", raw) from None
    if not isinstance(data, dict):
        raise _bad(f"is a JSON {type(data).__name__}, not an object", raw)
    unknown = sorted(set(data) - set(RUNTIME_KEYS))
    if unknown:
        raise _bad(f"has keys the case does not know how to apply: {', '.join(unknown)} (it knows "
                   f"{', '.join(RUNTIME_KEYS)})", raw)  # fmt: skip
    vendor = data.get("vendor")
    if not isinstance(vendor, str) or not vendor.strip():
        raise _bad("names no vendor (\"vendor\" must be a non-empty string)", raw)
    imports = data.get("imports", [])
    if not isinstance(imports, list) or not all(isinstance(m, str) for m in imports):
        raise _bad("\"imports\" must be a list of module names", raw)
    for m in imports:
        if not m or not all(part.isidentifier() for part in m.split(".")):
            raise _bad(f"\"imports\" names {m!r}, which is not a module name (dotted identifiers)", raw)
    env = data.get("environment", {})
    if not isinstance(env, dict):
        raise _bad("\"environment\" must be an object of strings", raw)
    for k, v in env.items():
        if not k or "=" in k or "\0" in k or not isinstance(v, str) or "\0" in v:
            raise _bad(f"\"environment\" holds {k!r}: {v!r}; names must be non-empty without '=', values strings", raw)
    return Runtime(vendor, list(imports), dict(env))


def apply_runtime(runtime: Runtime | None, environ: MutableMapping[str, str] | None = None) -> None:
    """Set the runtime's environment variables, then import its modules in order. A variable already set to
    another value is replaced, with a line saying so (the record must be what ran). A failed import raises a
    DeviceError naming the vendor, the module and what had been imported before it."""
    if runtime is None:
        return
    env = os.environ if environ is None else environ
    for key, value in runtime.environment.items():
        before = env.get(key)
        if before is not None and before != value:
            print(f"{RUNTIME_ENV} ({runtime.vendor}): {key}={value} replaces {key}={before} from the environment",
                  flush=True)  # fmt: skip
        env[key] = value
    for i, module in enumerate(runtime.imports):
        try:
            importlib.import_module(module)
        except Exception as e:  # noqa: BLE001 - a vendor's plug-in fails in its own ways (ImportError, OSError, ...)
            done = f" (after {', '.join(runtime.imports[:i])})" if i else ""
            raise DeviceError(f"the runtime of vendor {runtime.vendor!r} imports {module!r} before the first device "
                              f"touch{done}, and that import failed: {type(e).__name__}: {e}. Install the vendor's torch "
                              f"plug-in where the ranks run (the image or the --python environment), or fix the vendor's "
                              f"runtime declaration ({RUNTIME_ENV})") from e  # fmt: skip
    if runtime.imports or runtime.environment:
        print(f"{RUNTIME_ENV} ({runtime.vendor}) applied: environment {sorted(runtime.environment)}, imports "
              f"{runtime.imports}", flush=True)  # fmt: skip


# ---------------------------------------------------------------------------------------------- the device


def choose_type(environ: Mapping[str, str] | None = None) -> str:
    """The device type this process will run on, without importing DeepSpeed: `DS_ACCELERATOR` when set (DeepSpeed
    honours it), else "cuda" when torch sees a CUDA (or ROCm) device, else "cpu". Any other accelerator is named by
    DS_ACCELERATOR, which its vendor's runtime sets."""
    asked = (os.environ if environ is None else environ).get("DS_ACCELERATOR", "").strip()
    if asked:
        return asked
    import torch

    return "cuda" if torch.cuda.is_available() else HOST


def _device_module(kind: str) -> Any:
    """torch's module for a device type (torch.cuda, torch.xpu, torch.npu once torch_npu is imported), or None."""
    import torch

    get = getattr(torch, "get_device_module", None)  # torch >= 2.3
    if get is not None:
        try:
            return get(kind)
        except (RuntimeError, ValueError, AttributeError):
            return None
    return getattr(torch, kind, None)


class Device:
    """One process's device, through DeepSpeed's accelerator `accelerator`. Made by `init()`; tests may hand in a
    stand-in accelerator and device module where the real ones cannot exist."""

    def __init__(self, accelerator: Any, runtime: Runtime | None = None, module: Any = None) -> None:
        self.accelerator = accelerator
        self.runtime = runtime
        self.type = str(accelerator.device_name())  # "cuda", "npu", "xpu", "hpu", "mps", "mlu", "cpu"
        self.on_host = self.type == HOST
        self.module = None if self.on_host else (module if module is not None else _device_module(self.type))
        self.index: int | None = None
        self.torch_device: Any = None

    # -- the rank's device
    def bind(self, local_rank: int, local_world: int = 1) -> Any:
        """Bind this process to its device and return it as a torch.device: DeepSpeed's name for the local rank's
        device ("cuda:3", "npu:3"; "hpu" and the CPU take no index), made current with `set_device`. On the CPU a
        rank gets its share of the host's cores instead (every rank on the host shares one device)."""
        import torch

        self.index = local_rank
        self.torch_device = torch.device(self.accelerator.device_name(local_rank))
        self.accelerator.set_device(local_rank)  # the CPU's accelerators do nothing here
        if self.on_host:
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, local_world)))
        return self.torch_device

    @property
    def backend(self) -> str:
        """The torch.distributed backend DeepSpeed uses on this device: nccl (CUDA, ROCm's rccl under that name),
        hccl (NPU, HPU), xccl or ccl (XPU), gloo (the CPU without oneCCL, MPS)."""
        return str(self.accelerator.communication_backend_name())

    def synchronize(self) -> None:
        """Wait for the device's queued work; the CPU's accelerators return at once (nothing is queued)."""
        self.accelerator.synchronize(self.index)

    def empty_cache(self) -> None:
        """Give the caching allocator's free blocks back to the device; nothing on the CPU."""
        self.accelerator.empty_cache()

    def seed(self, seed: int) -> None:
        """Seed the host's generator and every device generator of this type. torch.manual_seed already reaches
        CUDA's (and a registered device's) generators; the accelerator's manual_seed_all covers those it does not
        (the same seed again where it did: the same state). On the CPU torch.manual_seed is the whole of it."""
        import torch

        torch.manual_seed(seed)
        if not self.on_host:
            self.accelerator.manual_seed_all(seed)

    # -- what the case chooses by device
    def allow_tf32(self, allow: bool) -> bool:
        """TF32 matmuls and convolutions (an NVIDIA tensor-core mode, config train.tf32) where the device is CUDA;
        elsewhere nothing is set (other accelerators pick their own matmul precision). Returns whether it was set."""
        if self.type != "cuda":
            return False
        import torch

        torch.backends.cuda.matmul.allow_tf32 = allow
        torch.backends.cudnn.allow_tf32 = allow
        return True

    @property
    def fused_adamw(self) -> bool:
        """torch's fused AdamW on CUDA, as the case always ran it; every other device, the CPU included, keeps
        torch's default (foreach) implementation."""
        return self.type == "cuda"

    def loader_pinning(self) -> dict[str, Any]:
        """DataLoader keyword arguments for page-locked batches: on for a device (copies overlap with compute), off
        on the CPU. A torch without `torch.accelerator` (2.1, the reference's) pins for CUDA unless told the device."""
        if self.on_host:
            return {"pin_memory": False}
        import torch

        if self.type != "cuda" and not hasattr(torch, "accelerator"):
            return {"pin_memory": True, "pin_memory_device": self.type}
        return {"pin_memory": True}

    # -- memory
    def memory_peaks(self) -> tuple[int, int]:
        """(peak allocated, peak reserved) bytes of this process since the start or the last `reset_peaks`, as the
        accelerator's caching allocator counts them. On the CPU both are the rank's peak resident memory
        (getrusage's ru_maxrss, the kernel's high-water mark): DeepSpeed's CPU accelerators only see the resident
        size at the moments they are asked, which misses peaks between two asks."""
        if self.on_host:
            return _peak_rss(), _peak_rss()
        allocated = self.accelerator.max_memory_allocated(self.index)
        reserved = self.accelerator.max_memory_reserved(self.index)
        if reserved is None:  # an accelerator whose torch module lacks the counter (DeepSpeed's CUDA one checks)
            reserved = self.accelerator.max_memory_cached(self.index)
        return int(allocated), int(reserved)

    def reset_peaks(self) -> bool:
        """Start the peaks of `memory_peaks` again from the present use. On the CPU the kernel's high-water mark is
        reset through /proc/self/clear_refs (Linux >= 4.0); returns False where that cannot be done (the peak then
        stays the process's)."""
        self.accelerator.reset_peak_memory_stats(self.index)
        if not self.on_host:
            return True
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # 5: reset the peak resident set size (Documentation/filesystems/proc.rst)
        except OSError:
            return False
        return True

    def memory_total(self) -> int:
        """The device's memory in bytes (CUDA: the device properties' total_memory; HPU: its allocator's limit); on
        the CPU the host's RAM, which every rank on the host shares."""
        return int(self.accelerator.total_memory(self.index))

    def memory_used(self) -> int:
        """Bytes in use on the device by every process, as the vendor's management tool counts them: total minus
        free from the driver (torch.cuda.mem_get_info and its like in the device's torch module). Where the device
        module has no mem_get_info, total minus the accelerator's available_memory (DeepSpeed's CUDA accelerator
        asks NVML; others count only this process's allocations, a lower bound). On the CPU, the rank's peak
        resident memory, as the case always reported it."""
        if self.on_host:
            return _peak_rss()
        info = getattr(self.module, "mem_get_info", None)
        if info is not None:
            free, total = info(self.index)
            return int(total - free)
        return self.memory_total() - int(self.accelerator.available_memory(self.index))

    def memory(self) -> list[int]:
        """kit_step's memory figures in its order: peak allocated, peak reserved, used on the device."""
        return [*self.memory_peaks(), self.memory_used()]

    # -- facts
    def name(self) -> str:
        """The device's model as its torch module names it ("NVIDIA H100 80GB HBM3"); the device type where the
        module cannot say (MPS); "cpu" on the CPU."""
        if self.on_host:
            return HOST
        get = getattr(self.module, "get_device_name", None)
        return str(get(self.index)) if get is not None else self.type

    def facts(self, world: int) -> dict[str, Any]:
        """What the stage ran on, for kit_facts: the device type and model, how many (one per rank: `world`), the
        memory of one, and the vendor's runtime applied (null when none was given)."""
        return {
            "device_type": self.type,
            "device_name": self.name(),
            "device_count": world,
            "device_mem_total_bytes": self.memory_total(),
            "runtime": self.runtime.facts() if self.runtime is not None else None,
        }

    def stack_facts(self) -> dict[str, Any]:
        """The environment probe's `torch` section (environment.json `case.torch`): the keys the host reads
        (cuda_available, cuda_version, devices with name and memory) plus the device layer's choice."""
        import torch

        cuda = bool(torch.cuda.is_available())
        devices = []
        if not self.on_host:
            for i in range(int(self.accelerator.device_count())):
                cap = getattr(self.module, "get_device_capability", None)
                get = getattr(self.module, "get_device_name", None)
                devices.append({
                    "index": i,
                    "name": str(get(i)) if get is not None else self.type,
                    "memory_bytes": int(self.accelerator.total_memory(i)),
                    "capability": ".".join(map(str, cap(i))) if cap is not None else None,
                })  # fmt: skip
        return {
            "cuda_available": cuda,
            "cuda_version": torch.version.cuda,
            "hip_version": getattr(torch.version, "hip", None),
            "cudnn": torch.backends.cudnn.version() if cuda else None,
            "nccl": ".".join(map(str, torch.cuda.nccl.version())) if cuda else None,
            "device_type": self.type,
            # the device runtime torch was built against, in words the host shows as they are (it names no vendor)
            "device_runtime": (f"CUDA {torch.version.cuda}" if torch.version.cuda
                               else f"HIP {torch.version.hip}" if getattr(torch.version, "hip", None) else None),
            "accelerator": type(self.accelerator).__name__,
            "dist_backend": self.backend,
            "devices": devices,
            "cpu_threads": torch.get_num_threads(),
            "runtime": self.runtime.facts() if self.runtime is not None else None,
        }


def _peak_rss() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux


# ---------------------------------------------------------------------------------------------- opening it


_opened: Device | None = None


def init(local_rank: int | None = None, local_world: int = 1) -> Device:
    """This process's device layer: the vendor's runtime applied (KIT_DEVICE_RUNTIME), DeepSpeed imported with an
    accelerator that runs here (compat.py for releases that need help on a CPU), and, given a local rank, the rank
    bound to its device. Opened once per process; later calls return the same layer."""
    global _opened
    if _opened is None:
        runtime = read_runtime()
        apply_runtime(runtime)  # before torch or DeepSpeed first look at the device (or at DS_ACCELERATOR)
        kind = choose_type()
        from . import compat

        # compat's `use_cuda` means "a device accelerator, not the host's CPU": only the CPU may need its help.
        compat.import_deepspeed(use_cuda=kind != HOST)
        from deepspeed.accelerator import get_accelerator

        accelerator = get_accelerator()
        layer = Device(accelerator, runtime)
        if not layer.on_host and not accelerator.is_available():
            raise DeviceError(f"DeepSpeed's {layer.type} accelerator ({type(accelerator).__name__}) finds no device "
                              f"here (DS_ACCELERATOR={os.environ.get('DS_ACCELERATOR', '')!r}): check the driver and "
                              f"the device's visibility to this process, or unset DS_ACCELERATOR to run on "
                              f"{'CUDA' if _cuda_seen() else 'the CPU'}")  # fmt: skip
        _opened = layer
    if local_rank is not None and _opened.index != local_rank:
        if _opened.index is not None:
            raise DeviceError(f"this process is bound to local rank {_opened.index}'s device; it cannot take local "
                              f"rank {local_rank}'s as well")  # fmt: skip
        _opened.bind(local_rank, local_world)
    return _opened


def _cuda_seen() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def current() -> Device | None:
    """The layer `init()` made in this process, or None before."""
    return _opened


def device_type() -> str:
    """The device type of this process: the opened layer's, else the one `init()` would choose (`choose_type`)."""
    return _opened.type if _opened is not None else choose_type()


if __name__ == "__main__":  # a look at what the layer finds here: python -m cases.llava1_5_7b.device
    d = init()
    print(json.dumps({**d.stack_facts(), "facts": d.facts(1)}, indent=1), file=sys.stdout)

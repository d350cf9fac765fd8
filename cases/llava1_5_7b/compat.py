"""DeepSpeed releases older than the kit's current stack, where they need help to run: today, the reference's
DeepSpeed 0.13.1 on a CPU (the tiny config's two gloo ranks under `make test-pins`).

Up to 0.14.0, DeepSpeed's own CPU accelerator cannot be loaded without two Intel packages: with
DS_ACCELERATOR=cpu its selector refuses unless `intel_extension_for_pytorch` imports, and the accelerator module
itself imports `oneccl_bindings_for_pytorch` (the oneCCL torch bindings, published on Intel's own package index,
not on PyPI) on its first line and then asks for the `ccl` backend. 0.14.1 made both optional and falls back to
gloo, which is what the current stack (DeepSpeed 0.19.8) uses on a CPU.

So on a CPU with such a DeepSpeed, and unless both Intel packages are there (then DeepSpeed's own accelerator is
used as it is), `import_deepspeed` imports DeepSpeed with its default accelerator object (the CUDA one, which
touches no GPU when it is made), then installs `HostCPUAccelerator` through DeepSpeed's public `set_accelerator`
before any engine exists: a CPU accelerator written here that behaves as DeepSpeed's CPU accelerator does from
0.14.1 on with gloo (synchronized device, RSS as memory, no streams, fp32 and bf16). No file of DeepSpeed is
changed. docs/containers.md records what was tried and why this is the way.
"""

from __future__ import annotations

import importlib.util
import os
from importlib import metadata
from typing import Any

# The first DeepSpeed whose CPU accelerator needs neither intel_extension_for_pytorch nor the oneCCL bindings
# (read from the 0.14.0 and 0.14.1 sources: accelerator/real_accelerator.py and accelerator/cpu_accelerator.py).
OWN_CPU_ACCELERATOR_FROM = (0, 14, 1)
INTEL_PACKAGES = ("intel_extension_for_pytorch", "oneccl_bindings_for_pytorch")


def _release(version: str) -> tuple[int, ...]:
    out = []
    for part in version.split("+")[0].split(".")[:3]:
        digits = "".join(ch for ch in part if ch.isdigit())
        out.append(int(digits or 0))
    return tuple(out)


def needs_host_accelerator(use_cuda: bool, deepspeed_version: str | None = None) -> bool:
    """Whether DeepSpeed's own accelerator cannot serve this process: a CPU run, a DeepSpeed before 0.14.1, and
    the two Intel packages its CPU accelerator imports not both installed."""
    if use_cuda:
        return False
    version = deepspeed_version or metadata.version("deepspeed")
    if _release(version) >= OWN_CPU_ACCELERATOR_FROM:
        return False
    return not all(importlib.util.find_spec(name) is not None for name in INTEL_PACKAGES)


def import_deepspeed(use_cuda: bool) -> Any:
    """`import deepspeed`, with an accelerator that runs here (see the module's docstring); returns the module."""
    if not needs_host_accelerator(use_cuda):
        if not use_cuda:
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
        import deepspeed

        return deepspeed
    # DS_ACCELERATOR=cpu would make the import itself fail (the selector runs while DeepSpeed's modules load);
    # "cuda" only names the object made at import, replaced below before anything uses a device.
    asked = os.environ.get("DS_ACCELERATOR")
    os.environ["DS_ACCELERATOR"] = "cuda"
    try:
        import deepspeed
        from deepspeed.accelerator import set_accelerator
    finally:
        if asked is None:
            os.environ.pop("DS_ACCELERATOR", None)
        else:
            os.environ["DS_ACCELERATOR"] = asked
    set_accelerator(host_cpu_accelerator())
    print(f"DeepSpeed {deepspeed.__version__} on a CPU without intel_extension_for_pytorch and the oneCCL bindings: "
          "using the case's CPU accelerator with gloo (cases/llava1_5_7b/compat.py)", flush=True)
    return deepspeed


# The first DeepSpeed whose ZeRO stages no longer take an optimizer step at initialization (deepspeedai/DeepSpeed#5104,
# "Remove optimizer step on initialization"; read from the 0.13.1 and 0.13.2 sources of runtime/zero/stage_1_and_2.py
# and stage3.py). 0.13.1 calls the optimizer's step() once on zero gradients to create its states: the moments stay
# zero and the parameters unchanged, but Adam's step count becomes 1, so every later update uses the bias correction
# of one step more (the first real one that of step 2) than under 0.13.2 and later, the current stack included.
NO_INIT_STEP_FROM = (0, 13, 2)
UNDO_INIT_STEP_ENV = "KIT_UNDO_ZERO_INIT_STEP"


def undo_zero_init_step(optimizer: Any, deepspeed_version: str | None = None) -> int:
    """With KIT_UNDO_ZERO_INIT_STEP=1 and a DeepSpeed before 0.13.2: set the step count that ZeRO's initialization
    step left in the optimizer's states back to 0, so that the updates are those of DeepSpeed >= 0.13.2. Returns how
    many states were reset (0 when the variable is unset or the DeepSpeed takes no such step).

    For comparing the reference stack with the current one step for step (tests/pins); a run that stands for the
    reference leaves it unset, since the reference's DeepSpeed 0.13.1 took that step. Refuses a state that is not
    what the initialization step leaves (a step count of 1, zero moments) rather than change a trained one.
    """
    if os.environ.get(UNDO_INIT_STEP_ENV, "") in ("", "0"):
        return 0
    import torch

    version = deepspeed_version or metadata.version("deepspeed")
    if _release(version) >= NO_INIT_STEP_FROM:
        print(f"{UNDO_INIT_STEP_ENV}: DeepSpeed {version} takes no optimizer step at ZeRO's initialization; "
              "nothing to undo", flush=True)  # fmt: skip
        return 0
    base = getattr(optimizer, "optimizer", None)
    states = list(getattr(base, "state", {}).values())
    if not states:
        raise RuntimeError(f"{UNDO_INIT_STEP_ENV}=1: {type(optimizer).__name__} holds no optimizer states to reset "
                           "(a ZeRO stage of DeepSpeed < 0.13.2 creates them at initialization); unset it")  # fmt: skip
    for state in states:
        step = float(state.get("step", -1))
        moments = [state[k] for k in ("exp_avg", "exp_avg_sq") if k in state]
        if step != 1.0 or any(bool(torch.count_nonzero(m)) for m in moments):
            raise RuntimeError(f"{UNDO_INIT_STEP_ENV}=1: an optimizer state has step {step:g} and non-zero moments "
                               f"{[bool(torch.count_nonzero(m)) for m in moments]}, not what ZeRO's initialization "
                               "step leaves (step 1, zero moments); unset it")  # fmt: skip
        state["step"] = torch.zeros_like(state["step"]) if torch.is_tensor(state["step"]) else 0
    print(f"{UNDO_INIT_STEP_ENV}=1: reset the step count of {len(states)} optimizer state(s) from 1 to 0 (DeepSpeed "
          f"{version}'s initialization step undone; cases/llava1_5_7b/compat.py)", flush=True)
    return len(states)


# The first torch whose gloo backend has all_gather_into_tensor and reduce_scatter_tensor (pytorch/pytorch#112144,
# in 2.2.0: an all-reduce per call, then each rank's slice). torch 2.1.2's gloo refuses both ("no support for
# _allgather_base in Gloo process group"), and so does the list form of reduce_scatter.
GLOO_TENSOR_COLLECTIVES_FROM = (2, 2, 0)


def init_distributed(deepspeed: Any, backend: str) -> None:
    """`deepspeed.init_distributed(dist_backend=backend)`, then, on gloo with a torch before 2.2, the two tensor
    collectives that ZeRO needs and that gloo lacks there, made of the ones it has (see `GlooTensorCollectives`).

    DeepSpeed chooses `all_gather_into_tensor` and `reduce_scatter_tensor` by whether torch.distributed has the
    function, not by whether the backend implements it: it has both on torch 2.1.2, so ZeRO-2's parameter all-gather
    and ZeRO-3's gradient reduce-scatter fail on gloo at the first optimizer step. The two functions are handed to
    the communication object DeepSpeed made (`deepspeed.comm.comm.cdb`), whose `all_gather_function` and
    `reduce_scatter_function` are exactly the slots it picked them into.
    """
    import torch

    deepspeed.init_distributed(dist_backend=backend)
    if backend != "gloo" or _release(torch.__version__) >= GLOO_TENSOR_COLLECTIVES_FROM:
        return
    from deepspeed.comm import comm as ds_comm

    cdb = ds_comm.cdb
    for slot in ("all_gather_function", "reduce_scatter_function"):
        if not hasattr(cdb, slot):
            raise RuntimeError(f"DeepSpeed {deepspeed.__version__}'s communication object {type(cdb).__name__} has no "
                               f"{slot}: cases/llava1_5_7b/compat.py was written for 0.13.x; a gloo run on torch "
                               f"{torch.__version__} needs a torch >= 2.2 or a DeepSpeed the kit knows")  # fmt: skip
    cdb.all_gather_function = GlooTensorCollectives.all_gather_into_tensor
    cdb.reduce_scatter_function = GlooTensorCollectives.reduce_scatter_tensor
    print(f"torch {torch.__version__}'s gloo lacks all_gather_into_tensor and reduce_scatter_tensor: DeepSpeed gets "
          "them made of all_gather and all_reduce (cases/llava1_5_7b/compat.py)", flush=True)


class GlooTensorCollectives:
    """all_gather_into_tensor and reduce_scatter_tensor on a gloo group of torch < 2.2, with the call signatures of
    torch.distributed's. The all-gather writes each rank's part straight into its slice of the output (gloo's list
    all_gather copies into the given tensors); the reduce-scatter all-reduces a copy of the input and keeps this
    rank's slice, as torch 2.2's gloo does itself, so every element is the same sum of the same operands."""

    @staticmethod
    def all_gather_into_tensor(output_tensor: Any, input_tensor: Any, group: Any = None, async_op: bool = False) -> Any:
        import torch.distributed as dist

        world = dist.get_world_size(group)
        if output_tensor.numel() != world * input_tensor.numel() or not output_tensor.is_contiguous():
            raise ValueError(f"all_gather_into_tensor: output of {output_tensor.numel()} elements for {world} ranks "
                             f"of {input_tensor.numel()}, contiguous={output_tensor.is_contiguous()}")  # fmt: skip
        parts = list(output_tensor.view(world, -1).unbind(0))
        return dist.all_gather(parts, input_tensor.contiguous().view(-1), group=group, async_op=async_op)

    @staticmethod
    def reduce_scatter_tensor(output_tensor: Any, input_tensor: Any, op: Any = None, group: Any = None,
                              async_op: bool = False) -> Any:  # fmt: skip
        import torch.distributed as dist

        world, rank = dist.get_world_size(group), dist.get_rank(group)
        if input_tensor.numel() != world * output_tensor.numel():
            raise ValueError(f"reduce_scatter_tensor: input of {input_tensor.numel()} elements for {world} ranks of "
                             f"{output_tensor.numel()}")  # fmt: skip
        summed = input_tensor.detach().clone().contiguous()
        work = dist.all_reduce(summed, op=dist.ReduceOp.SUM if op is None else op, group=group, async_op=async_op)

        def keep_mine() -> None:
            output_tensor.copy_(summed.view(world, -1)[rank].view_as(output_tensor))

        if not async_op:
            keep_mine()
            return None
        return _ThenWork(work, keep_mine)


class _ThenWork:
    """An asynchronous collective's handle that runs a last local step once the collective is done."""

    def __init__(self, work: Any, then: Any) -> None:
        self._work, self._then, self._done = work, then, False

    def wait(self, timeout: Any = None) -> bool:
        self._work.wait()
        if not self._done:
            self._then()
            self._done = True
        return True

    def is_completed(self) -> bool:
        return self._done


def host_cpu_accelerator() -> Any:
    """An instance of the case's CPU accelerator (a subclass of the installed DeepSpeed's abstract accelerator)."""
    import psutil
    import torch
    from deepspeed.accelerator.abstract_accelerator import DeepSpeedAccelerator

    class HostCPUAccelerator(DeepSpeedAccelerator):
        """The host's CPU as DeepSpeed's one device kind: gloo, host memory, no streams or graphs."""

        def __init__(self) -> None:
            super().__init__()
            self._name = "cpu"
            self._communication_backend_name = "gloo"
            self._peak = psutil.Process().memory_info().rss

        # -- device: one per rank, all of them the host
        def is_synchronized_device(self) -> bool:
            return True  # no asynchronous streams: ZeRO takes its synchronous paths, as on DeepSpeed's CPU accelerator

        def device_name(self, device_index: int | None = None) -> str:
            return "cpu"

        def device(self, device_index: int | None = None) -> None:
            return None

        def set_device(self, device_index: int) -> None:
            return None

        def current_device(self) -> int:
            return int(os.environ.get("LOCAL_RANK", 0))

        def current_device_name(self) -> str:
            return "cpu"

        def device_count(self) -> int:
            return int(os.environ.get("LOCAL_WORLD_SIZE") or os.environ.get("LOCAL_SIZE") or 1)

        def synchronize(self, device_index: int | None = None) -> None:
            return None

        # -- random numbers: the CPU generator
        def random(self) -> Any:
            return torch.random

        def set_rng_state(self, new_state: Any, device_index: int | None = None) -> None:
            torch.set_rng_state(new_state)

        def get_rng_state(self, device_index: int | None = None) -> Any:
            return torch.get_rng_state()

        def manual_seed(self, seed: int) -> Any:
            return torch.manual_seed(seed)

        def manual_seed_all(self, seed: int) -> Any:
            return torch.manual_seed(seed)

        def initial_seed(self, seed: int | None = None) -> int:
            return torch.initial_seed()

        def default_generator(self, device_index: int) -> Any:
            return torch.default_generator

        # -- streams, events and graphs: none on a CPU
        @property
        def Stream(self) -> None:  # noqa: N802 - DeepSpeed's name
            return None

        def stream(self, stream: Any) -> Any:
            from deepspeed.runtime.utils import noop_context

            return noop_context()

        def current_stream(self, device_index: int | None = None) -> None:
            return None

        def default_stream(self, device_index: int | None = None) -> None:
            return None

        @property
        def Event(self) -> None:  # noqa: N802 - DeepSpeed's name
            return None

        def create_graph(self) -> None:
            return None

        def capture_to_graph(self, graph: Any, pool: Any = None, stream: Any = None) -> Any:
            from deepspeed.runtime.utils import noop_context

            return noop_context()

        def replay_graph(self, graph: Any) -> None:
            return None

        # -- memory: the process's resident set (what a CPU rank holds), its peak since the last reset
        def _rss(self) -> int:
            rss = psutil.Process().memory_info().rss
            self._peak = max(self._peak, rss)
            return rss

        def _reset(self) -> None:
            self._peak = psutil.Process().memory_info().rss

        def empty_cache(self) -> None:
            return None

        def memory_allocated(self, device_index: int | None = None) -> int:
            return self._rss()

        def max_memory_allocated(self, device_index: int | None = None) -> int:
            self._rss()
            return self._peak

        def reset_max_memory_allocated(self, device_index: int | None = None) -> None:
            self._reset()

        def memory_cached(self, device_index: int | None = None) -> int:
            return self._rss()

        def max_memory_cached(self, device_index: int | None = None) -> int:
            self._rss()
            return self._peak

        def reset_max_memory_cached(self, device_index: int | None = None) -> None:
            self._reset()

        def memory_reserved(self, device_index: int | None = None) -> int:
            return self._rss()

        def max_memory_reserved(self, device_index: int | None = None) -> int:
            self._rss()
            return self._peak

        def memory_stats(self, device_index: int | None = None) -> dict:
            now = self._rss()
            return {"allocated_bytes.all.current": now, "allocated_bytes.all.peak": self._peak}

        def reset_peak_memory_stats(self, device_index: int | None = None) -> None:
            self._reset()

        def total_memory(self, device_index: int | None = None) -> int:
            return psutil.virtual_memory().total

        def available_memory(self, device_index: int | None = None) -> int:
            return psutil.virtual_memory().available

        # -- data types and the rest
        def is_bf16_supported(self) -> bool:
            return True

        def is_fp16_supported(self) -> bool:
            return False

        def supported_dtypes(self) -> list:
            return [torch.float32, torch.bfloat16]

        def amp(self) -> Any:
            return torch.cpu.amp

        def is_available(self) -> bool:
            return True

        def range_push(self, msg: str, *args: Any) -> None:
            return None

        def range_pop(self, *args: Any) -> None:
            return None

        def lazy_call(self, callback: Any) -> Any:
            return callback()

        def communication_backend_name(self) -> str:
            return self._communication_backend_name

        def is_triton_supported(self) -> bool:
            return False

        @property
        def BFloat16Tensor(self) -> Any:  # noqa: N802 - DeepSpeed's name
            return torch.BFloat16Tensor

        @property
        def ByteTensor(self) -> Any:  # noqa: N802
            return torch.ByteTensor

        @property
        def DoubleTensor(self) -> Any:  # noqa: N802
            return torch.DoubleTensor

        @property
        def FloatTensor(self) -> Any:  # noqa: N802
            return torch.FloatTensor

        @property
        def HalfTensor(self) -> Any:  # noqa: N802
            return torch.HalfTensor

        @property
        def IntTensor(self) -> Any:  # noqa: N802
            return torch.IntTensor

        @property
        def LongTensor(self) -> Any:  # noqa: N802
            return torch.LongTensor

        def pin_memory(self, tensor: Any, *args: Any, **kwargs: Any) -> Any:
            return tensor  # host memory is the device's: nothing to page-lock for a copy

        def is_pinned(self, tensor: Any) -> bool:
            return tensor.is_pinned()

        def on_accelerator(self, tensor: Any) -> bool:
            return tensor.device.type == "cpu"

        # -- op builders: DeepSpeed's CPU ones (CPU Adam, fused Adam), JIT-built when an optimizer asks for them
        def op_builder_dir(self) -> str:
            return "deepspeed.ops.op_builder.cpu"

        def get_op_builder(self, class_name: str) -> Any:
            from deepspeed.ops.op_builder import cpu as builders

            return getattr(builders, class_name, builders.NotImplementedBuilder)

        def create_op_builder(self, class_name: str) -> Any:
            builder = self.get_op_builder(class_name)
            return None if builder is None else builder()

        def build_extension(self) -> Any:
            from torch.utils.cpp_extension import BuildExtension

            return BuildExtension

        def export_envs(self) -> list[str]:
            return []

    return HostCPUAccelerator()

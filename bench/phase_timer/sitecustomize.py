"""Per-step phase times of the DeepSpeed engine, for bench/run.py --phase-times (never imported otherwise).

With this directory first on PYTHONPATH and KIT_PHASE_TIMES=1, Python imports this module at start-up. It wraps
`DeepSpeedEngine.forward`, `.backward` and `.step` as soon as `deepspeed.runtime.engine` is imported, and times
each call with CUDA events (and the host clock). At every optimizer step (the gradient accumulation boundary)
rank 0's log gets one line:

    KIT_PHASE_TIMES forward_gpu=3.550 backward_gpu=7.893 optimizer_gpu=0.188 forward_cpu=... (seconds per step)

`step` calls between boundaries are counted as `step`, the boundary's as `optimizer`. The synchronisation at
each boundary costs about 1% of a 7B finetune step on an H200.
"""

from __future__ import annotations

import os
import sys
import time


def _instrument(engine_cls) -> None:
    import torch

    cuda = torch.cuda.is_available()
    totals: dict[str, float] = {}
    pending: list[tuple[str, object, object]] = []

    def wrap(name: str) -> None:
        original = getattr(engine_cls, name)

        def timed(self, *args, **kwargs):
            phase = "optimizer" if name == "step" and self.is_gradient_accumulation_boundary() else name
            if cuda:
                start = torch.cuda.Event(enable_timing=True)
                start.record()
            t0 = time.perf_counter()
            out = original(self, *args, **kwargs)
            totals[f"{phase}_cpu"] = totals.get(f"{phase}_cpu", 0.0) + time.perf_counter() - t0
            if cuda:
                end = torch.cuda.Event(enable_timing=True)
                end.record()
                pending.append((phase, start, end))
            if phase == "optimizer":
                if cuda:
                    torch.cuda.synchronize()
                    for p, a, b in pending:
                        totals[f"{p}_gpu"] = totals.get(f"{p}_gpu", 0.0) + a.elapsed_time(b) / 1e3
                    pending.clear()
                print("KIT_PHASE_TIMES " + " ".join(f"{k}={v:.3f}" for k, v in sorted(totals.items())), flush=True)
                totals.clear()
            return out

        setattr(engine_cls, name, timed)

    for n in ("forward", "backward", "step"):
        wrap(n)


if os.environ.get("KIT_PHASE_TIMES") == "1":
    import importlib.abc
    import importlib.util

    class _Finder(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name != "deepspeed.runtime.engine":
                return None
            sys.meta_path.remove(self)
            spec = importlib.util.find_spec(name)
            execute = spec.loader.exec_module

            def exec_module(module):
                execute(module)
                _instrument(module.DeepSpeedEngine)

            spec.loader.exec_module = exec_module
            return spec

    sys.meta_path.insert(0, _Finder())

"""The run-directory contract as this case writes it (docs/run-directory.md): events, a rank's log, its times."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, NoReturn


class Events:
    """`:::MLLOG` lines appended to <stage>/events.log by rank 0; other ranks write nothing."""

    def __init__(self, path: Path, enabled: bool) -> None:
        self.path, self.enabled = path, enabled

    def __call__(self, key: str, value: Any = None, kind: str = "POINT_IN_TIME", time_ms: float | None = None,
                 **metadata: Any) -> None:  # fmt: skip
        if not self.enabled:
            return
        event = {"namespace": "", "time_ms": time.time() * 1000.0 if time_ms is None else time_ms,
                 "event_type": kind, "key": key, "value": value, "metadata": metadata}  # fmt: skip
        with open(self.path, "a") as f:
            f.write(":::MLLOG " + json.dumps(event) + "\n")


def rank_log(stage_dir: Path, rank: int, world: int) -> None:
    """This rank's stdout and stderr into <stage>/logs/rank<k>.log, its first line stamped."""
    log = stage_dir / "logs" / f"rank{rank}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    sys.stdout = os.fdopen(1, "w", buffering=1, closefd=False)
    sys.stderr = os.fdopen(2, "w", buffering=1, closefd=False)
    print(f"rank {rank}/{world} of the toy case, pid {os.getpid()} (started at {time.time():.3f})", flush=True)


def ended(rank: int) -> None:
    print(f"rank {rank} done (ended at {time.time():.3f})", flush=True)


def leave(code: int) -> NoReturn:
    """End the rank once its work is written, without the interpreter's teardown. Under torch 2.13 (CPU) a rank that
    ran backward passes and gloo collectives now and then aborts while the interpreter shuts down, after
    destroy_process_group ("terminate called without an active exception", SIGABRT), and torchrun then reports the
    stage failed although every file was written. Reproduced without the kit or this case (two ranks under torchrun,
    twelve backward + all_reduce steps, destroy_process_group, a normal exit): 2 aborts in 36 runs; none in 24 that
    ended with os._exit. The toy is here to test the kit, not torch's teardown."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def device_facts(world: int) -> dict[str, Any]:
    import resource

    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {"device_type": "cpu", "device_name": "cpu", "device_count": world, "device_mem_total_bytes": total,
            "rss_peak_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}  # fmt: skip

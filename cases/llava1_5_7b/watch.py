"""Guards every rank starts before its heavy work: it never outlives the kit process that launched it, and it
writes its Python stacks when the host asks (a hung stage).

- Parent death: on Linux the rank asks the kernel for SIGTERM when its parent (torchrun) dies, whatever killed it.
- Heartbeat: the kit process rewrites the file named by KIT_HEARTBEAT every few seconds (on the container path the
  results directory is mounted at the same path). When its content has not changed for KIT_HEARTBEAT_TIMEOUT
  seconds (default 60, on this host's clock) the kit process is gone, and the rank stops itself: SIGTERM, then
  exit 143.
- Stacks: when `<stage dir>/.dump-stacks` appears (or is touched again), every thread's stack is written to
  `<stage dir>/stacks-rank<k>.txt` with faulthandler, from a thread of its own, so a rank blocked in a collective
  (which releases the GIL) still answers.

Standard library only.
"""

from __future__ import annotations

import ctypes
import faulthandler
import os
import signal
import sys
import threading
import time
from pathlib import Path

PR_SET_PDEATHSIG = 1
DUMP_REQUEST = ".dump-stacks"


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Ask the kernel to send `sig` when the parent process dies (Linux); a no-op elsewhere."""
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent or parent == 1:  # the parent died before the request took effect
        os.kill(os.getpid(), sig)


def _stop_self(reason: str) -> None:
    print(f"kit watch: {reason}; stopping this rank", file=sys.stderr, flush=True)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(10)
    os._exit(143)


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _loop(stage_dir: Path, rank: int, heartbeat: Path | None, timeout: float, poll: float) -> None:
    request = stage_dir / DUMP_REQUEST
    dumped_at = 0.0
    seen, changed = (_read(heartbeat) if heartbeat else None), time.monotonic()
    while True:
        try:
            mtime = request.stat().st_mtime
        except OSError:
            mtime = 0.0
        if mtime > dumped_at:
            dumped_at = mtime
            out = stage_dir / f"stacks-rank{rank}.txt"
            with open(out, "a") as f:
                f.write(f"--- rank {rank}, pid {os.getpid()}, {time.strftime('%Y-%m-%dT%H:%M:%S')} ---\n")
                f.flush()
                faulthandler.dump_traceback(file=f, all_threads=True)
        if heartbeat is not None:
            # The content changes at every beat; its age is measured on this host's own clock.
            now_seen = _read(heartbeat)
            if now_seen != seen:
                seen, changed = now_seen, time.monotonic()
            age = time.monotonic() - changed
            if age > timeout:
                _stop_self(f"the kit process that launched this stage is gone (no heartbeat in {heartbeat} for "
                           f"{age:.0f} s, limit {timeout:.0f} s)")  # fmt: skip
        time.sleep(poll)


def start(stage_dir: Path, rank: int, poll: float = 1.0) -> threading.Thread:
    """Die with the parent, and watch the heartbeat and the dump request from a daemon thread."""
    die_with_parent()
    beat = os.environ.get("KIT_HEARTBEAT")
    timeout = float(os.environ.get("KIT_HEARTBEAT_TIMEOUT", "60"))
    t = threading.Thread(
        target=_loop, args=(Path(stage_dir), rank, Path(beat) if beat else None, timeout, poll),
        name="kit-watch", daemon=True,
    )  # fmt: skip
    t.start()
    return t

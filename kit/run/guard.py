"""What keeps one run directory to one live kit process, and that process's ranks tied to it.

- `RunLock`: an advisory lock (flock) on `<run>/.kit.lock` for the whole life of `kit run` / `kit resume`. The OS
  releases it when the process dies however it dies, so a lock left by a dead process never blocks; the file
  names the holder (pid, host, command, since when) for the refusal.
- `Stop` / `stop_on_signals`: SIGTERM and SIGHUP (a scheduler's time limit, `timeout`, `docker stop`, a closed
  terminal) are handled as Ctrl-C is: they raise `Stop`, a KeyboardInterrupt, in the main thread, so every
  launcher's interrupt path (stop every rank, remove the containers, mark the run interrupted) runs for them too.
- `Heartbeat`: a file the kit process touches every few seconds while stages run; ranks (cases/*/watch.py) stop
  themselves when it goes stale, so they never outlive a kit process killed with SIGKILL, in containers too.
- `child_setup`: for the launcher's Popen: a session of its own, and SIGTERM when the kit process dies.
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import os
import re
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from kit.run.dir import RunDirError

LOCK_NAME = ".kit.lock"
HEARTBEAT_NAME = ".kit-alive"
HEARTBEAT_EVERY_S = 5.0
PR_SET_PDEATHSIG = 1


class RunBusy(RunDirError):
    """Another live kit process holds the run directory."""


def read_holder(run: Path) -> dict | None:
    try:
        data = json.loads((run / LOCK_NAME).read_text() or "null")
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def held(run: Path) -> bool:
    """Whether a live process holds the run's lock (a probe: takes and drops it when free)."""
    path = run / LOCK_NAME
    if not path.exists():
        return False
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


class RunLock:
    def __init__(self, run: Path) -> None:
        self.run = run
        self.fd: int | None = None

    def __enter__(self) -> RunLock:
        path = self.run / LOCK_NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            h = read_holder(self.run) or {}
            raise RunBusy(
                f"{self.run} is in use by kit (pid {h.get('pid', '?')} on {h.get('host', '?')}, "
                f"`{h.get('command', '?')}`, since {h.get('since', '?')}); wait for it to end, or stop it "
                f"(kill {h.get('pid', 'PID')} on {h.get('host', 'that host')}) and resume"
            ) from None
        os.ftruncate(fd, 0)
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv[1:4]) or "kit",
                  "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}  # fmt: skip
        os.write(fd, json.dumps(holder).encode())
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing releases the lock; the file stays (its holder is history)
            self.fd = None


class Stop(KeyboardInterrupt):
    """SIGTERM or SIGHUP, handled as Ctrl-C; `signum` says which (the exit code is 128 + signum)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_stop(signum: int, _frame) -> None:
    if signum == signal.SIGHUP:
        # The terminal is gone: writing to it would fail (EIO); the run's own files keep the record.
        devnull = os.open(os.devnull, os.O_WRONLY)
        for fd in (1, 2):
            try:
                os.dup2(devnull, fd)
            except OSError:
                pass
    raise Stop(signum)


@contextmanager
def stop_on_signals() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.signal(s, _raise_stop) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def exit_code(exc: BaseException, default: int) -> int:
    return 128 + exc.signum if isinstance(exc, Stop) else default


class Heartbeat:
    """Touch `<run>/.kit-alive` every few seconds from a daemon thread while stages run."""

    def __init__(self, run: Path, every: float = HEARTBEAT_EVERY_S) -> None:
        self.path = run / HEARTBEAT_NAME
        self.every = every
        self.count = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def beat(self) -> None:
        """A new count each time: readers watch the content change (mtimes lag on NFS, clocks differ across hosts)."""
        self.count += 1
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(f"{self.count} {os.getpid()} {time.time():.3f}\n")
            os.replace(tmp, self.path)
        except OSError:
            pass  # a full or read-only disk: the ranks' own failures will say so

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            self.beat()

    def __enter__(self) -> Heartbeat:
        self.beat()
        self._thread = threading.Thread(target=self._loop, name="kit-heartbeat", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()


def _load_prctl():
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _load_prctl()  # looked up once here: the forked child only calls it (preexec_fn runs between fork and exec)


def child_setup() -> None:
    """preexec_fn of a launcher: its own session (Ctrl-C reaches kit only), SIGTERM when kit dies (Linux)."""
    parent = os.getppid()
    os.setsid()
    if _PRCTL is not None:
        _PRCTL(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGTERM)


# ---- hangs ----

HANG_FLOOR_S = 600.0  # covers a 7B checkpoint save between two steps
HANG_FACTOR = 20.0  # times the median step time
STACK_WAIT_S = 10.0
DUMP_REQUEST = ".dump-stacks"  # cases/*/watch.py answers it with stacks-rank<k>.txt
PROGRESS_KEYS = ("init_stop", "run_start", "kit_step", "kit_eval_batch", "kit_checkpoint", "kit_save", "run_stop")


class StageHung(Exception):
    """No step for longer than the watchdog's limit; the message says since when and what the limit was."""


class HangWatch:
    """Fed the stage's events; `check()` raises StageHung when no progress arrived for `limit()` seconds.

    Armed from the first step (start-up has no step rhythm to judge by); the limit is `timeout` when given, else
    the larger of HANG_FLOOR_S and HANG_FACTOR x the median step time seen so far.
    """

    def __init__(self, timeout: float = 0.0, clock=time.monotonic) -> None:
        self.timeout = timeout
        self.clock = clock
        self.last = clock()
        self.last_step: int | None = None
        self.step_times: list[float] = []
        self.armed = False
        self.done = False

    def feed(self, events: list[dict]) -> None:
        for e in events:
            key = e.get("key")
            if key not in PROGRESS_KEYS:
                continue
            self.last = self.clock()
            value = e.get("value") if isinstance(e.get("value"), dict) else {}
            if key in ("kit_step", "kit_eval_batch"):
                self.armed = True
                self.last_step = value.get("step", self.last_step)
                t = value.get("step_time_s", value.get("seconds"))
                if isinstance(t, (int, float)) and t > 0:
                    self.step_times.append(float(t))
            elif key == "run_stop":
                self.done = True

    def limit(self) -> float:
        if self.timeout > 0:
            return self.timeout
        times = sorted(self.step_times)
        median = times[len(times) // 2] if times else 0.0
        return max(HANG_FLOOR_S, HANG_FACTOR * median)

    def check(self) -> None:
        if not self.armed or self.done:
            return
        quiet = self.clock() - self.last
        if quiet > self.limit():
            how = "--hang-timeout" if self.timeout > 0 else (
                f"the larger of {HANG_FLOOR_S:.0f} s and {HANG_FACTOR:.0f} x the median step time; --hang-timeout sets it")
            raise StageHung(f"no progress for {quiet:.0f} s after step {self.last_step} (limit {self.limit():.0f} s: {how})")


def _main_thread_frames(text: str) -> list[str]:
    """The frames of the dump's main thread: the block that is not the watch thread's ('Current thread')."""
    blocks = re.split(r"\n(?=(?:Current thread|Thread) 0x)", text)
    others = [b for b in blocks if b.strip() and not b.lstrip().startswith("Current thread")]
    return (others[-1] if others else "").splitlines()


def collect_stacks(stage_dir: Path, world: int, wait: float = STACK_WAIT_S) -> tuple[list[Path], list[int], list[int]]:
    """Ask every rank for its stacks, wait for them: (files, ranks in a collective, ranks elsewhere)."""
    (stage_dir / DUMP_REQUEST).write_text(str(time.time()))
    deadline = time.monotonic() + wait
    files = [stage_dir / f"stacks-rank{k}.txt" for k in range(world)]
    while time.monotonic() < deadline and not all(f.is_file() and f.stat().st_size > 0 for f in files):
        time.sleep(0.5)
    time.sleep(0.5)  # let the last dump finish writing
    (stage_dir / DUMP_REQUEST).unlink(missing_ok=True)
    waiting, elsewhere = [], []
    for k, f in enumerate(files):
        if not f.is_file():
            continue
        frames = _main_thread_frames(f.read_text(errors="replace"))
        collective = any(("torch/distributed" in ln or "deepspeed/comm" in ln) for ln in frames)
        (waiting if collective else elsewhere).append(k)
    return [f for f in files if f.is_file()], waiting, elsewhere


def hang_message(stage: str, why: str, stage_dir: Path, files: list[Path], waiting: list[int], elsewhere: list[int],
                 world: int) -> str:  # fmt: skip
    missing = [k for k in range(world) if not (stage_dir / f"stacks-rank{k}.txt").is_file()]
    if elsewhere:
        who = f"rank(s) {', '.join(map(str, elsewhere))} hung outside any collective"
        if waiting:
            who += f"; rank(s) {', '.join(map(str, waiting))} wait for them in a collective"
    elif waiting:
        who = "every rank that answered waits in a collective (a lost peer, or a stuck collective)"
    else:
        who = "no rank answered the stack request"
    if missing:
        who += f"; rank(s) {', '.join(map(str, missing))} did not answer (dead, or stuck outside Python)"
    shown = ", ".join(str(f) for f in files) or "none"
    return (f"stage {stage} hung: {why}. {who}. Stacks: {shown}. Every rank was stopped; the run is marked failed "
            f"and `kit resume` continues it from its last checkpoint")

"""Launching a stage's ranks and watching them: the native path (torchrun on this host).

The container path plugs into the same `Launcher` interface (kit/containers.py, later).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .cases import Case
from .guard import HangWatch, StageHung, child_setup, collect_stacks, hang_message
from .monitor import start_stage_monitor
from .progress import EventTail, StageProgress, wait_with_progress

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_ENVIRONMENT, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


@dataclass
class StageResult:
    stage: str
    state: str  # finished | failed | interrupted
    returncode: int
    failures: list[dict] = field(default_factory=list)
    message: str = ""


def free_port() -> int:
    """A TCP port free on this host now, for the rendezvous (checked by binding it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_failures(stage_dir: Path) -> list[dict]:
    """Failure records the ranks left, earliest first (the first is the root cause)."""
    out = []
    for p in stage_dir.glob("failure-rank*.json"):
        try:
            out.append(json.loads(p.read_text()))
        except (OSError, json.JSONDecodeError):
            out.append({"rank": p.stem.removeprefix("failure-rank"), "exception": f"unreadable {p.name}", "time": 0})
    return sorted(out, key=lambda r: r.get("time", 0))


def tail_lines(path: Path, n: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def local_name(host: str) -> str:
    """torchrun names a host by its fully qualified name (often `localhost`), the rank's failure record and every
    other message by socket.gethostname(): this host is called the same everywhere."""
    if host in ("localhost", "localhost.localdomain", socket.getfqdn()):
        return socket.gethostname()
    return host


def launcher_root_cause(log: Path) -> dict | None:
    """The launcher's own verdict (torchrun's "Root Cause" block): the first rank that died, and how."""
    lines = tail_lines(log, 200).splitlines()
    for i, line in enumerate(lines):
        if "Root Cause" in line:
            block = "\n".join(lines[i : i + 10])
            rank = re.search(r"rank\s*:\s*(\d+)", block)
            code = re.search(r"exitcode\s*:\s*(.+)", block)
            host = re.search(r"host\s*:\s*(\S+)", block)
            if rank:
                return {
                    "rank": int(rank.group(1)),
                    "exitcode": code.group(1).strip() if code else "?",
                    "host": local_name(host.group(1)) if host else "?",
                }
    return None


def failure_message(stage: str, stage_dir: Path, returncode: int, failures: list[dict]) -> str:
    """What failed, where, and where to read more.

    A rank that raised leaves a failure record; one killed by a signal or a native abort leaves none, and
    then the launcher's root cause names it (the others' errors are usually consequences).
    """
    launcher = stage_dir / "logs" / "launcher.log"
    root = launcher_root_cause(launcher)
    by_rank = {str(f.get("rank")): f for f in failures}
    if root is not None and str(root["rank"]) not in by_rank:
        log = stage_dir / "logs" / f"rank{root['rank']}.log"
        after = f"; then rank {', '.join(sorted(by_rank))} failed" if by_rank else ""
        return (
            f"stage {stage} failed: rank {root['rank']} on host {root['host']} died (exit code {root['exitcode']}) "
            f"without a Python error{after}\nlast lines of {log}:\n{tail_lines(log)}"
        )
    if failures:
        first = by_rank[str(root["rank"])] if root is not None else failures[0]
        rank = first.get("rank")
        others = sorted(r for r in by_rank if r != str(rank))
        log = stage_dir / "logs" / f"rank{rank}.log"
        more = f" (then rank {', '.join(others)})" if others else ""
        return (
            f"stage {stage} failed on host {first.get('host', '?')}, rank {rank}{more}: {first.get('exception')}\n"
            f"last lines of {log}:\n{tail_lines(log)}"
        )
    return (
        f"stage {stage} failed (launcher exit code {returncode}) before any rank reported an error\n"
        f"last lines of {launcher}:\n{tail_lines(launcher)}"
    )


def extensions_dir(python: str) -> str:
    """Where DeepSpeed's JIT-built ops go for this Python: inside its venv, else a folder of its own under the cache.

    torch's default (~/.cache/torch_extensions) is shared by every environment of the user, so two checkouts rebuilt
    the same op over each other (13 times in 17 minutes, 28-76 s each, seen on a 2-core host).
    """
    import hashlib

    exe = Path(python).absolute()  # not resolved: a venv's python is a link to the base interpreter
    venv = exe.parent.parent
    if (venv / "pyvenv.cfg").is_file():
        return str(venv / "torch_extensions")
    return str(Path.home() / ".cache" / "torch_extensions" / f"kit-{hashlib.sha256(str(exe).encode()).hexdigest()[:12]}")


class NativeLauncher:
    """torchrun on this host: one process per GPU (per CPU rank without GPUs)."""

    def __init__(self, case: Case, python: str = sys.executable, env: dict | None = None, hang_timeout: float = 0.0) -> None:
        self.case = case
        self.python = python
        self.env = {"TORCH_EXTENSIONS_DIR": extensions_dir(python), **os.environ, **(env or {})}
        self.hang_timeout = hang_timeout

    def command(self, module: str, gpus: int, port: int, case_args: list[str]) -> list[str]:
        return [
            self.python, "-m", "torch.distributed.run",
            "--nnodes=1", f"--nproc-per-node={gpus}",
            "--master-addr=127.0.0.1", f"--master-port={port}",
            "--max-restarts=0",
            "-m", module, *case_args,
        ]  # fmt: skip

    def run_module(self, module: str, args: list[str], log: Path) -> subprocess.CompletedProcess:
        """A single-process helper of the case (environment probe, synthetic data)."""
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            return subprocess.run(
                [self.python, "-m", self.case.module(module), *args],
                stdout=subprocess.PIPE, stderr=out, env=self.env, check=False, preexec_fn=child_setup,
            )  # fmt: skip

    def run_stage(
        self, run: Path, stage: str, gpus: int, case_args: list[str], display: StageProgress
    ) -> StageResult:
        stage_dir = run / stage
        (stage_dir / "logs").mkdir(parents=True, exist_ok=True)
        cmd = self.command(
            self.case.stage_module(stage), gpus, free_port(), ["--stage", stage, "--run-dir", str(run), *case_args]
        )
        with open(stage_dir / "logs" / "launcher.log", "ab") as log:
            log.write(("$ " + " ".join(cmd) + "\n").encode())
            log.flush()
            # A session of its own: Ctrl-C reaches the host only, which then stops every rank in order; and SIGTERM
            # when this process dies, however it dies, so no rank outlives it.
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env, preexec_fn=child_setup)
            tail = EventTail(stage_dir / "events.log")
            code, stopped = supervise(
                stage, stage_dir, gpus, display, lambda watch: wait_with_progress(proc, tail, display, watch=watch),
                lambda: stop_group(proc), self.hang_timeout, "rank",
            )  # fmt: skip
            if stopped is not None:
                return stopped
        if code == 0:
            return StageResult(stage, "finished", 0)
        failures = rank_failures(stage_dir)
        return StageResult(stage, "failed", code, failures, failure_message(stage, stage_dir, code, failures))


def supervise(
    stage: str, stage_dir: Path, world: int, display: StageProgress, wait: Callable[[HangWatch], Any],
    stop: Callable[[], None], hang_timeout: float, what: str,
) -> tuple[Any, StageResult | None]:
    """Every launcher's wait: (wait's value, None), or, after Ctrl-C, SIGTERM, SIGHUP or a hang, everything stopped
    and (None, the stage's result). A hang first collects every rank's stacks, then names the hung rank(s).

    The devices (or the host) are sampled into `<stage>/monitor.jsonl` for as long as the stage runs (kit.monitor);
    the sampler cannot fail the stage."""
    monitor = start_stage_monitor(stage_dir)
    try:
        return wait(HangWatch(hang_timeout)), None
    except KeyboardInterrupt as e:
        display.note(f"[yellow]stopping every {what}")
        stop()
        return None, StageResult(stage, "interrupted", EXIT_INTERRUPTED, message=f"stage {stage} interrupted ({e or 'SIGINT'})")
    except StageHung as e:
        display.note(f"[red]no progress: collecting every rank's stacks, then stopping every {what}")
        files, waiting, elsewhere = collect_stacks(stage_dir, world)
        stop()
        return None, StageResult(stage, "failed", EXIT_FAILED,
                                 message=hang_message(stage, str(e), stage_dir, files, waiting, elsewhere, world))  # fmt: skip
    finally:
        if monitor is not None:
            monitor.stop()


def stop_group(proc: subprocess.Popen, grace: float = 30.0) -> None:
    """SIGTERM to the launcher's whole process group, then SIGKILL whatever is left after the grace period."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()

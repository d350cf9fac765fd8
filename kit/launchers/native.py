"""The native launcher: torchrun on this host, one process per GPU (per CPU rank without GPUs)."""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from kit import case as cases
from kit.case import Case
from kit.case import stage as stage_of
from kit.image import stacks
from kit.launchers.base import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    LauncherBase,
    StageResult,
    StartFailed,
    failure_message,
    free_port,
    stop_group,
    tail_lines,
)
from kit.run.guard import child_setup
from kit.run.progress import StageProgress, clock

OPS_NOTE_EVERY_S = 10.0  # a build or a wait says how long so far at least this often


def extensions_dir(python: str) -> str:
    """Where DeepSpeed's JIT-built ops go for this Python: inside its venv, else a folder of its own under the cache.

    torch's default (~/.cache/torch_extensions) is shared by every environment of the user, so two checkouts rebuilt
    the same op over each other (13 times in 17 minutes, 28-76 s each, seen on a 2-core host).
    """
    exe = Path(python).absolute()  # not resolved: a venv's python is a link to the base interpreter
    venv = exe.parent.parent
    if (venv / "pyvenv.cfg").is_file():
        return str(venv / "torch_extensions")
    return str(Path.home() / ".cache" / "torch_extensions" / f"kit-{hashlib.sha256(str(exe).encode()).hexdigest()[:12]}")


class NativeLauncher(LauncherBase):
    """torchrun on this host: one process per GPU (per CPU rank without GPUs)."""

    name = "native"
    what = "rank"
    groups = ("native",)

    # ---- lifecycle ----

    @classmethod
    def request_problems(cls, req: Any) -> list[str]:
        out = super().request_problems(req)
        if req.nodes > 1:
            out.insert(0, "--native runs on this host only (--nodes 1); several nodes run in containers")
        return out

    @classmethod
    def prepare(cls, req: Any, cfg: Any, dry: bool = False) -> tuple[NativeLauncher, list]:
        return cls(cases.get(req.case), python=req.python, hang_timeout=req.hang_timeout), []

    @classmethod
    def reopen(cls, run: Path, meta: dict[str, Any]) -> NativeLauncher:
        return cls(cases.get(meta["case"]), python=meta.get("python", sys.executable),
                   hang_timeout=float(meta.get("hang_timeout") or 0))  # fmt: skip

    def describe(self, req: Any, cfg: Any, console: Any, commands: dict[str, list[str]], run: Path) -> list:
        console.print("native: torchrun on this host with " + self.python)
        for stage, args in commands.items():
            cmd = " ".join(self.command(stage_of(self.case, stage).module, req.gpus, 0, args))
            console.print(f"{stage}: {cmd}".replace("--master-port=0", "--master-port=<free port>"))
        return []

    def before_record(self, run: Any, req: Any, cfg: Any, console: Any) -> dict[str, Any]:
        return {"containers": None, "stack": {"name": "native", "python": req.python}}

    def where_ranks_run(self) -> str:
        return self.python

    def probed_stack(self, probe: dict[str, Any]) -> dict[str, Any] | None:
        return stacks.native_stack(probe)

    def __init__(self, case: Case, python: str = sys.executable, env: dict | None = None, hang_timeout: float = 0.0) -> None:
        self.case = case
        self.python = python
        self.env = {"TORCH_EXTENSIONS_DIR": extensions_dir(python), **os.environ, **(env or {})}
        self.hang_timeout = hang_timeout
        self.ops_checked = False

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
                [self.python, "-m", module, *args],
                stdout=subprocess.PIPE, stderr=out, env=self.env, check=False, preexec_fn=child_setup,
            )  # fmt: skip

    def before_stage(self, run: Path, stage: str, display: StageProgress) -> None:
        self.prepare_ops(run, stage, display)

    def start(self, run: Path, stage: str, world: int, case_args: list[str], display: StageProgress) -> subprocess.Popen:
        stage_dir = run / stage
        cmd = self.command(
            stage_of(self.case, stage).module, world, free_port(), ["--stage", stage, "--run-dir", str(run), *case_args]
        )
        with open(stage_dir / "logs" / "launcher.log", "ab") as log:
            log.write(("$ " + " ".join(cmd) + "\n").encode())
            log.flush()
            # A session of its own: Ctrl-C reaches the host only, which then stops every rank in order; and SIGTERM
            # when this process dies, however it dies, so no rank outlives it.
            return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env, preexec_fn=child_setup)

    def prepare_ops(self, run: Path, stage: str, display: StageProgress) -> None:
        """The case's JIT-compiled ops (DeepSpeed's deepspeed_shm_comm on a CPU: cases/<case>/ops.py) built before the
        first stage that loads them, once per environment, under a lock, with a line on the progress display. Left to
        the ranks, every rank of every run started meanwhile compiled or waited behind "starting" for minutes."""
        if self.ops_checked or not self.case.prepare_module:
            return
        try:
            ops = importlib.import_module(self.case.prepare_module)  # standard library only at import
        except ImportError:
            self.ops_checked = True
            return
        if stage not in getattr(ops, "STAGES", ()):
            return
        self.ops_checked = True
        if _accelerated(run) and self.env.get("DS_ACCELERATOR", "") != "cpu":
            return  # DeepSpeed's accelerator for a device does not use the CPU's op
        log = run / "logs" / "ops.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as err:
            proc = subprocess.Popen([self.python, "-m", self.case.prepare_module], stdout=subprocess.PIPE, stderr=err,
                                    env=self.env, preexec_fn=child_setup, bufsize=0)  # fmt: skip
        try:
            last = _follow_ops(proc, display)
        except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM/SIGHUP through guard.Stop: the compilers go with it
            display.note("[yellow]stopping the build")
            stop_group(proc, grace=10.0)
            raise StartFailed(StageResult(stage, "interrupted", EXIT_INTERRUPTED,
                                          message=f"stage {stage} interrupted ({e or 'SIGINT'})")) from None  # fmt: skip
        finally:
            if proc.poll() is None:
                stop_group(proc, grace=10.0)
        if proc.returncode != 0:
            why = last.get("error") or f"the build exited {proc.returncode}"
            raise StartFailed(StageResult(stage, "failed", EXIT_FAILED, message=(
                f"stage {stage} cannot start: DeepSpeed's {last.get('op', 'CPU')} op, which the ranks load on a CPU, "
                f"did not compile ({why}). Install a C++ compiler and ninja (g++, ninja-build) for {self.python}, then "
                f"`kit resume {run}`\nlast lines of {log}:\n{tail_lines(log)}")))  # fmt: skip

    def poll(self, proc: subprocess.Popen) -> tuple[int | None, str | None]:
        return proc.poll(), None

    def note(self, proc: subprocess.Popen) -> str | None:
        return None

    def stop(self, proc: subprocess.Popen) -> None:
        stop_group(proc)

    def failure(self, stage: str, stage_dir: Path, proc, code: int, where: str | None, failures: list[dict]) -> str:
        return failure_message(stage, stage_dir, code, failures)

    def cleanup(self, proc: subprocess.Popen) -> None:
        if proc.poll() is None:  # an exception in the loop itself: no rank outlives it
            stop_group(proc)

    def close(self) -> None:
        pass


def _accelerated(run: Path) -> bool:
    """What the environment probe found (environment.json): the case's device layer chose a device other than the
    CPU, so DeepSpeed picks that device's accelerator (runs from before the device layer: torch listed a device)."""
    try:
        torch = json.loads((run / "environment.json").read_text())["case"]["torch"]
        kind = torch.get("device_type")
        return kind != "cpu" if kind else bool(torch.get("devices"))  # older probes listed devices only on a GPU
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def _ops_note(state: dict, since: float, now: float) -> str | None:
    """The progress line's words for the ops helper's state (cases/<case>/ops.py), with the time it has taken so far."""
    op, so_far = state.get("op", "op"), clock(now - since)
    what = state.get("state")
    if what == "checking":
        return f"checking whether DeepSpeed's {op} op must be compiled for this CPU"
    if what == "waiting":
        pid = (state.get("holder") or {}).get("pid", "?")
        return f"waiting for pid {pid}, which compiles DeepSpeed's {op} op for this environment ({so_far} so far)"
    if what == "building":
        return (f"compiling DeepSpeed's {op} op for this CPU, once for this environment: about "
                f"{clock(state.get('estimate_s'))} at this load ({so_far} so far)")  # fmt: skip
    if what == "built":
        return f"compiled DeepSpeed's {op} op in {clock(state.get('seconds'))}; starting the ranks"
    if what == "ready" and state.get("after_wait"):
        return f"DeepSpeed's {op} op is compiled; starting the ranks"
    return None


def _follow_ops(proc: subprocess.Popen, display: StageProgress) -> dict:
    """The helper's JSON lines onto the progress line until it exits; the last state it reported."""
    fd = proc.stdout.fileno()
    buf, last, since, shown = b"", {}, time.monotonic(), 0.0
    while True:
        ready, _, _ = select.select([fd], [], [], 1.0)
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            *lines, buf = (buf + chunk).split(b"\n")
            for line in lines:
                try:
                    state = json.loads(line)
                except ValueError:
                    continue
                if isinstance(state, dict):
                    if state.get("state") != last.get("state"):
                        since = time.monotonic()
                    if state.get("state") == "ready" and last.get("state") == "waiting":
                        state["after_wait"] = True
                    last, shown = state, 0.0
        now = time.monotonic()
        if last and now - shown >= OPS_NOTE_EVERY_S and (note := _ops_note(last, since, now)):
            display.note(note)
            shown = now
    proc.stdout.close()
    proc.wait()
    return last

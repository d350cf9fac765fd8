"""What every launcher shares: the stage loop, the wait with progress and hang watch, the failure report.

A launcher (kit/launchers/native.py, containers.py, slurm.py) is one small object behind the `Launcher` interface
below: it starts a stage's ranks, says whether they still run, stops them and names what failed. Everything else,
the progress line, the hang watch and its stack dump, Ctrl-C/SIGTERM handling, the monitor, the failure report's
rank records, is written once here and is the same whichever launcher runs the stage.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from kit.run.guard import HangWatch, StageHung, collect_stacks, hang_message
from kit.run.monitor import start_stage_monitor
from kit.run.progress import EventTail, StageProgress
from kit.run.request import given

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_ENVIRONMENT, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


@dataclass
class StageResult:
    stage: str
    state: str  # finished | failed | interrupted
    returncode: int
    failures: list[dict] = field(default_factory=list)
    message: str = ""


class StartFailed(Exception):
    """A stage that could not start (an engine refused a container, sbatch or srun refused the step)."""

    def __init__(self, result: StageResult) -> None:
        super().__init__(result.message)
        self.result = result


class Launcher(Protocol):
    """One way of running a stage's ranks. The stage loop (`run_stage`) calls, in order: `start` once, `poll`
    until it reports an end, `stop` after a failure or a signal, `failure` to name what failed, `cleanup`
    always. `run_module` runs a single-process helper of the case (the environment probe, synthetic data) where
    the ranks will run. `env` is added to every stage's environment (the heartbeat's path)."""

    name: str  # native | containers | slurm: recorded in run.json as the launcher
    what: str  # what a stop stops, for the messages: rank, container, task
    env: dict[str, str]
    hang_timeout: float

    def run_module(self, module: str, args: list[str], log: Path) -> subprocess.CompletedProcess: ...

    def before_stage(self, run: Path, stage: str, display: StageProgress) -> None:
        """What must be ready before the stage is launched (a one-time build the ranks load), shown on the display:
        done before the launch is stamped in status.jsonl, so the stage's clocks start together."""

    def start(self, run: Path, stage: str, world: int, case_args: list[str], display: StageProgress) -> Any:
        """Start every rank of the stage; returns a handle, or raises StartFailed."""

    def poll(self, handle: Any) -> tuple[int | None, str | None]:
        """(None, None) while it runs; (0, None) when every part ended well; (code, where) for the first failure."""

    def note(self, handle: Any) -> str | None:
        """A line to show before the first step arrives (what the launcher is doing), or None."""

    def stop(self, handle: Any) -> None:
        """SIGTERM to every rank, SIGKILL after a grace period; returns when they are gone."""

    def failure(self, stage: str, stage_dir: Path, handle: Any, code: int, where: str | None, failures: list[dict]) -> str:
        """The failure message: the node and rank that failed first, the error, where to read more."""

    def cleanup(self, handle: Any) -> None: ...

    def close(self) -> None: ...


class LauncherBase:
    """A launcher's whole lifecycle, around the stage interface above. kit/run/stages.py drives it and never asks a
    launcher what kind it is:

    - `request_problems(req)`: its own options, checked (a UsageError each) before anything else;
    - `session(req)`: a context every step below runs in (an ssh policy for remote engines, say);
    - `prepare(req, cfg, dry)`: the plan (engines reached, image pinned); returns (launcher, stops): a dry run gets
      what would stop a launch among the stops instead of an exception;
    - `describe(...)`: a dry run's lines (commands, mounts, the job script), and its stops;
    - `check_before_create(...)`, `before_record(run, ...)` (fields for run.json; a scheduler submits here, held),
      `plan_lines()`, `launch(run, ...)`: None when the stages run in this process, else the exit code of a run
      that went elsewhere (a job, followed); `abandon()` undoes what a failed start began;
    - `elsewhere(run, meta, ...)`: for a run being continued, None when its stages run here, else the exit code;
      `reopen(run, meta)`: the launcher of a run being continued;
    - `ranks_here`, `where_ranks_run`, `environment_facts`, `probed_stack`, `image_name`: what the host's checks
      and environment.json need to know of where the ranks run.
    """

    name = "base"
    groups: tuple[str, ...] = ()

    def before_stage(self, run: Path, stage: str, display: StageProgress) -> None:
        """Nothing to prepare (the native launcher builds the case's CPU op here)."""  # the option groups of kit/run/request.py it accepts

    @classmethod
    def request_problems(cls, req: Any) -> list[str]:

        out = []
        for group, owner in (("containers", "the container path; drop --native to use it"),
                             ("slurm", "--launcher slurm; add it, or drop them"), ("native", "--native")):  # fmt: skip
            if group in cls.groups:
                continue
            flags = [f for f in given(req, group) if not (group == "native" and f == "--native")]
            if flags:
                out.append(f"{', '.join(flags)} belong(s) to {owner}")
        return out

    @classmethod
    def session(cls, req: Any) -> Any:
        from contextlib import nullcontext

        return nullcontext()

    def describe(self, req: Any, cfg: Any, console: Any, commands: dict[str, list[str]], run: Path) -> list:
        return []

    def check_before_create(self, req: Any, cfg: Any, console: Any) -> None:
        return None

    def before_record(self, run: Any, req: Any, cfg: Any, console: Any) -> dict[str, Any]:
        return {}

    def plan_lines(self) -> list[str]:
        return []

    def launch(self, run: Any, req: Any, cfg: Any, console: Any) -> int | None:
        return None

    def abandon(self) -> None:
        return None

    @classmethod
    def elsewhere(cls, run: Path, meta: dict[str, Any], console: Any, overrides: dict | None, follow: bool) -> int | None:
        return None

    @classmethod
    def ranks_here(cls, req: Any) -> bool:
        """Whether this request's ranks run on this host (so this host's devices are the ones to count)."""
        return True

    def where_ranks_run(self) -> str:
        return "this host"

    def environment_facts(self) -> dict[str, Any]:
        return {}

    def probed_stack(self, probe: dict[str, Any]) -> dict[str, Any] | None:
        return None

    def image_name(self) -> str:
        return "native"

    def close(self) -> None:
        return None


def run_stage(
    launcher: Launcher, run: Path, stage: str, world: int, case_args: list[str], display: StageProgress
) -> StageResult:
    """One stage through any launcher: start, follow with progress and the hang watch, stop and report."""
    stage_dir = run / stage
    (stage_dir / "logs").mkdir(parents=True, exist_ok=True)
    try:
        handle = launcher.start(run, stage, world, case_args, display)
    except StartFailed as e:
        return e.result
    try:
        tail = EventTail(stage_dir / "events.log")
        ended, stopped = supervise(
            stage, stage_dir, world, display,
            lambda watch: follow(lambda: launcher.poll(handle), tail, display, watch, lambda: launcher.note(handle)),
            lambda: launcher.stop(handle), launcher.hang_timeout, launcher.what,
        )  # fmt: skip
        if stopped is not None:
            return stopped
        code, where = ended
        if code == 0:
            return StageResult(stage, "finished", 0)
        if where:
            display.note(f"[red]{where} exited {code}; stopping the others")
        launcher.stop(handle)
        failures = rank_failures(stage_dir)
        return StageResult(stage, "failed", code, failures, launcher.failure(stage, stage_dir, handle, code, where, failures))
    finally:
        launcher.cleanup(handle)


def follow(
    poll: Callable[[], tuple[int | None, str | None]], tail: EventTail, display: StageProgress,
    watch: HangWatch | None = None, note: Callable[[], str | None] | None = None, interval: float = 0.5,
) -> tuple[int, str | None]:
    """Feed the display (and the hang watch, which raises StageHung) until `poll` reports an end; returns it.
    Until the first step arrives, the launcher's own note (its last output line) stands in the progress line."""
    stepping = False
    while True:
        events = tail.read()
        stepping = stepping or any(e.get("key") in ("kit_step", "kit_eval_batch") for e in events)
        display.feed(events)
        if watch is not None:
            watch.feed(events)
            watch.check()
        if not stepping and note is not None and (line := note()):
            display.note(line)
        code, where = poll()
        if code is not None:
            display.feed(tail.read())
            return code, where
        time.sleep(interval)


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


def failure_message(
    stage: str, stage_dir: Path, returncode: int, failures: list[dict], launcher: Path | None = None,
    node_of: Callable[[int], str] | None = None,
) -> str:
    """What failed, where, and where to read more.

    A rank that raised leaves a failure record; one killed by a signal or a native abort leaves none, and
    then the launcher's root cause names it (the others' errors are usually consequences).
    """
    launcher = launcher or stage_dir / "logs" / "launcher.log"
    root = launcher_root_cause(launcher)
    if root is not None and node_of is not None:
        root["host"] = node_of(root["rank"])
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
        host = node_of(int(rank)) if node_of is not None and str(rank).isdigit() else first.get("host", "?")
        return (
            f"stage {stage} failed on host {host}, rank {rank}{more}: {first.get('exception')}\n"
            f"last lines of {log}:\n{tail_lines(log)}"
        )
    return (
        f"stage {stage} failed (launcher exit code {returncode}) before any rank reported an error\n"
        f"last lines of {launcher}:\n{tail_lines(launcher)}"
    )


def supervise(
    stage: str, stage_dir: Path, world: int, display: StageProgress, wait: Callable[[HangWatch], Any],
    stop: Callable[[], None], hang_timeout: float, what: str,
) -> tuple[Any, StageResult | None]:
    """Every launcher's wait: (wait's value, None), or, after Ctrl-C, SIGTERM, SIGHUP or a hang, everything stopped
    and (None, the stage's result). A hang first collects every rank's stacks, then names the hung rank(s).

    The devices (or the host) are sampled into `<stage>/monitor.jsonl` for as long as the stage runs (kit.run.monitor);
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

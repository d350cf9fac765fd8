"""The Slurm launcher: a batch job per run (or the allocation it is started in), one `srun` step per stage.

Two halves, on either side of `sbatch`:

- **Submitting** (`submit`, `follow_job`): `kit run --launcher slurm` outside an allocation writes the batch
  script `<run>/slurm/job.sbatch`, submits it held (`sbatch --hold`), records the job id in run.json, releases it,
  and follows the job: pending (with Slurm's reason), running (the same progress line as any launcher, read from
  the run directory on the shared file system), ended. `kit resume` submits the same script again.
- **Inside the allocation** (`SlurmLauncher`): the batch script runs `kit slurm-job RUN` on the first node, which
  runs the shared stage loop (kit.commands.run.execute) with this launcher. Each stage is one `srun` step with
  one task per node; each task runs `<run>/slurm/<stage>.sh`, which starts that node's torchrun (`--nnodes` the
  job's nodes, `--node-rank` the task's SLURM_PROCID, the rendezvous at the first node of
  `scontrol show hostnames $SLURM_JOB_NODELIST` on a port free there). `kit run --launcher slurm` inside an
  allocation (salloc, or a batch script of the user's) takes this path directly.

Containers through pyxis: the step gets `--container-image`, the run's directories mounted at their own paths
(`--container-mounts`, data and weights read-only) and `--no-container-mount-home`; the batch step itself, where
kit's host side runs, stays outside the container. `scancel` and the job's time limit reach kit as SIGTERM: it
stops the step and marks the run interrupted (resumable); a job that ended without a word (SIGKILL, a node that
died) is marked interrupted by the follower from Slurm's job state.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from kit.case import Case
from kit.case import stage as stage_of
from kit.launchers.base import (
    StageResult,
    StartFailed,
    failure_message,
    free_port,
    launcher_root_cause,
    stop_group,
    tail_lines,
)
from kit.launchers.native import extensions_dir
from kit.run.guard import child_setup
from kit.run.progress import StageProgress

SCRIPT = "job.sbatch"
STOP_GRACE_S = 20  # within Slurm's KillWait (30 s by default) after scancel's SIGTERM
TERMINAL = {"BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED",
            "TIMEOUT", "SPECIAL_EXIT", "REVOKED"}  # fmt: skip
WAITING = {"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "RESV_DEL_HOLD", "SUSPENDED", "STOPPED"}
TIME_RE = re.compile(r"^(\d+-)?\d+(:\d{1,2}){0,2}$|^\d+-\d+$")
SRUN_TASK_ERROR = re.compile(r"srun: error: (\S+): tasks? ([\d,\-]+): (.+)")
TOOLS_FIX = "load the cluster's Slurm environment (module load slurm, or install slurm-client) on this host"


class SlurmError(RuntimeError):
    """Slurm refused or is out of reach (exit 3), with what to do."""

    def __init__(self, message: str, fix: str) -> None:
        super().__init__(message)
        self.fix = fix

    def __str__(self) -> str:
        return f"{self.args[0]}\nfix: {self.fix}"


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise SlurmError(f"`{name}` is not on PATH here, so kit cannot reach Slurm", TOOLS_FIX)
    return path


def slurm(args: list[str], timeout: float = 60, fix: str = "") -> str:
    """A Slurm command's stdout; SlurmError with its own words on failure."""
    try:
        r = subprocess.run([tool(args[0]), *args[1:]], capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise SlurmError(f"`{shlex.join(args)}` did not answer within {timeout:.0f} s",
                         fix or "check that slurmctld answers (`scontrol ping`, `sinfo`)") from None  # fmt: skip
    if r.returncode != 0:
        said = (r.stderr or r.stdout).strip().splitlines()
        raise SlurmError(f"`{shlex.join(args)}` failed (exit {r.returncode}): {' / '.join(said[-3:]) or 'no output'}",
                         fix or "see Slurm's message above; `kit check-host --launcher slurm` checks the cluster")  # fmt: skip
    return r.stdout


def hostnames(nodelist: str) -> list[str]:
    """Slurm's own expansion of a node list (`kit[1-2],gpu07`), first node first."""
    return [h for h in slurm(["scontrol", "show", "hostnames", nodelist]).split() if h]


def node_address(node: str) -> str:
    """The address the other nodes reach `node` at: its NodeAddr in Slurm (the name itself when Slurm has none)."""
    try:
        out = slurm(["scontrol", "show", "node", "-o", node], timeout=30)
    except SlurmError:
        return node
    m = re.search(r"\bNodeAddr=(\S+)", out)
    return m.group(1) if m and m.group(1) not in ("(null)", "") else node


def job_info(job_id: str) -> dict[str, str] | None:
    """`scontrol show job -o ID` as a dict (JobState, Reason, NodeList, BatchHost, ExitCode, TimeLimit...), or
    None when the controller no longer knows the job (it ended more than MinJobAge ago)."""
    try:
        out = slurm(["scontrol", "show", "job", "-o", str(job_id)], timeout=30)
    except SlurmError as e:
        if "Invalid job id" in str(e):
            return None
        raise
    info: dict[str, str] = {}
    for field in out.split():
        key, sep, value = field.partition("=")
        if sep and key not in info:
            info[key] = value
    return info


def valid_time(value: str) -> bool:
    """Slurm's --time formats: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S."""
    return bool(TIME_RE.match(value)) or value in ("UNLIMITED", "INFINITE")


def in_allocation() -> bool:
    return bool(os.environ.get("SLURM_JOB_ID"))


def kit_command() -> tuple[str, str]:
    """The Python that runs kit's host side in the batch step, and the folder to put on PYTHONPATH for it."""
    return os.path.abspath(sys.executable), str(Path(__file__).resolve().parents[2])


# ------------------------------------------------------------------------------------------ the batch script


def batch_script(run: Path, meta: dict, use_gpus: bool) -> str:
    """The run's batch script: the allocation, then kit's stage loop on the first node."""
    s = meta.get("slurm") or {}
    python, root = kit_command()
    lines = [
        "#!/bin/bash",
        f"# kit run {run.name}: {meta['case']} config {meta['config']['name']}, {meta['nodes']} node(s) x "
        f"{meta['gpus']}, written by kit. `kit run` submitted it; `kit resume {run}` submits it again.",
        f"#SBATCH --job-name=kit-{meta['case']}-{meta['config']['name']}",
        f"#SBATCH --nodes={meta['nodes']}",
        "#SBATCH --ntasks-per-node=1",
        "#SBATCH --exclusive",
        f"#SBATCH --output={run}/slurm/job-%j.out",
        "#SBATCH --open-mode=append",
        f"#SBATCH --chdir={run}",
    ]
    if use_gpus:
        lines.append(f"#SBATCH --gpus-per-node={meta['gpus']}")
    for key, flag in (("partition", "--partition"), ("account", "--account"), ("time", "--time")):
        if s.get(key):
            lines.append(f"#SBATCH {flag}={s[key]}")
    lines += [f"#SBATCH {arg}" for arg in s.get("sbatch_args") or []]
    lines += [
        "set -euo pipefail",
        f"export PYTHONPATH={shlex.quote(root)}${{PYTHONPATH:+:$PYTHONPATH}}",
        "export PYTHONUNBUFFERED=1",
        f"exec {shlex.quote(python)} -m kit.cli slurm-job {shlex.quote(str(run))}",
        "",
    ]
    return "\n".join(lines)


def container_flags(meta: dict) -> list[str]:
    """pyxis's options for a stage step: the image, every directory of the run at its own path, no home."""
    s = meta.get("slurm") or {}
    image = s.get("container_image")
    if not image:
        return []
    mounts = [f"{meta['results']}:{meta['results']}"]
    mounts += [f"{meta[k]}:{meta[k]}:ro" for k in ("data", "models", "mmmu", "model_dir") if meta.get(k)]
    return [f"--container-image={image}", f"--container-mounts={','.join(dict.fromkeys(mounts))}",
            "--no-container-mount-home", f"--container-workdir={meta['results']}"]  # fmt: skip


def step_script(python: str, module: str, nodes: int, per_node: int, head: str, port: int, args: list[str]) -> str:
    """One node's part of a stage: its torchrun, node rank from the task's SLURM_PROCID (one task per node)."""
    torchrun = [python, "-m", "torch.distributed.run", f"--nnodes={nodes}", f"--nproc-per-node={per_node}",
                f"--master-addr={head}", f"--master-port={port}", "--max-restarts=0"]  # fmt: skip
    return "\n".join([
        "#!/bin/bash",
        "# one srun task per node: this node's torchrun, which starts its ranks; written by kit",
        "set -euo pipefail",
        f'exec {shlex.join(torchrun)} --node-rank="$SLURM_PROCID" -m {shlex.quote(module)} {shlex.join(args)}',
        "",
    ])  # fmt: skip


def stage_srun(meta: dict, stage_dir: Path, script: Path) -> list[str]:
    nodes = int(meta["nodes"])
    return [
        "srun", f"--nodes={nodes}", f"--ntasks={nodes}", "--ntasks-per-node=1", "--kill-on-bad-exit=1",
        f"--job-name={stage_dir.name}", "--open-mode=append", f"--output={stage_dir}/logs/launcher-node%n.log",
        *container_flags(meta), "bash", str(script),
    ]  # fmt: skip


# ------------------------------------------------------------------------------------------ inside the allocation


class SlurmLauncher:
    """The stage's ranks as one srun step of the current allocation (the `Launcher` interface)."""

    name = "slurm"
    what = "task"

    def __init__(self, case: Case, meta: dict, hang_timeout: float = 0.0) -> None:
        self.case = case
        self.meta = meta
        self.hang_timeout = hang_timeout
        self.containers = bool((meta.get("slurm") or {}).get("container_image"))
        self.python = "python" if self.containers else meta.get("python", sys.executable)
        self.nodes = hostnames(os.environ.get("SLURM_JOB_NODELIST", "") or os.environ.get("SLURM_NODELIST", ""))
        self.env = {**os.environ}
        if not self.containers:
            self.env.setdefault("TORCH_EXTENSIONS_DIR", extensions_dir(self.python))
        self.per_node = int(meta["gpus"])
        self._stage_dir: Path | None = None

    def allocation(self) -> dict[str, Any]:
        return {"job_id": os.environ.get("SLURM_JOB_ID"), "nodes": self.nodes,
                "batch_host": os.environ.get("SLURMD_NODENAME") or (self.nodes[0] if self.nodes else None)}  # fmt: skip

    def run_module(self, module: str, args: list[str], log: Path) -> subprocess.CompletedProcess:
        """A single-process helper of the case as a one-task step on the first node (in the image with pyxis)."""
        log.parent.mkdir(parents=True, exist_ok=True)
        cmd = ["srun", "--nodes=1", "--ntasks=1", f"--job-name={module}", *container_flags(self.meta),
               self.python, "-m", module, *args]  # fmt: skip
        with open(log, "ab") as out:
            out.write(f"$ {shlex.join(cmd)}\n".encode())
            out.flush()
            return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=out, env=self.env, check=False,
                                  preexec_fn=child_setup)  # fmt: skip

    def start(self, run: Path, stage: str, world: int, case_args: list[str], display: StageProgress) -> subprocess.Popen:
        stage_dir = run / stage
        self._stage_dir = stage_dir
        if not self.nodes:
            raise StartFailed(StageResult(stage, "failed", 1, message=(
                f"stage {stage}: no SLURM_JOB_NODELIST in the environment: `kit slurm-job` runs inside the run's "
                "allocation only; `kit resume` submits it again")))  # fmt: skip
        port = int((self.meta.get("slurm") or {}).get("master_port") or 0) or free_port()
        head = node_address(self.nodes[0])
        args = ["--stage", stage, "--run-dir", str(run), *case_args]
        script = run / "slurm" / f"{stage}.sh"
        script.parent.mkdir(parents=True, exist_ok=True)
        script.write_text(step_script(self.python, stage_of(self.case, stage).module, len(self.nodes), self.per_node,
                                      head, port, args))  # fmt: skip
        cmd = stage_srun(self.meta, stage_dir, script)
        display.note(f"srun: {len(self.nodes)} node(s) x {self.per_node}, rendezvous {self.nodes[0]} ({head}:{port})")
        with open(stage_dir / "logs" / "launcher.log", "ab") as log:
            log.write(f"$ {shlex.join(cmd)}  [nodes {','.join(self.nodes)}]\n".encode())
            log.flush()
            return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env, preexec_fn=child_setup)

    def first_task_error(self) -> tuple[str, str] | None:
        """srun's first "srun: error: NODE: task K: ..." line: (node, what), or None."""
        if self._stage_dir is None:
            return None
        for line in tail_lines(self._stage_dir / "logs" / "launcher.log", 400).splitlines():
            if m := SRUN_TASK_ERROR.search(line):
                return m.group(1), f"task {m.group(2)}: {m.group(3)}"
        return None

    def poll(self, proc: subprocess.Popen) -> tuple[int | None, str | None]:
        code = proc.poll()
        if code is None or code == 0:
            return code, None
        first = self.first_task_error()
        return code, f"node {first[0]}" if first else "srun"

    def note(self, proc: subprocess.Popen) -> str | None:
        return None

    def stop(self, proc: subprocess.Popen) -> None:
        """SIGTERM to srun (it passes it to every task), SIGKILL after the grace period."""
        stop_group(proc, grace=STOP_GRACE_S)

    def node_of(self, rank: int) -> str:
        k = rank // max(1, self.per_node)
        return self.nodes[k] if 0 <= k < len(self.nodes) else "?"

    def failure(self, stage: str, stage_dir: Path, proc, code: int, where: str | None, failures: list[dict]) -> str:
        """The first rank to fail, on the node Slurm names; else torchrun's root cause in that node's log."""
        logs = sorted((stage_dir / "logs").glob("launcher-node*.log"))
        first = self.first_task_error()
        if first is not None:  # the failing node's torchrun log first
            k = self.nodes.index(first[0]) if first[0] in self.nodes else -1
            logs.sort(key=lambda p: p.name != f"launcher-node{k}.log")
        root_log = next((p for p in logs if launcher_root_cause(p) is not None), logs[0] if logs else None)
        message = failure_message(stage, stage_dir, code, failures, launcher=root_log, node_of=self.node_of)
        said = f"\nsrun: {first[0]}: {first[1]}" if first else ""
        if not failures and root_log is not None and launcher_root_cause(root_log) is None:
            said += f"\nlast lines of {stage_dir / 'logs' / 'launcher.log'}:\n{tail_lines(stage_dir / 'logs' / 'launcher.log')}"
        return message + said

    def cleanup(self, proc: subprocess.Popen) -> None:
        if proc.poll() is None:
            stop_group(proc, grace=STOP_GRACE_S)

    def close(self) -> None:
        pass


# ------------------------------------------------------------------------------------------ submitting, following


def job_ids(run: Path) -> list[str]:
    """Every job this run was submitted as, oldest first (run.json's, then each resubmission's status line)."""
    from kit.run.dir import RunDir

    ids = []
    first = (RunDir(run).request().get("slurm") or {}).get("job_id")
    if first:
        ids.append(str(first))
    for row in RunDir(run).status_rows():
        if row.get("state") == "submitted" and isinstance(row.get("detail"), dict) and row["detail"].get("job_id"):
            ids.append(str(row["detail"]["job_id"]))
    return list(dict.fromkeys(ids))


def live_job(run: Path) -> tuple[str, str] | None:
    """(job id, state) of a job of this run that is still pending or running, or None."""
    for job in reversed(job_ids(run)):
        info = job_info(job)
        if info is not None and info.get("JobState") not in TERMINAL:
            return job, info.get("JobState", "?")
    return None


def sbatch(script: Path, hold: bool) -> str:
    out = slurm(["sbatch", "--parsable", *(["--hold"] if hold else []), str(script)], timeout=120,
                fix="see sbatch's message: a --partition, --account or --time the cluster refuses, or an "
                "--sbatch-arg; `kit check-host --launcher slurm --partition P` checks them")  # fmt: skip
    job = out.strip().splitlines()[-1].split(";")[0] if out.strip() else ""
    if not job.isdigit():
        raise SlurmError(f"sbatch answered {out.strip()!r}, not a job id", "submit by hand to see why: sbatch " + str(script))
    return job


def release(job: str) -> None:
    slurm(["scontrol", "release", job])


def cancel(job: str) -> None:
    try:
        slurm(["scancel", job], timeout=30)
    except SlurmError:
        pass


def ended_words(info: dict | None, job: str) -> str:
    if info is None:
        return f"job {job} is no longer known to Slurm"
    state, reason = info.get("JobState", "?"), info.get("Reason", "None")
    why = {"TIMEOUT": f" (its time limit, {info.get('TimeLimit', '?')})", "CANCELLED": " (scancel)",
           "NODE_FAIL": f" (a node failed: {info.get('NodeList', '?')})", "PREEMPTED": " (preempted)"}.get(state, "")
    more = f", reason {reason}" if reason not in ("None", "") else ""
    return f"job {job} ended {state}{why}{more}, exit code {info.get('ExitCode', '?')}"


def follow_job(run: Path, job: str, console, poll: float = 1.0) -> int:
    """Show the job's life until it ends: pending, each stage's progress, the end. Ctrl-C cancels the job.
    Returns the run's exit code, from what the job wrote into the run directory (status.jsonl)."""
    from rich.panel import Panel
    from rich.text import Text

    from kit.launchers.base import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK
    from kit.run.dir import RunDir
    from kit.run.progress import EventTail

    seen = len(RunDir(run).status_rows())
    said_state = None
    info: dict | None = None
    cancelled = False
    with StageProgress(console) as display:
        tail = None
        try:
            while True:
                info = job_info(job)
                state = info.get("JobState") if info else None
                if state != said_state and state is not None:
                    where = f" on {info.get('NodeList')}" if state == "RUNNING" else ""
                    reason = f" ({info.get('Reason')})" if state in WAITING and info.get("Reason") not in (None, "None") else ""
                    console.print(Text(f"slurm job {job}: {state}{reason}{where}", style="dim"))
                    said_state = state
                rows = RunDir(run).status_rows()
                for row in rows[seen:]:
                    stage, st = row.get("stage"), row.get("state")
                    if st == "launched" and stage:
                        display.start(stage)
                        tail = EventTail(run / stage / "events.log")
                    elif stage and st in ("finished", "failed", "interrupted"):
                        if tail is not None:
                            display.feed(tail.read())
                        display.finish(st)
                        tail = None
                seen = len(rows)
                if tail is not None:
                    display.feed(tail.read())
                if state is None or state in TERMINAL:
                    break
                time.sleep(poll)
        except KeyboardInterrupt:
            cancelled = True
            console.print(f"[yellow]cancelling slurm job {job}[/] (the run stays resumable)")
            cancel(job)
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline:
                info = job_info(job)
                if info is None or info.get("JobState") in TERMINAL:
                    break
                time.sleep(1)
    rows = RunDir(run).status_rows()
    last = next((r for r in reversed(rows) if r.get("stage") is None), {})
    words = ended_words(info, job)
    if last.get("state") == "finished":
        from kit.commands.report import show

        show(run, console)
        return EXIT_OK
    if last.get("state") == "failed":
        failed = next((r for r in reversed(rows) if r.get("stage") and r.get("state") == "failed"), None)
        message = str((failed or {}).get("detail") or last.get("detail") or "the run failed")
        console.print(Panel(Text(f"{message}\n\n{words}; output: {run / 'slurm' / f'job-{job}.out'}"),
                            title=f"{(failed or {}).get('stage') or 'run'} failed", border_style="red"))  # fmt: skip
        return EXIT_FAILED
    if last.get("state") != "interrupted":
        # The job ended without a word from kit (SIGKILL after the grace, a node that died, never started).
        RunDir(run).append_status("interrupted", detail={"slurm_job": job, "job_state": (info or {}).get("JobState")})
    console.print(Panel(f"{words}; the run is marked interrupted.\ncontinue it with: kit resume {run}",
                        title="interrupted", border_style="yellow"))  # fmt: skip
    return EXIT_INTERRUPTED if cancelled or last.get("state") != "interrupted" else 128 + 15


def record_allocation(run: Path, launcher: SlurmLauncher) -> None:
    from kit.run.dir import RunDir

    RunDir(run).append_status("allocated", detail=launcher.allocation())


def write_script(run: Path, meta: dict, use_gpus: bool) -> Path:
    script = run / "slurm" / SCRIPT
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(batch_script(run, meta, use_gpus))
    script.chmod(0o755)
    return script


def script_digest(script: Path) -> str:
    import hashlib

    return hashlib.sha256(script.read_bytes()).hexdigest()


def describe(meta: dict) -> str:
    s = meta.get("slurm") or {}
    how = f"pyxis image {s['container_image']}" if s.get("container_image") else "native"
    opts = ", ".join(f"{k} {s[k]}" for k in ("partition", "account", "time") if s.get(k))
    return f"slurm: {meta['nodes']} node(s) x {meta['gpus']}, {how}" + (f", {opts}" if opts else "")

"""The Slurm launcher: a batch job per run (or the allocation it is started in), one `srun` step per stage.

Two halves, on either side of `sbatch`:

- **Submitting** (`submit`, `follow_job`): `kit run --launcher slurm` outside an allocation writes the batch
  script `<run>/slurm/job.sbatch`, submits it held (`sbatch --hold`), records the job id in run.json, releases it,
  and follows the job: pending (with Slurm's reason), running (the same progress line as any launcher, read from
  the run directory on the shared file system), ended. `kit resume` submits the same script again.
- **Inside the allocation** (`SlurmLauncher`): the batch script runs `kit slurm-job RUN` on the first node, which
  runs the shared stage loop (kit.run.stages.execute) with this launcher. Each stage is one `srun` step with
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

from kit import case as cases
from kit import vendors
from kit.case import Case
from kit.case import stage as stage_of
from kit.errors import EnvironmentProblem, UsageError
from kit.image import stacks
from kit.launchers.base import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    LauncherBase,
    StageResult,
    StartFailed,
    failure_message,
    free_port,
    launcher_root_cause,
    stop_group,
    tail_lines,
)
from kit.launchers.native import extensions_dir
from kit.run.dir import RunDir
from kit.run.guard import child_setup
from kit.run.inputs import same_inputs
from kit.run.progress import EventTail, StageProgress
from kit.run.request import RunRequest, given

SCRIPT = "job.sbatch"
STOP_GRACE_S = 20  # within Slurm's KillWait (30 s by default) after scancel's SIGTERM
TERMINAL = {"BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED",
            "TIMEOUT", "SPECIAL_EXIT", "REVOKED"}  # fmt: skip
WAITING = {"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "RESV_DEL_HOLD", "SUSPENDED", "STOPPED"}
TIME_RE = re.compile(r"^(\d+-)?\d+(:\d{1,2}){0,2}$|^\d+-\d+$")
SRUN_TASK_ERROR = re.compile(r"srun: error: (\S+): tasks? ([\d,\-]+): (.+)")
TOOLS_FIX = "load the cluster's Slurm environment (module load slurm, or install slurm-client) on this host"


class SlurmError(EnvironmentProblem):
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


SLURM_OPTIONS = {"partition": "partition", "account": "account", "time_limit": "time", "sbatch_args": "sbatch_args",
                 "container_image": "container_image", "master_port": "master_port"}  # request field -> job key


def options(meta: dict) -> dict[str, Any]:
    """The run's Slurm options and job record: run.json's `slurm` table with the request's own fields over it."""
    s = dict(meta.get("slurm") or {})
    for field_name, key in SLURM_OPTIONS.items():
        if meta.get(field_name) not in (None, []):
            s[key] = meta[field_name]
    return s


def config_name(meta: dict) -> str:
    c = meta.get("config")
    return c.get("name") if isinstance(c, dict) else str(c)


def batch_script(run: Path, meta: dict, use_gpus: bool, gres: str | None = "gpu") -> str:
    """The run's batch script: the allocation, then kit's stage loop on the first node."""
    s = options(meta)
    python, root = kit_command()
    lines = [
        "#!/bin/bash",
        f"# kit run {run.name}: {meta['case']} config {config_name(meta)}, {meta['nodes']} node(s) x "
        f"{meta['gpus']}, written by kit. `kit run` submitted it; `kit resume {run}` submits it again.",
        f"#SBATCH --job-name=kit-{meta['case']}-{config_name(meta)}",
        f"#SBATCH --nodes={meta['nodes']}",
        "#SBATCH --ntasks-per-node=1",
        "#SBATCH --exclusive",
        f"#SBATCH --output={run}/slurm/job-%j.out",
        "#SBATCH --open-mode=append",
        f"#SBATCH --chdir={run}",
    ]
    if use_gpus and gres:  # the devices, under the GRES name their vendor gives Slurm (kit/vendors)
        lines.append(f"#SBATCH --gres={gres}:{meta['gpus']}")
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
    image = options(meta).get("container_image")
    if not image:
        return []
    mounts = [f"{meta['results']}:{meta['results']}"]
    mounts += [f"{meta[k]}:{meta[k]}:ro" for k in ("data", "models", "eval_data", "model_dir") if meta.get(k)]
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


class SlurmLauncher(LauncherBase):
    """The stage's ranks as one srun step of the current allocation (the `Launcher` interface); outside an
    allocation, a batch job that runs `kit slurm-job RUN`, submitted and followed."""

    name = "slurm"
    what = "task"
    groups = ("slurm", "native")

    # ---- lifecycle ----

    @classmethod
    def request_problems(cls, req: Any) -> list[str]:

        docker_only = [f for f in given(req, "containers") if f != "--master-port"]
        if docker_only:
            return [f"{', '.join(docker_only)} belong(s) to the Docker container path; with --launcher slurm the "
                    "containers are pyxis's (--container-image), on the nodes Slurm allocates"]  # fmt: skip
        if req.native and req.container_image:
            return ["--native and --container-image exclude each other: --native runs --python on the nodes, "
                    "--container-image runs the stages in that image through pyxis"]  # fmt: skip
        if not req.native and not req.container_image:
            return ["--launcher slurm runs the stages in containers through pyxis: pass --container-image IMAGE "
                    "(an enroot image, e.g. one made by `enroot import dockerd://TAG`; see docs/slurm.md), or "
                    "--native to run --python on the nodes"]  # fmt: skip
        if req.time_limit and not valid_time(req.time_limit):
            return [f"--time {req.time_limit!r}: expected a Slurm time limit (MM, HH:MM:SS, D-HH:MM:SS, ...)"]
        if req.master_port is not None and not 1024 <= req.master_port <= 65535:
            return [f"--master-port {req.master_port}: expected a port from 1024 to 65535"]
        return []

    @classmethod
    def prepare(cls, req: Any, cfg: Any, dry: bool = False) -> tuple[SlurmLauncher, list]:
        meta = {**req.to_dict(), "config": cfg.name}
        launcher = cls(cases.get(req.case), meta, hang_timeout=req.hang_timeout)
        launcher.use_gpus = cfg.device != "cpu"
        launcher.gres = vendors.for_config(cfg.device).slurm_gres
        launcher.follow = req.follow
        return launcher, []

    def describe(self, req: Any, cfg: Any, console: Any, commands: dict[str, list[str]], run: Path) -> list:
        from rich.text import Text

        console.print(Text(f"{describe(self.meta)}; the batch script (RUN/slurm/{SCRIPT}):", style="bold"))
        console.print(Text(batch_script(run, self.meta, self.use_gpus, self.gres)), soft_wrap=True)
        python = req.python if req.native else "python"
        for stage, args in commands.items():
            step = run / "slurm" / f"{stage}.sh"
            console.print(Text(f"{stage}: {shlex.join(stage_srun(self.meta, run / stage, step))}"), soft_wrap=True)
            console.print(Text(step_script(python, stage_of(self.case, stage).module, req.nodes, req.gpus,
                                           "FIRST_NODE_ADDR", req.master_port or 0, args)
                               .replace("--master-port=0", "--master-port=FREE_PORT"), style="dim"),
                          soft_wrap=True)  # fmt: skip
        return []

    def before_record(self, run: Any, req: Any, cfg: Any, console: Any) -> dict[str, Any]:
        """Inside an allocation: the allocation; outside: the batch script, submitted held, its job id."""
        stack = {"name": "native", "python": req.python} if not req.container_image else {"name": "native",
                                                                                          "image": req.container_image}
        if in_allocation():
            nodes = hostnames(os.environ.get("SLURM_JOB_NODELIST", ""))
            if len(nodes) < req.nodes:

                raise UsageError(f"--nodes {req.nodes}: this allocation (job {os.environ['SLURM_JOB_ID']}) has "
                                 f"{len(nodes)} node(s): {', '.join(nodes)}; ask for fewer, or allocate more")  # fmt: skip
            record = {"job_id": os.environ["SLURM_JOB_ID"], "in_allocation": True, "nodes": nodes, "script": None}
        else:
            script = write_script(run.path, self.meta, self.use_gpus, self.gres)
            self.job = sbatch(script, hold=True)
            record = {"job_id": self.job, "in_allocation": False, "script": str(script.relative_to(run.path)),
                      "script_sha256": script_digest(script)}  # fmt: skip
        self.meta["slurm"] = record
        return {"slurm": record, "containers": None, "stack": stack}

    def launch(self, run: Any, req: Any, cfg: Any, console: Any) -> int | None:
        from rich.text import Text

        record = self.meta["slurm"]
        if record.get("in_allocation"):
            console.print(Text(f"inside slurm job {record['job_id']} on {', '.join(record['nodes'])}: each stage one "
                               "srun step", style="dim"))  # fmt: skip
            return None
        run.append_status("submitted", detail={"job_id": self.job})
        release(self.job)
        console.print(Text(f"{describe(self.meta)}; batch script {run.path / record['script']}; submitted as job "
                           f"{self.job}", style="dim"))  # fmt: skip
        if not self.follow:
            console.print(f"submitted batch job {self.job}; its output: {run.path / 'slurm' / f'job-{self.job}.out'}\n"
                          f"follow it with `squeue -j {self.job}` and `kit report {run.path}`; `scancel {self.job}` "
                          "stops it")  # fmt: skip
            return 0
        return follow_job(run.path, self.job, console)

    def abandon(self) -> None:
        if getattr(self, "job", None):
            cancel(self.job)

    @classmethod
    def elsewhere(cls, run: Path, meta: dict[str, Any], console: Any, overrides: dict | None, follow: bool) -> int | None:
        """Outside an allocation the job runs the stages: `kit resume` submits the same batch script again."""
        if in_allocation():
            return None
        return resubmit(run, meta, console, overrides, follow)

    @classmethod
    def reopen(cls, run: Path, meta: dict[str, Any]) -> SlurmLauncher:
        launcher = cls(cases.get(meta["case"]), meta, hang_timeout=float(meta.get("hang_timeout") or 0))
        record_allocation(run, launcher)
        return launcher

    @classmethod
    def ranks_here(cls, req: Any) -> bool:
        return False  # Slurm's nodes: `kit check-host --launcher slurm` counts the partition's devices

    def where_ranks_run(self) -> str:
        image = options(self.meta).get("container_image")
        return f"the image {image}" if image else self.python

    def environment_facts(self) -> dict[str, Any]:
        return {"slurm": self.allocation()}

    def probed_stack(self, probe: dict[str, Any]) -> dict[str, Any] | None:
        st = stacks.native_stack(probe)
        image = options(self.meta).get("container_image")
        return {**st, "image": image} if image else st

    def image_name(self) -> str:
        return options(self.meta).get("container_image") or "native"

    def __init__(self, case: Case, meta: dict, hang_timeout: float = 0.0) -> None:
        self.case = case
        self.meta = meta
        self.hang_timeout = hang_timeout
        self.containers = bool(options(meta).get("container_image"))
        self.python = "python" if self.containers else meta.get("python", sys.executable)
        self.nodes = hostnames(os.environ.get("SLURM_JOB_NODELIST", "") or os.environ.get("SLURM_NODELIST", ""))
        self.env = {**os.environ}
        if not self.containers:
            self.env.setdefault("TORCH_EXTENSIONS_DIR", extensions_dir(self.python))
        self.per_node = int(meta["gpus"])
        self._stage_dir: Path | None = None
        self.use_gpus, self.follow, self.job = True, True, None
        self.gres: str | None = "gpu"  # the GRES Slurm counts the devices under (the config's vendor's)

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
        port = int(options(self.meta).get("master_port") or 0) or free_port()
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


def resubmit(run: Path, meta: dict[str, Any], console: Any, overrides: dict | None, follow: bool = True) -> int:
    """`kit resume` of a Slurm run outside an allocation: the same batch script, submitted again and followed."""

    if live := live_job(run):
        raise UsageError(f"{run} is still slurm job {live[0]} ({live[1]}): wait for it, or `scancel {live[0]}`, then "
                         "resume")  # fmt: skip
    if overrides and {"data", "models"} & set(overrides) and RunDir(run).inputs() is not None:

        req = RunRequest.from_dict(meta)
        cfg = cases.load_config(cases.get(meta["case"]), str(run / "config.toml"), [])
        if problem := same_inputs(run, req, cfg, console):
            raise UsageError(problem)
    script = run / (options(meta).get("script") or f"slurm/{SCRIPT}")
    if not script.is_file():
        raise UsageError(f"{script} is missing: it is the run's batch script; a run started inside an allocation "
                         "resumes inside one (salloc, then kit resume)")  # fmt: skip
    RunDir(run).append_status("resumed", detail=overrides or None)
    job = sbatch(script, hold=False)
    RunDir(run).append_status("submitted", detail={"job_id": job})
    console.print(f"resubmitted {script} as slurm job {job}")
    if not follow:
        console.print(f"its output: {run / 'slurm' / f'job-{job}.out'}")
        return 0
    return follow_job(run, job, console)


def record_allocation(run: Path, launcher: SlurmLauncher) -> None:

    RunDir(run).append_status("allocated", detail=launcher.allocation())


def write_script(run: Path, meta: dict, use_gpus: bool, gres: str | None = "gpu") -> Path:
    script = run / "slurm" / SCRIPT
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(batch_script(run, meta, use_gpus, gres))
    script.chmod(0o755)
    return script


def script_digest(script: Path) -> str:
    import hashlib

    return hashlib.sha256(script.read_bytes()).hexdigest()


def describe(meta: dict) -> str:
    s = options(meta)
    how = f"pyxis image {s['container_image']}" if s.get("container_image") else "native"
    opts = ", ".join(f"{k} {s[k]}" for k in ("partition", "account", "time") if s.get(k))
    return f"slurm: {meta['nodes']} node(s) x {meta['gpus']}, {how}" + (f", {opts}" if opts else "")

"""What `kit run` is asked, declared once: each field of `RunRequest` is a command-line option (its flag and help
in the field's metadata), a field of run.json, and what the launchers read. `kit run`'s signature is built from
these fields (kit/commands/run.py), so an option is spelled in one place.

`resolve()` checks a request and fills what it implies (the config's name, the stages, the GPUs per node, absolute
paths where other hosts read them) before anything is created: a bad request raises UsageError (exit 2) and leaves
nothing behind. What only a launcher can judge (its own options) it judges (kit/launchers); what only the case can
judge (a stage that cannot run alone) the case does (`Case.request_problems`).
"""

from __future__ import annotations

import math
import os
import shutil
import sys
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from kit import case as cases
from kit.case.choice import default_config
from kit.errors import EXIT_USAGE, UsageError


def opt(*flags: str, help: str, metavar: str | None = None, group: str = "run", cli: bool = True) -> dict[str, Any]:  # noqa: A002
    """A field's option: its flags (none: the field's own name), help text, metavar and which launcher it belongs to
    (`group`: run, containers, slurm, native); `cli=False` for a field `resolve()` fills."""
    return {"flags": flags, "help": help, "metavar": metavar, "group": group, "cli": cli}


@dataclass
class RunRequest:
    case: str = field(metadata=opt(help="The case to run (kit configs lists a case's configs).", metavar="CASE"))
    config: str | None = field(default=None, metadata=opt(
        help="Config name (cases/CASE/configs/NAME.toml) or a .toml path; default: the case's config for "
             "--nodes x --gpus."))
    stage: str = field(default="all", metadata=opt(
        help="all, train (every training stage) or one stage of the case."))
    nodes: int = field(default=1, metadata=opt(help="Nodes (one container each, or one Slurm node each)."))
    gpus: int | None = field(default=None, metadata=opt(
        help="Devices per node (ranks per node on a CPU); default: the config's."))
    data: Path | None = field(default=None, metadata=opt(help="Data root in the case's layout (not with --synthetic)."))
    models: Path | None = field(default=None, metadata=opt(help="Directory of the case's initial checkpoints."))
    results: Path = field(default=Path("runs"), metadata=opt(help="Where run directories are created."))
    synthetic: bool = field(default=False, metadata=opt(help="Random-init model and generated data: no downloads."))
    max_steps: int = field(default=0, metadata=opt(
        help="Stop each training stage after this many optimizer steps (0: one epoch)."))
    save: bool = field(default=True, metadata=opt(help="Save each training stage's output."))
    overrides: list[str] = field(default_factory=list, metadata=opt(
        "--set", metavar="KEY=VALUE", help="Override a config value, e.g. --set finetune.micro_batch=8."))
    eval_data: Path | None = field(default=None, metadata=opt(
        help="The eval set (a local copy in the case's layout); default: the case's folder under --data."))
    model_dir: Path | None = field(default=None, metadata=opt(
        help="With --stage of the eval stage alone: the trained model to evaluate (a run's output)."))
    eval_decoding: str = field(default="greedy", metadata=opt(
        help="greedy (deterministic) or reference (the reference's own decoding)."))
    eval_limit: int = field(default=0, metadata=opt(help="Evaluate only the first K questions (0: all)."))
    hang_timeout: float = field(default=0.0, metadata=opt(
        help="Seconds without a step before a stage is declared hung, its stacks dumped and it is stopped (0: the "
             "larger of 600 s and 20 x the median step time)."))
    dry_run: bool = field(default=False, metadata=opt(
        help="Print the plan (containers, mounts, commands), then every check a launch would stop on; start "
             "nothing, write nothing. Exit 0 when a launch would go, else the code the launch would exit with."))
    launcher: str = field(default="local", metadata=opt(
        help="local (this host: --native, or Docker containers on --hosts) or slurm (sbatch/srun)."))
    # ---- native (this host, or Slurm's nodes with --native) ----
    native: bool = field(default=False, metadata=opt(
        help="Run on this host with torchrun instead of in containers.", group="native"))
    python: str = field(default=sys.executable, metadata=opt(
        help="Python that runs the case with --native.", group="native"))
    # ---- containers (Docker engines) ----
    image: str | None = field(default=None, metadata=opt(
        help="Container image (default: the newest `kit build` recorded under RESULTS).", group="containers"))
    hosts: str | None = field(default=None, metadata=opt(
        help="One Docker host per node, node 0 first: local, user@host[:port] (ssh://), or a base URL; commas "
             "between them.", group="containers"))
    ssh_options: list[str] = field(default_factory=list, metadata=opt(
        "--ssh-option", help="Extra ssh option for ssh:// hosts, e.g. '-i KEY'.", group="containers"))
    master_addr: str | None = field(default=None, metadata=opt(
        help="Rendezvous address of node 0 as the others reach it (several nodes).", group="containers"))
    master_port: int | None = field(default=None, metadata=opt(
        help="Rendezvous port (default: a free one on node 0, or 29500 remotely).", group="containers"))
    env: list[str] = field(default_factory=list, metadata=opt(
        "--env", metavar="KEY=VALUE", help="Set in every container (NCCL_*/GLOO_* of this shell pass on anyway).",
        group="containers"))
    ulimits: list[str] = field(default_factory=list, metadata=opt(
        "--ulimit", metavar="NAME=SOFT[:HARD]", help="Container limit over kit's (memlock=-1, stack=64 MiB).",
        group="containers"))
    # ---- slurm ----
    partition: str | None = field(default=None, metadata=opt(
        help="Slurm partition (--launcher slurm; default: the cluster's).", group="slurm"))
    account: str | None = field(default=None, metadata=opt(help="Slurm account to charge.", group="slurm"))
    time_limit: str | None = field(default=None, metadata=opt(
        "--time", help="Slurm time limit, e.g. 04:00:00.", group="slurm"))
    sbatch_args: list[str] = field(default_factory=list, metadata=opt(
        "--sbatch-arg", metavar="ARG", help="One more sbatch option for the batch script, e.g. --qos=bench.",
        group="slurm"))
    container_image: str | None = field(default=None, metadata=opt(
        help="With --launcher slurm: the image pyxis runs the stages in (e.g. a squashfs made by enroot import).",
        group="slurm"))
    follow: bool = field(default=True, metadata=opt(
        help="With --launcher slurm: follow the job to its end (--no-follow: submit, print the job id).",
        group="slurm"))
    # ---- filled by resolve() ----
    stages: list[str] = field(default_factory=list, metadata=opt(help="the stages to run", cli=False))
    command: list[str] = field(default_factory=list, metadata=opt(help="the command line", cli=False))
    slurm: dict[str, Any] | None = field(default=None, metadata=opt(help="the Slurm job, once submitted", cli=False))

    @property
    def launcher_name(self) -> str:
        """The launcher that runs it: slurm, native or containers; --launcher's own word when it names none of them
        (kit/launchers refuses it by that word)."""
        if self.launcher not in ("local", "slurm"):
            return str(self.launcher)
        return "slurm" if self.launcher == "slurm" else "native" if self.native else "containers"

    @property
    def world(self) -> int:
        return self.nodes * (self.gpus or 0)

    def to_dict(self) -> dict[str, Any]:
        """run.json's request: every field, paths as strings."""
        d = asdict(self)
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in d.items() if k != "dry_run"}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunRequest:
        """A request from run.json (fields it does not know are left out; paths become Paths again)."""
        known = {f.name: f for f in fields(cls)}
        kw = {}
        for k, v in d.items():
            if k not in known:
                continue
            if v is not None and known[k].type in ("Path | None", "Path"):
                v = Path(v)
            kw[k] = v
        if isinstance(kw.get("config"), dict):  # runs written before the config lived in config.toml alone
            kw["config"] = kw["config"].get("name")
        return cls(**kw)


def cli_fields() -> list[Any]:
    """The fields `kit run` offers as options, in declaration order."""
    return [f for f in fields(RunRequest) if f.metadata.get("cli", True)]


def field_default(f: Any) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:  # type: ignore[misc]
        return None  # a list option: Typer's None means "not given"
    return ...


def given(req: RunRequest, group: str) -> list[str]:
    """The options of a group (containers, slurm, native) that differ from their defaults, by their flags."""
    out = []
    for f in fields(RunRequest):
        if f.metadata.get("group") != group or not f.metadata.get("cli", True):
            continue
        value, default = getattr(req, f.name), field_default(f)
        if value not in (default, None, [], False) and not (f.name == "python" and value == sys.executable):
            out.append(flag_of(f))
    return out


def flag_of(f: Any) -> str:
    return (f.metadata.get("flags") or ("--" + f.name.replace("_", "-"),))[0]


PYTHON_FIX = "pass --python PATH: the Python of an environment with the case's packages (torch, deepspeed)"


def python_problem(python: str, flag: str = "--python") -> str | None:
    """Why `python` cannot run the case's launcher (missing, not executable), or None. Whether it can import the
    case's packages is the environment probe's question (seconds): here only what costs nothing."""
    if shutil.which(python):
        return None
    if os.path.isdir(python):
        why = "is a directory, not a Python executable"
    elif os.path.exists(python):
        why = "is not executable"
    elif os.path.lexists(python):
        why = f"is a broken symlink (to {os.readlink(python)}, which does not exist)"
    else:
        why = "does not exist" if os.sep in python else "is not a command on PATH"
    return f"{flag} {python} {why}; {PYTHON_FIX}"


def results_problem(results: Path) -> str | None:
    """Why run directories cannot be created under `results` (a file, under a file, not writable), or None."""
    target = results.absolute()
    p = target
    while not p.exists() and p != p.parent:  # --results may not exist yet: its nearest existing parent decides
        p = p.parent
    if not p.is_dir():
        where = "is a file" if p == target else f"is under {p}, a file"
        return f"--results {results} {where}, not a directory; pass a directory (it is created when missing)"
    if not os.access(p, os.W_OK | os.X_OK):
        where = "" if p == target else f" ({p}, where it would be created)"
        return (f"--results {results}: cannot create run directories there{where}: not writable by this user; "
                "pass a directory you can write to")  # fmt: skip
    return None


@dataclass
class Stop:
    """A check a launch would stop on, as a dry run lists it: the exit code the launch would end with, and why."""

    code: int
    message: str


def resolve(req: RunRequest, launcher_cls: Any, stops: list[Stop] | None = None) -> tuple[RunRequest, Any]:
    """Check the request and fill what it implies; returns (request, config). Raises UsageError for a request wrong
    in itself. With `stops` (a dry run), what this host's paths lack (--data, --models, the eval set, --results,
    --python) is added there instead of raised, so the plan can still be shown."""

    def refuse(message: str) -> None:
        if stops is None:
            raise UsageError(message)
        stops.append(Stop(EXIT_USAGE, message))

    case = cases.get(req.case)
    names = [s.name for s in case.stages]
    training = list(cases.training(case))
    if req.config is None:  # the shipped config for this host's devices, or the command that derives one
        req.config = default_config(case, req.nodes, req.gpus, here=req.launcher == "local" and not req.hosts)
    cfg = cases.load_config(case, req.config, req.overrides)
    req.config = cfg.name
    if req.stage == "all":
        req.stages = names
    elif req.stage == "train":
        req.stages = training
    elif req.stage in names:
        req.stages = [req.stage]
    else:
        raise UsageError(f"--stage {req.stage!r}: expected all, train or one of {', '.join(names)}")
    # --gpus None: not given, the config's; --gpus 0 is a request like --nodes 0, and refused the same way.
    for flag, n, default in (("--nodes", req.nodes, "1"), ("--gpus", req.gpus, f"the config's {cfg.gpus_per_node} per node")):
        if n is not None and n < 1:
            raise UsageError(f"{flag} {n}: must be at least 1 (leave {flag} out for {default})")
    req.gpus = req.gpus or cfg.gpus_per_node
    for problem in launcher_cls.request_problems(req):
        raise UsageError(problem)
    trains = [s for s in req.stages if s in training]
    cfg.check_world_size(req.nodes * req.gpus, trains)  # names every stage whose global batch does not divide
    if req.synthetic and req.data is not None:
        raise UsageError(f"--synthetic generates its own data set; drop --data, or drop --synthetic to train on {req.data}")
    if req.hang_timeout < 0 or not math.isfinite(req.hang_timeout):
        raise UsageError(f"--hang-timeout {req.hang_timeout}: expected seconds (0: from the observed step times)")
    if req.max_steps < 0 or req.eval_limit < 0:
        raise UsageError("--max-steps and --eval-limit must be 0 (everything) or positive")
    if req.eval_decoding not in ("greedy", "reference"):
        raise UsageError(f"--eval-decoding {req.eval_decoding!r}: expected greedy or reference")
    for problem in case.request_problems(req.to_dict(), cfg):
        raise UsageError(problem)
    if not req.synthetic:
        needed = [("--data", req.data)] if trains else []
        needed += [("--models", req.models)]
        missing = [name for name, v in needed if v is None]
        if missing:
            refuse(f"{' and '.join(missing)} needed for a run on real data and weights (or pass --synthetic)")
        for name, p in needed:
            if p is not None and not p.is_dir():
                refuse(f"{name} {p}: no such directory")
    evals = [s for s in req.stages if s in cases.evaluating(case)]
    if evals:
        if req.eval_data is None and req.data is not None and not req.synthetic:
            req.eval_data = case.eval_default(req.data)
        # (no --data at all is one stop already: the eval set's default lies under --data)
        no_data_at_all = req.eval_data is None and req.data is None and trains
        if not req.synthetic and (req.eval_data is None or not req.eval_data.is_dir()) and not no_data_at_all:
            refuse(case.eval_data_problem(req.eval_data))
        if not trains and (why := case.eval_model_problem(req.model_dir)):
            refuse(why)
    for problem in (results_problem(req.results), python_problem(req.python) if req.native else None):
        if problem:
            refuse(problem)
    if req.launcher_name != "native":  # containers and other nodes see every directory at its absolute host path
        for name in ("results", "data", "models", "eval_data", "model_dir"):
            p = getattr(req, name)
            if p is not None:
                setattr(req, name, p.resolve())
    if req.launcher_name == "slurm" and req.native and os.sep in req.python:
        req.python = os.path.abspath(req.python)  # the nodes run it from the shared file system
    req.command = list(sys.argv)
    return req, cfg

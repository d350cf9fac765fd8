"""The launchers: native (torchrun on this host), containers (one per node, through Docker engines) and Slurm
(sbatch and srun on a cluster), each one module behind the interface in `base` (its whole lifecycle: plan, dry
run, start or submit, follow, stop, resume), with the stage loop, progress, hang watch and failure report written
once there. A run names its launcher in run.json; `launcher_class` is the only place that maps a name to a class,
so a fourth launcher is one module and one line here.
"""

from typing import Any

from kit.errors import UsageError
from kit.launchers.base import (
    EXIT_ENVIRONMENT,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    Launcher,
    LauncherBase,
    StageResult,
    StartFailed,
    run_stage,
    tail_lines,
)
from kit.launchers.containers import ContainerLauncher
from kit.launchers.native import NativeLauncher
from kit.launchers.slurm import SlurmLauncher

LAUNCHERS: dict[str, type[LauncherBase]] = {
    NativeLauncher.name: NativeLauncher,
    ContainerLauncher.name: ContainerLauncher,
    SlurmLauncher.name: SlurmLauncher,
}


def launcher_class(req: Any) -> type[LauncherBase]:
    """The launcher of a request (or of a run's request, from run.json): `req.launcher_name`."""
    name = req.launcher_name
    if name not in LAUNCHERS:
        raise UsageError(f"--launcher {req.launcher!r}: expected local (this host, or Docker engines) or slurm")
    return LAUNCHERS[name]


__all__ = [
    "EXIT_ENVIRONMENT", "EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_USAGE", "LAUNCHERS", "Launcher",
    "LauncherBase", "StageResult", "StartFailed", "launcher_class", "run_stage", "tail_lines",
]  # fmt: skip

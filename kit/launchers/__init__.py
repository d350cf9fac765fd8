"""The launchers: native (torchrun on this host), containers (one per node, through Docker engines) and Slurm
(sbatch and srun on a cluster), each one module behind the interface in `base` (`Launcher`), with the stage loop,
progress, hang watch and failure report written once there."""

from kit.launchers.base import (
    EXIT_ENVIRONMENT,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    Launcher,
    StageResult,
    StartFailed,
    run_stage,
    tail_lines,
)

__all__ = [
    "EXIT_ENVIRONMENT", "EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_USAGE", "Launcher", "StageResult",
    "StartFailed", "run_stage", "tail_lines",
]  # fmt: skip

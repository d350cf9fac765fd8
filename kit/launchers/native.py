"""The native launcher: torchrun on this host, one process per GPU (per CPU rank without GPUs)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

from ..cases import Case
from ..guard import child_setup
from ..progress import StageProgress
from .base import failure_message, free_port, stop_group


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


class NativeLauncher:
    """torchrun on this host: one process per GPU (per CPU rank without GPUs)."""

    name = "native"
    what = "rank"

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

    def start(self, run: Path, stage: str, world: int, case_args: list[str], display: StageProgress) -> subprocess.Popen:
        stage_dir = run / stage
        cmd = self.command(
            self.case.stage_module(stage), world, free_port(), ["--stage", stage, "--run-dir", str(run), *case_args]
        )
        with open(stage_dir / "logs" / "launcher.log", "ab") as log:
            log.write(("$ " + " ".join(cmd) + "\n").encode())
            log.flush()
            # A session of its own: Ctrl-C reaches the host only, which then stops every rank in order; and SIGTERM
            # when this process dies, however it dies, so no rank outlives it.
            return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env, preexec_fn=child_setup)

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

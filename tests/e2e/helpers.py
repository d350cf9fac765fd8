"""End-to-end helpers: `kit` as a user runs it (a subprocess), on the tiny config with two CPU ranks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
KIT = [sys.executable, "-m", "kit.cli"]


def kit(*args: str, env: dict | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*KIT, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
    )  # fmt: skip


def _default_sigint() -> None:
    # A command started in the background of a non-interactive shell (`cmd &` in a script) inherits SIGINT ignored,
    # and so would kit; the Ctrl-C tests need kit to see it as a terminal's foreground job does.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_kit(*args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [*KIT, *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "COLUMNS": "200", **(env or {})}, start_new_session=True, preexec_fn=_default_sigint,
    )  # fmt: skip


def events(path: Path) -> list[dict]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        if line.startswith(":::MLLOG "):
            try:
                out.append(json.loads(line[9:]))
            except json.JSONDecodeError:
                pass
    return out


def steps(path: Path) -> list[dict]:
    return [e["value"] for e in events(path) if e["key"] == "kit_step"]


def only_run(results: Path) -> Path:
    runs = [p for p in results.iterdir() if (p / "run.json").exists()]
    assert len(runs) == 1, runs
    return runs[0]


def wait_for_step(run_parent: Path, stage: str, step: int, proc: subprocess.Popen, timeout: float = 600) -> Path:
    """Wait until the stage has logged `step`; returns the run directory."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, f"kit ended early ({proc.returncode}):\n{proc.stdout.read()}"
        runs = [p for p in run_parent.iterdir() if (p / "run.json").exists()] if run_parent.exists() else []
        if runs:
            done = steps(runs[0] / stage / "events.log")
            if done and done[-1]["step"] >= step:
                return runs[0]
        time.sleep(0.2)
    raise AssertionError(f"step {step} of {stage} not reached in {timeout}s")


def status_rows(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "status.jsonl").read_text().splitlines()]

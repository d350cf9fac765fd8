"""Tiny runs of the case as a user makes them (a `kit` subprocess), and the system file a test submission uses."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SYSTEM_TOML = """\
submitter = "Acme Compute"
system_name = "cpu box"
division = "closed"
status = "available on-premise"
cooling = "air"
hw_notes = "two CPU cores: the kit's own tests"
"""


def kit_cli(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kit.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "COLUMNS": "200"})  # fmt: skip


def make_tiny_run(results: Path, *extra: str) -> Path:
    r = kit_cli("run", "llava1_5_7b", "--config", "tiny", "--synthetic", "--native", "--results", str(results), *extra)
    assert r.returncode == 0, r.stdout + r.stderr
    runs = [p for p in results.iterdir() if (p / "run.json").exists()]
    assert len(runs) == 1, runs
    return runs[0]

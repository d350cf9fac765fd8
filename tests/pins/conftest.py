"""The reference stack executed (`make test-pins`): the tiny case trained under the image's pins, beside the current stack.

pytest runs under the pinned interpreter (.venv-pins: torch 2.1.2, transformers 4.37.2, DeepSpeed 0.13.1); `kit`
itself runs from the current environment (.venv, or KIT_HOST_PYTHON), as a user runs it, and hands the ranks the
pinned interpreter with `--python`. Every run here is a real `kit run` of two CPU ranks; the session fixture below
makes the one pinned end-to-end run that the assertions of test_reference_stack.py share.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PINS = {"torch": "2.1.2", "deepspeed": "0.13.1", "transformers": "4.37.2"}


def _installed(dist: str) -> str | None:
    try:
        return metadata.version(dist).split("+")[0]
    except metadata.PackageNotFoundError:
        return None


def under_pins() -> bool:
    """Whether this pytest runs in the image's pins (make test-pins), the only place these tests mean something."""
    return all(_installed(d) == v for d, v in PINS.items())


def host_python() -> str:
    """The interpreter that runs `kit` (its host side: typer, rich, docker): the current stack's environment."""
    return os.environ.get("KIT_HOST_PYTHON") or str(ROOT / ".venv" / "bin" / "python")


PINNED_PYTHON = sys.executable  # the ranks' interpreter: the one running these tests (.venv-pins/bin/python)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if under_pins():
        if not Path(host_python()).exists():
            raise pytest.UsageError(f"tests/pins runs `kit` with {host_python()}, which does not exist: build .venv "
                                    "(`make .venv/.installed`) or set KIT_HOST_PYTHON")  # fmt: skip
        return
    found = ", ".join(f"{d} {_installed(d)}" for d in PINS)
    skip = pytest.mark.skip(reason=f"the reference stack's end-to-end tests run under its pins (make test-pins); "
                                   f"this interpreter has {found}")  # fmt: skip
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(skip)


def kit(*args: str, env: dict | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([host_python(), "-m", "kit.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "COLUMNS": "200", **(env or {})})  # fmt: skip


def events(path: Path) -> list[dict]:
    out = []
    for line in path.read_text().splitlines() if path.exists() else []:
        if line.startswith(":::MLLOG "):
            try:
                out.append(json.loads(line[9:]))
            except json.JSONDecodeError:
                pass
    return out


def attempts(path: Path) -> list[list[dict]]:
    """The kit_step values of a stage's events.log, one list per attempt (each attempt starts with its kit_facts)."""
    out: list[list[dict]] = []
    for e in events(path):
        if e["key"] == "kit_facts":
            out.append([])
        elif e["key"] == "kit_step" and out:
            out[-1].append(e["value"])
    return out


def only_run(results: Path) -> Path:
    runs = [p for p in results.iterdir() if (p / "run.json").exists()]
    assert len(runs) == 1, runs
    return runs[0]


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # a background job of a script inherits SIGINT ignored


@dataclass
class PinnedRun:
    run: Path
    first: str  # what the interrupted `kit run` printed
    resume: subprocess.CompletedProcess
    interrupted_at: int  # the last finetune step seen logged before Ctrl-C was sent


@pytest.fixture(scope="session")
def pinned_run(tmp_path_factory: pytest.TempPathFactory) -> PinnedRun:
    """`kit run llava1_5_7b --config tiny --synthetic --native --python .venv-pins/bin/python`: pretrain (ZeRO-2),
    finetune (ZeRO-3), eval, two ranks; Ctrl-C during finetune after its checkpoint at step 8, then `kit resume`.

    One run serves every assertion: the stages, the records, the resume. Interrupting costs a finetune start-up and
    two steps again, far less than a second run."""
    results = tmp_path_factory.mktemp("pinned")
    proc = subprocess.Popen(
        [host_python(), "-m", "kit.cli", "run", "llava1_5_7b", "--config", "tiny", "--synthetic", "--native",
         "--python", PINNED_PYTHON, "--results", str(results)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        env={**os.environ, "COLUMNS": "200"}, preexec_fn=_default_sigint,
    )  # fmt: skip
    try:
        deadline, run, done = time.time() + 600, None, []
        while time.time() < deadline:
            assert proc.poll() is None, f"kit ended early ({proc.returncode}):\n{proc.stdout.read()}"
            runs = [p for p in results.iterdir() if (p / "run.json").exists()]
            if runs:
                run = runs[0]
                done = [s for a in attempts(run / "finetune" / "events.log") for s in a]
                if done and done[-1]["step"] >= 10:  # past the finetune checkpoint at step 8
                    break
            time.sleep(0.2)
        else:
            raise AssertionError("finetune step 10 not reached in 600 s under the pins")
        os.killpg(proc.pid, signal.SIGINT)  # a terminal's Ctrl-C
        out, _ = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, out
    resume = kit("resume", str(run))
    assert resume.returncode == 0, resume.stdout + resume.stderr
    return PinnedRun(run, out, resume, done[-1]["step"])

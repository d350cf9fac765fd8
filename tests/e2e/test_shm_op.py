"""DeepSpeed's CPU op (deepspeed_shm_comm, cases/llava1_5_7b/ops.py): compiled once per environment before the ranks
start, with a line that says so. One real cold build into a fresh extensions folder, with two `kit run`s started
together: the first compiles and is stopped with SIGTERM mid-build (its compilers go with it), the second waits for
it, then compiles once itself and trains, its ranks loading what it built."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cases.llava1_5_7b import ops

from .helpers import ROOT, only_run, start_kit, status_rows

pytestmark = pytest.mark.slow
RUN = ("run", "llava1_5_7b", "--config", "tiny", "--synthetic", "--native", "--stage", "pretrain", "--max-steps", "1",
       "--no-save")  # fmt: skip


def wait_until(what: str, check, procs, timeout: float = 300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        for p in procs:
            assert p.poll() is None, f"kit ended early ({p.returncode}) while waiting for {what}:\n{p.stdout.read()}"
        if value := check():
            return value
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {timeout} s")


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def ops_log(results: Path) -> str:
    logs = list(results.glob("*/logs/ops.log"))
    return logs[0].read_text() if logs else ""


def built_targets(folder: Path) -> list[str]:
    """What ninja built there, one entry per build of a target (.ninja_log: start, end, mtime, target, hash)."""
    log = folder / ".ninja_log"
    return [ln.split("\t")[3] for ln in log.read_text().splitlines()[1:]] if log.exists() else []


def test_the_op_is_compiled_once_with_a_line_and_a_stopped_build_leaves_nothing(tmp_path):
    ext = tmp_path / "torch_extensions"
    folder = ext / ops.OP
    env = {"TORCH_EXTENSIONS_DIR": str(ext)}  # kit's default is the venv's folder, already built
    a = start_kit(*RUN, "--results", str(tmp_path / "a"), env=env)
    b = None
    try:
        compilers = wait_until("a's build", lambda: ops._builders(folder) if folder.is_dir() else [], [a])
        b = start_kit(*RUN, "--results", str(tmp_path / "b"), env=env)
        wait_until("b waiting for a's build", lambda: "is compiling it into" in ops_log(tmp_path / "b"), [a, b])
        compilers = sorted(set(compilers) | set(ops._builders(folder)))  # ninja and the compilers a started
        assert not built_targets(folder), "the build should still be running"
        a.send_signal(signal.SIGTERM)
        out_a, _ = a.communicate(timeout=120)
        assert a.returncode == 143, out_a
        time.sleep(1)
        assert [p for p in compilers if alive(p)] == [], "a compiler outlived the stopped build"
        text_a = " ".join(out_a.split())
        assert "pretrain: compiling DeepSpeed's deepspeed_shm_comm op for this CPU, once for this environment: about" \
            in text_a, out_a
        assert "pretrain: interrupted" in text_a and "kit resume" in text_a, out_a
        run_a = only_run(tmp_path / "a")
        assert status_rows(run_a)[-1]["state"] == "interrupted"

        out_b, _ = b.communicate(timeout=900)
        assert b.returncode == 0, out_b
    finally:
        for p in (a, b):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
    text_b = " ".join(out_b.split())
    # b waited for a's build, said so, then compiled the op itself once a's stopped build let go of the lock.
    assert re.search(r"pretrain: waiting for pid \d+, which compiles DeepSpeed's deepspeed_shm_comm op for this "
                     r"environment \(0:00:0\d so far\)", text_b), out_b  # fmt: skip
    assert "pretrain: compiling DeepSpeed's deepspeed_shm_comm op for this CPU, once for this environment" in text_b
    assert re.search(r"\(0:00:1\d so far\)", text_b), "no line after 10 s of compiling"
    assert re.search(r"pretrain: compiled DeepSpeed's deepspeed_shm_comm op in 0:0\d:\d\d; starting the ranks", text_b)
    assert text_b.index("waiting for pid") < text_b.index("compiling DeepSpeed") < text_b.index("pretrain: finished")
    # Built once: each object and the library once in ninja's log (the ranks only loaded it); no torch lock left.
    assert sorted(built_targets(folder)) == ["deepspeed_shm_comm.so", "shm.o", "shm_interface.o"]
    assert not (folder / "lock").exists()
    states = [json.loads(ln)["state"] for ln in ops_log(tmp_path / "b").splitlines() if ln.startswith("{")]
    assert states == [], "the helper's JSON goes to kit, its words to the log"

    # From now on the check is quick and finds it built (what every later run does before its ranks start).
    r = subprocess.run([sys.executable, "-m", "cases.llava1_5_7b.ops"], cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ, **env}, timeout=60)  # fmt: skip
    assert r.returncode == 0 and json.loads(r.stdout.splitlines()[-1])["state"] == "ready", r.stdout + r.stderr
    assert sorted(built_targets(folder)) == ["deepspeed_shm_comm.so", "shm.o", "shm_interface.o"]


def test_a_build_that_fails_fails_the_stage_before_any_rank_starts(tmp_path):
    """No working compiler (CXX=/bin/false): the stage fails at once with the reason and the fix, instead of every
    rank failing the same build in turn."""
    env = {"TORCH_EXTENSIONS_DIR": str(tmp_path / "torch_extensions"), "CXX": "/bin/false"}
    proc = start_kit(*RUN, "--results", str(tmp_path / "runs"), env=env)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 1, out
    text = " ".join(out.split())
    assert "stage pretrain cannot start: DeepSpeed's deepspeed_shm_comm op, which the ranks load on a CPU, did not " \
           "compile (" in text, out
    assert "Install a C++ compiler and ninja (g++, ninja-build) for" in text and "then `kit resume" in text
    run = only_run(tmp_path / "runs")
    assert f"last lines of {run / 'logs' / 'ops.log'}:" in text
    assert not list((run / "pretrain").glob("logs/rank*.log")), "a rank started"
    assert status_rows(run)[-1]["state"] == "failed"

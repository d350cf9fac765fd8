"""Faults against real processes: SIGTERM and SIGHUP to a real `kit run`, SIGKILL, a second kit on one run, a hung
rank, a full disk (a real tmpfs)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from kit.run.events import load_stage

from .helpers import kit, only_run, start_kit, status_rows, wait_for_step

pytestmark = pytest.mark.slow
PRETRAIN = ("run", "llava1_5_7b", "--config", "tiny", "--synthetic", "--native", "--stage", "pretrain")


def processes_of(run: Path) -> list[int]:
    """Live processes whose command line names the run directory (torchrun and its ranks)."""
    out = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = next((ln for ln in (p / "status").read_text().splitlines() if ln.startswith("State:")), "")
        except OSError:
            continue
        if str(run) in cmd and "zombie" not in state:
            out.append(int(p.name))
    return out


def wait_gone(run: Path, timeout: float = 60) -> list[int]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        left = processes_of(run)
        if not left:
            return []
        time.sleep(0.5)
    return processes_of(run)


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_sigterm_and_sighup_stop_every_rank_and_mark_the_run_interrupted(tmp_path, sig, code):
    proc = start_kit(*PRETRAIN, "--results", str(tmp_path))
    run = wait_for_step(tmp_path, "pretrain", 3, proc)
    assert processes_of(run), "the ranks should be running"
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == code, out
    assert wait_gone(run, 30) == []
    rows = status_rows(run)
    assert rows[-1]["stage"] is None and rows[-1]["state"] == "interrupted"
    assert rows[-1]["detail"] == {"signal": signal.Signals(sig).name}
    assert ("pretrain", "interrupted") in [(r["stage"], r["state"]) for r in rows]
    if sig == signal.SIGTERM:  # and it resumes to the same end as an uninterrupted run
        r = kit("resume", str(run))
        assert r.returncode == 0, r.stdout + r.stderr
        done = load_stage(run / "pretrain").steps  # a resumed attempt's steps replace the first's
        assert [s["step"] for s in done] == list(range(1, 25))


def test_sigkill_leaves_no_rank_behind_and_the_lock_then_frees(tmp_path):
    proc = start_kit(*PRETRAIN, "--results", str(tmp_path))
    run = wait_for_step(tmp_path, "pretrain", 2, proc)
    # While it runs, a second kit on the same run is refused at once, naming the holder.
    t0 = time.time()
    r = kit("resume", str(run))
    assert r.returncode == 2 and time.time() - t0 < 30, r.stdout + r.stderr
    assert f"is in use by kit (pid {proc.pid} on " in r.stderr and "kill" in r.stderr
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert wait_gone(run, 60) == [], "ranks outlived the kit process"
    report = json.loads(kit("report", str(run), "--format", "json").stdout)
    assert report["state"] == "stopped" and report["stages"]["pretrain"]["state"] == "stopped"
    r = kit("resume", str(run))  # the dead process's lock does not block
    assert r.returncode == 0, r.stdout + r.stderr
    assert [x["state"] for x in status_rows(run) if x["stage"] is None][-1] == "finished"


def test_a_hung_rank_is_named_with_every_rank_s_stacks(tmp_path):
    r = kit(*PRETRAIN, "--results", str(tmp_path), "--hang-timeout", "8", env={"KIT_INJECT_HANG": "1:4"}, timeout=300)
    assert r.returncode == 1, r.stdout + r.stderr
    text = " ".join((r.stdout + r.stderr).split())
    assert "stage pretrain hung: no progress for" in text and "after step 3" in text
    assert "rank(s) 1 hung outside any collective; rank(s) 0 wait for them in a collective" in text
    run = only_run(tmp_path)
    stacks = (run / "pretrain" / "stacks-rank1.txt").read_text()
    assert "injected_fault" in stacks and "train.py" in stacks
    assert "torch/distributed" in (run / "pretrain" / "stacks-rank0.txt").read_text()
    assert wait_gone(run, 30) == []
    assert [x["state"] for x in status_rows(run) if x["stage"] == "pretrain"][-1] == "failed"


@pytest.fixture
def small_disk(tmp_path):
    """A real 2 MiB tmpfs (root only): the synthetic data set does not fit on it."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        if os.environ.get("KIT_REQUIRE_SERVICES") == "1":
            pytest.fail("the full-disk test needs root to mount a tmpfs")
        pytest.skip("the full-disk test needs root to mount a tmpfs")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], check=True)
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_full_disk_is_named_and_resume_continues_once_freed(small_disk):
    r = kit(*PRETRAIN, "--results", str(small_disk), timeout=300)
    assert r.returncode == 1, r.stdout + r.stderr
    text = " ".join((r.stdout + r.stderr).split())
    assert f"no space left under {small_disk}" in text and "free; the whole run needs about" in text, text
    assert "Traceback" not in r.stderr
    run = only_run(small_disk)
    assert not list(run.rglob("failure-rank*.tmp"))
    subprocess.run(["mount", "-o", "remount,size=400m", str(small_disk)], check=True)
    r = kit("resume", str(run), timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert [x["state"] for x in status_rows(run) if x["stage"] is None][-1] == "finished"

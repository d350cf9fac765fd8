"""The run lock, the hang watch's limits, the stack reading (kit/guard.py)."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from kit.run import guard

ROOT = Path(__file__).resolve().parents[2]


def test_a_second_holder_is_refused_naming_the_first(tmp_path):
    with guard.RunLock(tmp_path):
        assert guard.held(tmp_path)
        with pytest.raises(guard.RunBusy, match=r"is in use by kit \(pid \d+ on "):
            with guard.RunLock(tmp_path):
                pass
    assert not guard.held(tmp_path)
    with guard.RunLock(tmp_path):  # free again
        pass


def test_a_lock_left_by_a_killed_process_never_blocks(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pathlib import Path; from kit.run import guard;"
                               "l = guard.RunLock(Path(sys.argv[1])).__enter__(); print('held', flush=True); "
                               "time.sleep(60)", str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert holder.stdout.readline().strip() == "held"
    assert guard.held(tmp_path)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert not guard.held(tmp_path)
    with guard.RunLock(tmp_path):
        pass


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def step(n: int, seconds: float) -> dict:
    return {"key": "kit_step", "value": {"step": n, "step_time_s": seconds}}


def test_the_hang_watch_arms_at_the_first_step_and_scales_with_step_times():
    clock = Clock()
    w = guard.HangWatch(clock=clock)
    clock.t = 5000
    w.check()  # start-up: no step yet, never a hang
    w.feed([step(1, 40.0), step(2, 40.0), step(3, 40.0)])
    assert w.limit() == 800  # 20 x the median step time, over the 600 s floor
    clock.t += 799
    w.check()
    clock.t += 2
    with pytest.raises(guard.StageHung, match=r"no progress for 801 s after step 3 \(limit 800 s"):
        w.check()
    w.feed([{"key": "run_stop", "value": {}}])
    clock.t += 10_000
    w.check()  # the stage ended: nothing to watch


def test_a_given_hang_timeout_wins():
    clock = Clock()
    w = guard.HangWatch(timeout=8, clock=clock)
    w.feed([step(1, 0.1)])
    clock.t += 9
    with pytest.raises(guard.StageHung, match="--hang-timeout"):
        w.check()


def test_stacks_say_which_rank_is_in_a_collective(tmp_path):
    for k, frame in ((0, '  File "/venv/lib/python3.11/site-packages/torch/distributed/distributed_c10d.py", line 1'),
                     (1, '  File "/work/cases/llava1_5_7b/train.py", line 104 in injected_fault')):  # fmt: skip
        (tmp_path / f"stacks-rank{k}.txt").write_text(
            f"Current thread 0x1 (most recent call first):\n  File \"watch.py\", line 9 in _loop\n\n"
            f"Thread 0x2 (most recent call first):\n{frame}\n"
        )
    files, waiting, elsewhere = guard.collect_stacks(tmp_path, 2, wait=1)
    assert (waiting, elsewhere) == ([0], [1]) and len(files) == 2
    text = guard.hang_message("pretrain", "no progress", tmp_path, files, waiting, elsewhere, 2)
    assert "rank(s) 1 hung outside any collective; rank(s) 0 wait for them in a collective" in text
    assert not (tmp_path / guard.DUMP_REQUEST).exists()


def test_each_python_environment_builds_its_ops_in_a_folder_of_its_own(tmp_path):
    from kit.launchers.native import extensions_dir

    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "pyvenv.cfg").write_text("home = /usr/bin\n")
    assert extensions_dir(str(venv / "bin" / "python")) == str(venv / "torch_extensions")
    a, b = extensions_dir("/usr/bin/python3"), extensions_dir("/opt/other/bin/python3")
    assert a != b and "/torch_extensions/kit-" in a


def _status(run: Path, rows: list[tuple]) -> None:
    import json

    (run / "run.json").write_text(json.dumps({"run_id": run.name, "stages": ["pretrain", "finetune", "eval"]}))
    with open(run / "status.jsonl", "w") as f:
        for i, (stage, state) in enumerate(rows):
            f.write(json.dumps({"t": 1000.0 + i, "stage": stage, "state": state, "detail": None}) + "\n")


def test_a_run_killed_in_its_eval_stage_is_stopped_not_finished(tmp_path):
    """What a `timeout` that killed kit during the eval stage left: training finished, eval launched, no kit."""
    from kit.results.summary import run_summary

    run = tmp_path / "run"
    run.mkdir()
    _status(run, [(None, "created"), ("pretrain", "launched"), ("pretrain", "finished"), ("finetune", "launched"),
                  ("finetune", "finished"), ("eval", "launched")])  # fmt: skip
    assert run_summary(run)["state"] == "stopped"
    with guard.RunLock(run):  # while a kit process holds it, it is running
        assert run_summary(run)["state"] == "running"

"""A rank's guards (cases/llava1_5_7b/watch.py) in real processes: it stops when the kit's heartbeat goes quiet,
and writes its stacks when the host asks."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RANK = """
import sys, time
from pathlib import Path
from cases.llava1_5_7b import watch
watch.start(Path(sys.argv[1]), 0, poll=0.2)
def waiting_in_the_main_thread():
    time.sleep(120)
waiting_in_the_main_thread()
"""


def start_rank(stage_dir: Path, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", RANK, str(stage_dir)], cwd=ROOT, env={**os.environ, **env},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip


def test_a_rank_stops_when_the_heartbeat_goes_quiet(tmp_path):
    beat = tmp_path / ".kit-alive"
    beat.write_text("1")
    proc = start_rank(tmp_path, {"KIT_HEARTBEAT": str(beat), "KIT_HEARTBEAT_TIMEOUT": "2"})
    for i in range(2, 8):  # beating: it stays
        time.sleep(0.5)
        beat.write_text(str(i))
    assert proc.poll() is None
    t0 = time.monotonic()
    out, _ = proc.communicate(timeout=30)  # silence: it stops itself
    assert proc.returncode != 0 and time.monotonic() - t0 < 15
    assert "the kit process that launched this stage is gone" in out


def test_stacks_on_request(tmp_path):
    proc = start_rank(tmp_path, {"KIT_HEARTBEAT": ""})
    try:
        time.sleep(1.5)
        (tmp_path / ".dump-stacks").write_text("now")
        out = tmp_path / "stacks-rank0.txt"
        deadline = time.time() + 20
        while time.time() < deadline and "waiting_in_the_main_thread" not in (out.read_text() if out.exists() else ""):
            time.sleep(0.2)
        assert "waiting_in_the_main_thread" in out.read_text()
        assert proc.poll() is None  # a dump does not stop the rank
    finally:
        proc.kill()
        proc.wait()

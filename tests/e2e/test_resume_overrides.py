"""`kit resume RUN --python PY`: a run whose Python is gone continues with a corrected one, recorded in its history."""

from __future__ import annotations

import json
import sys

from kit.run.dir import RunDir

from .helpers import kit, only_run, status_rows


def test_resume_with_a_corrected_python(tmp_path):
    # A Python that passes `kit run`'s check (an executable file) but cannot run the case: the probe fails (exit 3).
    broken = tmp_path / "env" / "python"
    broken.parent.mkdir()
    broken.write_text("#!/bin/sh\necho 'no torch here' >&2\nexit 1\n")
    broken.chmod(0o755)
    results = tmp_path / "runs"
    r = kit("run", "llava1_5_7b", "--config", "tiny", "--synthetic", "--native", "--stage", "pretrain",
            "--max-steps", "2", "--results", str(results), "--python", str(broken), timeout=300)  # fmt: skip
    assert r.returncode == 3, r.stdout + r.stderr
    run = only_run(results)
    assert status_rows(run)[-1]["detail"] == "environment probe failed"
    broken.unlink()  # run.json still names it: raw facts are never rewritten

    r = kit("resume", str(run), "--python", str(tmp_path / "env" / "nope"))
    assert r.returncode == 2 and f"--python {tmp_path / 'env' / 'nope'} does not exist" in r.stderr, r.stderr
    r = kit("resume", str(run), "--python", sys.executable, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads((run / "run.json").read_text())["python"] == str(broken)
    resumed = [x for x in status_rows(run) if x["state"] == "resumed"]
    assert [x["detail"] for x in resumed] == [{"python": sys.executable}]  # the refused resume left no line
    assert RunDir(run).effective_request()["python"] == sys.executable
    assert [x["state"] for x in status_rows(run) if x["stage"] is None][-1] == "finished"
    assert (run / "environment.json").is_file()

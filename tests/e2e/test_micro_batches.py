"""Micro-batches of unequal size (micro_batch_order = "by_tokens") through real DeepSpeed ZeRO-3 on two ranks."""

from __future__ import annotations

import json

from .helpers import kit, only_run, steps


def test_by_tokens_trains_whole_steps(tmp_path):
    r = kit("run", "llava1_5_7b", "--config", "tiny", "--synthetic", "--native", "--stage", "finetune",
            "--max-steps", "3", "--no-save", "--set", "finetune.micro_batch_order=by_tokens",
            "--results", str(tmp_path))  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    run = only_run(tmp_path)
    cfg = json.loads((run / "run.json").read_text())["config"]["finetune"]
    done = steps(run / "finetune" / "events.log")
    assert [s["step"] for s in done] == [1, 2, 3]
    assert all(s["samples"] == cfg["global_batch"] for s in done)  # every step trains a whole global batch
    assert all(s["padded_tokens"] >= s["real_tokens"] > 0 for s in done)

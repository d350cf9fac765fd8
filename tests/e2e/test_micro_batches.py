"""Micro-batches of unequal size (micro_batch_order = "by_tokens") through real DeepSpeed ZeRO-3 on two ranks."""

from __future__ import annotations

import json
import subprocess
import sys

import tomllib

from .helpers import ROOT, events, kit, only_run, steps


def test_by_tokens_trains_whole_steps(tmp_path):
    r = kit("run", "llava1_5_7b", "--config", "tiny", "--synthetic", "--native", "--stage", "finetune",
            "--max-steps", "3", "--no-save", "--set", "finetune.micro_batch_order=by_tokens",
            "--results", str(tmp_path))  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    run = only_run(tmp_path)
    cfg = tomllib.loads((run / "config.toml").read_text())["finetune"]
    done = steps(run / "finetune" / "events.log")
    assert [s["step"] for s in done] == [1, 2, 3]
    assert all(s["samples"] == cfg["global_batch"] for s in done)  # every step trains a whole global batch
    assert all(s["padded_tokens"] >= s["real_tokens"] > 0 for s in done)
    facts = next(e["value"] for e in events(run / "finetune" / "events.log") if e["key"] == "kit_facts")
    assert facts["micro_batch_lengths"] == "tokens"  # the default: cut by each sample's exact length
    # The synthetic set holds one step more than the run trains, so no measured step is the epoch's leftover one.
    records = json.loads((run / "synthetic" / "llava_v1_5_mix665k.json").read_text())
    assert len(records) == 4 * cfg["global_batch"]

    # bench/padding.py predicts the run's padding from its data alone, exactly.
    out = tmp_path / "padding.json"
    p = subprocess.run([sys.executable, str(ROOT / "bench" / "padding.py"), "--config", "tiny", "--data",
                        str(run / "synthetic"), "--steps", "1-3", "--json", str(out)], capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
    row = next(r for r in json.loads(out.read_text())["rows"]
               if (r["micro_batch_order"], r["micro_batch_lengths"]) == ("by_tokens", "tokens"))
    assert row["real_tokens"] == sum(s["real_tokens"] for s in done)
    assert row["padded_tokens"] == sum(s["padded_tokens"] for s in done)

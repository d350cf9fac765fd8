"""bench/run.py as the performance work uses it, on the tiny config: one result file per configuration with the
issue's fields, the phase timer's per-step times, and bench/table.py's row for it."""

from __future__ import annotations

import json
import subprocess
import sys

from .helpers import ROOT

FIELDS = ("device", "gpus", "stage", "config", "versions", "tokens_per_s_per_gpu", "mfu_reference", "mfu_exact",
          "padding_waste", "peak_mem_gib")  # fmt: skip


def test_plan_to_result_files_with_phase_times(tmp_path):
    plan = tmp_path / "plan.toml"
    plan.write_text(
        '[[run]]\nname = "tiny-pretrain"\nconfig = "tiny"\nstage = "pretrain"\ngpus = 2\nmax_steps = 3\n'
        'set = ["pretrain.micro_batch=2"]\nexpect = "a smoke run"\n'
    )
    out, runs = tmp_path / "results", tmp_path / "runs"
    r = subprocess.run(
        [sys.executable, "bench/run.py", str(plan), "--out", str(out), "--results", str(runs), "--phase-times",
         "--warmup"],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    # --warmup: the first configuration ran once more before, into the runs but not into the result files
    assert "== tiny-pretrain (warm-up, not filed)" in r.stdout
    assert len(list(runs.glob("*/run.json"))) == 2 and [p.name for p in out.iterdir()] == ["tiny-pretrain.json"]
    res = json.loads((out / "tiny-pretrain.json").read_text())
    assert res["state"] == "finished" and res["overrides"] == ["pretrain.micro_batch=2"]
    for key in FIELDS:
        assert key in res, key
    assert res["tokens_per_s_per_gpu"] > 0 and 0 <= res["padding_waste"] < 1
    assert res["versions"]["deepspeed"] and res["levers"]["gradient_checkpointing"] in (True, False)
    assert res["levers"]["uncheckpointed_max_positions"] == 0 and res["fully_recomputed_micro_batches"] == 0
    times = res["phase_times_s"]
    assert len(times) == 3  # one line per optimizer step
    for step in times:
        assert step["forward_cpu"] > 0 and step["backward_cpu"] > 0 and "optimizer_cpu" in step
    table = subprocess.run([sys.executable, "bench/table.py", str(out)], cwd=ROOT, capture_output=True, text=True)
    assert "`tiny-pretrain.json`" in table.stdout and "seed: A800 1x8" in table.stdout


def test_activation_bytes_counts_what_an_uncheckpointed_layer_keeps(tmp_path):
    out = tmp_path / "bytes.json"
    runs = {}
    for n in (32, 64):
        p = subprocess.run([sys.executable, str(ROOT / "bench" / "activation_bytes.py"), "--config", "tiny",
                            "--positions", str(n), "--out", str(out)], capture_output=True, text=True)
        assert p.returncode == 0, p.stdout + p.stderr
        runs[n] = json.loads(out.read_text())
    a, b = runs[32], runs[64]
    assert b["saved_bytes"] == 2 * a["saved_bytes"] > 0  # activations grow with the positions, weights excluded
    # tiny (hidden 64, ffn 172, bf16): at least the layer's q, k, v, attention output and the MLP's gate, up and
    # product (3 x 172 + 4 x 64 values per position) are kept; a checkpointed layer keeps its input alone (64).
    assert a["saved_mib_per_position"] * 2**20 >= (3 * 172 + 4 * 64) * 2
    assert a["checkpointed_mib_per_position"] * 2**20 == 64 * 2

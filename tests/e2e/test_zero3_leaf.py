"""ZeRO-3 with whole transformer layers as leaf modules (finetune.zero3_leaf_layers) on two ranks of real DeepSpeed:
the same training as per-sub-module hooks, step for step, with gradient checkpointing on, with some layers
kept out of recomputation (finetune.uncheckpointed_layers), and with those kept only in micro-batches within a
bound of positions (finetune.uncheckpointed_max_positions)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import tomllib

from .helpers import ROOT, events, kit, only_run, steps


def _finetune(results, *sets: str) -> tuple[list[dict], dict]:
    args = [a for s in sets for a in ("--set", s)]
    r = kit("run", "llava1_5_7b", "--config", "tiny", "--synthetic", "--native", "--stage", "finetune",
            "--max-steps", "3", "--no-save", *args, "--results", str(results))  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    run = only_run(results)
    facts = next(e["value"] for e in events(run / "finetune" / "events.log") if e["key"] == "kit_facts")
    return steps(run / "finetune" / "events.log"), facts


def test_leaf_layers_train_exactly_as_per_module_hooks(tmp_path):
    base, base_facts = _finetune(tmp_path / "hooks")
    leaf, leaf_facts = _finetune(tmp_path / "leaf", "finetune.zero3_leaf_layers=true")
    assert base_facts["gradient_checkpointing"] and base_facts["zero_stage"] == 3
    assert base_facts["zero3_leaf_modules"] == 0
    # tiny: 2 decoder layers and CLIP's 3 - 1 run encoder layers (select_layer -2), every one of them marked
    assert leaf_facts["zero3_leaf_modules"] == 2 + 2
    assert [s["step"] for s in leaf] == [1, 2, 3]
    for a, b in zip(base, leaf, strict=True):
        assert (a["samples"], a["real_tokens"], a["padded_tokens"]) == (b["samples"], b["real_tokens"], b["padded_tokens"])
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5, abs=1e-6), (a, b)
    cfg = tomllib.loads((only_run(tmp_path / "leaf") / "config.toml").read_text())["finetune"]
    assert cfg["zero3_leaf_layers"] is True

    # The last decoder layer kept out of recomputation (checkpointed by the kit around the layer's forward, inside
    # ZeRO-3's hooks on the leaf module): the same training again.
    kept, kept_facts = _finetune(tmp_path / "kept", "finetune.zero3_leaf_layers=true", "finetune.uncheckpointed_layers=1")
    assert (base_facts["recomputed_layers"], kept_facts["recomputed_layers"]) == (2, 1)
    for a, b in zip(base, kept, strict=True):
        assert b["real_tokens"] == a["real_tokens"]
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5, abs=1e-6), (a, b)

    # Bounded at the mean micro-batch: the longer micro-batches recompute the kept layer too, the shorter do not,
    # switching from one micro-batch to the next under ZeRO-3's hooks; the same training again, the longer counted.
    per_step = base_facts["grad_accum"] * base_facts["world_size"]
    bound = sum(s["padded_tokens"] for s in base) // (len(base) * per_step)
    bounded, bounded_facts = _finetune(tmp_path / "bounded", "finetune.zero3_leaf_layers=true",
                                       "finetune.uncheckpointed_layers=1",
                                       f"finetune.uncheckpointed_max_positions={bound}")  # fmt: skip
    assert bounded_facts["uncheckpointed_max_positions"] == bound
    over = [s["fully_recomputed_micro_batches"] for s in bounded]
    assert 0 < sum(over) < len(bounded) * per_step, (bound, over)
    assert all(s["fully_recomputed_micro_batches"] == 0 for s in kept)
    for a, b in zip(base, bounded, strict=True):
        assert b["padded_tokens"] == a["padded_tokens"]
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5, abs=1e-6), (a, b)
    # bench/padding.py --over predicts from the data alone how many go over
    out = tmp_path / "padding.json"
    p = subprocess.run([sys.executable, str(ROOT / "bench" / "padding.py"), "--config", "tiny", "--data",
                        str(only_run(tmp_path / "bounded") / "synthetic"), "--steps", "1-3", "--over", str(bound),
                        "--json", str(out)], capture_output=True, text=True)  # fmt: skip
    assert p.returncode == 0, p.stdout + p.stderr
    order = bounded_facts["micro_batch_order"]  # tiny: as sampled, whose row padding.py files under "words"
    row = next(r for r in json.loads(out.read_text())["rows"] if r["micro_batch_order"] == order
               and r["micro_batch_lengths"] == ("words" if order == "sampled" else "tokens"))
    assert (row["micro_batches"], row["micro_batches_over"]) == (len(bounded) * per_step, sum(over))


def test_leaf_layers_outside_zero3_are_refused(tmp_path):
    r = kit("run", "llava1_5_7b", "--config", "tiny", "--synthetic", "--native", "--stage", "pretrain", "--dry-run",
            "--set", "pretrain.zero3_leaf_layers=true", "--results", str(tmp_path))  # fmt: skip
    assert r.returncode != 0
    assert "pretrain.zero3_leaf_layers applies to ZeRO-3 only (zero_stage = 2)" in r.stdout + r.stderr
    assert not any(tmp_path.iterdir())  # nothing written for a refused config

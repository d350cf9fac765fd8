"""ZeRO-3 with whole transformer layers as leaf modules (finetune.zero3_leaf_layers) on two ranks of real DeepSpeed:
the same training as per-sub-module hooks, step for step, with gradient checkpointing on, and with some layers
kept out of recomputation (finetune.uncheckpointed_layers)."""

from __future__ import annotations

import json

import pytest

from .helpers import events, kit, only_run, steps


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
    cfg = json.loads((only_run(tmp_path / "leaf") / "run.json").read_text())["config"]["finetune"]
    assert cfg["zero3_leaf_layers"] is True

    # The last decoder layer kept out of recomputation (checkpointed by the kit around the layer's forward, inside
    # ZeRO-3's hooks on the leaf module): the same training again.
    kept, kept_facts = _finetune(tmp_path / "kept", "finetune.zero3_leaf_layers=true", "finetune.uncheckpointed_layers=1")
    assert (base_facts["recomputed_layers"], kept_facts["recomputed_layers"]) == (2, 1)
    for a, b in zip(base, kept, strict=True):
        assert b["real_tokens"] == a["real_tokens"]
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5, abs=1e-6), (a, b)


def test_leaf_layers_outside_zero3_are_refused(tmp_path):
    r = kit("run", "llava1_5_7b", "--config", "tiny", "--synthetic", "--native", "--stage", "pretrain", "--dry-run",
            "--set", "pretrain.zero3_leaf_layers=true", "--results", str(tmp_path))  # fmt: skip
    assert r.returncode != 0
    assert "pretrain.zero3_leaf_layers applies to ZeRO-3 only (zero_stage = 2)" in r.stdout + r.stderr
    assert not any(tmp_path.iterdir())  # nothing written for a refused config

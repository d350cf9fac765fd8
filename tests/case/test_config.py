"""The config schema: every shipped config loads; every mistake is named with its file and key."""

from __future__ import annotations

import pytest

from cases.llava1_5_7b import config as c


def test_shipped_configs_load_and_keep_the_reference_global_batches():
    assert set(c.available()) >= {"A800x1x8", "H200x1x1", "tiny"}
    ref = c.load("A800x1x8")
    assert (ref.pretrain.micro_batch, ref.finetune.micro_batch) == (32, 16)
    assert (ref.grad_accum("pretrain", 8), ref.grad_accum("finetune", 8)) == (1, 1)
    assert (ref.pretrain.zero_stage, ref.finetune.zero_stage) == (2, 3)
    h200 = c.load("H200x1x1")
    assert h200.grad_accum("pretrain", 1) * h200.pretrain.micro_batch == 256
    assert h200.grad_accum("finetune", 1) * h200.finetune.micro_batch == 128
    assert ref.model.llm.hidden == 4096 and ref.model.vision.layers == 24


def test_reference_step_counts():
    assert c.steps_per_epoch(558_128, 256) == 2181 and c.warmup_steps(2181, 0.03) == 66
    assert c.steps_per_epoch(665_298, 128) == 5198 and c.warmup_steps(5198, 0.03) == 156


def write(tmp_path, text: str):
    p = tmp_path / "mine.toml"
    base = (c.CONFIG_DIR / "tiny.toml").read_text()
    p.write_text(base + "\n" + text if text.startswith("[") else text + "\n" + base)
    return p


@pytest.mark.parametrize(
    "extra, message",
    [
        ("colour = 3", "unknown key colour"),
        ('[model.extra]\nx = 1', "unknown key model.extra"),
        ("[model.vision.extra]\nx = 1", "unknown key model.vision.extra"),
        ("[train.oops]\nx = 1", "unknown key train.oops"),
    ],
)
def test_schema_errors_name_file_and_key(tmp_path, extra, message):
    p = write(tmp_path, extra)
    with pytest.raises(c.ConfigError) as e:
        c.load(p)
    assert str(p) in str(e.value) and message in str(e.value)


def test_bad_values(tmp_path):
    for override, message in [
        ("pretrain.zero_stage=5", "pretrain.zero_stage = 5 is not one of 0, 1, 2, 3"),
        ("finetune.template=chatml", "finetune.template = 'chatml' is not one of 'plain', 'v1'"),
        ("pretrain.micro_batch=0", "pretrain.micro_batch must be positive"),
        ("finetune.offload_optimizer=2.0", "must lie between 0 and 1"),
        ("model.llm.heads=5", "not divisible by model.llm.heads 5"),
        ("model.vision.select_layer=0", "select_layer 0 must lie in"),
        ("train.bf16=1", "train.bf16 must be true or false"),
        ("pretrain.lr=fast", "pretrain.lr must be a number"),
        ("finetune.uncheckpointed_layers=3", "finetune.uncheckpointed_layers = 3 must lie between 0 and model.llm.layers (2)"),
        ("finetune.uncheckpointed_layers=-1", "must lie between 0 and model.llm.layers (2)"),
        ("finetune.uncheckpointed_max_positions=-5", "finetune.uncheckpointed_max_positions = -5 must not be negative"),
    ]:
        with pytest.raises(c.ConfigError) as e:
            c.load("tiny", [override])
        assert message in str(e.value), (override, str(e.value))
        assert "tiny.toml with --set" in str(e.value)


def test_missing_required_key_and_bad_toml(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text('description = "x"\ndevice = "cpu"\nnodes = 1\ngpus_per_node = 1\n[model]\n')
    with pytest.raises(c.ConfigError, match="missing required key data|missing required key"):
        c.load(p)
    p.write_text("nodes = = 1")
    with pytest.raises(c.ConfigError, match="not valid TOML"):
        c.load(p)
    with pytest.raises(c.ConfigError, match="no config 'nosuch'.*available: .*tiny"):
        c.load("nosuch")


def test_global_batch_must_divide():
    with pytest.raises(c.ConfigError, match=r"\[pretrain\] global_batch 16 is not a multiple of micro_batch 4 x 3 ranks"):
        c.load("tiny").grad_accum("pretrain", 3)


def test_overrides_and_round_trip(tmp_path):
    cfg = c.load("H200x1x1", ["pretrain.gradient_checkpointing=false", "finetune.micro_batch=8", "model.attn=sdpa"])
    assert not cfg.pretrain.gradient_checkpointing and cfg.finetune.micro_batch == 8 and cfg.model.attn == "sdpa"
    p = tmp_path / "resolved.toml"
    p.write_text(c.dumps(cfg))
    again = c.load(p)
    assert again.name == "H200x1x1"
    assert again.to_dict() | {"path": ""} == cfg.to_dict() | {"path": ""}
    with pytest.raises(c.ConfigError, match="expected KEY=VALUE"):
        c.load("tiny", ["pretrain.micro_batch"])


def test_kept_layers_are_switched_off_by_one_override():
    # H200x1x1 keeps 8 layers out of recomputation, bounded at 14,000 positions: turning checkpointing off, or the
    # kept layers, takes one --set each; the settings that no longer apply are left as they are, unused.
    h200 = c.load("H200x1x1")
    assert (h200.finetune.uncheckpointed_layers, h200.finetune.uncheckpointed_max_positions) == (8, 14000)
    assert c.load("H200x1x1", ["finetune.gradient_checkpointing=false"]).finetune.gradient_checkpointing is False
    assert c.load("H200x1x1", ["finetune.uncheckpointed_layers=0"]).finetune.uncheckpointed_layers == 0
    assert c.load("tiny", ["finetune.uncheckpointed_layers=1"]).finetune.uncheckpointed_layers == 1

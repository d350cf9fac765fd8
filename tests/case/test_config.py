"""The config schema: every shipped config loads; every mistake is named with its file and key."""

from __future__ import annotations

import pytest

from cases.llava1_5_7b import config as c


def test_shipped_configs_load_and_keep_the_reference_global_batches():
    assert set(c.available()) >= {"A800x1x1", "A800x1x8", "A800x2x8", "H200x1x1", "tiny"}
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


@pytest.mark.parametrize("raw", ["nan", "inf", "-inf", "+inf", "-nan"])
@pytest.mark.parametrize("key", ["pretrain.lr", "finetune.offload_optimizer", "train.adam_eps", "model.llm.rms_eps",
                                 "synthetic.text_only_fraction", "pretrain.reduce_bucket"])
def test_non_finite_numbers_are_refused_by_key_and_value(key, raw):
    """TOML reads nan and inf as floats, and every comparison with nan is false: a range check alone lets it through
    (pretrain.lr=nan reached AdamW 21 s into a run). Every float of the schema refuses them, naming key and value."""
    with pytest.raises(c.ConfigError) as e:
        c.load("tiny", [f"{key}={raw}"])
    shown = repr(float(raw))
    assert str(e.value).endswith(f"tiny.toml with --set {key}={raw}: {key} must be a finite number, got {shown} "
                                 "(nan and inf are refused)"), str(e.value)


def test_non_finite_numbers_in_a_config_file_are_refused(tmp_path):
    p = tmp_path / "mine.toml"
    p.write_text((c.CONFIG_DIR / "tiny.toml").read_text().replace("[train]\n", "[train]\nadam_eps = nan\n"))
    with pytest.raises(c.ConfigError, match=r"mine\.toml: train\.adam_eps must be a finite number, got nan"):
        c.load(p)


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
    with pytest.raises(c.ConfigError, match=r"stage pretrain: global_batch 16 is not a multiple of micro_batch 4 x 3 ranks"):
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


# The scales FlagPerf asks of vendors: each config differs from the reference only in these keys.
SCALES = {"A800x1x1": (1, 1, (8, 8)), "A800x1x8": (1, 8, (1, 1)), "A800x2x8": (2, 8, (1, 1))}
SCALE_KEYS = {
    "": ("name", "path", "description", "nodes", "gpus_per_node"),
    "pretrain": ("micro_batch",),
    "finetune": ("micro_batch", "offload_optimizer"),
}


def without_scale_keys(cfg: c.CaseConfig) -> dict:
    d = cfg.to_dict()
    for table, keys in SCALE_KEYS.items():
        for key in keys:
            (d[table] if table else d).pop(key)
    return d


@pytest.mark.parametrize("name", sorted(SCALES))
def test_vendor_scales_are_the_reference_but_for_scale_keys(name):
    nodes, gpus, gas = SCALES[name]
    cfg = c.load(name)
    assert (cfg.nodes, cfg.gpus_per_node) == (nodes, gpus)
    assert without_scale_keys(cfg) == without_scale_keys(c.load("A800x1x8"))
    assert (cfg.grad_accum("pretrain", nodes * gpus), cfg.grad_accum("finetune", nodes * gpus)) == gas
    for stage, global_batch in (("pretrain", 256), ("finetune", 128)):
        s = cfg.stage(stage)
        assert s.global_batch == global_batch == s.micro_batch * cfg.grad_accum(stage, nodes * gpus) * nodes * gpus
    assert (cfg.pretrain.micro_batch, cfg.finetune.micro_batch) == {1: (32, 16), 8: (32, 16), 16: (16, 8)}[nodes * gpus]
    # One 80 GB GPU cannot hold a 7B's ZeRO-3 weights, gradients and Adam states: 1x1 offloads the optimizer.
    assert cfg.finetune.offload_optimizer == (1.0 if name == "A800x1x1" else 0.0)
    assert cfg.pretrain.offload_optimizer == 0.0


def test_refusal_names_the_config_and_the_micro_batch_that_work():
    ref = c.load("A800x1x8")
    with pytest.raises(c.ConfigError) as e:
        ref.grad_accum("pretrain", 16)
    msg = str(e.value)
    assert "\n" not in msg
    assert "stage pretrain: global_batch 256 is not a multiple of micro_batch 32 x 16 ranks: use --config A800x2x8 " \
           "(made for 2 x 8), or --set pretrain.micro_batch=16" in msg
    # Both stages at once: one line names both fixes.
    with pytest.raises(c.ConfigError) as e:
        ref.check_world_size(16, ("pretrain", "finetune"))
    assert "stage finetune: global_batch 128 is not a multiple of micro_batch 16 x 16 ranks" in str(e.value)
    assert str(e.value).endswith("use --config A800x2x8 (made for 2 x 8), or --set pretrain.micro_batch=16 "
                                 "--set finetune.micro_batch=8")
    # No shipped config for 32 ranks: the micro batch alone.
    with pytest.raises(c.ConfigError, match=r"32 ranks: use --set pretrain\.micro_batch=8$"):
        ref.grad_accum("pretrain", 32)
    # A config never suggests itself: on 8 ranks with micro 64, the other 1 x 8 config and the micro batch are named.
    with pytest.raises(c.ConfigError, match=r"64 x 8 ranks: use --config H100x1x8 \(made for 1 x 8\), or --set "
                                            r"pretrain\.micro_batch=32$"):
        c.load("A800x1x8", ["pretrain.micro_batch=64"]).grad_accum("pretrain", 8)
    # 1 x 1 has three configs made for it.
    with pytest.raises(c.ConfigError, match=r"use --config A800x1x1 \(made for 1 x 1\) or --config H100x1x1 \(made "
                                            r"for 1 x 1\) or --config H200x1x1 "):
        c.load("A800x1x8", ["pretrain.micro_batch=512"]).grad_accum("pretrain", 1)


def test_refusal_when_no_micro_batch_keeps_the_global_batch():
    with pytest.raises(c.ConfigError) as e:
        c.load("A800x1x8").check_world_size(3)
    assert str(e.value).endswith(
        "3 ranks cannot keep the global batches with any --set pretrain.micro_batch / --set finetune.micro_batch "
        "(256 and 128 are not multiples of 3): choose nodes x gpus dividing 256 and 128"
    )
    with pytest.raises(c.ConfigError, match=r"with any --set pretrain\.micro_batch \(256 is not a multiple of 6\)"):
        c.load("A800x1x8").grad_accum("pretrain", 6)

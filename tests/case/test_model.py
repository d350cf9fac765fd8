"""The LLaVA model at tiny size on CPU: splicing, loss, gradients per stage, checkpoints, facts."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from transformers import (  # noqa: E402
    CLIPConfig,
    CLIPModel,
    CLIPVisionConfig,
    CLIPVisionModel,
    LlamaConfig,
    LlamaForCausalLM,
)

from cases.llava1_5_7b import config as case_config  # noqa: E402
from cases.llava1_5_7b.model import (  # noqa: E402
    IGNORE_INDEX,
    IMAGE_TOKEN_INDEX,
    PROJECTOR_KEYS,
    CheckpointError,
    LlavaForTraining,
    resolve_attn,
)

CFG = case_config.load("tiny").model
PATCHES = (CFG.vision.image_size // CFG.vision.patch) ** 2  # 16


def make_model(cfg=CFG, **kw) -> LlavaForTraining:
    torch.manual_seed(0)
    return LlavaForTraining(cfg, dtype=torch.float32, attn_implementation="sdpa", **kw)


def make_batch(seed: int = 0, long_text: int = 0):
    """Three samples as the collator gives them: image at 0, text-only, image in the middle (+ padding)."""
    g = torch.Generator().manual_seed(seed)
    rows = [
        [IMAGE_TOKEN_INDEX] + torch.randint(3, CFG.llm.vocab, (7,), generator=g).tolist(),
        torch.randint(3, CFG.llm.vocab, (10,), generator=g).tolist(),
        torch.randint(3, CFG.llm.vocab, (4,), generator=g).tolist() + [IMAGE_TOKEN_INDEX]
        + torch.randint(3, CFG.llm.vocab, (3 + long_text,), generator=g).tolist(),
    ]
    longest = max(len(r) for r in rows)
    ids = torch.zeros((3, longest), dtype=torch.long)
    labels = torch.full((3, longest), IGNORE_INDEX)
    mask = torch.zeros((3, longest), dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        lab = torch.tensor(r)
        lab[lab == IMAGE_TOKEN_INDEX] = IGNORE_INDEX
        lab[:2] = IGNORE_INDEX  # an unsupervised prompt part
        labels[i, : len(r)] = lab
        mask[i, : len(r)] = True
    has_image = torch.tensor([True, False, True])
    images = torch.randn((2, 3, CFG.vision.image_size, CFG.vision.image_size), generator=g)
    return {"input_ids": ids, "labels": labels, "attention_mask": mask, "images": images, "has_image": has_image}


def reference_loss(model: LlavaForTraining, batch) -> torch.Tensor:
    """Full-logits loss as LlamaForCausalLM computes it: every position through lm_head, then shifted CE."""
    feats = model.projector(model.vision_features(batch["images"]))
    sp = model.splice(batch["input_ids"], batch["labels"], batch["attention_mask"], feats, batch["has_image"])
    logits = model.llm(inputs_embeds=sp.embeds, attention_mask=sp.attention_mask.long(),
                       position_ids=sp.position_ids, use_cache=False).logits.float()
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), sp.labels[:, 1:].reshape(-1), ignore_index=IGNORE_INDEX
    )


def test_resolve_attn(monkeypatch):
    import cases.llava1_5_7b.model as m

    assert resolve_attn("sdpa") == "sdpa"
    assert resolve_attn("eager") == "eager"
    if not torch.cuda.is_available():
        assert resolve_attn("auto") == "sdpa"
    monkeypatch.setattr(m, "_flash_attn_importable", lambda: False)
    assert resolve_attn("auto") == "sdpa"
    with pytest.raises(RuntimeError, match="flash_attn"):
        resolve_attn("flash_attention_2")
    with pytest.raises(ValueError, match="unknown attention"):
        resolve_attn("xformers")


def test_splice_places_features_and_masks_labels():
    model = make_model()
    b = make_batch()
    feats = torch.randn((2, PATCHES, CFG.llm.hidden))
    sp = model.splice(b["input_ids"], b["labels"], b["attention_mask"], feats, b["has_image"])
    embed = model.llm.get_input_embeddings()
    n_text = b["attention_mask"].sum(1).tolist()  # 8, 10, 8
    assert sp.lengths == [n_text[0] - 1 + PATCHES, n_text[1], n_text[2] - 1 + PATCHES]
    assert sp.embeds.shape == (3, max(sp.lengths), CFG.llm.hidden)
    for i, (k, j) in {0: (0, 0), 2: (1, 4)}.items():
        ids = b["input_ids"][i, : n_text[i]]
        text = torch.cat([ids[:j], ids[j + 1:]])
        torch.testing.assert_close(sp.embeds[i, j: j + PATCHES], feats[k])
        torch.testing.assert_close(sp.embeds[i, :j], embed(text[:j]))
        torch.testing.assert_close(sp.embeds[i, j + PATCHES: sp.lengths[i]], embed(text[j:]))
        assert (sp.labels[i, j: j + PATCHES] == IGNORE_INDEX).all()
        lab = b["labels"][i, : n_text[i]]
        assert torch.equal(sp.labels[i, j + PATCHES: sp.lengths[i]], lab[j + 1:])
        assert torch.equal(sp.labels[i, :j], lab[:j])
    # text-only sample: untouched, then padding on the right
    torch.testing.assert_close(sp.embeds[1, :10], embed(b["input_ids"][1, :10]))
    assert torch.equal(sp.labels[1, :10], b["labels"][1, :10])
    for i, n in enumerate(sp.lengths):
        assert sp.attention_mask[i, :n].all() and not sp.attention_mask[i, n:].any()
        assert torch.equal(sp.position_ids[i, :n], torch.arange(n))
        assert (sp.position_ids[i, n:] == 0).all()
        assert (sp.labels[i, n:] == IGNORE_INDEX).all()
        assert (sp.embeds[i, n:] == 0).all()


def test_splice_truncates_after_splicing():
    model = make_model()
    b = make_batch(long_text=CFG.max_length)  # sample 2 is far longer than max_length once spliced
    feats = torch.randn((2, PATCHES, CFG.llm.hidden))
    sp = model.splice(b["input_ids"], b["labels"], b["attention_mask"], feats, b["has_image"])
    assert sp.lengths[2] == CFG.max_length
    assert sp.embeds.shape[1] == CFG.max_length
    torch.testing.assert_close(sp.embeds[2, 4: 4 + PATCHES], feats[1])  # the image survives, the tail is cut
    tail = b["input_ids"][2, 5: 5 + CFG.max_length - 4 - PATCHES]
    torch.testing.assert_close(sp.embeds[2, 4 + PATCHES:], model.llm.get_input_embeddings()(tail))


def test_splice_rejects_wrong_placeholders():
    model = make_model()
    b = make_batch()
    b["input_ids"][1, 3] = IMAGE_TOKEN_INDEX  # text-only sample with a placeholder
    with pytest.raises(ValueError, match="sample 1 .* 1 image placeholders"):
        model(**b)
    b = make_batch()
    with pytest.raises(ValueError, match="2 samples with an image but 1 images"):
        model(**{**b, "images": b["images"][:1]})


def test_loss_matches_full_logits_reference():
    model = make_model()
    b = make_batch()
    loss = model(**b)
    assert loss.dtype == torch.float32 and loss.ndim == 0
    torch.testing.assert_close(loss, reference_loss(model, b), rtol=1e-5, atol=1e-5)
    stats = model.last_stats
    assert stats["images"] == 2 and stats["samples"] == 3
    assert stats["real_tokens"] == 2 * (7 + PATCHES) + 10
    assert stats["padded_tokens"] == 3 * (7 + PATCHES)
    assert stats["supervised_tokens"] == int((b["labels"][:, 1:] != IGNORE_INDEX).sum())


def test_text_only_batch_and_nothing_supervised():
    model = make_model()
    model.set_stage("finetune")
    b = make_batch()
    text = {k: v[1:2] for k, v in b.items() if k != "images"}
    loss = model(**text, images=None)
    assert torch.isfinite(loss) and loss > 0
    # A text-only batch still gives the projector a (zero) gradient: under ZeRO every rank must reduce
    # the gradients of the same parameters, whatever modality its micro-batch holds.
    loss.backward()
    assert all(p.grad is not None and not p.grad.any() for p in model.projector.parameters())
    model.zero_grad(set_to_none=True)
    empty = {**b, "labels": torch.full_like(b["labels"], IGNORE_INDEX)}
    loss = model(**empty)
    assert loss.item() == 0.0
    loss.backward()  # connected to the graph, and every trainable parameter gets a (zero) gradient
    assert all(p.grad is not None for p in model.projector.parameters())
    assert model.llm.lm_head.weight.grad is not None


def _grads(model: LlavaForTraining) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("stage", ["pretrain", "finetune"])
def test_stage_gradients(stage):
    model = make_model()
    model.set_stage(stage)
    model.train()
    model(**make_batch()).backward()
    grads = _grads(model)
    assert {n for n in grads if n.startswith("projector.")} == {n for n, _ in model.projector.named_parameters(prefix="projector")}
    assert not any(n.startswith("vision.") for n in grads)
    llm = {n for n in grads if n.startswith("llm.")}
    if stage == "pretrain":
        assert not llm
    else:
        assert llm == {n for n, _ in model.llm.named_parameters(prefix="llm")}  # embeddings and lm_head included
    assert all(g.abs().sum() > 0 for n, g in grads.items() if n.startswith("projector."))
    facts = model.facts()
    assert facts["trainable_projector"] and not facts["trainable_vision"]
    assert facts["trainable_llm"] == (stage == "finetune")


@pytest.mark.parametrize("stage", ["pretrain", "finetune"])
def test_gradient_checkpointing_changes_nothing(stage):
    model = make_model()
    model.set_stage(stage)
    model.train()
    b = make_batch()
    loss = model(**b)
    loss.backward()
    plain = _grads(model)
    model.zero_grad(set_to_none=True)
    model.enable_gradient_checkpointing()
    assert model.llm.get_decoder().gradient_checkpointing
    loss2 = model(**b)
    loss2.backward()
    ckpt = _grads(model)
    torch.testing.assert_close(loss2, loss)
    assert plain.keys() == ckpt.keys()
    for n in plain:
        torch.testing.assert_close(ckpt[n], plain[n], rtol=1e-5, atol=1e-6)


def _saved_bytes(model, batch) -> tuple[torch.Tensor, int]:
    """The loss, and the bytes of the tensors autograd keeps for backward during the forward."""
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(**batch)
    return loss, total


def test_uncheckpointed_layers_trade_memory_for_recompute_and_change_nothing():
    # tiny: 2 decoder layers. Keep the last 0 (all recomputed), 1, or 2 (none recomputed): same numbers, and the
    # activations kept for backward grow with every layer kept.
    b = make_batch(long_text=40)
    results = {}
    for keep in (0, 1, 2):
        model = make_model()
        model.set_stage("finetune")
        model.train()
        model.enable_gradient_checkpointing(keep_layers=keep)
        assert model.recomputed_layers == 2 - keep
        loss, saved = _saved_bytes(model, b)
        loss.backward()
        results[keep] = (loss.detach(), saved, _grads(model))
    plain = make_model()
    plain.set_stage("finetune")
    plain.train()
    loss, saved_plain = _saved_bytes(plain, b)
    loss.backward()
    for keep in (0, 1, 2):
        torch.testing.assert_close(results[keep][0], loss.detach())
        for n, g in _grads(plain).items():
            torch.testing.assert_close(results[keep][2][n], g, rtol=1e-5, atol=1e-6)
    assert results[0][1] < results[1][1] < results[2][1] == saved_plain
    # eval (generation) never checkpoints
    model = make_model()
    model.enable_gradient_checkpointing(keep_layers=1)
    model.eval()
    with torch.no_grad():
        model(**b)
    with pytest.raises(ValueError, match="keep_layers = 3: the LLM has 2 decoder layers"):
        model.enable_gradient_checkpointing(keep_layers=3)


def test_kept_layers_recompute_past_a_bound_of_positions():
    # keep_max_positions: a micro-batch of more positions than the bound recomputes the kept layer too (and is
    # counted); one within it keeps the layer's activations. The numbers never change.
    b = make_batch(long_text=40)  # 3 samples, 4 + image + 3 + 40 positions each once spliced
    positions = 3 * (4 + PATCHES + 3 + 40)
    runs = {}
    for keep, bound in ((0, 0), (1, 0), (1, positions), (1, positions - 1), (2, 1)):
        model = make_model()
        model.set_stage("finetune")
        model.train()
        model.enable_gradient_checkpointing(keep_layers=keep, keep_max_positions=bound)
        assert model.kept_max_positions == bound
        loss, saved = _saved_bytes(model, b)
        loss.backward()
        runs[keep, bound] = (loss.detach(), saved, _grads(model), model.fully_recomputed_micro_batches)
    assert runs[1, positions][1] == runs[1, 0][1] and runs[1, positions][3] == 0  # within the bound: kept
    assert runs[1, positions - 1][1] < runs[1, 0][1]  # past it: recomputed like the other layer
    assert runs[1, positions - 1][1] == runs[2, 1][1]  # as when every layer is kept and every one goes over
    assert runs[1, positions - 1][3] == runs[2, 1][3] == 1 and runs[0, 0][3] == runs[1, 0][3] == 0
    for loss, _, grads, _ in runs.values():
        torch.testing.assert_close(loss, runs[0, 0][0])
        for n, g in runs[0, 0][2].items():
            torch.testing.assert_close(grads[n], g, rtol=1e-5, atol=1e-6)
    # counted per training forward, never in eval
    model = make_model()
    model.set_stage("finetune")
    model.enable_gradient_checkpointing(keep_layers=1, keep_max_positions=1)
    model.train()
    model(**b).backward()
    model(**b).backward()
    model.eval()
    with torch.no_grad():
        model(**b)
    assert model.fully_recomputed_micro_batches == 2
    with pytest.raises(ValueError, match="keep_max_positions = -1: a number of positions, 0 for no bound"):
        make_model().enable_gradient_checkpointing(keep_layers=1, keep_max_positions=-1)


def test_vision_truncation_matches_full_tower(tmp_path):
    torch.manual_seed(1)
    v = CFG.vision
    full = CLIPVisionModel(CLIPVisionConfig(hidden_size=v.hidden, num_hidden_layers=v.layers, num_attention_heads=v.heads,
                                            intermediate_size=v.ffn, image_size=v.image_size, patch_size=v.patch))
    full.save_pretrained(tmp_path / "clip")
    model = make_model(vision_dir=tmp_path / "clip")
    assert model.vision_layers_run == v.layers - 1 == _layers(model)
    images = torch.randn((2, 3, v.image_size, v.image_size))
    with torch.no_grad():
        expected = full.eval()(pixel_values=images, output_hidden_states=True).hidden_states[-2][:, 1:]
    torch.testing.assert_close(model.vision_features(images), expected, rtol=1e-5, atol=1e-5)


def _layers(model: LlavaForTraining) -> int:
    return len(getattr(model.vision, "vision_model", model.vision).encoder.layers)


def test_load_hf_checkpoints(tmp_path):
    torch.manual_seed(2)
    c, v = CFG.llm, CFG.vision
    llama = LlamaForCausalLM(LlamaConfig(hidden_size=c.hidden, num_hidden_layers=c.layers, num_attention_heads=c.heads,
                                         num_key_value_heads=c.kv_heads, intermediate_size=c.ffn, vocab_size=c.vocab,
                                         max_position_embeddings=c.max_positions, rms_norm_eps=c.rms_eps))
    llama.save_pretrained(tmp_path / "llm")
    vision_kw = dict(hidden_size=v.hidden, num_hidden_layers=v.layers, num_attention_heads=v.heads,
                     intermediate_size=v.ffn, image_size=v.image_size, patch_size=v.patch)
    clip = CLIPModel(CLIPConfig(text_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                                             "num_attention_heads": 2, "vocab_size": 64},
                                vision_config=vision_kw, projection_dim=8))
    clip.save_pretrained(tmp_path / "clip-full")
    model = make_model(llm_dir=tmp_path / "llm", vision_dir=tmp_path / "clip-full")
    torch.testing.assert_close(model.llm.lm_head.weight, llama.lm_head.weight)
    torch.testing.assert_close(model.llm.get_input_embeddings().weight, llama.get_input_embeddings().weight)
    full_layers = clip.vision_model.encoder.layers
    own = getattr(model.vision, "vision_model", model.vision)
    torch.testing.assert_close(own.encoder.layers[0].self_attn.q_proj.weight, full_layers[0].self_attn.q_proj.weight)
    torch.testing.assert_close(own.embeddings.patch_embedding.weight, clip.vision_model.embeddings.patch_embedding.weight)
    assert _layers(model) == v.layers - 1
    assert model.llm.config.use_cache is False
    b = make_batch()
    torch.testing.assert_close(model(**b), reference_loss(model, b), rtol=1e-5, atol=1e-5)

    # a vision-only checkpoint loads too
    CLIPVisionModel(CLIPVisionConfig(**vision_kw)).save_pretrained(tmp_path / "clip-vision")
    assert _layers(make_model(vision_dir=tmp_path / "clip-vision")) == v.layers - 1


def test_load_rejects_mismatched_checkpoints(tmp_path):
    c, v = CFG.llm, CFG.vision
    LlamaForCausalLM(LlamaConfig(hidden_size=2 * c.hidden, num_hidden_layers=c.layers, num_attention_heads=c.heads,
                                 intermediate_size=c.ffn, vocab_size=c.vocab, max_position_embeddings=c.max_positions,
                                 rms_norm_eps=c.rms_eps)).save_pretrained(tmp_path / "llm")
    with pytest.raises(CheckpointError, match=r"llm.*hidden_size = 128 but the config expects 64"):
        make_model(llm_dir=tmp_path / "llm")
    CLIPVisionModel(CLIPVisionConfig(hidden_size=v.hidden, num_hidden_layers=v.layers + 1, num_attention_heads=v.heads,
                                     intermediate_size=v.ffn, image_size=v.image_size, patch_size=v.patch)
                    ).save_pretrained(tmp_path / "clip")
    with pytest.raises(CheckpointError, match=r"clip.*num_hidden_layers = 4 but the config expects 3"):
        make_model(vision_dir=tmp_path / "clip")
    with pytest.raises(CheckpointError, match=r"nowhere.*config.json is missing"):
        make_model(llm_dir=tmp_path / "nowhere")


def test_projector_round_trip_and_bad_files(tmp_path):
    a, b = make_model(), make_model()
    with torch.no_grad():
        for p in b.projector.parameters():
            p.zero_()
    state = a.projector_state_dict()
    assert tuple(state) == PROJECTOR_KEYS
    path = tmp_path / "mm_projector.bin"
    torch.save({k: t.to(torch.bfloat16) for k, t in state.items()}, path)  # the reference saves bf16
    b.load_projector(path)
    for (n, pa), pb in zip(a.projector.named_parameters(), b.projector.parameters(), strict=True):
        torch.testing.assert_close(pb, pa.to(torch.bfloat16).float(), msg=n)

    bad = tmp_path / "missing.bin"
    torch.save({k: v for k, v in state.items() if not k.endswith("2.bias")}, bad)
    with pytest.raises(CheckpointError, match=r"missing\.bin.*missing \['model\.mm_projector\.2\.bias'\]"):
        b.load_projector(bad)
    wrong = tmp_path / "wrong.bin"
    torch.save({**state, "model.mm_projector.0.weight": torch.zeros(3, 3)}, wrong)
    with pytest.raises(CheckpointError, match=r"wrong\.bin.*0\.weight has shape \(3, 3\)"):
        b.load_projector(wrong)
    with pytest.raises(CheckpointError, match="not found"):
        b.load_projector(tmp_path / "absent.bin")


def test_facts_tiny_by_hand():
    model = make_model()
    model.set_stage("pretrain")
    f = model.facts()
    h, ffn, vocab, vh, vffn = 64, 172, 512, 32, 64
    body = 2 * (4 * h * h + 3 * h * ffn)
    vision_run = 2 * (4 * vh * vh + 2 * vh * vffn) + vh * 3 * 14 * 14
    llm_total = 2 * vocab * h + body + 2 * (2 * h) + h
    projector_total = vh * h + h + h * h + h
    vision_total = (vh + vh * 3 * 14 * 14 + 17 * vh + 2 * vh  # class emb, patch conv, positions, pre-LN
                    + 2 * (4 * (vh * vh + vh) + (vh * vffn + vffn) + (vffn * vh + vh) + 2 * 2 * vh) + 2 * vh)
    assert f == {
        "llm_layers": 2, "llm_hidden": h, "llm_heads": 4, "llm_kv_heads": 4, "llm_head_dim": 16, "llm_ffn": ffn,
        "vocab": vocab, "llm_body_matmul_params": body, "lm_head_params": vocab * h, "embed_params": vocab * h,
        "vision_layers_run": 2, "vision_hidden": vh, "vision_tokens": 17, "vision_matmul_params_run": vision_run,
        "projector_params": vh * h + h * h, "image_tokens": 16,
        "trainable_llm": False, "trainable_projector": True, "trainable_vision": False, "kernels": "none",
        "total_params": llm_total + projector_total + vision_total, "trainable_params": projector_total,
    }
    assert make_model(vocab_size=1000).facts()["vocab"] == 1000  # a larger tokenizer widens the tables
    assert make_model(vocab_size=100).facts()["vocab"] == vocab  # a smaller one keeps the config's


def test_facts_full_size_on_meta():
    full = case_config.load("A800x1x8").model
    model = LlavaForTraining(full, dtype=torch.bfloat16, device="meta")
    model.set_stage("finetune")
    f = model.facts()
    assert f["projector_params"] + 4096 + 4096 == 20_979_712
    assert sum(p.numel() for p in model.projector.parameters()) == 20_979_712
    assert f["lm_head_params"] == 131_072_000 and f["embed_params"] == 131_072_000
    assert f["llm_body_matmul_params"] == 32 * (4 * 4096 * 4096 + 3 * 4096 * 11008)
    assert f["vision_layers_run"] == 23 and f["vision_tokens"] == 577 and f["image_tokens"] == 576
    assert f["vision_matmul_params_run"] == 23 * (4 * 1024 * 1024 + 2 * 1024 * 4096) + 1024 * 3 * 14 * 14
    llm_total = sum(p.numel() for p in model.llm.parameters())
    assert llm_total == 6_738_415_616  # LLaMA-2 7B
    assert f["trainable_params"] == llm_total + 20_979_712
    assert f["trainable_llm"] and f["trainable_projector"] and not f["trainable_vision"]


def test_config_shape_is_what_gets_built():
    cfg = dataclasses.replace(CFG, llm=dataclasses.replace(CFG.llm, kv_heads=2))
    f = make_model(cfg).facts()
    assert f["llm_kv_heads"] == 2
    assert f["llm_body_matmul_params"] == 2 * (2 * 64 * 64 + 2 * 64 * 32 + 3 * 64 * 172)


def test_no_kit_imports():
    src = (Path(__file__).parents[2] / "cases" / "llava1_5_7b" / "model.py").read_text()
    for banned in ("import typer", "import rich", "import docker", "from kit", "import kit"):
        assert banned not in src

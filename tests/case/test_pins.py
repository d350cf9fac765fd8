"""Checks that hold under both environments: the image's pins (torch 2.1.2, transformers 4.37.2, DeepSpeed 0.13.1,
`make test-pins`) and the current libraries of `.venv` (`make test`).

- The kit's tokenizer against transformers' slow `LlamaTokenizer` (transformers < 5 only: 5.x has none), on
  seeded random strings and on whole v1 / plain conversations built the reference's way.
- Every shipped config's DeepSpeed dict, for both stages and 1 or 8 ranks, through the installed DeepSpeed's
  own config parser (no process group, no GPU), and the refusal of a feature the installed DeepSpeed lacks.
"""

from __future__ import annotations

import os
import random
from importlib import metadata
from pathlib import Path

import pytest

from cases.llava1_5_7b import config as case_config
from cases.llava1_5_7b.data import IGNORE_INDEX, IMAGE_TOKEN_INDEX, SYSTEM_V1, tokenize_conversation
from cases.llava1_5_7b.tokenizer import Tokenizer, train_tokenizer

from .conftest import CORPUS

pytestmark = pytest.mark.pins


def _major(dist: str) -> int | None:
    try:
        return int(metadata.version(dist).split(".")[0])
    except metadata.PackageNotFoundError:
        return None


# ------------------------------------------------------------------------------------------ slow tokenizer

if (_major("transformers") or 99) < 5:
    # transformers 4.37.2's slow LlamaTokenizer (legacy=False) registers its own sentencepiece_model.proto in
    # protobuf's default pool and fails ("duplicate file name") when sentencepiece's copy is there already,
    # which the kit's Tokenizer puts there unless transformers' copy came first (then it reuses that one).
    # Tests run after collection, so registering transformers' copy now makes the order right in this process.
    from transformers.convert_slow_tokenizer import import_protobuf

    import_protobuf()

WORDS = sorted({w for line in CORPUS for w in line.replace("</s>", " ").split() if "<" not in w} | {"colour", "USER:"})
# Conversation words: no "USER:" / "ASSISTANT:" inside a turn (the reference's round split would cut there).
CONV_WORDS = [w for w in WORDS if w not in ("USER:", "ASSISTANT:")]
BITS = ["</s>", "<s>", "\n", " ", "  ", "\n\n", "0", "7", "42", "1999", ", ", "."]


def random_text(rng: random.Random) -> str:
    parts = []
    for _ in range(rng.randint(0, 12)):
        parts.append(rng.choice(WORDS) if rng.random() < 0.55 else rng.choice(BITS))
        if rng.random() < 0.5:
            parts.append(" ")
    return "".join(parts)


@pytest.fixture(scope="module")
def slow_tokenizers(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    if _major("transformers") is None or _major("transformers") >= 5:
        pytest.skip("transformers 5 has no slow LlamaTokenizer")
    pytest.importorskip("sentencepiece")
    from transformers import LlamaTokenizer

    d = train_tokenizer(CORPUS, tmp_path_factory.mktemp("pins-tok"), 1000, model_max_length=4096)
    slow = {legacy: LlamaTokenizer(vocab_file=str(d / "tokenizer.model"), legacy=legacy) for legacy in (True, False)}
    return d, slow


def _kit(d: Path, legacy: bool) -> Tokenizer:
    t = Tokenizer.from_dir(d)
    t.legacy = legacy
    t.model_max_length = 4096
    return t


@pytest.mark.parametrize("legacy", [True, False])
def test_encode_matches_slow_llama_tokenizer(slow_tokenizers, legacy: bool) -> None:
    d, slow = slow_tokenizers
    kit = _kit(d, legacy)
    rng = random.Random(1234 + legacy)
    texts = [random_text(rng) for _ in range(300)] + ["", " ", "\n", "</s>", "<s>", " </s> ", "a</s> b", "a</s>\nb"]
    bad = [(t, kit.encode(t), slow[legacy](t).input_ids) for t in texts if kit.encode(t) != slow[legacy](t).input_ids]
    assert not bad, f"{len(bad)} of {len(texts)} strings differ (legacy={legacy}); first: {bad[:3]}"


def reference_tokenizer_image_token(prompt: str, tokenizer) -> list[int]:
    """LLaVA's llava/mm_utils.py tokenizer_image_token, verbatim in substance."""
    chunks = [tokenizer(chunk).input_ids for chunk in prompt.split("<image>")]
    sep = [IMAGE_TOKEN_INDEX]
    ids: list[int] = []
    offset = 0
    if chunks and chunks[0] and chunks[0][0] == tokenizer.bos_token_id:
        offset = 1
        ids.append(chunks[0][0])
    joined = [x for pair in zip(chunks, [sep * (offset + 1)] * len(chunks), strict=True) for x in pair][:-1]
    for x in joined:
        ids.extend(x[offset:])
    return ids


def reference_v1(conversations: list[dict], tokenizer, has_image: bool) -> tuple[list[int], list[int] | None]:
    """The prompt of LLaVA's conv_vicuna_v1 and the masks of its preprocess_v1 (None: the reference's mismatch)."""
    values = []
    for c in conversations:
        v = c["value"]
        if has_image and "<image>" in v:
            v = ("<image>\n" + v.replace("<image>", "").strip()).strip()
        values.append(v)
    prompt = SYSTEM_V1 + " "
    for i, v in enumerate(values):
        prompt += ("USER: " if i % 2 == 0 else "ASSISTANT: ") + v + (" " if i % 2 == 0 else "</s>")
    ids = reference_tokenizer_image_token(prompt, tokenizer)
    enc = (lambda s: reference_tokenizer_image_token(s, tokenizer)) if has_image else (lambda s: tokenizer(s).input_ids)
    labels = list(ids)
    cur = 1
    labels[:cur] = [IGNORE_INDEX]
    sep = " ASSISTANT: "
    for i, rou in enumerate(prompt.split("</s>")):
        if rou == "":
            break
        parts = rou.split(sep)
        if len(parts) != 2:
            break
        parts[0] += sep
        round_len, instruction_len = len(enc(rou)), len(enc(parts[0])) - 2
        if i != 0 and not tokenizer.legacy:  # IS_TOKENIZER_GREATER_THAN_0_14 holds for tokenizers 0.15.1
            round_len -= 1
            instruction_len -= 1
        labels[cur : cur + instruction_len] = [IGNORE_INDEX] * len(labels[cur : cur + instruction_len])
        cur += round_len
    labels[cur:] = [IGNORE_INDEX] * len(labels[cur:])
    return ids, (labels if cur == len(ids) else None)


def random_conversation(rng: random.Random, has_image: bool) -> list[dict]:
    def words(lo: int, hi: int) -> str:
        return " ".join(rng.choice(CONV_WORDS) for _ in range(rng.randint(lo, hi)))

    conv = []
    for r in range(rng.randint(1, 3)):
        q = words(1, 8)
        if has_image and r == 0:
            q = rng.choice(["<image>\n" + q, q + "\n<image>", "<image>" + q, q + " <image>"])
        conv += [{"from": "human", "value": q}, {"from": "gpt", "value": words(1, 10)}]
    return conv


@pytest.mark.parametrize("legacy", [True, False])
def test_v1_template_matches_reference_construction(slow_tokenizers, legacy: bool) -> None:
    d, slow = slow_tokenizers
    kit, ref = _kit(d, legacy), slow[legacy]
    rng = random.Random(99 + legacy)
    checked_labels = 0
    for n in range(120):
        has_image = n % 3 != 0
        conv = random_conversation(rng, has_image)
        ids, labels, why = tokenize_conversation(conv, "v1", kit, has_image)
        ref_ids, ref_labels = reference_v1(conv, ref, has_image)
        assert why is None, (conv, why)
        assert ids == ref_ids, conv
        if ref_labels is not None:
            assert labels == ref_labels, conv
            checked_labels += 1
    # The reference masks a whole sample when its own length check fails (with legacy=True every round after
    # the first counts one BOS too many); the labels are compared wherever it passes.
    assert checked_labels >= 30


@pytest.mark.parametrize("legacy", [True, False])
def test_plain_template_matches_reference_construction(slow_tokenizers, legacy: bool) -> None:
    d, slow = slow_tokenizers
    kit, ref = _kit(d, legacy), slow[legacy]
    rng = random.Random(7 + legacy)
    for _ in range(100):
        caption = " ".join(rng.choice(CONV_WORDS) for _ in range(rng.randint(1, 12)))
        conv = [{"from": "human", "value": rng.choice(["<image>", "<image>\nsay", "look <image>"])},
                {"from": "gpt", "value": caption}]
        ids, labels, why = tokenize_conversation(conv, "plain", kit, True)
        # preprocess_plain: "<image>" + caption + sep ("\n"); the image part (BOS and placeholder) is masked.
        ref_ids = reference_tokenizer_image_token("<image>" + caption + "\n", ref)
        masked = len(reference_tokenizer_image_token("<image>", ref))
        assert why is None and ids == ref_ids, caption
        assert labels == [IGNORE_INDEX] * masked + ref_ids[masked:], caption


# ------------------------------------------------------------------------------------------ DeepSpeed config


@pytest.fixture(scope="module")
def ds():
    """The installed DeepSpeed, imported so that it needs no GPU and no process group."""
    if _major("deepspeed") is None:
        pytest.skip("DeepSpeed is not installed")
    pytest.importorskip("torch")
    from cases.llava1_5_7b import compat

    # As the training ranks import it: up to 0.14.0 DeepSpeed's own CPU accelerator needs intel_extension_for_pytorch
    # and the oneCCL bindings, and the case installs its own (compat.py). DS_ACCELERATOR is put back as it was.
    before = os.environ.get("DS_ACCELERATOR")
    try:
        return compat.import_deepspeed(use_cuda=False)
    finally:
        if before is None:
            os.environ.pop("DS_ACCELERATOR", None)
        else:
            os.environ["DS_ACCELERATOR"] = before


def parse(ds, ds_dict: dict, world: int):
    from unittest import mock

    from deepspeed.runtime.config import DeepSpeedConfig

    # DeepSpeedConfig asks deepspeed.comm for the rank and world size; without a process group it would assume 1.
    with mock.patch.object(ds.comm, "get_rank", return_value=0), mock.patch.object(
        ds.comm, "get_world_size", return_value=world
    ):
        return DeepSpeedConfig(ds_dict)


def known_keys(ds) -> set[str]:
    from deepspeed.runtime import constants

    # ZERO_OPTIMIZATION ("zero_optimization") is defined in deepspeed/runtime/zero/config.py in 0.13.1 and 0.19.8.
    from deepspeed.runtime.zero import config as zero_config

    return {v for m in (constants, zero_config) for v in vars(m).values() if isinstance(v, str)}


CONFIGS = sorted(p.stem for p in (Path(case_config.__file__).parent / "configs").glob("*.toml"))


@pytest.mark.parametrize("world", [1, 8])
@pytest.mark.parametrize("stage", ["pretrain", "finetune"])
@pytest.mark.parametrize("name", CONFIGS)
def test_deepspeed_accepts_every_shipped_config(ds, name: str, stage: str, world: int) -> None:
    from cases.llava1_5_7b.train import deepspeed_config

    cfg = case_config.load(name)
    s = cfg.stage(stage)
    if s.global_batch % (s.micro_batch * world):
        # tiny's global batches are for 2 ranks: on 8 the kit refuses before launch, and that is what to check.
        with pytest.raises(case_config.ConfigError, match="is not a multiple of micro_batch"):
            cfg.grad_accum(stage, world)
        return
    gas = cfg.grad_accum(stage, world)
    d = deepspeed_config(cfg, stage, gas, world, bf16=cfg.train.bf16)
    unknown = set(d) - known_keys(ds)
    assert not unknown, f"DeepSpeed {ds.__version__} does not know the top-level keys {sorted(unknown)}"
    c = parse(ds, d, world)  # the ZeRO block is a strict model: an unknown or bad key raises here
    assert c.world_size == world
    assert (c.train_batch_size, c.train_micro_batch_size_per_gpu, c.gradient_accumulation_steps) == (
        s.global_batch, s.micro_batch, gas)
    assert int(c.zero_optimization_stage) == s.zero_stage
    bf16 = c.bfloat16_config.enabled if hasattr(c, "bfloat16_config") else c.bfloat16_enabled  # 0.19.8 / 0.13.1
    assert bf16 == cfg.train.bf16
    off = c.zero_config.offload_optimizer
    if s.offload_optimizer > 0:
        assert off is not None and str(getattr(off.device, "value", off.device)) == "cpu"
        assert off.ratio == pytest.approx(s.offload_optimizer if s.offload_optimizer < 1 else 1.0)
        assert c.zero_force_ds_cpu_optimizer is False  # the kit hands DeepSpeedCPUAdam in itself
    else:
        assert off is None or str(getattr(off.device, "value", off.device)) == "none"


def test_partial_offload_is_used_and_known(ds) -> None:
    """Partial offload (H200x1x1 with `--set finetune.offload_optimizer=0.3`, its default before the whole optimizer
    state moved onto the GPU) needs `ratio`: the installed DeepSpeed must know it."""
    from cases.llava1_5_7b.train import deepspeed_config, deepspeed_features

    cfg = case_config.load("H200x1x1", ["finetune.offload_optimizer=0.3"])
    assert cfg.finetune.offload_optimizer == pytest.approx(0.3)
    zero = deepspeed_config(cfg, "finetune", cfg.grad_accum("finetune", 1), 1, True)["zero_optimization"]
    assert zero["offload_optimizer"] == {"device": "cpu", "pin_memory": True, "ratio": 0.3}
    f = deepspeed_features()
    assert f["version"] == ds.__version__
    assert f["offload_optimizer.ratio"] is True  # 0.13.1 has it (ZeRO-3 only), and so has 0.19.8
    assert f["zero_force_ds_cpu_optimizer"] is True


def test_missing_partial_offload_is_refused_not_dropped(ds) -> None:
    from cases.llava1_5_7b.train import deepspeed_config, deepspeed_features

    cfg = case_config.load("H200x1x1", ["finetune.offload_optimizer=0.3"])
    lacking = {**deepspeed_features(), "offload_optimizer.ratio": False}
    with pytest.raises(case_config.ConfigError) as e:
        deepspeed_config(cfg, "finetune", cfg.grad_accum("finetune", 1), 1, True, features=lacking)
    msg = str(e.value)
    assert "H200x1x1" in msg and "[finetune] offload_optimizer = 0.3" in msg
    assert "offload_optimizer.ratio" in msg and f"DeepSpeed {ds.__version__}" in msg and "1.0" in msg
    # Full offload and the stage without offload need no ratio, so they still build.
    deepspeed_config(cfg, "pretrain", cfg.grad_accum("pretrain", 1), 1, True, features=lacking)


def test_unknown_force_key_is_not_emitted(ds) -> None:
    from cases.llava1_5_7b.train import deepspeed_config, deepspeed_features

    cfg = case_config.load("H200x1x1")
    gas = cfg.grad_accum("finetune", 1)
    assert deepspeed_config(cfg, "finetune", gas, 1, True)["zero_force_ds_cpu_optimizer"] is False
    lacking = {**deepspeed_features(), "zero_force_ds_cpu_optimizer": False}
    assert "zero_force_ds_cpu_optimizer" not in deepspeed_config(cfg, "finetune", gas, 1, True, features=lacking)

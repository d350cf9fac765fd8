"""The case's configuration schema: one validator for every per-hardware TOML file.

Standard library only, so the host side (`kit`) can validate a config before it launches anything.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 in the image
    import tomli as tomllib

CONFIG_DIR = Path(__file__).parent / "configs"
STAGES = ("pretrain", "finetune")


class ConfigError(ValueError):
    """A config file is wrong; the message names the file and the key."""


@dataclass(frozen=True)
class LLMShape:
    hidden: int = 4096
    layers: int = 32
    heads: int = 32
    kv_heads: int = 32
    ffn: int = 11008
    vocab: int = 32000
    max_positions: int = 4096
    rms_eps: float = 1e-5
    rope_theta: float = 10000.0


@dataclass(frozen=True)
class VisionShape:
    hidden: int = 1024
    layers: int = 24
    heads: int = 16
    ffn: int = 4096
    image_size: int = 336
    patch: int = 14
    # Hidden-state index whose patch features feed the projector (-2: second-to-last layer).
    select_layer: int = -2


@dataclass(frozen=True)
class ModelConfig:
    llm: LLMShape = field(default_factory=LLMShape)
    vision: VisionShape = field(default_factory=VisionShape)
    projector: Literal["mlp2x_gelu"] = "mlp2x_gelu"
    max_length: int = 2048
    # auto: flash_attention_2 when flash-attn imports, else sdpa.
    attn: Literal["auto", "flash_attention_2", "sdpa", "eager"] = "auto"
    # Fused kernels for the LLM's RoPE, RMSNorm and SwiGLU: none (the reference) or liger (liger-kernel, GPU).
    kernels: Literal["none", "liger"] = "none"
    # Directory names under --models for real checkpoints (Hugging Face format).
    llm_dir: str = "vicuna-7b-v1.5"
    vision_dir: str = "clip-vit-large-patch14-336"


@dataclass(frozen=True)
class DataConfig:
    pretrain_json: str = "LLaVA-Pretrain/blip_laion_cc_sbu_558k.json"
    pretrain_images: str = "LLaVA-Pretrain/images"
    finetune_json: str = "llava_v1_5_mix665k.json"
    finetune_images: str = "."
    num_workers: int = 4
    # Bad records (unreadable image, malformed conversation) tolerated before the run stops; each is counted.
    skip_bad_records: int = 0


@dataclass(frozen=True)
class SyntheticConfig:
    pretrain_records: int = 2048
    finetune_records: int = 1024
    text_only_fraction: float = 0.06
    # Side lengths (pixels) of the generated JPEG files, drawn uniformly in this range.
    image_min_side: int = 200
    image_max_side: int = 640
    tokenizer_vocab: int = 4000
    # Questions per subject of a generated MMMU validation split (the real one has 30).
    mmmu_questions: int = 30
    seed: int = 1234


@dataclass(frozen=True)
class StageConfig:
    zero_stage: Literal[0, 1, 2, 3]
    micro_batch: int
    global_batch: int
    lr: float
    template: Literal["plain", "v1"]
    image_mode: Literal["crop", "pad"]
    sampler: Literal["random", "modality_length"]
    gradient_checkpointing: bool = True
    # With gradient_checkpointing: the last this many LLM decoder layers keep their activations instead of recomputing
    # them in backward (0: every layer recomputes; without gradient_checkpointing none does, and this does not apply).
    # Each one kept saves a layer's forward per micro-batch and costs its activations: 0.17 MiB per position at the
    # 7B's widths with stock modules (bench/activation_bytes.py).
    uncheckpointed_layers: int = 0
    # With uncheckpointed_layers > 0: a micro-batch of more positions than this (micro-batch x padded length, image
    # features included) recomputes every layer, so the kept activations never exceed what this many positions take
    # whatever lengths the data brings (0: no bound). The longer micro-batches are counted per step
    # (kit_step.fully_recomputed_micro_batches).
    uncheckpointed_max_positions: int = 0
    # How a step's samples are cut into micro-batches: as sampled (the reference); sorted by length into equal-size
    # micro-batches (by_length); or sorted by length into as many micro-batches of unequal size and about equal
    # padded tokens, none larger than by_length's largest (by_tokens). Every step trains on the same samples.
    micro_batch_order: Literal["sampled", "by_length", "by_tokens"] = "sampled"
    # The lengths by_length and by_tokens cut by: each sample's exact positions in the model (tokens, image features
    # spliced in; its text is tokenized when its step comes), or LLaVA's word-count estimate (words + image features).
    micro_batch_lengths: Literal["tokens", "words"] = "tokens"
    # Fraction of the optimizer state kept on the CPU (0 = none, 1 = all; between: DeepSpeed's partial offload).
    offload_optimizer: float = 0.0
    checkpoint_every: int = 500
    # ZeRO bucket sizes as multiples of hidden^2 (the reference: reduce 1.0, prefetch 0.9).
    reduce_bucket: float = 1.0
    prefetch_bucket: float = 0.9
    param_persistence: float = 10.0
    # ZeRO-3 fetches, releases and hooks each transformer layer (LLaMA decoder and CLIP encoder layers) as one module
    # instead of each of its 12-13 sub-modules (DeepSpeed's z3 leaf modules): fewer hook calls per forward and backward.
    zero3_leaf_layers: bool = False


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 42
    bf16: bool = True
    tf32: bool = True
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    warmup_ratio: float = 0.03


@dataclass(frozen=True)
class EvalConfig:
    """How the eval stage decodes MMMU: speed levers; in fp32 its greedy answers stay the same token for token."""

    # Questions per generate call on each rank; `evaluate --batch-size` overrides it.
    batch_size: int = 8
    # Greedy decoding's KV cache: static (one cache of fixed size for the whole stage, so every batch has the same
    # shapes) or dynamic (grown step by step, as the reference). Reference decoding (beam sampling) always runs
    # dynamic; a transformers without the static path (4.x) falls back to dynamic and says so in kit_facts.
    cache: Literal["static", "dynamic"] = "static"
    # Greedy batches of prompts of similar length (less left padding); responses keep the official order.
    sort_by_length: bool = True
    # With the static cache on CUDA: generate compiles the decoding step (torch.compile, CUDA graphs). Never on CPU.
    compile: bool = True


@dataclass(frozen=True)
class CaseConfig:
    name: str
    description: str
    device: str
    nodes: int
    gpus_per_node: int
    model: ModelConfig
    data: DataConfig
    synthetic: SyntheticConfig
    train: TrainConfig
    pretrain: StageConfig
    finetune: StageConfig
    eval: EvalConfig = field(default_factory=EvalConfig)
    path: str = ""

    def stage(self, name: str) -> StageConfig:
        if name not in STAGES:
            raise ConfigError(f"unknown stage {name!r}: expected one of {', '.join(STAGES)}")
        return getattr(self, name)

    def grad_accum(self, stage: str, world_size: int) -> int:
        """GAS that keeps the config's global batch on `world_size` ranks (the LLaVA authors' rule)."""
        self.check_world_size(world_size, (stage,))
        s = self.stage(stage)
        return s.global_batch // (s.micro_batch * world_size)

    def check_world_size(self, world_size: int, stages: tuple[str, ...] | list[str] = STAGES) -> None:
        """Refuse `world_size` ranks where a stage's global batch is not a multiple of micro_batch x ranks, in one line
        naming what works: the shipped configs made for that many ranks (`--config NAME`), and the largest micro
        batch per stage that keeps the global batch (`--set STAGE.micro_batch=M`), or that no micro batch does."""
        bad = [st for st in stages if self.stage(st).global_batch % (self.stage(st).micro_batch * world_size)]
        if not bad:
            return
        # The stage in words, not as "[pretrain]": a console's markup would take the brackets for a style.
        problems = "; ".join(
            f"stage {st}: global_batch {self.stage(st).global_batch} is not a multiple of micro_batch "
            f"{self.stage(st).micro_batch} x {world_size} ranks"
            for st in bad
        )
        made_for = []
        for name in available():
            if name == self.name:
                continue
            try:
                other = load(name)
            except ConfigError:
                continue
            if other.nodes * other.gpus_per_node == world_size and not any(
                other.stage(st).global_batch % (other.stage(st).micro_batch * world_size) for st in bad
            ):
                made_for.append(f"--config {name} (made for {other.nodes} x {other.gpus_per_node})")
        micro = {
            st: next((m for m in range(self.stage(st).micro_batch, 0, -1)
                      if self.stage(st).global_batch % (m * world_size) == 0), None)
            for st in bad
        }  # fmt: skip
        configs = " or ".join(made_for)
        if all(micro.values()):
            sets = " ".join(f"--set {st}.micro_batch={m}" for st, m in micro.items())
            fix = f"use {configs}, or {sets}" if configs else f"use {sets}"
        else:
            stuck = [st for st, m in micro.items() if m is None]
            batches = " and ".join(str(self.stage(st).global_batch) for st in stuck)
            many = len(stuck) > 1
            fix = (
                f"{world_size} ranks cannot keep the global batch{'es' if many else ''} with any "
                f"{' / '.join(f'--set {st}.micro_batch' for st in stuck)} ({batches} "
                f"{'are not multiples' if many else 'is not a multiple'} of {world_size}): choose nodes x gpus "
                f"dividing {batches}" + (f", or use {configs}" if configs else "")
            )
        raise ConfigError(f"{self.path}: {problems}: {fix}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check(cls: type, data: Any, where: str, path: str) -> Any:
    """Build dataclass `cls` from `data`, naming the file and the dotted key of every problem."""
    names = {f.name for f in dataclasses.fields(cls)}
    if not isinstance(data, dict):
        keys = sorted(names - {"path"})
        if not where:
            raise ConfigError(f"{path}: the config must be a table of keys ({', '.join(keys)}), got {type(data).__name__}")
        example = "micro_batch" if "micro_batch" in names else keys[0]
        raise ConfigError(
            f"{path}: {where} is a table of settings ({', '.join(keys)}), not a value (got {data!r}): set one of its "
            f"keys, e.g. --set {where}.{example}=VALUE, or the key under the {where} table of the file"
        )
    hints = get_type_hints(cls)
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"{path}: unknown key {where + '.' if where else ''}{unknown[0]}; allowed keys: {', '.join(sorted(names - {'path'}))}"
        )
    kwargs = {}
    for f in dataclasses.fields(cls):
        key = f"{where}.{f.name}" if where else f.name
        if f.name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{path}: missing required key {key}")
            continue
        kwargs[f.name] = _value(hints[f.name], data[f.name], key, path)
    return cls(**kwargs)


def _value(tp: Any, value: Any, key: str, path: str) -> Any:
    if dataclasses.is_dataclass(tp):
        return _check(tp, value, key, path)
    if get_origin(tp) is Literal:
        allowed = get_args(tp)
        if value not in allowed or type(value) is not type(allowed[0]):
            raise ConfigError(f"{path}: {key} = {value!r} is not one of {', '.join(map(repr, allowed))}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: {key} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: {key} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: {key} must be a number, got {value!r}")
        if not math.isfinite(value):  # TOML reads nan and inf; every range check below would let them through
            raise ConfigError(f"{path}: {key} must be a finite number, got {value!r} (nan and inf are refused)")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: {key} must be a string, got {value!r}")
        return value
    raise AssertionError(f"unhandled type {tp} for {key}")  # pragma: no cover


def _validate(cfg: CaseConfig) -> None:
    p = cfg.path
    positive = {
        "nodes": cfg.nodes, "gpus_per_node": cfg.gpus_per_node, "model.max_length": cfg.model.max_length,
        "data.num_workers + 1": cfg.data.num_workers + 1, "eval.batch_size": cfg.eval.batch_size,
    }
    for stage in STAGES:
        s = cfg.stage(stage)
        positive[f"{stage}.micro_batch"] = s.micro_batch
        positive[f"{stage}.global_batch"] = s.global_batch
        positive[f"{stage}.checkpoint_every"] = s.checkpoint_every
        if not 0.0 <= s.offload_optimizer <= 1.0:
            raise ConfigError(f"{p}: {stage}.offload_optimizer = {s.offload_optimizer} must lie between 0 and 1")
        if 0 < s.offload_optimizer < 1 and s.zero_stage != 3:
            raise ConfigError(f"{p}: {stage}.offload_optimizer: partial offload needs zero_stage 3")
        if not 0 <= s.uncheckpointed_layers <= cfg.model.llm.layers:
            raise ConfigError(f"{p}: {stage}.uncheckpointed_layers = {s.uncheckpointed_layers} must lie between 0 and "
                              f"model.llm.layers ({cfg.model.llm.layers})")
        if s.uncheckpointed_max_positions < 0:
            raise ConfigError(f"{p}: {stage}.uncheckpointed_max_positions = {s.uncheckpointed_max_positions} must not be "
                              f"negative (0: no bound)")
        if s.zero3_leaf_layers and s.zero_stage != 3:
            raise ConfigError(f"{p}: {stage}.zero3_leaf_layers applies to ZeRO-3 only (zero_stage = {s.zero_stage})")
        if s.lr <= 0:
            raise ConfigError(f"{p}: {stage}.lr must be positive, got {s.lr}")
    for key, v in positive.items():
        if v <= 0:
            raise ConfigError(f"{p}: {key} must be positive, got {v}")
    llm, vis = cfg.model.llm, cfg.model.vision
    if llm.hidden % llm.heads:
        raise ConfigError(f"{p}: model.llm.hidden {llm.hidden} is not divisible by model.llm.heads {llm.heads}")
    if llm.heads % llm.kv_heads:
        raise ConfigError(f"{p}: model.llm.heads {llm.heads} is not divisible by model.llm.kv_heads {llm.kv_heads}")
    if vis.hidden % vis.heads:
        raise ConfigError(f"{p}: model.vision.hidden {vis.hidden} is not divisible by model.vision.heads {vis.heads}")
    if vis.image_size % vis.patch:
        raise ConfigError(f"{p}: model.vision.image_size {vis.image_size} is not a multiple of patch {vis.patch}")
    if not -vis.layers <= vis.select_layer < 0:
        raise ConfigError(f"{p}: model.vision.select_layer {vis.select_layer} must lie in [-{vis.layers}, -1]")
    if not 0 <= cfg.synthetic.text_only_fraction < 1:
        raise ConfigError(f"{p}: synthetic.text_only_fraction must lie in [0, 1)")
    if not 0 < cfg.synthetic.image_min_side <= cfg.synthetic.image_max_side:
        raise ConfigError(f"{p}: synthetic.image_min_side must be positive and <= image_max_side")
    if not 0 <= cfg.train.warmup_ratio < 1:
        raise ConfigError(f"{p}: train.warmup_ratio must lie in [0, 1)")


def parse(data: dict[str, Any], path: str, name: str) -> CaseConfig:
    data = dict(data)
    data.setdefault("name", name)
    cfg = _check(CaseConfig, data, "", path)
    cfg = dataclasses.replace(cfg, path=path)
    _validate(cfg)
    return cfg


def load(name_or_path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> CaseConfig:
    """Load a config by name (a file in configs/) or by path, with `KEY=VALUE` overrides applied first."""
    p = Path(name_or_path)
    if p.suffix != ".toml":
        p = CONFIG_DIR / f"{name_or_path}.toml"
    if not p.is_file():
        names = ", ".join(available())
        raise ConfigError(f"no config {str(name_or_path)!r} (looked for {p}); available: {names}, or a path to a .toml file")
    try:
        data = tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{p}: not valid TOML: {e}") from None
    where = str(p) + (f" with --set {' '.join(overrides)}" if overrides else "")
    apply_overrides(data, overrides, where)
    return dataclasses.replace(parse(data, where, p.stem), path=str(p))


def apply_overrides(data: dict[str, Any], overrides: list[str] | tuple[str, ...], where: str) -> None:
    """`finetune.micro_batch=8`: the value is read as TOML (8, 1e-3, true, "x"), a bare word as a string."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. finetune.micro_batch=8")
        try:
            value = tomllib.loads(f"v = {raw.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw.strip()
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{where}: --set {item!r}: {part} is a value, not a table")
        node[parts[-1]] = value


def dumps(cfg: CaseConfig) -> str:
    """The resolved config as TOML (what a run used, loadable again with `load`)."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        return json.dumps(v)

    def table(prefix: str, d: dict[str, Any]) -> list[str]:
        lines = [f"{k} = {value(v)}" for k, v in d.items() if not isinstance(v, dict) and k != "path"]
        for k, v in d.items():
            if isinstance(v, dict):
                name = f"{prefix}.{k}" if prefix else k
                lines += ["", f"[{name}]", *table(name, v)]
        return lines

    return "\n".join(table("", cfg.to_dict())) + "\n"


def default_for(nodes: int, gpus: int | None) -> str:
    """The config `kit run` takes without --config: A800x{nodes}x{gpus} (gpus 8 when not given) where one ships, else
    A800x1x8 run at the given scale (the global batch check then names what works)."""
    scaled = f"A800x{nodes}x{gpus or 8}"
    return scaled if scaled in available() else "A800x1x8"


def available() -> list[str]:
    return sorted(q.stem for q in CONFIG_DIR.glob("*.toml"))


def steps_per_epoch(records: int, global_batch: int) -> int:
    """Optimizer steps of one epoch; the last global batch is filled by wrapping around (as the reference)."""
    return -(-records // global_batch)


def warmup_steps(total_steps: int, ratio: float) -> int:
    """Linear warm-up length, rounded up as the reference's scheduler does (2181 steps -> 66)."""
    import math

    return math.ceil(total_steps * ratio)

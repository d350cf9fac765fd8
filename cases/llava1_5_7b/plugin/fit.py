"""A config for another device, derived from a reference config: only the keys the rules call free change.

`fit(reference, target)` starts from a shipped config (or a .toml path) and a target (device, memory per device,
nodes x devices per node, host memory per node), and chooses, for each training stage, the micro batch (GAS follows:
the global batch never changes), how many decoder layers recompute their activations (gradient checkpointing and
`uncheckpointed_layers`), the optimizer offload fraction and the reduce bucket. It returns the new config and one
reason per changed key. Every other key is the reference's; a key the rules fix is never touched (`_check_free`).

The choice rests on two small models, both built from figures measured on one H200 through `kit run` (the files under
bench/results/, `peak_mem_gib`: the run's peak device memory) and the anchor table of the device notes
(../shared/device/README.md, 2026-11-28). Each coefficient below names its source.

- Memory per device = parameter and optimizer state (bytes per parameter, by ZeRO stage, sharded over the ranks)
  + activations (MiB per position of the longest micro-batch, plus a slope per layer kept un-recomputed) + what a
  larger reduce bucket and several ZeRO-3 ranks add. A setting fits when it stays under USABLE of the device.
- Time per token, relative: the recomputed forward (FLOPs), a fixed cost per micro-batch, and the optimizer offload.
  Among the settings that fit, the fastest wins, unless one that changes fewer keys is within SAME_SPEED of it: the
  model is not finer than the spread of repeated runs.

Standard library only: the host calls it through the plug-in (`CASE.fit`) without torch.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path
from typing import Any

from .. import config as config_schema
from . import metrics

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 in the image
    import tomli as tomllib

GIB, MIB = 2**30, 2**20
RULES = Path(__file__).resolve().parent.parent / "rules.toml"


class FitError(ValueError):
    """No setting of the free keys fits the target; the message says what would (more devices, more memory)."""


# ---------------------------------------------------------------- the measured figures (one H200, 139.8 GiB)
# Peak device memory in GiB (`peak_mem_gib`) of runs of the full 7B shape through `kit run --synthetic --native`.
PRETRAIN_CKPT_MICRO32 = 29.108  # h200x1-pretrain-default.json: ZeRO-2, micro 32, every layer recomputed
PRETRAIN_NOCKPT_MICRO32 = 102.720  # h200x1-pretrain-nockpt-liger.json: the same without checkpointing (liger; the
# stock kernels' h200x1-pretrain-nockpt.json peaked lower, 100.94: the larger of the two is used)
PRETRAIN_POSITIONS_PER_SAMPLE = 640  # 576 image features + a caption: the anchor table's "batch 32 x 640" gave the
# same 29 GiB checkpointed peak as the kit's run, so the measured peaks are read as 32 x 640 positions
FINETUNE_MICRO16 = 110.882  # h200x1-finetune-keep0-warm.json: ZeRO-3, micro 16, every layer recomputed, no offload
FINETUNE_MICRO16_POSITIONS = 13_200  # its longest micro-batch (docs/performance.md, bench/padding.py replay)
FINETUNE_MICRO32 = 120.874  # h200x1-finetune-keep8-bounded-micro32.json: micro 32, every layer recomputed
FINETUNE_MICRO32_POSITIONS = 26_775  # its longest micro-batch (the same file's note)
FINETUNE_KEEP8_MICRO16 = 127.503  # h200x1-finetune-keep8-bounded.json: micro 16, the last 8 layers kept
FINETUNE_TWO_RANKS = 83.030  # h200x2-finetune-zero3-nooffload.json: ZeRO-3 over 2 H200s, micro 16 as sampled
FINETUNE_OFFLOAD03_SAMPLED = 93.975  # h200x1-finetune-offload-0.3.json: one H200, micro 16 as sampled, ratio 0.3
REDUCE_BUCKET_10, REDUCE_BUCKET_40 = 110.882, 120.886  # h200x1-finetune-exact-leaf-bytokens-bucket10.json and
# -bucket40.json: a reduce bucket of 10 and of 40 x hidden^2, otherwise the same setting: 10 GiB for 30 units.
# Between 1 and 10 units the peak moved by 0.3-1.5 GiB (exact-leaf-bytokens 110.6 -> -bucket10 110.9; offload-0-persist
# 115.2 -> -persist-bucket 116.7): within the model's error, so buckets up to 10 units cost nothing here.

# The longest micro-batch as a number of positions per sample, by how a step's samples are cut (micro_batch_order).
# bench/results/cpu/padding-H200x1x1-32768records.json replays the sampler over 2,040 micro-batches of 16: cut by
# tokens the longest had 17,472 positions (1,092 per sample); as sampled or by length one reached 16 x 2,048 (every
# sample of the micro-batch padded to max_length). Real data can be longer than the synthetic set: see NOTES.
BY_TOKENS_POSITIONS_PER_SAMPLE = 17_472 / 16

# Speeds (real tokens/s per GPU) that give the time model its slopes.
PRETRAIN_CKPT_TPS, PRETRAIN_NOCKPT_TPS = 11_082.7, 15_005.8  # h200x1-pretrain-default.json, -nockpt.json (stock kernels)
FINETUNE_KEEP0_TPS, FINETUNE_KEEP8_TPS = 8_820.9, 9_623.0  # h200x1-finetune-keep0-warm.json, -keep8-bounded.json
MICRO8_TPS, MICRO16_TPS = 6_989.4, 7_323.5  # h200x1-finetune-leaf-micro8.json against h200x1-finetune-leaf.json
MICRO4_NOCKPT_TPS = 6_223.0  # h200x1-finetune-leaf-nockpt-micro4.json: micro 4, no checkpointing, else as -leaf.json
NO_OFFLOAD_TPS, OFFLOAD03_TPS = 6_891.7, 5_052.8  # h200x1-finetune-offload-0.json, -offload-0.3-bylength-liger.json
OFFLOAD03_SAMPLED_TPS, OFFLOAD05_SAMPLED_TPS = 4_837.7, 4_538.9  # h200x1-finetune-offload-0.3.json, -offload-0.5.json

# ---------------------------------------------------------------- limits and margins
# Usable share of a device's memory. The H200x1x1 finetune ships with 8 kept layers: 127.5 GiB measured, about 129 GiB
# estimated at its bound of 14,000 positions (docs/performance.md), 92% of the H200's 140.4 GiB; 12 kept layers ran at
# 137.4 GiB (98%) and were judged too close to be a default.
USABLE = 0.93
# Usable share of a node's memory: a margin over host_gib (which counts the machine and the loader workers, measured
# on synthetic data) for the page cache of real data and what one run does not show.
HOST_USABLE = 0.90
# Host memory per rank beside the offloaded optimizer state, in GiB, measured: H100x1x1's finetune (offload 0.6, 73.0
# GiB of offloaded state and gradient buffer by host_gib's formula) held 114.2 GiB of one H100 machine's 125 GiB at
# its peak (the whole host's memory in use, from 0 before: h100x1-finetune-H100x1x1.json), so the rest of the rank,
# its loader workers and the machine needed 41.2 GiB. The estimate of 2026-12-06 reserved 24 GiB (twice a lower bound
# from whole offload failing on an H200's 125 GiB host, h200x1-finetune-offload-full.json) and said 97 GiB where 114.2
# was used. Taken per rank (one rank measured), so a node of several offloading ranks is over-estimated, not under.
HOST_BASE_GIB = 42.0
# Offload fractions tried under ZeRO-3. 0.1 (and so 0.2) is left out: h200x1-finetune-offload-0.1.json peaked at
# 122.1 GiB, above no offload's 115.2 (-offload-0.json); from 0.3 on, each tenth moved 12 bytes per parameter to the
# host as expected (0.3 -> 0.5: 94.0 -> 78.9 GiB, h200x1-finetune-offload-0.3.json and -0.5.json).
OFFLOAD_STEPS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
# A setting that changes fewer keys wins when it is within this of the fastest: the shipped H200x1x1 finetune ran
# 9,623, 9,491 and 9,562 tok/s in three runs (docs/performance.md), so the time model cannot tell 3% apart.
SAME_SPEED = 1.03
# The keys the fit may change, per training stage; everything else stays the reference's.
LEVERS = ("micro_batch", "gradient_checkpointing", "uncheckpointed_layers", "offload_optimizer", "reduce_bucket")

NOTES = [
    "device memory is estimated from one H200's measured peaks and host memory from one H100's "
    "(cases/llava1_5_7b/plugin/fit.py names each); "
    f"{100 * (1 - USABLE):.0f}% of the device is left free for what the estimate misses",
    "finetune's longest micro-batch is taken from the synthetic data's length distribution (cut by tokens: 1,092 "
    "positions per sample; as sampled or by length: max_length per sample); real conversations can be longer, and "
    "uncheckpointed_max_positions bounds what kept layers hold",
]


# ---------------------------------------------------------------- the model's sizes


@dataclass(frozen=True)
class Sizes:
    """Parameter counts of the model's parts and the largest single tensor, from the config's shape."""

    llm: int
    vision: int
    projector: int
    layers: int
    hidden: int
    max_length: int
    tensors: tuple[int, ...]  # every LLM weight tensor's size (ZeRO-3 keeps those under the persistence threshold)

    @property
    def total(self) -> int:
        return self.llm + self.vision + self.projector


def sizes(cfg: dict[str, Any]) -> Sizes:
    """LLaMA decoder + lm_head, CLIP ViT, the mlp2x_gelu projector: the counts kit_facts reports for the 7B."""
    llm, vis = cfg["model"]["llm"], cfg["model"]["vision"]
    h, ffn, vocab = llm["hidden"], llm["ffn"], llm["vocab"]
    kv = h // llm["heads"] * llm["kv_heads"]
    layer = [h * h, h * kv, h * kv, h * h, h * ffn, h * ffn, h * ffn, h, h]  # q k v o, gate up down, two norms
    tensors = (vocab * h, vocab * h, h, *layer * llm["layers"])  # embeddings, lm_head, final norm, layers
    vh, vffn = vis["hidden"], vis["ffn"]
    side = vis["image_size"] // vis["patch"]
    vision = 3 * vis["patch"] ** 2 * vh + (side * side + 1) * vh + vh + 4 * vh  # patches, positions, class, 2 norms
    vision += vis["layers"] * (4 * (vh * vh + vh) + 2 * vh * vffn + vffn + vh + 4 * vh)
    projector = vh * h + h + h * h + h
    return Sizes(llm=sum(tensors), vision=vision, projector=projector, layers=llm["layers"], hidden=h,
                 max_length=cfg["model"]["max_length"], tensors=tensors)  # fmt: skip


# What each stage trains (train.py): pretrain the projector alone, finetune the LLM and the projector; CLIP is frozen.
TRAINS = {"pretrain": ("projector",), "finetune": ("llm", "projector")}


def trainable(sz: Sizes, stage: str) -> int:
    return sum(getattr(sz, part) for part in TRAINS[stage])


# ---------------------------------------------------------------- one stage's setting and its estimates


@dataclass(frozen=True)
class Setting:
    """The free keys of one stage that the fit chooses, and the ones it keeps that the estimate needs."""

    micro: int
    recomputed: int  # decoder layers recomputed in backward: 0 = no checkpointing, layers = every one
    offload: float
    bucket: float
    zero: int
    order: str
    bound: int  # uncheckpointed_max_positions (0: none)
    persistence: float


def _state_bytes(sz: Sizes, stage: str, s: Setting, world: int) -> float:
    """Parameters, gradients and optimizer state on one rank: bf16 weights (2 bytes) and gradients (2) of what trains,
    fp32 master weights and two Adam moments (12) of which `offload` lives on the host; ZeRO-1 shards the optimizer
    state, ZeRO-2 the gradients too, ZeRO-3 everything but the parameters under the persistence threshold. At one rank
    of ZeRO-3 this is 16 bytes per trained parameter: the 101 GiB the H200x1x1 finetune holds (its config's note)."""
    t = trainable(sz, stage)
    weights = 2.0 * sz.total
    if s.zero == 3 and world > 1:
        threshold = s.persistence * sz.hidden
        resident = sum(n for n in sz.tensors if n <= threshold) / sz.llm  # the share of the LLM kept whole
        weights = 2.0 * sz.total * (resident + (1 - resident) / world)
    grads = 2.0 * t / (world if s.zero >= 2 else 1)
    optimizer = 12.0 * t * (1 - s.offload) / (world if s.zero >= 1 else 1)
    return weights + grads + optimizer


def positions(stage: str, s: Setting, sz: Sizes) -> float:
    """Positions of the longest micro-batch the stage meets (see BY_TOKENS_POSITIONS_PER_SAMPLE)."""
    if stage == "pretrain":
        return s.micro * PRETRAIN_POSITIONS_PER_SAMPLE
    per_sample = BY_TOKENS_POSITIONS_PER_SAMPLE if s.order == "by_tokens" else sz.max_length
    return s.micro * min(per_sample, sz.max_length)


@dataclass(frozen=True)
class Slopes:
    """Activation memory of one stage: GiB per position with every layer recomputed, and per kept layer."""

    recomputed: float
    per_layer: float
    fixed: float  # what the measured peak holds beyond state and activations (0 when the figures cannot tell)


@cache
def _slopes(sz: Sizes) -> dict[str, Slopes]:
    """Fitted to the measured peaks at the reference shape (one rank, no offload, reduce bucket <= 10)."""
    one = Setting(micro=1, recomputed=sz.layers, offload=0.0, bucket=1.0, zero=2, order="sampled", bound=0,
                  persistence=10.0)  # fmt: skip
    pre_state = _state_bytes(sz, "pretrain", one, 1) / GIB
    pre_pos = 32 * PRETRAIN_POSITIONS_PER_SAMPLE
    pre = Slopes(recomputed=(PRETRAIN_CKPT_MICRO32 - pre_state) / pre_pos,
                 per_layer=(PRETRAIN_NOCKPT_MICRO32 - PRETRAIN_CKPT_MICRO32) / (pre_pos * sz.layers), fixed=0.0)  # fmt: skip
    ft_state = _state_bytes(sz, "finetune", replace(one, zero=3), 1) / GIB
    ft_slope = (FINETUNE_MICRO32 - FINETUNE_MICRO16) / (FINETUNE_MICRO32_POSITIONS - FINETUNE_MICRO16_POSITIONS)
    ft = Slopes(
        recomputed=ft_slope,
        per_layer=(FINETUNE_KEEP8_MICRO16 - FINETUNE_MICRO16) / (8 * FINETUNE_MICRO16_POSITIONS),
        fixed=max(0.0, FINETUNE_MICRO16 - ft_state - FINETUNE_MICRO16_POSITIONS * ft_slope),
    )
    return {"pretrain": pre, "finetune": ft}


@cache
def _two_rank_extra(sz: Sizes) -> float:
    """What ZeRO-3 over several ranks adds per rank (gathered layers, prefetch, collectives' buffers), in GiB: the
    2-H200 run's peak less its state at 2 ranks and the activations that the 1-H200 run of the same data generator and
    order implies (h200x1-finetune-offload-0.3.json: its peak less its state at ratio 0.3)."""
    base = Setting(micro=16, recomputed=sz.layers, offload=0.0, bucket=1.0, zero=3, order="sampled", bound=0,
                   persistence=10.0)  # fmt: skip
    activations = FINETUNE_OFFLOAD03_SAMPLED - _state_bytes(sz, "finetune", replace(base, offload=0.3), 1) / GIB
    return max(0.0, FINETUNE_TWO_RANKS - _state_bytes(sz, "finetune", base, 2) / GIB - activations)


def activations_gib(stage: str, s: Setting, sz: Sizes, slopes: Slopes) -> float:
    """The longest micro-batch's activations. Kept layers hold theirs only in micro-batches of up to `bound` positions;
    a longer one recomputes every layer (train.py), so the peak is the larger of the two."""
    p = positions(stage, s, sz)
    kept = sz.layers - s.recomputed
    if s.recomputed == 0:  # no checkpointing at all: every layer's activations, whatever the bound
        return p * (slopes.recomputed + sz.layers * slopes.per_layer)
    capped = min(p, s.bound) if s.bound else p
    return max(p * slopes.recomputed, capped * (slopes.recomputed + kept * slopes.per_layer))


def device_gib(stage: str, s: Setting, sz: Sizes, world: int) -> float:
    """Estimated peak device memory of one rank, GiB."""
    sl = _slopes(sz)[stage]
    gib = _state_bytes(sz, stage, s, world) / GIB + activations_gib(stage, s, sz, sl) + sl.fixed
    gib += max(0.0, s.bucket - 10) * (REDUCE_BUCKET_40 - REDUCE_BUCKET_10) / 30
    if s.zero == 3 and world > 1:
        gib += _two_rank_extra(sz)
    return gib


def host_gib(stage: str, s: Setting, sz: Sizes, world: int, gpus_per_node: int) -> float:
    """Host memory one node needs for the offloaded optimizer state: per rank, its share of the fp32 master weights,
    Adam moments and gradients (16 bytes per offloaded parameter) and of the bf16 gradient buffer that any offload
    moves to the host (2 bytes per trained parameter, docs/performance.md), plus HOST_BASE_GIB. 0 without offload."""
    if s.offload <= 0:
        return 0.0
    per_rank = (16 * s.offload + 2) * trainable(sz, stage) / world / GIB + HOST_BASE_GIB
    return gpus_per_node * per_rank


def host_need_gib(cfg: dict[str, Any]) -> dict[str, float]:
    """Each training stage's host_gib for a whole config, per node: what `kit check-host` sets against the host."""
    sz = sizes(cfg)
    world = cfg["nodes"] * cfg["gpus_per_node"]
    return {stage: host_gib(stage, _setting_of(cfg[stage], sz.layers), sz, world, cfg["gpus_per_node"])
            for stage in TRAINS}  # fmt: skip


def relative_time(stage: str, s: Setting, sz: Sizes) -> float:
    """Time per token against the same stage with no recomputation, a very large micro-batch and no offload.

    - Recomputation: 1 + C x recomputed / layers. Pretrain: C measured, every layer recomputed cost 35%
      (PRETRAIN_CKPT_TPS, PRETRAIN_NOCKPT_TPS), less than the 2 recomputed FLOPs per weight and token of 4 would say.
      Finetune: C = 2 / 6 by FLOPs (metrics.pass_factor): 8 kept layers gained 9% where this says 7%
      (FINETUNE_KEEP0_TPS, FINETUNE_KEEP8_TPS), but 12 gained nothing over 8 (h200x1-finetune-keep12.json) where this
      says 3%: the gain is not linear, and the FLOPs' slope lies between the two.
    - Micro-batches: a fixed cost each, 1 + K / micro. From micro 8 against 16, K = 0.8 (MICRO8_TPS, MICRO16_TPS);
      below 8 the cost grows faster: micro 4 without checkpointing ran 15% slower than micro 16 with it
      (MICRO4_NOCKPT_TPS), where recomputation alone says 25% faster, so below 8 a second K is fitted to that run.
    - Offload: a step for moving the gradient buffer (any fraction) and a slope per fraction, from ratio 0 against
      0.3 (NO_OFFLOAD_TPS, OFFLOAD03_TPS) and 0.3 against 0.5 (OFFLOAD03_SAMPLED_TPS, OFFLOAD05_SAMPLED_TPS).
    """
    return recompute_factor(stage, s.recomputed / sz.layers) * micro_factor(s.micro) * offload_factor(s.offload)


def recompute_factor(stage: str, share: float) -> float:
    """Time per token with a share of the decoder layers recomputed (relative_time's first item)."""
    if stage == "pretrain":
        c = PRETRAIN_NOCKPT_TPS / PRETRAIN_CKPT_TPS - 1
    else:
        c = 2 / metrics.pass_factor(trains="llm" in TRAINS[stage], grad_flows_through=True)
    return 1 + c * share


def micro_factor(micro: int) -> float:
    """Time per token for a micro-batch size, 1 + K / micro (relative_time's second item)."""
    ratio = MICRO16_TPS / MICRO8_TPS  # (1 + K/8) / (1 + K/16)
    k = (ratio - 1) / (1 / 8 - ratio / 16)
    if micro >= 8:
        return 1 + k / micro
    # micro 4 without recomputation took MICRO16_TPS / MICRO4_NOCKPT_TPS the time of micro 16 with every layer
    # recomputed: as a micro-batch cost, that ratio times the recomputation it did not do; solve for K below 8
    at4 = MICRO16_TPS / MICRO4_NOCKPT_TPS * recompute_factor("finetune", 1.0) * (1 + k / 16) / (1 + k / 8)
    k2 = (at4 - 1) / (1 / 4 - at4 / 8)
    return (1 + k / 8) * (1 + k2 / micro) / (1 + k2 / 8)


def offload_factor(offload: float) -> float:
    """Time per token for an optimizer offload fraction (relative_time's third item)."""
    if offload <= 0:
        return 1.0
    slope = (OFFLOAD03_SAMPLED_TPS / OFFLOAD05_SAMPLED_TPS - 1) * (NO_OFFLOAD_TPS / OFFLOAD03_TPS) / 0.2
    return NO_OFFLOAD_TPS / OFFLOAD03_TPS + slope * (offload - 0.3)


# ---------------------------------------------------------------- the fit


@dataclass(frozen=True)
class Target:
    """What the derived config is for: the short device name written to `device`, one device's memory (GiB, as its
    driver reports it), the devices, and one node's memory (GiB; None: not bounded)."""

    device: str
    memory_gib: float
    nodes: int
    gpus_per_node: int
    host_memory_gib: float | None = None

    @property
    def world(self) -> int:
        return self.nodes * self.gpus_per_node


@dataclass(frozen=True)
class Choice:
    setting: Setting
    device_gib: float
    host_gib: float
    time: float
    changes: int


def _setting_of(stage_cfg: dict[str, Any], layers: int) -> Setting:
    if not stage_cfg["gradient_checkpointing"]:
        recomputed = 0
    else:
        recomputed = layers - min(stage_cfg["uncheckpointed_layers"], layers)
    return Setting(micro=stage_cfg["micro_batch"], recomputed=recomputed, offload=stage_cfg["offload_optimizer"],
                   bucket=stage_cfg["reduce_bucket"], zero=stage_cfg["zero_stage"],
                   order=stage_cfg["micro_batch_order"], bound=stage_cfg["uncheckpointed_max_positions"],
                   persistence=stage_cfg["param_persistence"])  # fmt: skip


def _keys_of(s: Setting, ref: dict[str, Any], layers: int) -> dict[str, Any]:
    """The stage's lever keys for a setting; keys that do not apply keep the reference's value."""
    out = {"micro_batch": s.micro, "offload_optimizer": s.offload, "reduce_bucket": s.bucket}
    if s.recomputed == 0:
        out["gradient_checkpointing"] = False
        out["uncheckpointed_layers"] = ref["uncheckpointed_layers"]  # does not apply without checkpointing
    else:
        out["gradient_checkpointing"] = True
        out["uncheckpointed_layers"] = layers - s.recomputed
    return out


def _changed(keys: dict[str, Any], ref: dict[str, Any]) -> int:
    return sum(1 for k, v in keys.items() if v != ref[k])


def _candidates(ref: dict[str, Any], zero: int, per_rank: int) -> tuple[list[int], list[float], list[float]]:
    micros = [m for m in range(1, ref["micro_batch"] + 1) if per_rank % m == 0]
    if zero == 3:
        offloads = sorted({0.0, *OFFLOAD_STEPS, ref["offload_optimizer"]})
    elif zero in (1, 2):
        offloads = sorted({0.0, 1.0, ref["offload_optimizer"]})
    else:
        offloads = [ref["offload_optimizer"]]
    buckets = sorted({ref["reduce_bucket"], *([10.0] if ref["reduce_bucket"] > 10 else [])})
    return micros, offloads, buckets


def _fit_stage(stage: str, ref: dict[str, Any], sz: Sizes, t: Target) -> tuple[Choice, Choice | None, list[Choice]]:
    """(the chosen setting, the reference's own setting where it is valid at this scale, every setting tried)."""
    g = ref["global_batch"]
    if g % t.world:
        raise FitError(f"{stage}: the global batch {g} cannot be split over {t.nodes} x {t.gpus_per_node} = {t.world} "
                       f"devices: choose nodes x gpus dividing {g}")  # fmt: skip
    usable = USABLE * t.memory_gib
    host_usable = HOST_USABLE * t.host_memory_gib if t.host_memory_gib else math.inf
    base = _setting_of(ref, sz.layers)
    micros, offloads, buckets = _candidates(ref, base.zero, g // t.world)
    tried = []
    for m in micros:
        for r in range(sz.layers + 1):
            for f in offloads:
                for b in buckets:
                    s = replace(base, micro=m, recomputed=r, offload=f, bucket=b)
                    keys = _keys_of(s, ref, sz.layers)
                    tried.append(Choice(s, device_gib(stage, s, sz, t.world),
                                        host_gib(stage, s, sz, t.world, t.gpus_per_node), relative_time(stage, s, sz),
                                        _changed(keys, ref)))  # fmt: skip
    own = next((c for c in tried if c.changes == 0), None)
    fits = [c for c in tried if c.device_gib <= usable and c.host_gib <= host_usable]
    if not fits:
        raise FitError(_no_fit(stage, ref, sz, t, tried, usable, host_usable))
    fastest = min(c.time for c in fits)
    near = [c for c in fits if c.time <= fastest * SAME_SPEED]
    best = min(near, key=lambda c: (c.changes, c.time, -c.setting.micro, c.setting.offload, c.setting.bucket))
    if own is not None and own in fits and own.time <= best.time * SAME_SPEED:
        best = own  # the reference's own setting fits and is as fast as the model can tell
    return best, own, tried


def _no_fit(stage: str, ref: dict[str, Any], sz: Sizes, t: Target, tried: list[Choice], usable: float,
            host_usable: float) -> str:  # fmt: skip
    """What no setting could do, and what would: more memory, more devices, or a larger host."""
    least = min(tried, key=lambda c: c.device_gib)
    where = f"{t.nodes} x {t.gpus_per_node} {t.device} of {t.memory_gib:g} GiB"
    on_device = [c for c in tried if c.device_gib <= usable]
    if on_device:  # the device would do, the host would not
        need = min(c.host_gib for c in on_device)
        return (f"{stage} cannot fit on {where} with a host of {t.host_memory_gib:g} GiB: every setting that fits the "
                f"device offloads optimizer state needing about {need:.0f} GiB of host memory per node, over the "
                f"{host_usable:.0f} GiB usable ({100 * HOST_USABLE:.0f}%); use a host with at least "
                f"{math.ceil(need / HOST_USABLE)} GiB (--host-memory-gib), or more devices (--gpus, --nodes), which "
                f"shard that state")  # fmt: skip
    hint = ""
    for gpus in (2, 4, 8, 16, 32, 64):
        w = gpus * t.nodes if gpus <= 8 else gpus
        nodes, per_node = (t.nodes, gpus) if gpus <= 8 else (gpus // 8, 8)
        if gpus <= t.world or ref["global_batch"] % w:
            continue
        bigger = replace(t, nodes=nodes, gpus_per_node=per_node)
        try:
            _fit_stage(stage, ref, sz, bigger)
        except FitError:
            continue
        hint = f", or shard it over more devices: --nodes {nodes} --gpus {per_node} fits"
        break
    return (f"{stage} cannot fit on {where}: its smallest setting (micro batch {least.setting.micro}, every layer "
            f"recomputed, optimizer offload {least.setting.offload:g}) needs about {least.device_gib:.1f} GiB per "
            f"device, over the {usable:.1f} GiB usable ({100 * USABLE:.0f}%); use a device with at least "
            f"{math.ceil(least.device_gib / USABLE)} GiB (--memory-gib){hint}")  # fmt: skip


def _free_patterns() -> list[str]:
    return list(tomllib.loads(RULES.read_text())["free"]["keys"])


def _check_free(changed: list[str]) -> None:
    """The fit's own guard: every key it changes is one the rules call free (rules.toml [free])."""
    free = _free_patterns()
    for key in changed:
        parts = key.split(".")
        if not any(len(p.split(".")) == len(parts) and all(a in ("*", b) for a, b in zip(p.split("."), parts, strict=True))
                   for p in free):  # fmt: skip
            raise AssertionError(f"the fit changed {key}, which rules.toml does not call free")


def _why(stage: str, key: str, old: Any, new: Any, c: Choice, own: Choice | None, t: Target, ref: dict[str, Any],
         sz: Sizes) -> str:  # fmt: skip
    usable = USABLE * t.memory_gib
    est = f"{stage} then needs about {c.device_gib:.1f} GiB per device ({usable:.1f} usable of {t.memory_gib:g})"
    if c.host_gib:
        est += f" and {c.host_gib:.0f} GiB of host memory per node"
    if own is None:
        cause = (f"micro batch {ref['micro_batch']} x {t.world} devices does not divide the global batch "
                 f"{ref['global_batch']}")  # fmt: skip
    elif own.device_gib > usable:
        cause = f"the reference's setting needs about {own.device_gib:.1f} GiB per device, over the {usable:.1f} usable"
    elif own.host_gib > (HOST_USABLE * t.host_memory_gib if t.host_memory_gib else math.inf):
        cause = f"the reference's offload needs about {own.host_gib:.0f} GiB of host memory, over what the host has"
    else:
        cause = f"the memory allows it: estimated {own.time / c.time - 1:.0%} faster than the reference's setting"
    per_rank = ref["global_batch"] // t.world
    if key == "micro_batch":
        what = f"GAS {per_rank // new} keeps the global batch {ref['global_batch']} on {t.world} device(s)"
    elif key in ("gradient_checkpointing", "uncheckpointed_layers"):
        r = c.setting.recomputed
        what = ("no layer recomputed" if r == 0 else
                f"{r} of {sz.layers} decoder layers recomputed in backward ({sz.layers - r} keep their activations)")  # fmt: skip
    elif key == "offload_optimizer":
        what = (f"{new:g} of the fp32 optimizer state (12 bytes per trained parameter) on the host"
                if new else "the whole optimizer state on the device")  # fmt: skip
    else:
        what = f"reduce bucket {new:g} x hidden^2"
    return f"{what}; {cause}; {est}"


def fit(reference: str | Path, target: Target, name: str | None = None) -> dict[str, Any]:
    """The reference config (a name in configs/ or a .toml path) refitted for `target`.

    Returns {"name", "config" (the whole config as a dict, loadable by config.parse), "reasons" [(key, old, new, why)],
    "estimates" {stage: {device_gib, usable_gib, host_gib, relative_time}}, "notes" [str]}. Raises FitError (the
    stage, what it needs, and what would fit) when no setting of the free keys fits."""
    if target.memory_gib <= 0 or target.nodes < 1 or target.gpus_per_node < 1:
        raise FitError(f"memory {target.memory_gib:g} GiB, {target.nodes} x {target.gpus_per_node} devices: memory "
                       f"must be positive and the counts at least 1")  # fmt: skip
    if target.host_memory_gib is not None and target.host_memory_gib <= 0:
        raise FitError(f"host memory {target.host_memory_gib:g} GiB: must be positive (leave it out for no bound)")
    ref_cfg = config_schema.load(reference)
    ref = ref_cfg.to_dict()
    ref.pop("path", None)
    sz = sizes(ref)
    out = _deep_copy(ref)
    new_name = name or f"{target.device}x{target.nodes}x{target.gpus_per_node}"
    reasons: list[tuple[str, Any, Any, str]] = []
    scale = f"{target.nodes} x {target.gpus_per_node} {target.device} ({target.memory_gib:g} GiB each)"
    top = {
        "name": (new_name, f"the derived config's name ({ref_cfg.name} refitted)"),
        "description": (f"{scale}: {ref_cfg.name} refitted by kit configs new", "says what it is for"),
        "device": (target.device, "the target device"),
        "nodes": (target.nodes, "the target's nodes; the global batches stay the reference's (GAS follows)"),
        "gpus_per_node": (target.gpus_per_node, "the target's devices per node; the global batches stay the "
                          "reference's (GAS follows)"),
    }  # fmt: skip
    for key, (value, why) in top.items():
        if out[key] != value:
            reasons.append((key, out[key], value, why))
            out[key] = value
    estimates = {}
    for stage in config_schema.STAGES:
        st = ref[stage]
        choice, own, _ = _fit_stage(stage, st, sz, target)
        keys = _keys_of(choice.setting, st, sz.layers)
        for key in LEVERS:
            if keys[key] != st[key]:
                reasons.append((f"{stage}.{key}", st[key], keys[key],
                                _why(stage, key, st[key], keys[key], choice, own, target, st, sz)))  # fmt: skip
                out[stage][key] = keys[key]
        estimates[stage] = {
            "device_gib": round(choice.device_gib, 1), "usable_gib": round(USABLE * target.memory_gib, 1),
            "host_gib": round(choice.host_gib, 1), "relative_time": round(choice.time, 3),
            "micro_batch": choice.setting.micro, "grad_accum": st["global_batch"] // (choice.setting.micro * target.world),
        }  # fmt: skip
    _check_free([k for k, *_ in reasons])
    notes = list(NOTES)
    if target.host_memory_gib is None and any(e["host_gib"] for e in estimates.values()):
        notes.append("no host memory given (--host-memory-gib): the optimizer offload was not checked against the "
                     "host; see each stage's host figure")  # fmt: skip
    config_schema.parse(out, f"{new_name} (derived from {ref_cfg.name})", new_name)  # the schema's own checks
    return {"name": new_name, "reference": ref_cfg.name, "config": out, "reasons": reasons, "estimates": estimates,
            "notes": notes}  # fmt: skip


def _deep_copy(d: dict[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, dict) else v for k, v in d.items()}

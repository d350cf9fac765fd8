"""The formulas of this case's results, for the host (kit/results asks them; standard library only).

- `reference_mfu`: the seed's own MFU formula (case facts section 4), kept so rows compare with its table;
- `flops`: model FLOPs of one optimizer step by component, from kit_facts `model` and a kit_step's counts;
- `SHAPE_KEYS` / `shape`: the config keys that make two runs the same model (comparability);
- `DATA_STEP_COUNTS`: the kit_step counts of what the reference pipeline's rules did to the step's samples;
- `ACCURACY_KEY`: the summary key of the MMMU accuracy.

The host's protocol for these names is kit/case/metrics.py.
"""

from __future__ import annotations

import math
from typing import Any

REFERENCE_PARAMS = 7e9  # the seed's flat parameter count for LLaVA-1.5-7B
REFERENCE_FACTOR = {"pretrain": 2, "finetune": 6}  # the seed's FLOPs per parameter per token
REFERENCE_RULE = (
    "the seed's formula: token/p/s x 7e9 x (2 pretrain | 6 finetune) / peak; it ignores attention, the vision tower "
    "and the backward through the frozen LLM in pretrain"
)
EXACT_RULE = (
    "model FLOPs as the graph runs (frozen LLM 4N, attention 12.L.H.T^2, projector, CLIP forward) on real tokens"
)
ACCURACY_KEY = "mmmu_acc"  # summary.json's MMMU accuracy (0..1); reference.toml and rules.toml's olympic figures too
SHAPE_KEYS = ("llm", "vision", "projector", "max_length")  # the model section's keys that define its shape


def shape(cfg: dict[str, Any]) -> dict[str, Any] | None:
    """The model's shape in a resolved config (LLM and CLIP sizes, projector, max length); None without a model."""
    m = cfg.get("model")
    if not isinstance(m, dict) or not m:
        return None
    return {k: m.get(k) for k in SHAPE_KEYS}


# ---- reference formula (the seed's) ----


def reference_mfu(
    tokens_per_s_per_gpu: float | None, stage: str, peak_flops: float | None, params: float = REFERENCE_PARAMS
) -> float | None:
    """The seed's MFU: token/p/s x 7e9 x (2 pretrain | 6 finetune) / peak (case facts section 4).

    It ignores attention, the vision tower and the backward through the frozen LLM in pretrain; kept
    only so rows compare with the seed's table. 4013 -> 18.01% and 2937 -> 39.54% at 312e12.
    """
    if tokens_per_s_per_gpu is None or not peak_flops:
        return None
    if stage not in REFERENCE_FACTOR:
        raise ValueError(f"reference MFU is defined for stages {sorted(REFERENCE_FACTOR)}, not {stage!r}")
    return tokens_per_s_per_gpu * params * REFERENCE_FACTOR[stage] / peak_flops


# ---- exact model FLOPs ----


def pass_factor(trains: bool, grad_flows_through: bool) -> int:
    """FLOPs per weight per token: 6 = fwd 2 + input-grad 2 + weight-grad 2; 4 = no weight grad; 2 = fwd."""
    if trains:
        return 6
    return 4 if grad_flows_through else 2


def flops(model: dict[str, Any], step: dict[str, Any]) -> dict[str, float]:
    """Model FLOPs of one optimizer step (summed over ranks and micro-batches), by component.

    Conventions (model FLOPs as the graph really runs, not hardware FLOPs):
    - A multiply-add is 2 FLOPs. No activation recomputation is counted (gradient checkpointing re-runs
      forwards; that is hardware work, not model work).
    - LLM decoder Linear weights N_body run on every real (non-padded) token:
      N_body x real_tokens x f, f = 6 when the LLM trains, 4 when it is frozen but gradients still flow
      through it to a trainable projector (forward 2N + input gradient 2N), 2 when nothing upstream trains.
    - lm_head runs on supervised positions only: lm_head_params x supervised_tokens x f (same f).
    - Attention scores and weighted sum (no weights): PaLM's 12.L.H.Q.T per token with T the sample's own
      real length, i.e. 12 x layers x heads x head_dim x sum_i(T_i^2) per step (heads x head_dim = hidden
      without GQA). Full T^2, no causal halving (PaLM's convention). 12 = fwd 4 + bwd 8; counted in both
      stages because the backward runs through it whenever anything upstream trains (else 4, forward).
    - Projector: projector_params x image_tokens x images x (6 trains | 4 | 2), on every image through
      CLIP (text-only samples carry a zero image that is projected and then not spliced).
    - CLIP (frozen: forward only, x3 if it trained): 2 x vision_matmul_params_run x vision_tokens x images
      + 4 x vision_layers_run x vision_hidden x vision_tokens^2 x images (its attention).
    - Embedding lookups, norms, activations, softmax and the loss are not counted (O(hidden) per token).
    """
    g = lambda d, k: float(d.get(k) or 0)  # noqa: E731 - missing counts are zero
    trains_llm = bool(model.get("trainable_llm"))
    trains_proj = bool(model.get("trainable_projector"))
    trains_vision = bool(model.get("trainable_vision"))
    f_llm = pass_factor(trains_llm, trains_proj or trains_vision)
    f_proj = pass_factor(trains_proj, trains_vision)
    grads_reach_attention = trains_llm or trains_proj or trains_vision
    heads, head_dim = model.get("llm_heads"), model.get("llm_head_dim")
    attn_width = float(heads * head_dim) if heads and head_dim else g(model, "llm_hidden")
    images, vtok = g(step, "images"), g(model, "vision_tokens")
    vision_fwd = (
        2 * g(model, "vision_matmul_params_run") * vtok * images
        + 4 * g(model, "vision_layers_run") * g(model, "vision_hidden") * vtok**2 * images
    )
    return {
        "llm_body": g(model, "llm_body_matmul_params") * g(step, "real_tokens") * f_llm,
        "lm_head": g(model, "lm_head_params") * g(step, "supervised_tokens") * f_llm,
        "attention": (12 if grads_reach_attention else 4)
        * g(model, "llm_layers") * attn_width * g(step, "real_tokens_sq"),
        "projector": f_proj * g(model, "projector_params") * g(model, "image_tokens") * images,
        "vision": vision_fwd * (3 if trains_vision else 1),
    }


def exact_flops_per_step(model: dict[str, Any], step: dict[str, Any]) -> float:
    """Sum of `flops` (see its docstring for every convention)."""
    return sum(flops(model, step).values())


# kit_step counts of what the reference pipeline's own rules did to the step's samples (docs/fidelity.md), each
# with what one of it is, in the order the report's data line names them.
DATA_STEP_COUNTS = {
    "masked_by_reference_rule": "samples fully masked (reference mismatch rule)",
    "relabelled_by_reference_rule": "samples relabelled (reference round arithmetic)",
    "pad_tokens_removed": "<unk> tokens removed",
    "images_dropped_by_truncation": "images dropped by truncation",
    "skipped_unreadable_images": "unreadable images skipped",
}


def learning_rate(base: float, step: int, warmup: int, total: int) -> float:
    """The rate step `step` (1-based) applies under the reference's scheduler: linear warm-up from zero over
    `warmup` steps, then a cosine to zero at `total` (transformers' cosine-with-warmup, as train.py builds it)."""
    s = step - 1
    if s < warmup:
        return base * s / max(1, warmup)
    progress = (s - warmup) / max(1, total - warmup)
    return base * max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))

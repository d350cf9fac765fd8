"""LLaVA-1.5 for training: CLIP vision tower + mlp2x_gelu projector + LLaMA, from transformers building blocks.

Written against the APIs that transformers 4.37.2 / torch 2.1.2 (the container's pins) and transformers 5.x /
torch 2.11+ share: `CLIPVisionModel`, `LlamaForCausalLM`, their configs, `from_pretrained`, `inputs_embeds`,
`attn_implementation=` and non-reentrant gradient checkpointing.

ZeRO-3 note: every parameter fetch is a collective, so every rank must call the same modules in the same order
on every micro-batch. `forward` therefore always runs CLIP, the projector, the embedding, the decoder and
`lm_head` (a text-only batch pushes one zero image; a batch with no supervised token still calls `lm_head` on
zero rows), and it only ever goes through module calls so that the gathering hooks fire.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
import transformers
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

from . import device as device_layer
from .config import ModelConfig

IMAGE_TOKEN_INDEX = -200  # the `<image>` placeholder id in input_ids (the reference's value)
IGNORE_INDEX = -100  # labels that take no part in the loss
PROJECTOR_KEYS = ("model.mm_projector.0.weight", "model.mm_projector.0.bias",
                  "model.mm_projector.2.weight", "model.mm_projector.2.bias")
ATTN_CHOICES = ("flash_attention_2", "sdpa", "eager")
_TRANSFORMERS_5 = int(transformers.__version__.split(".")[0]) >= 5


class CheckpointError(ValueError):
    """A checkpoint directory or projector file does not fit the config; the message names the path."""


def _flash_attn_importable() -> bool:
    try:
        import flash_attn  # noqa: F401
    except Exception:  # an ABI mismatch raises other errors than ImportError
        return False
    return True


def resolve_attn(requested: str) -> str:
    """Turn the config's `attn` into a transformers `attn_implementation` (auto: flash-attn on CUDA, else sdpa)."""
    if requested == "auto":
        return "flash_attention_2" if _flash_attn_importable() and device_layer.device_type() == "cuda" else "sdpa"
    if requested not in ATTN_CHOICES:
        raise ValueError(f"unknown attention implementation {requested!r}: expected auto or one of {', '.join(ATTN_CHOICES)}")
    if requested == "flash_attention_2" and not _flash_attn_importable():
        raise RuntimeError(
            "attention implementation flash_attention_2 was asked for but the flash_attn package does not import; "
            "install flash-attn (pip install flash-attn --no-build-isolation) or set model.attn = \"sdpa\" (or \"auto\")"
        )
    return requested


def _numel(p: torch.Tensor) -> int:
    """Parameter size that survives ZeRO-3 partitioning (there `numel()` is 0 and `ds_numel` holds the size)."""
    return int(getattr(p, "ds_numel", p.numel()))


def _linear_weights(module: nn.Module) -> int:
    return sum(_numel(m.weight) for m in module.modules() if isinstance(m, nn.Linear))


@contextlib.contextmanager
def _building(dtype: torch.dtype, device: torch.device | str | None) -> Iterator[None]:
    """Create parameters directly in `dtype` on `device`: no fp32 CPU copy of a 7B model first."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device) if device is not None else contextlib.nullcontext():
            yield
    finally:
        torch.set_default_dtype(old)


def _dtype_kwarg(dtype: torch.dtype) -> dict[str, torch.dtype]:
    # transformers 5 renamed from_pretrained's torch_dtype to dtype.
    return {"dtype": dtype} if _TRANSFORMERS_5 else {"torch_dtype": dtype}


def _rope_theta(config: LlamaConfig) -> float | None:
    theta = getattr(config, "rope_theta", None)  # transformers 4.x
    if theta is None:  # transformers 5 keeps it in rope_parameters
        theta = (getattr(config, "rope_parameters", None) or {}).get("rope_theta")
    return theta


def _check_fields(path: Path, what: str, expected: dict[str, Any], found: dict[str, Any]) -> None:
    for name, want in expected.items():
        got = found[name]
        if got != want:
            raise CheckpointError(
                f"{path}: the {what} checkpoint has {name} = {got!r} but the config expects {want!r}; "
                f"point the kit at the right checkpoint directory or use a config whose model shape matches it"
            )


def _require_checkpoint_dir(path: Path, what: str) -> None:
    if not (path / "config.json").is_file():
        raise CheckpointError(
            f"{path}: no {what} checkpoint here (config.json is missing); "
            f"expected a Hugging Face model directory (config.json + weights)"
        )


def _load(cls: type, path: Path, config: Any, dtype: torch.dtype, attn: str, what: str) -> Any:
    # Loading leaves the seeded random stream where it was, so the projector drawn after it is the seed's alone:
    # transformers 4.37 draws CLIP's class embedding while it builds the model it then overwrites, 5.x draws nothing.
    with torch.random.fork_rng(devices=[]):
        model, info = cls.from_pretrained(
            str(path), config=config, attn_implementation=attn, output_loading_info=True, **_dtype_kwarg(dtype)
        )
    missing = list(info.get("missing_keys") or [])
    if missing:
        shown = ", ".join(sorted(missing)[:5])
        raise CheckpointError(
            f"{path}: the {what} checkpoint lacks {len(missing)} weights ({shown}{', ...' if len(missing) > 5 else ''}); "
            f"they would be left at random values"
        )
    return model


@dataclass
class Spliced:
    """Inputs of the language model after the image features took the placeholders' places."""

    embeds: torch.Tensor  # [B, T, H]
    labels: torch.Tensor  # [B, T], IGNORE_INDEX at image and padding positions
    attention_mask: torch.Tensor  # [B, T] bool, True on real tokens
    position_ids: torch.Tensor  # [B, T], 0.. per sample, 0 on padding
    lengths: list[int]  # real length of each sample after splicing and truncation


def apply_kernels(llm: torch.nn.Module, kernels: str) -> str:
    """Swap the LLM's RoPE, RMSNorm and SwiGLU for liger-kernel's fused Triton kernels (same math, fewer passes).

    Only on request (config `model.kernels = "liger"`): the reference ran stock modules. The loss stays the
    kit's own (lm_head on supervised positions only), so liger's cross-entropy kernels are not used.
    """
    if kernels == "none":
        return "none"
    if (kind := device_layer.device_type()) != "cuda":
        raise RuntimeError(f"model.kernels = {kernels!r} needs a CUDA GPU (Triton kernels), and this process runs on "
                           f"{'the CPU' if kind == 'cpu' else kind}; use kernels = 'none' there")
    try:
        from liger_kernel.transformers import apply_liger_kernel_to_llama
    except ImportError:
        raise RuntimeError(
            "model.kernels = 'liger' needs the liger-kernel package: pip install liger-kernel (or set kernels = 'none')"
        ) from None
    apply_liger_kernel_to_llama(
        rope=False, rms_norm=True, swiglu=True, cross_entropy=False, fused_linear_cross_entropy=False, model=llm
    )
    from liger_kernel.transformers.rope import liger_rotary_pos_emb
    from transformers.models.llama import modeling_llama

    modeling_llama.apply_rotary_pos_emb = batch_folded(liger_rotary_pos_emb)
    return "liger"


def batch_folded(rope: Callable[..., Any]) -> Callable[..., Any]:
    """`rope` (q, k, cos, sin) called on the whole micro-batch as one sequence of batch x length tokens.

    liger's RoPE kernel takes the batch size as a compile-time constant (`bs: tl.constexpr`), so every new
    micro-batch size compiled it again: 22 variants in one 12-step finetune whose micro-batches are cut by tokens,
    most of the first step's 27 s against 13 s warm on an H200. Each token's rotation needs only its own cos/sin
    row, so folding the batch into the sequence is the same arithmetic with the batch size always 1. q and k come
    out of the projections as (batch, length, heads, dim) in memory, so the fold is a view, not a copy.
    """

    def folded(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, *args: Any, **kw: Any):
        if q.ndim != 4 or cos.ndim != 3 or args or kw:  # not the shapes LlamaAttention passes: as it was
            return rope(q, k, cos, sin, *args, **kw)
        bsz, n_q, length, dim = q.shape
        n_k = k.shape[1]
        tokens = bsz * length

        def fold(x: torch.Tensor, heads: int) -> torch.Tensor:
            return x.transpose(1, 2).reshape(1, tokens, heads, dim).transpose(1, 2)

        def fold_rows(c: torch.Tensor) -> torch.Tensor:  # (1 or batch, length, dim) -> (1, batch x length, dim)
            return c.expand(bsz, length, c.shape[-1]).reshape(1, tokens, c.shape[-1])

        q_out, k_out = rope(fold(q, n_q), fold(k, n_k), fold_rows(cos), fold_rows(sin), *args, **kw)

        def unfold(x: torch.Tensor, heads: int) -> torch.Tensor:
            return x.transpose(1, 2).reshape(bsz, length, heads, dim).transpose(1, 2)

        return unfold(q_out, n_q), unfold(k_out, n_k)

    return folded


def _recomputed(
    layer: nn.Module, forward: Callable[..., Any], over: int = 0, on_over: Callable[[], None] | None = None
) -> Callable[..., Any]:
    """`forward` run under non-reentrant activation checkpointing while `layer` trains with autograd on.

    `over` > 0: only for an input of more than `over` positions (batch x sequence length); `on_over` is called for
    each such input. Shorter inputs keep their activations.
    """

    def run(*args: Any, **kwargs: Any) -> Any:
        if layer.training and torch.is_grad_enabled():
            if over:
                hidden = args[0] if args else kwargs["hidden_states"]
                if hidden.shape[0] * hidden.shape[1] <= over:
                    return forward(*args, **kwargs)
                if on_over is not None:
                    on_over()
            return torch.utils.checkpoint.checkpoint(forward, *args, use_reentrant=False, **kwargs)
        return forward(*args, **kwargs)

    return run


class LlavaForTraining(nn.Module):
    """LLaVA-1.5 with a loss-only forward: what the benchmark trains, nothing it does not need."""

    def __init__(
        self,
        cfg: ModelConfig,
        *,
        llm_dir: Path | None = None,
        vision_dir: Path | None = None,
        dtype: torch.dtype = torch.bfloat16,
        attn_implementation: str = "sdpa",
        vocab_size: int | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.attn_implementation = resolve_attn(attn_implementation)
        # CLIP gained SDPA after 4.37; flash-attn buys nothing on 577 unpadded tokens.
        self.vision_attn_implementation = "sdpa" if getattr(CLIPVisionModel, "_supports_sdpa", False) else "eager"
        v = cfg.vision
        # hidden_states[0] is the embedding output, hidden_states[k] the output of layer k, so index
        # select_layer needs layers + 1 + select_layer layers; the rest cannot change the features.
        self.vision_layers_run = v.layers + 1 + v.select_layer
        self.image_tokens = (v.image_size // v.patch) ** 2
        self.vocab = max(cfg.llm.vocab, vocab_size or 0)
        self.recomputed_layers = 0  # decoder layers under activation checkpointing (enable_gradient_checkpointing)
        self.kept_max_positions = 0  # kept layers recompute too above this many positions (0: never)
        self.fully_recomputed_micro_batches = 0  # training forwards over kept_max_positions, counted since built

        self.vision = self._build_vision(vision_dir, dtype, device)
        with _building(dtype, device):
            self.projector = nn.Sequential(
                nn.Linear(v.hidden, cfg.llm.hidden), nn.GELU(), nn.Linear(cfg.llm.hidden, cfg.llm.hidden)
            )
        self.llm = self._build_llm(llm_dir, dtype, device, vocab_size)
        self.llm.config.use_cache = False
        self.kernels = apply_kernels(self.llm, cfg.kernels)
        self.vision.requires_grad_(False)
        self.vision.eval()
        self.stage: str | None = None
        self.last_stats: dict[str, int] = {}

    # ----------------------------------------------------------------------------------------- building
    def _build_vision(self, path: Path | None, dtype: torch.dtype, device: Any) -> CLIPVisionModel:
        v = self.cfg.vision
        expected = {"hidden_size": v.hidden, "num_hidden_layers": v.layers, "num_attention_heads": v.heads,
                    "intermediate_size": v.ffn, "image_size": v.image_size, "patch_size": v.patch}
        if path is None:
            config = CLIPVisionConfig(**expected, attn_implementation=self.vision_attn_implementation)
            with _building(dtype, device):
                model = CLIPVisionModel(config)
        else:
            path = Path(path)
            _require_checkpoint_dir(path, "vision (CLIP)")
            config = CLIPVisionConfig.from_pretrained(str(path))  # a full CLIPModel dir yields its vision_config
            _check_fields(path, "vision (CLIP)", expected, {k: getattr(config, k) for k in expected})
            model = _load(CLIPVisionModel, path, config, dtype, self.vision_attn_implementation, "vision (CLIP)")
            if device is not None:
                model = model.to(device)
        encoder = getattr(model, "vision_model", model).encoder  # transformers 5 flattened vision_model away
        del encoder.layers[self.vision_layers_run:]
        model.config.num_hidden_layers = self.vision_layers_run
        return model

    def _build_llm(self, path: Path | None, dtype: torch.dtype, device: Any, vocab_size: int | None) -> LlamaForCausalLM:
        c = self.cfg.llm
        expected = {"hidden_size": c.hidden, "num_hidden_layers": c.layers, "num_attention_heads": c.heads,
                    "num_key_value_heads": c.kv_heads, "intermediate_size": c.ffn, "vocab_size": c.vocab,
                    "max_position_embeddings": c.max_positions, "rms_norm_eps": c.rms_eps, "rope_theta": c.rope_theta}
        if path is None:
            config = LlamaConfig(**{**expected, "vocab_size": self.vocab}, use_cache=False, tie_word_embeddings=False,
                                 attn_implementation=self.attn_implementation)
            with _building(dtype, device):
                return LlamaForCausalLM(config)
        path = Path(path)
        _require_checkpoint_dir(path, "language model (LLaMA)")
        config = LlamaConfig.from_pretrained(str(path))
        found = {k: getattr(config, k) for k in expected if k != "rope_theta"}
        found["rope_theta"] = _rope_theta(config)
        _check_fields(path, "language model (LLaMA)", expected, found)
        if self.vocab > c.vocab:
            raise CheckpointError(
                f"{path}: the tokenizer has {vocab_size} tokens but the checkpoint's embedding has {c.vocab} rows; "
                f"use the checkpoint's own tokenizer (the reference adds no tokens)"
            )
        config.use_cache = False
        model = _load(LlamaForCausalLM, path, config, dtype, self.attn_implementation, "language model (LLaMA)")
        return model.to(device) if device is not None else model

    def layer_classes(self) -> list[type[nn.Module]]:
        """The classes of the LLaMA decoder layer and the CLIP encoder layer (ZeRO-3 leaf modules)."""
        encoder = getattr(self.vision, "vision_model", self.vision).encoder
        found = {type(layer) for layer in (*self.llm.model.layers, *encoder.layers)}
        return sorted(found, key=lambda c: c.__name__)

    # ----------------------------------------------------------------------------------------- stages
    def set_stage(self, stage: str) -> None:
        """pretrain trains the projector only; finetune the LLM (embeddings and lm_head too) and the projector."""
        if stage not in ("pretrain", "finetune"):
            raise ValueError(f"unknown stage {stage!r}: expected pretrain or finetune")
        self.vision.requires_grad_(False)
        self.projector.requires_grad_(True)
        self.llm.requires_grad_(stage == "finetune")
        self.stage = stage

    def enable_gradient_checkpointing(self, keep_layers: int = 0, keep_max_positions: int = 0) -> None:
        """Recompute decoder layers in backward; non-reentrant, so it works with a frozen LLM (pretrain).

        `keep_layers` > 0: the last that many decoder layers keep their activations and are not recomputed (less
        compute, more memory); the others are checkpointed here, around each layer's forward (module hooks, such
        as ZeRO-3's, stay outside the checkpoint, as transformers 5 does), under any transformers version.
        `keep_max_positions` > 0: a micro-batch of more positions than that (batch x padded sequence length, image
        features included) recomputes the kept layers too, so the memory they hold is bounded whatever the data
        (nothing to bound without kept layers).
        """
        layers = list(self.llm.get_decoder().layers)
        if not 0 <= keep_layers <= len(layers):
            raise ValueError(f"keep_layers = {keep_layers}: the LLM has {len(layers)} decoder layers")
        if keep_max_positions < 0:
            raise ValueError(f"keep_max_positions = {keep_max_positions}: a number of positions, 0 for no bound")
        if keep_layers:
            split = len(layers) - keep_layers
            for layer in layers[:split]:
                layer.forward = _recomputed(layer, layer.forward)
            if keep_max_positions:
                for i, layer in enumerate(layers[split:]):
                    layer.forward = _recomputed(
                        layer, layer.forward, over=keep_max_positions, on_over=self._count_full_recompute if i == 0 else None
                    )
            self.recomputed_layers = split
            self.kept_max_positions = keep_max_positions
            return
        self.recomputed_layers = len(layers)
        kwargs = {"use_reentrant": False}
        enable = getattr(self.llm, "activation_checkpointing_enable", None)  # transformers 5's new name
        if enable is not None:
            enable(activation_checkpointing_kwargs=kwargs)
        else:
            self.llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)

    def _count_full_recompute(self) -> None:
        self.fully_recomputed_micro_batches += 1

    def train(self, mode: bool = True) -> LlavaForTraining:
        super().train(mode)
        self.vision.eval()  # frozen: keep it in inference mode whatever the loop asks
        return self

    # ----------------------------------------------------------------------------------------- forward
    def vision_features(self, images: torch.Tensor) -> torch.Tensor:
        """CLIP hidden states at select_layer (before post_layernorm), CLS dropped: [n, patches, vision_hidden].

        The truncated encoder's last output is exactly hidden_states[select_layer] of the full tower; the
        vision model's own forward applies post_layernorm only to the pooled CLS output, which is unused.
        """
        with torch.no_grad():
            out = self.vision(pixel_values=images.to(self.vision.dtype))
            return out.last_hidden_state[:, 1:]

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Projected image features [n, patches, llm_hidden]; the projector runs with autograd."""
        feats = self.vision_features(images)
        return self.projector(feats.to(self.projector[0].weight.dtype))

    def splice(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor,
        attention_mask: torch.Tensor,
        image_features: torch.Tensor | None,
        has_image: torch.Tensor,
    ) -> Spliced:
        """Replace each sample's placeholder by its image features, truncate to max_length, right-pad.

        As the reference's prepare_inputs_labels_for_multimodal: only positions whose attention mask is set are
        kept (with their labels), and a sample that has an image but no placeholder left (the text was cut
        before it) consumes its image and splices zero rows of it, training on its text alone.
        """
        bsz = input_ids.shape[0]
        flags = [bool(x) for x in has_image.tolist()]
        n_images = sum(flags)
        if n_images != (0 if image_features is None else image_features.shape[0]):
            got = 0 if image_features is None else image_features.shape[0]
            raise ValueError(f"batch has {n_images} samples with an image but {got} images")
        keep = attention_mask.bool()
        is_placeholder = input_ids == IMAGE_TOKEN_INDEX
        kept_ph = is_placeholder & keep
        width = input_ids.shape[1]
        # One device-to-host transfer for the whole batch (a sync per sample would stall the GPU queue): per row the
        # kept length, the placeholders, the first placeholder's position and whether the mask is a prefix (the
        # collator right-pads, so it always is; any other mask takes the exact, slower path below).
        last = torch.where(keep.any(1), width - 1 - keep.flip(1).int().argmax(1), torch.full_like(keep[:, 0], -1, dtype=torch.long))
        first_ph = torch.where(kept_ph.any(1), kept_ph.int().argmax(1), torch.full_like(last, -1))
        meta = torch.stack([keep.sum(1), kept_ph.sum(1), first_ph, last], 1).tolist()
        for i, (flag, (_, count, _, _)) in enumerate(zip(flags, meta, strict=True)):
            if count > int(flag):
                raise ValueError(
                    f"sample {i} of the batch has {count} image placeholders ({IMAGE_TOKEN_INDEX}) but has_image is "
                    f"{flag}: a sample must carry at most one placeholder when it has an image and none otherwise"
                )
        # The placeholder becomes a valid id (0) for the lookup; its row is dropped right after.
        embeds = self.llm.get_input_embeddings()(input_ids.masked_fill(is_placeholder, 0))

        rows_e: list[torch.Tensor] = []
        rows_l: list[torch.Tensor] = []
        k = 0
        for i in range(bsz):
            n, count, j, end = meta[i]
            if end + 1 == n:  # a prefix mask: slices, no sync
                e, lab = embeds[i, :n], labels[i, :n]
            else:  # only the positions whose mask is set, as the reference keeps them
                m = keep[i]
                e, lab = embeds[i][m], labels[i][m]
                at = (input_ids[i][m] == IMAGE_TOKEN_INDEX).nonzero()
                j = int(at[0, 0]) if len(at) else -1
            if flags[i]:
                feat = image_features[k].to(e.dtype)
                k += 1
                if j >= 0:
                    e = torch.cat([e[:j], feat, e[j + 1:]])
                    ignore = lab.new_full((feat.shape[0],), IGNORE_INDEX)
                    lab = torch.cat([lab[:j], ignore, lab[j + 1:]])
                else:  # the placeholder was cut away: the image's features take no position
                    e = torch.cat([e, feat[:0]])
            elif image_features is not None:
                # An empty slice of the features, as the reference splices: the projector stays in the graph
                # and gets a (zero) gradient on every rank, since ZeRO reduces gradients in collectives that
                # every rank must enter with the same parameters.
                e = torch.cat([e, image_features[:0].reshape(0, e.shape[-1]).to(e.dtype)])
            rows_e.append(e[: self.cfg.max_length])
            rows_l.append(lab[: self.cfg.max_length])

        lengths = [r.shape[0] for r in rows_e]
        longest = max(lengths)
        hidden = embeds.shape[-1]
        out_e = embeds.new_zeros((bsz, longest, hidden))
        out_l = labels.new_full((bsz, longest), IGNORE_INDEX)
        mask = torch.zeros((bsz, longest), dtype=torch.bool, device=embeds.device)
        pos = torch.zeros((bsz, longest), dtype=torch.long, device=embeds.device)
        for i, n in enumerate(lengths):
            out_e[i, :n] = rows_e[i]
            out_l[i, :n] = rows_l[i]
            mask[i, :n] = True
            pos[i, :n] = torch.arange(n, device=embeds.device)
        return Spliced(out_e, out_l, mask, pos, lengths)

    def forward(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor,
        attention_mask: torch.Tensor,
        images: torch.Tensor | None,
        has_image: torch.Tensor,
    ) -> torch.Tensor:
        """Mean next-token cross-entropy (fp32) over supervised targets; lm_head runs only on those rows.

        Only samples with an image go through CLIP. The reference also pushes a zero image through CLIP for
        each text-only sample and splices zero rows of its features: that changes no number (the features are
        discarded, CLIP is frozen). A batch without any image still pushes one zero image, so that every rank
        calls the same modules in the same order (ZeRO-3 gathers parameters with collectives).
        """
        if images is None or images.shape[0] == 0:
            s = self.cfg.vision.image_size
            dummy = torch.zeros((1, 3, s, s), device=input_ids.device, dtype=self.vision.dtype)
            image_features = self.encode_images(dummy)[:0]
        else:
            image_features = self.encode_images(images)
        sp = self.splice(input_ids, labels, attention_mask, image_features, has_image)
        hidden = self.llm.get_decoder()(
            inputs_embeds=sp.embeds,
            attention_mask=sp.attention_mask.long(),
            position_ids=sp.position_ids,
            use_cache=False,
        ).last_hidden_state
        targets = sp.labels[:, 1:]
        supervised = targets != IGNORE_INDEX
        logits = self.llm.lm_head(hidden[:, :-1][supervised]).float()
        n_supervised = int(supervised.sum())
        # Sum / count, not mean: with no supervised target the loss is a graph-connected zero, not NaN.
        loss = F.cross_entropy(logits, targets[supervised], reduction="sum") / max(n_supervised, 1)
        self.last_stats = {
            "samples": input_ids.shape[0],
            "images": int(has_image.sum()),
            "real_tokens": sum(sp.lengths),
            "padded_tokens": len(sp.lengths) * max(sp.lengths),
            "real_tokens_sq": sum(n * n for n in sp.lengths),
            "supervised_tokens": n_supervised,
        }
        return loss

    # ----------------------------------------------------------------------------------------- projector I/O
    def projector_state_dict(self) -> dict[str, torch.Tensor]:
        """The projector under the reference's key names (what its pretrain writes to mm_projector.bin).

        Under ZeRO-3 call it inside `deepspeed.zero.GatheredParameters(model.projector.parameters())`.
        """
        return {f"model.mm_projector.{k}": t.detach().cpu().clone() for k, t in self.projector.state_dict().items()}

    def load_projector(self, path: Path | str) -> None:
        """Load a reference-format mm_projector.bin (the finetune stage starts from the pretrain projector).

        Call it before the parameters are partitioned (ZeRO-3), or inside
        `deepspeed.zero.GatheredParameters(model.projector.parameters(), modifier_rank=0)`.
        """
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"{path}: projector file not found; run the pretrain stage first or pass its mm_projector.bin")
        try:
            try:
                state = torch.load(str(path), map_location="cpu", weights_only=True)
            except TypeError:  # pragma: no cover - torch without weights_only
                state = torch.load(str(path), map_location="cpu")
        except Exception as e:
            raise CheckpointError(f"{path}: cannot read the projector file: {e}") from e
        if not isinstance(state, dict):
            raise CheckpointError(f"{path}: expected a dict of tensors, found {type(state).__name__}")
        # Accept any prefix ending in "mm_projector." as the reference's loader does.
        found = {k.split("mm_projector.", 1)[1]: v for k, v in state.items() if "mm_projector." in k}
        own = self.projector.state_dict()
        missing = sorted(set(own) - set(found))
        extra = sorted(set(found) - set(own))
        if missing or extra:
            raise CheckpointError(
                f"{path}: projector keys do not match: missing {['model.mm_projector.' + k for k in missing]}, "
                f"unexpected {['model.mm_projector.' + k for k in extra]}; expected {list(PROJECTOR_KEYS)}"
            )
        for k, t in own.items():
            if tuple(found[k].shape) != tuple(t.shape):
                raise CheckpointError(
                    f"{path}: model.mm_projector.{k} has shape {tuple(found[k].shape)} but this model needs "
                    f"{tuple(t.shape)}; the file belongs to a model of another size"
                )
        with torch.no_grad():
            for k, t in self.projector.state_dict(keep_vars=True).items():
                t.copy_(found[k].to(dtype=t.dtype, device=t.device))

    # ----------------------------------------------------------------------------------------- facts
    def facts(self) -> dict[str, Any]:
        """The `model` block of kit_facts: shapes and parameter counts the host turns into FLOPs."""
        c, v = self.cfg.llm, self.cfg.vision
        decoder = self.llm.get_decoder()
        encoder = getattr(self.vision, "vision_model", self.vision)
        layers_run = encoder.encoder.layers
        patch = encoder.embeddings.patch_embedding.weight
        params = list(self.parameters())
        return {
            "llm_layers": c.layers,
            "llm_hidden": c.hidden,
            "llm_heads": c.heads,
            "llm_kv_heads": c.kv_heads,
            "llm_head_dim": c.hidden // c.heads,
            "llm_ffn": c.ffn,
            "vocab": self.vocab,
            "llm_body_matmul_params": _linear_weights(decoder.layers),
            "lm_head_params": _numel(self.llm.lm_head.weight),
            "embed_params": _numel(self.llm.get_input_embeddings().weight),
            "vision_layers_run": len(layers_run),
            "vision_hidden": v.hidden,
            "vision_tokens": self.image_tokens + 1,
            "vision_matmul_params_run": _linear_weights(layers_run) + _numel(patch),
            "projector_params": _linear_weights(self.projector),
            "image_tokens": self.image_tokens,
            "trainable_llm": any(p.requires_grad for p in self.llm.parameters()),
            "trainable_projector": any(p.requires_grad for p in self.projector.parameters()),
            "trainable_vision": any(p.requires_grad for p in self.vision.parameters()),
            "kernels": self.kernels,
            "total_params": sum(_numel(p) for p in params),
            "trainable_params": sum(_numel(p) for p in params if p.requires_grad),
        }

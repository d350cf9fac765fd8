"""Bytes one LLM decoder layer keeps for backward per position, counted on a CPU at a config's widths.

    python bench/activation_bytes.py [--config H200x1x1] [--positions 256] [--out bench/results/cpu/activation-bytes.json]

It builds one decoder layer of the config's LLaMA shape in bf16 (random init), runs a forward of one sequence with
autograd on, and sums the storages of the tensors autograd saves (saved_tensors_hooks), less the weights and the
layer's input: what an uncheckpointed layer holds until its backward beyond a checkpointed one, per position. This
plans `uncheckpointed_layers` against the free memory of a run (peak from bench/results, longest micro-batch from
bench/padding.py). Stock transformers modules
on the CPU's SDPA: liger-kernel's fused RMSNorm and SwiGLU (GPU only) and the GPU attention kernels save somewhat
different tensors, so take it as an estimate for the GPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import LlamaConfig  # noqa: E402
from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding  # noqa: E402

from cases.llava1_5_7b import config as config_mod  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="H200x1x1")
    ap.add_argument("--positions", type=int, default=256)
    ap.add_argument("--out", type=Path, help="write the figures to this JSON file")
    args = ap.parse_args(argv)
    llm = config_mod.load(args.config).model.llm
    cfg = LlamaConfig(hidden_size=llm.hidden, intermediate_size=llm.ffn, num_attention_heads=llm.heads,
                      num_key_value_heads=llm.kv_heads, num_hidden_layers=1, vocab_size=llm.vocab,
                      max_position_embeddings=llm.max_positions)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    t0 = time.perf_counter()
    with torch.device("cpu"):
        layer = LlamaDecoderLayer(cfg, layer_idx=0).to(torch.bfloat16).train()
        rope = LlamaRotaryEmbedding(config=cfg)
    n = args.positions
    x = torch.randn(1, n, llm.hidden, dtype=torch.bfloat16, requires_grad=True)
    pos = torch.arange(n).unsqueeze(0)
    cos_sin = tuple(t.to(torch.bfloat16) for t in rope(x, pos))
    weights = {p.untyped_storage().data_ptr() for p in layer.parameters()}
    storages: dict[int, int] = {}  # a storage saved by several ops (or as views) is held once

    def pack(t: torch.Tensor) -> torch.Tensor:
        st = t.untyped_storage()
        if st.data_ptr() not in weights:  # the layer's weights (saved by the matmuls) are held anyway
            storages[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = layer(x, position_embeddings=cos_sin, position_ids=pos, attention_mask=None)
    out = out[0] if isinstance(out, tuple) else out
    out.float().sum().backward()  # the saved tensors were real: backward runs
    saved = sum(storages.values()) - x.untyped_storage().nbytes()  # the input is what a checkpointed layer keeps
    result = {
        "config": args.config, "hidden": llm.hidden, "ffn": llm.ffn, "positions": n, "dtype": "bfloat16",
        "saved_bytes": saved, "saved_mib_per_position": saved / n / 2**20,
        "checkpointed_mib_per_position": llm.hidden * 2 / 2**20,  # a checkpointed layer keeps only its bf16 input
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "seconds": round(time.perf_counter() - t0, 1),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }  # fmt: skip
    print(f"{args.config}: one decoder layer (hidden {llm.hidden}, ffn {llm.ffn}) keeps "
          f"{result['saved_mib_per_position']:.3f} MiB per position for backward "
          f"({result['checkpointed_mib_per_position']:.4f} MiB checkpointed); {n} positions, {result['seconds']} s")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

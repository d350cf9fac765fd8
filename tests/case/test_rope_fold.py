"""The batch-folded RoPE (model.batch_folded): liger's kernel sees one sequence of batch x length tokens, so its
compile-time batch size is always 1 and micro-batches of any size reuse one compiled kernel. Checked here with
Llama's RoPE in torch in its place (liger's Triton kernel needs a GPU): the fold must change nothing, values and
gradients, and must be a view of the projections' output (no copy)."""

from __future__ import annotations

import torch

from cases.llava1_5_7b.model import batch_folded


def apply_rotary_pos_emb(q, k, cos, sin):
    """Llama's RoPE as transformers 5 applies it (cos/sin (batch or 1, length, dim), unsqueezed at the heads), written
    out here: transformers 4.37's function of the same name takes position ids instead."""
    def rotate_half(x):
        x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2 :]
        return torch.cat((-x2, x1), dim=-1)

    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


def projections(bsz: int, length: int, n_q: int, n_k: int, dim: int, seed: int = 0):
    """q and k as LlamaAttention makes them: (batch, length, heads, dim) in memory, viewed (batch, heads, length, dim)."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(bsz, length, n_q, dim, generator=g).transpose(1, 2)
    k = torch.randn(bsz, length, n_k, dim, generator=g).transpose(1, 2)
    pos = torch.arange(length, dtype=torch.float32)
    inv = 1.0 / (10000 ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    freqs = torch.outer(pos, inv)
    emb = torch.cat([freqs, freqs], dim=-1)
    return q, k, emb.cos()[None].expand(bsz, length, dim).contiguous(), emb.sin()[None].expand(bsz, length, dim).contiguous()


def test_the_fold_changes_no_value():
    for bsz, length in ((1, 7), (3, 16), (5, 33)):
        q, k, cos, sin = projections(bsz, length, 4, 2, 8, seed=bsz)
        want_q, want_k = apply_rotary_pos_emb(q, k, cos, sin)
        got_q, got_k = batch_folded(apply_rotary_pos_emb)(q, k, cos, sin)
        assert got_q.shape == q.shape and got_k.shape == k.shape
        torch.testing.assert_close(got_q, want_q, rtol=0, atol=0)
        torch.testing.assert_close(got_k, want_k, rtol=0, atol=0)
        # cos/sin of one row for the whole batch (cos_bs = 1), as some callers pass them
        got_q1, _ = batch_folded(apply_rotary_pos_emb)(q, k, cos[:1], sin[:1])
        torch.testing.assert_close(got_q1, want_q, rtol=0, atol=0)


def test_the_fold_changes_no_gradient():
    q, k, cos, sin = projections(4, 9, 4, 4, 8, seed=7)
    grads = []
    for rope in (apply_rotary_pos_emb, batch_folded(apply_rotary_pos_emb)):
        qq, kk = q.detach().clone().requires_grad_(), k.detach().clone().requires_grad_()
        out_q, out_k = rope(qq, kk, cos, sin)
        (out_q.square().sum() + (out_k * 3).sum()).backward()
        grads.append((qq.grad, kk.grad))
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=0, atol=0)
    torch.testing.assert_close(grads[0][1], grads[1][1], rtol=0, atol=0)


def test_the_kernel_sees_batch_one_and_a_view_of_the_projections():
    q, k, cos, sin = projections(6, 5, 4, 2, 8)
    seen = {}

    def spy(q1, k1, c1, s1):
        seen.update(q=q1.shape, k=k1.shape, cos=c1.shape, shares=q1.data_ptr() == q.data_ptr() and k1.data_ptr() == k.data_ptr())
        return apply_rotary_pos_emb(q1, k1, c1, s1)

    batch_folded(spy)(q, k, cos, sin)
    assert seen["q"] == (1, 4, 30, 8) and seen["k"] == (1, 2, 30, 8) and seen["cos"] == (1, 30, 8)
    assert seen["shares"]  # a view of the projections' output, not a copy


def test_other_shapes_pass_through_unchanged():
    q, k, cos, sin = projections(2, 3, 2, 2, 4)
    calls = []

    def spy(*a, **kw):
        calls.append((a[0].shape, kw))
        return a[0], a[1]

    batch_folded(spy)(q, k, cos[:, None], sin[:, None])  # 4-D cos: not LlamaAttention's call
    assert calls == [(q.shape, {})]

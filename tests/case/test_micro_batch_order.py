"""micro_batch_order = "by_length": the same samples per step, cut into micro-batches that pad little."""

from __future__ import annotations

import random

import pytest

from cases.llava1_5_7b.data import StepBatchSampler

W, G, M = 2, 4, 8  # ranks, micro-steps per step, micro-batch


def lengths(n: int = 700, seed: int = 0) -> list[int]:
    rnd = random.Random(seed)
    return [rnd.choice([1, 1, 1, -1]) * rnd.randint(5, 400) for _ in range(n)]


def est(lens: list[int]) -> list[int]:
    return [abs(v) + (576 if v > 0 else 0) for v in lens]


def per_rank(lens, kind, order, start_step=0):
    return [
        list(StepBatchSampler(lens, M, W, r, G, kind, 42, start_step=start_step, micro_batch_order=order))
        for r in range(W)
    ]


def step_samples(batches, step):
    return sorted(i for r in range(W) for mb in batches[r][step * G : (step + 1) * G] for i in mb)


def waste(batches, e):
    real = sum(e[i] for r in batches for mb in r for i in mb)
    padded = sum(len(mb) * max(e[i] for i in mb) for r in batches for mb in r)
    return 1 - real / padded


@pytest.mark.parametrize("kind", ["random", "modality_length"])
def test_same_samples_every_step_less_padding(kind):
    lens = lengths()
    sampled, by_length = per_rank(lens, kind, "sampled"), per_rank(lens, kind, "by_length")
    steps = len(sampled[0]) // G
    for s in range(steps):
        assert step_samples(sampled, s) == step_samples(by_length, s)
    assert all(len(mb) == M for r in by_length for mb in r)
    e = est(lens)
    assert waste(by_length, e) < waste(sampled, e) / 2


def test_ranks_get_similar_loads_and_resume_skips_whole_steps():
    lens = lengths(seed=1)
    e = est(lens)
    full = per_rank(lens, "modality_length", "by_length")
    loads = [sum(len(mb) * max(e[i] for i in mb) for mb in r) for r in full]
    assert max(loads) / min(loads) < 1.05
    resumed = per_rank(lens, "modality_length", "by_length", start_step=3)
    assert all(resumed[r] == full[r][3 * G :] for r in range(W))
    assert per_rank(lens, "modality_length", "by_length") == full  # deterministic


def test_unknown_order_is_refused():
    with pytest.raises(ValueError, match="unknown micro_batch_order 'shortest'"):
        StepBatchSampler(lengths(), M, W, 0, G, "random", 42, micro_batch_order="shortest")

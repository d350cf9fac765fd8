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


def padded(mb, e):
    return len(mb) * max(e[i] for i in mb)


@pytest.mark.parametrize("kind", ["random", "modality_length"])
def test_by_tokens_same_samples_same_micro_steps_smaller_largest_micro_batch(kind):
    lens = lengths(seed=2)
    e = est(lens)
    by_length, by_tokens = per_rank(lens, kind, "by_length"), per_rank(lens, kind, "by_tokens")
    steps = len(by_length[0]) // G
    assert [len(r) for r in by_tokens] == [len(r) for r in by_length] == [steps * G] * W  # same micro-steps
    shrunk = 0
    for s in range(steps):
        assert step_samples(by_tokens, s) == step_samples(by_length, s)
        worst = max(padded(mb, e) for r in by_length for mb in r[s * G : (s + 1) * G])
        mine = max(padded(mb, e) for r in by_tokens for mb in r[s * G : (s + 1) * G])
        assert mine <= worst
        shrunk += mine < worst
    assert shrunk > steps // 2  # balanced: the largest micro-batch is usually smaller than by_length's
    assert len({len(mb) for r in by_tokens for mb in r}) > 1  # unequal sizes
    assert waste(by_tokens, e) < waste(per_rank(lens, kind, "sampled"), e) / 2
    sampler = StepBatchSampler(lens, M, W, 0, G, kind, 42, micro_batch_order="by_tokens")
    assert len(sampler) == len(list(sampler))


@pytest.mark.parametrize("seed", [5, 6, 7])
def test_by_tokens_cut_is_the_most_balanced_then_least_padding(seed):
    """Against every way of cutting the sorted step into W x G contiguous groups (brute force): the smallest
    largest micro-batch, and among those cuts the least padding."""
    import itertools

    rnd = random.Random(seed)
    lens = [rnd.choice([1, -1]) * rnd.randint(5, 900) for _ in range(12)]
    e = est(lens)
    w, g, m = 1, 3, 4
    got = list(StepBatchSampler(lens, m, w, 0, g, "random", 1, micro_batch_order="by_tokens"))[:g]
    step = sorted((i for mb in got for i in mb), key=lambda i: -e[i])

    def score(cuts):
        costs = [padded(step[a:b], e) for a, b in zip((0, *cuts), (*cuts, len(step)), strict=True)]
        return max(costs), sum(costs)

    best = min(score(c) for c in itertools.combinations(range(1, len(step)), g - 1))
    assert (max(padded(mb, e) for mb in got), sum(padded(mb, e) for mb in got)) == best


def test_by_tokens_resumes_at_whole_steps_and_clamps_to_max_length():
    lens = lengths(seed=3)
    full = per_rank(lens, "modality_length", "by_tokens")
    resumed = [
        list(StepBatchSampler(lens, M, W, r, G, "modality_length", 42, start_step=2, micro_batch_order="by_tokens"))
        for r in range(W)
    ]
    assert all(resumed[r] == full[r][2 * G :] for r in range(W))
    capped = StepBatchSampler([5000, -3000, 10], M, 1, 0, 1, "random", 0, micro_batch_order="by_length", max_length=2048)
    assert capped._est == [2048, 2048, 586]


@pytest.mark.parametrize("order", ["by_length", "by_tokens"])
def test_exact_lengths_cut_where_the_word_estimate_misleads(order):
    # Word counts say every sample is alike; the exact lengths (what the model sees) differ by 40x.
    n = W * G * M * 3
    words = [50] * n
    rnd = random.Random(3)
    exact = [rnd.choice([20, 800]) + rnd.randint(0, 9) for _ in range(n)]
    asked: list[int] = []

    def length_of(i: int) -> int:
        asked.append(i)
        return exact[i]

    def run(length):
        return [list(StepBatchSampler(words, M, W, r, G, "random", 42, micro_batch_order=order, length_of=length))
                for r in range(W)]

    by_words, by_exact = run(None), run(length_of)
    for s in range(3):
        assert step_samples(by_words, s) == step_samples(by_exact, s)  # same samples in each step
    assert waste(by_exact, exact) < 0.5 * waste(by_words, exact)  # the word cut mixes short and long at random
    assert sorted(asked) == sorted(list(range(n)) * W)  # each sample measured once by each rank's sampler...
    asked.clear()
    sampler = StepBatchSampler(words, M, W, 0, G, "random", 42, micro_batch_order=order, length_of=length_of)
    next(iter(sampler))
    assert len(asked) == W * G * M  # ...and only when its step comes
    assert StepBatchSampler(words, M, W, 0, G, "random", 42, micro_batch_order="sampled", length_of=length_of)

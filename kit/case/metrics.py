"""What the host's results ask of a case: the formulas behind its figures (`case.metrics`).

kit/results derives every figure from a run's raw facts; what depends on the model and on the reference it is
set beside (its FLOPs, the reference's own MFU formula, what makes two runs the same model, the counts its data
rules log, the summary key of its eval accuracy) is the case's, given here. A case's `metrics` is a module or an
object with these names, standard library only (it is imported on a bare host).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol


class Metrics(Protocol):
    """The formulas of one case's results. Every text is shown as written in a report's footnotes."""

    REFERENCE_FACTOR: Mapping[str, float]
    """The stages the reference's MFU formula covers (their FLOPs per parameter per token): `reference_mfu` is
    defined for these, the report says n/a and why for the others."""

    REFERENCE_RULE: str
    """The reference's MFU formula in one line, for the footnotes (e.g. "token/p/s x 7e9 x 2 / peak")."""

    EXACT_RULE: str
    """The exact model-FLOPs convention in one line, for the footnotes."""

    SHAPE_KEYS: tuple[str, ...]
    """The config's model-section keys that make two runs the same model."""

    DATA_STEP_COUNTS: Mapping[str, str]
    """kit_step counts of what the reference pipeline's own rules did to a step's samples, each with what one of
    it is ("samples fully masked (...)"): summed over a stage, a line of the report names the non-zero ones."""

    ACCURACY_KEY: str
    """The summary.json key of the eval stage's headline accuracy (0..1), on the run and on the training stage
    whose model the eval scored; the reference rows and the rules' olympic figures name it the same way."""

    def reference_mfu(self, tokens_per_s_per_gpu: float | None, stage: str, peak_flops: float | None) -> float | None:
        """The reference's own MFU of a throughput figure (None without one or without a peak); ValueError for a
        stage outside REFERENCE_FACTOR. Kept so that rows compare with the reference's table."""

    def flops(self, model: dict[str, Any], step: dict[str, Any]) -> dict[str, float]:
        """Model FLOPs of one optimizer step by component (summed over ranks and micro-batches), from kit_facts'
        `model` and one kit_step's counts; the host sums them over the steady steps for the exact MFU."""

    def learning_rate(self, base: float, step: int, warmup: int, total: int) -> float:
        """The learning rate step `step` (1-based) applies, from the config's base rate and kit_facts'
        warmup_steps and steps_total: the checks hold every logged step's rate to it."""

    def shape(self, cfg: dict[str, Any]) -> dict[str, Any] | None:
        """The model's shape in a resolved config (the SHAPE_KEYS of its model section), or None without a model.
        The one definition of "the same model" for every comparison the host draws."""


def of(case: Any) -> Metrics | None:
    """A case's formulas, or None for no case (a run whose case is not installed: its figures that need them are
    n/a, with the reason)."""
    return getattr(case, "metrics", None) if case is not None else None

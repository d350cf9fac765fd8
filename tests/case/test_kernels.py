"""model.kernels: the fused-kernel switch refuses clearly where it cannot work."""

from __future__ import annotations

import dataclasses

import pytest

torch = pytest.importorskip("torch")

from cases.llava1_5_7b import config as case_config  # noqa: E402
from cases.llava1_5_7b.model import LlavaForTraining  # noqa: E402


def test_default_is_the_reference_modules():
    model = LlavaForTraining(case_config.load("tiny").model, dtype=torch.float32)
    assert model.kernels == "none" and model.facts()["kernels"] == "none"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU refusal")
def test_liger_on_cpu_is_refused_with_the_fix():
    cfg = dataclasses.replace(case_config.load("tiny").model, kernels="liger")
    with pytest.raises(RuntimeError, match="needs a CUDA GPU.*kernels = 'none'"):
        LlavaForTraining(cfg, dtype=torch.float32)


def test_config_value_is_validated():
    with pytest.raises(case_config.ConfigError, match="model.kernels = 'triton' is not one of 'none', 'liger'"):
        case_config.load("tiny", ["model.kernels=triton"])

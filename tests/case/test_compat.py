"""cases/llava1_5_7b/compat.py, the case's help for DeepSpeed releases older than the current stack's, under both
environments (`make test`: torch 2.13 / DeepSpeed 0.19.8; `make test-pins`: torch 2.1.2 / DeepSpeed 0.13.1).

The gloo collectives run on two real processes over a file store; under a torch whose gloo has the two collectives
itself, the case's versions must give exactly torch's results.
"""

from __future__ import annotations

import json
import os
import types
from importlib import metadata
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from cases.llava1_5_7b import compat  # noqa: E402

PINNED_DEEPSPEED = compat._release(metadata.version("deepspeed")) < compat.OWN_CPU_ACCELERATOR_FROM


@pytest.mark.parametrize(
    "use_cuda, version, needs",
    [(True, "0.13.1", False), (False, "0.13.1", True), (False, "0.14.0", True), (False, "0.14.1", False),
     (False, "0.19.8", False), (False, "0.13.1+cu121", True)],
)  # fmt: skip
def test_which_deepspeed_needs_the_case_accelerator(use_cuda, version, needs):
    # Neither intel_extension_for_pytorch nor the oneCCL bindings are installed in the kit's environments.
    assert compat.needs_host_accelerator(use_cuda, version) is needs


def _collectives(rank: int, store: str, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    g = torch.Generator().manual_seed(100 + rank)
    x = torch.randn(6, generator=g)  # each rank's own values
    res: dict[str, list] = {"input": x.tolist()}
    gathered = torch.empty(12)
    compat.GlooTensorCollectives.all_gather_into_tensor(gathered, x)
    res["all_gather"] = gathered.tolist()
    scattered = torch.empty(3)
    compat.GlooTensorCollectives.reduce_scatter_tensor(scattered, x)
    res["reduce_scatter"] = scattered.tolist()
    late = torch.empty(3)
    handle = compat.GlooTensorCollectives.reduce_scatter_tensor(late, x * 2, async_op=True)
    assert handle.wait() is True and handle.is_completed()
    res["reduce_scatter_async"] = late.tolist()
    assert x.tolist() == res["input"]  # the input is left as it was
    try:
        native = torch.empty(12)
        dist.all_gather_into_tensor(native, x)
        res["native_all_gather"] = native.tolist()
        native = torch.empty(3)
        dist.reduce_scatter_tensor(native, x)
        res["native_reduce_scatter"] = native.tolist()
    except RuntimeError as e:  # torch < 2.2: gloo has neither
        res["native_error"] = str(e)
    try:
        compat.GlooTensorCollectives.all_gather_into_tensor(torch.empty(5), x)
    except ValueError as e:
        res["bad_size"] = str(e)
    dist.barrier()
    dist.destroy_process_group()
    Path(out, f"rank{rank}.json").write_text(json.dumps(res))


def test_gloo_tensor_collectives_give_torchs_results(tmp_path):
    import torch.multiprocessing as mp

    mp.start_processes(_collectives, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=2, start_method="spawn")
    r = [json.loads((tmp_path / f"rank{i}.json").read_text()) for i in (0, 1)]
    inputs = [torch.tensor(x["input"]) for x in r]
    assert r[0]["all_gather"] == r[1]["all_gather"] == torch.cat(inputs).tolist()
    total = inputs[0] + inputs[1]  # two operands: the sum is exact whatever the order
    for i in (0, 1):
        assert r[i]["reduce_scatter"] == total[3 * i : 3 * i + 3].tolist()
        assert r[i]["reduce_scatter_async"] == (2 * total)[3 * i : 3 * i + 3].tolist()
        assert "output of 5 elements for 2 ranks of 6" in r[i]["bad_size"]
        if compat._release(torch.__version__) >= compat.GLOO_TENSOR_COLLECTIVES_FROM:
            assert r[i]["native_all_gather"] == r[i]["all_gather"]
            assert r[i]["native_reduce_scatter"] == r[i]["reduce_scatter"]
        else:
            assert "no support for _allgather_base in Gloo" in r[i]["native_error"]


def _adamw_after_a_zero_gradient_step() -> torch.optim.AdamW:
    """What DeepSpeed 0.13.1's ZeRO initialization leaves: AdamW stepped once on zero gradients."""
    p = torch.nn.Parameter(torch.ones(4))
    opt = torch.optim.AdamW([p], lr=0.0)
    p.grad = torch.zeros(4)
    opt.step()
    return opt


def test_undo_init_step_resets_the_step_count_only_when_asked(monkeypatch, capsys):
    zero = types.SimpleNamespace(optimizer=_adamw_after_a_zero_gradient_step())  # the ZeRO wrapper's one attribute used
    monkeypatch.delenv(compat.UNDO_INIT_STEP_ENV, raising=False)
    assert compat.undo_zero_init_step(zero, "0.13.1") == 0
    monkeypatch.setenv(compat.UNDO_INIT_STEP_ENV, "1")
    assert compat.undo_zero_init_step(zero, "0.19.8") == 0
    assert "DeepSpeed 0.19.8 takes no optimizer step at ZeRO's initialization; nothing to undo" in capsys.readouterr().out
    assert compat.undo_zero_init_step(zero, "0.13.1") == 1
    (state,) = zero.optimizer.state.values()
    assert float(state["step"]) == 0.0
    assert "reset the step count of 1 optimizer state(s) from 1 to 0" in capsys.readouterr().out


def test_undo_init_step_refuses_a_trained_state(monkeypatch):
    opt = _adamw_after_a_zero_gradient_step()
    (p,) = opt.param_groups[0]["params"]
    p.grad = torch.ones(4)
    opt.step()  # a real update: step 2, non-zero moments
    monkeypatch.setenv(compat.UNDO_INIT_STEP_ENV, "1")
    with pytest.raises(RuntimeError) as e:
        compat.undo_zero_init_step(types.SimpleNamespace(optimizer=opt), "0.13.1")
    assert "has step 2 and non-zero moments" in str(e.value) and "unset it" in str(e.value)
    with pytest.raises(RuntimeError, match="holds no optimizer states to reset"):
        compat.undo_zero_init_step(types.SimpleNamespace(optimizer=torch.optim.AdamW([p])), "0.13.1")


@pytest.mark.skipif(not PINNED_DEEPSPEED, reason="the installed DeepSpeed's own CPU accelerator runs here (>= 0.14.1)")
def test_import_deepspeed_installs_the_case_accelerator_under_the_pins(monkeypatch):
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")  # what a user might set; the import itself would fail with it
    ds = compat.import_deepspeed(use_cuda=False)
    from deepspeed.accelerator import get_accelerator

    acc = get_accelerator()
    assert os.environ["DS_ACCELERATOR"] == "cpu"  # put back as it was
    assert type(acc).__name__ == "HostCPUAccelerator" and ds.__version__ == metadata.version("deepspeed")
    assert (acc.device_name(), acc.current_device_name(), acc.communication_backend_name()) == ("cpu", "cpu", "gloo")
    assert acc.is_synchronized_device() and acc.on_accelerator(torch.zeros(1))
    assert acc.max_memory_allocated() >= acc.memory_allocated() > 0
    assert acc.supported_dtypes() == [torch.float32, torch.bfloat16]

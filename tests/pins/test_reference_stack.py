"""The tiny case end to end under the reference stack (torch 2.1.2, transformers 4.37.2, DeepSpeed 0.13.1): two
CPU ranks, pretrain on ZeRO-2, finetune on ZeRO-3, the eval, an interrupted finetune resumed, all from one run
(the `pinned_run` session fixture)."""

from __future__ import annotations

import json
import math

import pytest

from .conftest import PINNED_PYTHON, PINS, attempts, events

pytestmark = [pytest.mark.slow, pytest.mark.pins]


def test_run_and_environment_record_the_reference_stack(pinned_run):
    run = pinned_run.run
    meta = json.loads((run / "run.json").read_text())
    assert meta["native"] is True and meta["python"] == PINNED_PYTHON
    env = json.loads((run / "environment.json").read_text())
    for lib, version in PINS.items():
        assert env["case"]["versions"][lib].split("+")[0] == version, (lib, env["case"]["versions"])
        assert env["stack"]["packages"][lib].split("+")[0] == version
    assert env["case"]["executable"] == PINNED_PYTHON and env["case"]["missing"] == []
    for stage in ("pretrain", "finetune"):  # and what each stage's ranks found when they started
        facts = [e["value"] for e in events(run / stage / "events.log") if e["key"] == "kit_facts"]
        assert facts and all(f["versions"][lib].split("+")[0] == v for f in facts for lib, v in PINS.items())


def test_the_stages_ran_on_the_reference_zero_stages_and_two_ranks(pinned_run):
    run = pinned_run.run
    for stage, zero in (("pretrain", 2), ("finetune", 3)):
        facts = [e["value"] for e in events(run / stage / "events.log") if e["key"] == "kit_facts"]
        assert {(f["zero_stage"], f["world_size"], f["device_type"]) for f in facts} == {(zero, 2, "cpu")}
        steps = {s["step"]: s for a in attempts(run / stage / "events.log") for s in a}
        assert sorted(steps) == list(range(1, facts[0]["steps_planned"] + 1))
        assert all(math.isfinite(s["loss"]) for s in steps.values())
    assert (run / "pretrain" / "mm_projector.bin").is_file()
    assert (run / "finetune" / "model" / "pytorch_model.bin").is_file()
    scores = json.loads((run / "eval" / "responses.json").read_text())
    assert len(scores) == 60  # the synthetic MMMU set: every question answered under transformers 4.37.2
    rows = [json.loads(x) for x in (run / "status.jsonl").read_text().splitlines()]
    assert (rows[-1]["stage"], rows[-1]["state"]) == (None, "finished")


def test_the_case_adapted_deepspeed_0_13_1_to_the_cpu_and_said_so(pinned_run):
    """What made the reference stack train here (cases/llava1_5_7b/compat.py), in every training rank's log."""
    for stage in ("pretrain", "finetune"):
        for rank in (0, 1):
            log = (pinned_run.run / stage / "logs" / f"rank{rank}.log").read_text()
            assert "using the case's CPU accelerator with gloo" in log
            assert "gloo lacks all_gather_into_tensor and reduce_scatter_tensor" in log
            assert "KIT_UNDO_ZERO_INIT_STEP" not in log  # a reference run keeps 0.13.1's initialization step


@pytest.mark.parametrize("stage", ["pretrain", "finetune"])
def test_loss_falls_under_the_pins(pinned_run, stage):
    steps = {s["step"]: s["loss"] for a in attempts(pinned_run.run / stage / "events.log") for s in a}
    first, last = [steps[k] for k in sorted(steps)[:3]], [steps[k] for k in sorted(steps)[-3:]]
    assert sum(last) / 3 < sum(first) / 3


def test_ctrl_c_in_finetune_then_kit_resume_retraces_the_same_steps(pinned_run):
    """ZeRO-3 resumed from its checkpoint at step 8 under DeepSpeed 0.13.1: the steps logged before Ctrl-C are
    logged again with the same losses (same data order, same restored state); pretrain was not run again."""
    run = pinned_run.run
    assert "interrupted" in pinned_run.first and f"kit resume {run}" in pinned_run.first
    rows = [json.loads(x) for x in (run / "status.jsonl").read_text().splitlines()]
    assert [r["state"] for r in rows if r["stage"] == "finetune"] == ["launched", "interrupted", "launched", "finished"]
    assert len([r for r in rows if r["stage"] == "pretrain" and r["state"] == "launched"]) == 1
    first, resumed = attempts(run / "finetune" / "events.log")
    facts = [e["value"] for e in events(run / "finetune" / "events.log") if e["key"] == "kit_facts"]
    assert facts[-1]["resumed_from_step"] == 8 and resumed[0]["step"] == 9
    again = {s["step"]: s["loss"] for s in first if s["step"] > 8}  # logged before Ctrl-C, after the checkpoint
    assert sorted(again)[0] == 9 and max(again) >= pinned_run.interrupted_at >= 10
    assert {s["step"]: s["loss"] for s in resumed if s["step"] in again} == pytest.approx(again, rel=1e-6)

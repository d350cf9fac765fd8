"""Every derived number against a hand computation: the kit's formulas (kit/results/formulas.py) and the case's own
(its FLOPs and its reference's MFU formula, asked through case.metrics: kit/case/metrics.py)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from kit import case as cases
from kit.case import rules
from kit.results import formulas as m
from kit.results.peak import lookup_peak
from kit.results.reference import load_reference
from kit.results.summary import run_summary, stage_summary
from kit.run.dir import RunDir
from kit.run.guard import RunLock

from .rundir_factory import GIB, SMALL_MODEL, STAGE_TRAINS, T0, StageSpec, make_run, mllog, step_facts

CASE = cases.get("llava1_5_7b").metrics  # the case's formulas, as the host asks them


def test_reference_mfu_matches_the_seed() -> None:
    assert round(CASE.reference_mfu(4013, "pretrain", 312e12) * 100, 2) == 18.01
    assert round(CASE.reference_mfu(2937, "finetune", 312e12) * 100, 2) == 39.54  # the seed printed 39.57
    assert CASE.reference_mfu(None, "pretrain", 312e12) is None
    assert CASE.reference_mfu(4013, "pretrain", None) is None
    with pytest.raises(ValueError, match="stage"):
        CASE.reference_mfu(1, "eval", 312e12)


@pytest.mark.parametrize("stage,f", [("pretrain", 4), ("finetune", 6)])
def test_exact_flops_by_hand(stage: str, f: int) -> None:
    model = {**SMALL_MODEL, **STAGE_TRAINS[stage]}
    step = step_facts(5)  # real 1050, real_sq 125500, supervised 200, images 8
    expect = (
        1000 * 1050 * f  # decoder Linear weights x real tokens (frozen LLM: 4 = fwd + input grad)
        + 256 * 200 * f  # lm_head x supervised tokens
        + 12 * 2 * (2 * 4) * 125_500  # attention: 12 x layers x heads*head_dim x sum T^2
        + 6 * 50 * 4 * 8  # projector trains in both stages: 6 x params x image tokens x images
        + 2 * 100 * 5 * 8 + 4 * 3 * 4 * 5**2 * 8  # CLIP forward: matmuls + attention
    )
    assert CASE.exact_flops_per_step(model, step) == expect
    parts = CASE.flops(model, step)
    assert parts["llm_body"] == 1000 * 1050 * f and parts["vision"] == 2 * 100 * 5 * 8 + 4 * 3 * 4 * 25 * 8


def test_exact_flops_nothing_trains_is_forward_only() -> None:
    model = {**SMALL_MODEL, "trainable_llm": False, "trainable_projector": False, "trainable_vision": False}
    parts = CASE.flops(model, step_facts(1))
    assert parts["llm_body"] == 1000 * 1010 * 2 and parts["attention"] == 4 * 2 * 8 * 125_100
    assert parts["projector"] == 2 * 50 * 4 * 8


@pytest.mark.parametrize("n,skip", [(0, 0), (1, 0), (2, 1), (4, 1), (5, 2), (40, 2), (41, 3), (100, 5), (2181, 110)])
def test_steady_skip(n: int, skip: int) -> None:
    assert m.steady_skip(n) == skip


def test_steady_steps_rules() -> None:
    steps = [step_facts(k) for k in range(1, 21)]
    assert [s["step"] for s in m.steady_steps(steps)] == list(range(3, 21))
    assert [s["step"] for s in m.steady_steps(steps, resume_first_steps=[11])] == [*range(3, 11), *range(12, 21)]
    assert [s["step"] for s in m.steady_steps(steps[:1])] == [1]  # one step: all there is
    assert [s["step"] for s in m.steady_steps(steps[:3])] == [2, 3]
    untimed = [{**s, "step_time_s": 0} if s["step"] == 5 else s for s in steps]
    assert 5 not in [s["step"] for s in m.steady_steps(untimed)]
    assert m.steady_steps([]) == []


def test_throughput_and_padding_waste() -> None:
    steady = [step_facts(k) for k in range(3, 21)]
    real = sum(1000 + 10 * k for k in range(3, 21))  # 20070
    assert m.throughput(steady, 2) == pytest.approx(real / 36 / 2)
    assert m.throughput(steady, 2, "padded_tokens") == pytest.approx(1600 * 18 / 36 / 2)
    assert m.padding_waste(steady) == pytest.approx((1600 * 18 - real) / (1600 * 18))
    assert m.throughput([], 2) is None and m.padding_waste([]) is None


def test_loss_tail() -> None:
    steps = [step_facts(k) for k in range(1, 251)]  # 1% of 250 -> 2 steps
    mean, n, last = m.loss_tail(steps)
    assert n == 2 and mean == pytest.approx(((3 - 2.49) + (3 - 2.50)) / 2) and last == pytest.approx(0.5)
    assert m.loss_tail(steps[:7])[1] == 1  # at least one step
    assert m.loss_tail([]) == (None, 0, None)


def test_memory() -> None:
    mem = m.memory([step_facts(k) for k in range(1, 11)], {})
    assert mem["mem_used_peak_gib"] == pytest.approx(61.0)
    assert mem["mem_total_gib"] == 80 and mem["mem_used_fraction"] == pytest.approx(61 / 80)
    assert mem["mem_reserved_peak_gib"] == pytest.approx(50 + 10 / GIB)
    assert m.memory([], {"device_mem_total_bytes": 8 * GIB})["mem_total_gib"] == 8


@pytest.mark.parametrize("name,peak", [
    ("NVIDIA A800-SXM4-80GB", 312e12), ("NVIDIA_A800-SXM4-80GB", 312e12), ("A800", 312e12),
    ("NVIDIA A100-SXM4-80GB", 312e12), ("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H800", 989e12),
    ("NVIDIA H200", 989e12), ("H200", 989e12), ("NVIDIA H100 PCIe", 756e12), ("NVIDIA H200 NVL", 835e12),
])
def test_lookup_peak(name: str, peak: float) -> None:
    assert lookup_peak(name, "cuda")[0] == peak


def test_lookup_peak_none_with_reason() -> None:
    peak, why = lookup_peak("cpu", "cpu")
    assert peak is None and "CPU" in why
    peak, why = lookup_peak("Mystery GPU 9000", "cuda")
    assert peak is None and "Mystery GPU 9000" in why and "--peak-flops" in why


def test_stage_summary_finished(tmp_path: Path) -> None:
    rd = make_run(tmp_path)
    s = stage_summary(rd, "pretrain")
    real = sum(1000 + 10 * k for k in range(3, 21))
    assert s["state"] == "finished" and s["steps_done"] == 20 and s["steady_steps"] == 18
    assert s["steady_from_step"] == 3 and s["world_size"] == 2
    assert s["tokens_per_s_per_gpu"] == pytest.approx(real / 36 / 2)
    assert s["peak_flops"] == 989e12
    assert s["mfu_reference"] == pytest.approx(real / 36 / 2 * 7e9 * 2 / 989e12)
    # Reference method: all 20 steps' padded tokens over launch -> finished (30 start-up, 40 steps, 5 save, 1).
    wall = 30 + 40 + 5 + 1
    assert s["wall_s"] == pytest.approx(wall)
    assert s["reference_method_tokens_per_s_per_gpu"] == pytest.approx(1600 * 20 / wall / 2)
    assert s["mfu_reference_method"] == pytest.approx(1600 * 20 / wall / 2 * 14e9 / 989e12)
    assert s["startup_s"] == pytest.approx(30)
    model = {**SMALL_MODEL, **STAGE_TRAINS["pretrain"]}
    flops = sum(CASE.exact_flops_per_step(model, step_facts(k)) for k in range(3, 21))
    assert s["mfu_exact"] == pytest.approx(flops / 36 / 2 / 989e12)
    assert s["loss_last"] == pytest.approx(2.8) and s["loss_tail_steps"] == 1
    assert s["checkpoints"] == 2 and s["save_s"] == 5.0 and s["attempts"] == 1
    assert s["mmmu_acc"] is None


def test_reference_method_without_launch_time(tmp_path: Path) -> None:
    rd = make_run(tmp_path, [StageSpec("pretrain", steps=10)])
    (rd / "status.jsonl").unlink()
    s = stage_summary(rd, "pretrain")
    # From init_start (launch + 1 s) to the last event (kit_save): 29 + 20 + 5.
    assert s["startup_s"] == pytest.approx(29)
    assert s["wall_s"] == pytest.approx(29 + 20 + 5)
    assert s["state"] == "finished"
    assert any("init_start" in n for n in s["notes"])


def test_peak_override_and_cpu(tmp_path: Path) -> None:
    rd = make_run(tmp_path, [StageSpec("pretrain", device_name="cpu", device_type="cpu")])
    s = stage_summary(rd, "pretrain")
    assert s["mfu_reference"] is None and s["mfu_exact"] is None and s["tokens_per_s_per_gpu"] > 0
    assert any("CPU" in n for n in s["notes"])
    s = stage_summary(rd, "pretrain", peak_flops=1e12)
    assert s["mfu_reference"] == pytest.approx(s["tokens_per_s_per_gpu"] * 14e9 / 1e12)


def test_resumed_stage_summary(tmp_path: Path) -> None:
    rd = make_run(tmp_path, [StageSpec("pretrain", steps=40, resume_at=20)])
    s = stage_summary(rd, "pretrain")
    assert s["attempts"] == 2 and s["steps_relogged"] == 3 and s["steps_logged"] == 40
    assert s["steady_steps"] == 40 - 2 - 1  # warm-up 2 and the resumed attempt's first step
    assert s["state"] == "finished"


def test_zero_step_and_pending_stages(tmp_path: Path) -> None:
    rd = make_run(tmp_path, [StageSpec("pretrain", steps=0, state="running"), StageSpec("finetune")])
    with RunLock(rd):  # a running run's kit process holds its lock (without it, the run reads as stopped)
        s = run_summary(rd)
    pre, fin = s["stages"]["pretrain"], s["stages"]["finetune"]
    assert pre["state"] == "running" and pre["steps_done"] == 0 and pre["tokens_per_s_per_gpu"] is None
    assert pre["mfu_reference"] is None and pre["loss_tail_mean"] is None
    assert fin["state"] == "pending" and s["state"] == "running"


def test_interrupted_run_and_mmmu(tmp_path: Path) -> None:
    rd = make_run(tmp_path, [StageSpec("pretrain"), StageSpec("finetune", state="interrupted")], mmmu=0.359)
    s = run_summary(rd)
    assert s["state"] == "interrupted" and s["stages"]["finetune"]["state"] == "interrupted"
    assert s["mmmu_acc"] == pytest.approx(0.359) and s["stages"]["finetune"]["mmmu_acc"] == pytest.approx(0.359)
    assert s["stages"]["pretrain"]["mmmu_acc"] is None
    assert s["stage_order"] == ["pretrain", "finetune"]


def test_stage_launched_when_run_died_takes_run_state(tmp_path: Path) -> None:
    rd = make_run(tmp_path, [StageSpec("pretrain", state="running")], run_state="failed")
    assert run_summary(rd)["stages"]["pretrain"]["state"] == "failed"


def test_mmmu_percent_and_dict(tmp_path: Path) -> None:
    rd = make_run(tmp_path, mmmu={"acc": 35.9})  # the scorer's summary in percent, under a dict: read as 0.359
    assert run_summary(rd)["mmmu_acc"] == pytest.approx(0.359)


def test_nan_loss_becomes_null(tmp_path: Path) -> None:
    rd = make_run(tmp_path, [StageSpec("pretrain", steps=3)])
    log = rd / "pretrain" / "events.log"
    log.write_text(log.read_text().replace('"loss": 2.97', '"loss": NaN'))
    s = stage_summary(rd, "pretrain")
    assert s["loss_last"] is None and any("not finite" in n for n in s["notes"])
    assert not any(isinstance(v, float) and math.isnan(v) for v in s.values())


def test_summary_start_is_run_launch(tmp_path: Path) -> None:
    rd = make_run(tmp_path, [StageSpec("pretrain", steps=5)])
    assert RunDir(rd).request()["case"] == "llava1_5_7b"
    assert stage_summary(rd, "pretrain")["startup_s"] == pytest.approx(30)
    assert T0 > 0


def test_step_time_spread_by_hand() -> None:
    steps = [{**step_facts(k), "step_time_s": t} for k, t in enumerate([1.0, 2.0, 3.0, 4.0, 10.0], 1)]
    sp = m.step_time_spread(steps)
    mean = 4.0
    pstdev = math.sqrt(sum((t - mean) ** 2 for t in (1, 2, 3, 4, 10)) / 5)
    assert sp["step_time_median_s"] == 3.0 and sp["step_time_steps"] == 5
    assert sp["step_time_p10_s"] == pytest.approx(1.4) and sp["step_time_p90_s"] == pytest.approx(7.6)
    assert sp["step_time_cv"] == pytest.approx(pstdev / mean)
    assert m.step_time_spread([])["step_time_cv"] is None and m.step_time_spread(steps[:1])["step_time_cv"] is None


def test_summary_keeps_every_key_compare_and_verify_read(tmp_path: Path) -> None:
    s = run_summary(make_run(tmp_path))
    for key in ("schema", "run_id", "case", "config", "device", "nodes", "gpus", "state", "stage_order", "stages",
                "mmmu_acc", "eval", "rules", "generated_at", "kit_version", "comparable", "warnings"):
        assert key in s, key
    st = s["stages"]["pretrain"]
    for key in ("tokens_per_s_per_gpu", "reference_method_tokens_per_s_per_gpu", "mfu_reference", "mfu_exact",
                "loss_tail_mean", "mem_used_peak_gib", "steps_done", "steps_logged", "notes", "step_time_median_s",
                "step_time_p10_s", "step_time_p90_s", "step_time_cv", "step_time_steps", "stage_warnings"):
        assert key in st, key


def test_a_launched_stage_of_a_finished_run_is_stopped_not_finished(tmp_path: Path) -> None:
    rd = make_run(tmp_path, [StageSpec("pretrain", state="running")], run_state="finished")
    s = run_summary(rd)
    assert s["stages"]["pretrain"]["state"] == "stopped" and s["state"] == "stopped"


def test_a_finished_run_line_with_a_stage_never_started_is_stopped(tmp_path: Path) -> None:
    rd = make_run(tmp_path, [StageSpec("pretrain")])
    info = json.loads((rd / "run.json").read_text())
    (rd / "run.json").write_text(json.dumps({**info, "stages": ["pretrain", "finetune"]}))
    s = run_summary(rd)
    assert s["stages"]["finetune"]["state"] == "pending" and s["state"] == "stopped"
    assert any("not every stage did: finetune pending" in w for w in s["warnings"])


# ---------------------------------------------------------------- steady state reached, or not


def _steps(times: list[float], tokens: int = 1000) -> list[dict]:
    return [{"step": i + 1, "step_time_s": t, "real_tokens": tokens} for i, t in enumerate(times)]


def test_steady_drift_compares_the_halves_real_tokens_per_second():
    assert m.steady_drift(_steps([1.0] * 10)) == 0.0
    # second half twice as fast: +100%
    assert m.steady_drift(_steps([2.0] * 5 + [1.0] * 5)) == pytest.approx(1.0)
    assert m.steady_drift(_steps([1.0] * 5 + [1.25] * 5)) == pytest.approx(-0.2)
    # by tokens: slower steps that carry more tokens are not a drift
    steps = [{"step": i + 1, "step_time_s": 1.0 + (i % 2), "real_tokens": 1000 * (1 + i % 2)} for i in range(10)]
    assert m.steady_drift(steps) == pytest.approx(0.0)
    assert m.steady_drift(_steps([1.0] * (m.STEADY_DRIFT_MIN_STEPS - 1))) is None


def test_a_stage_still_warming_up_is_named_and_its_first_step_shown(tmp_path):
    run = make_run(tmp_path)
    log = run / "pretrain" / "events.log"
    lines = [ln for ln in log.read_text().splitlines() if '"kit_step"' not in ln]
    t0 = json.loads(lines[-1][9:])["time_ms"] if lines[-1].startswith(":::MLLOG ") else 0
    times = [9.0, 4.0] + [3.0] * 9 + [2.0] * 9  # the steady steps (3-20) get faster half way: still warming up
    ends = [t0 + 1000 * sum(times[: k + 1]) for k in range(len(times))]  # stamped with each step's end
    steps = [mllog("kit_step", step_facts(k + 1, t), ends[k]) for k, t in enumerate(times)]
    log.write_text("\n".join(lines[:-1] + steps + lines[-1:]) + "\n")
    st = run_summary(run)["stages"]["pretrain"]
    assert st["first_step_s"] == 9.0
    assert st["steady_drift"] > m.STEADY_DRIFT_WARN  # the second half ran its tokens about 1.5x as fast
    warned = [w for w in st["stage_warnings"] if "no steady state" in w]
    assert warned and "rose" in warned[0] and "run more steps" in warned[0], st["stage_warnings"]


def test_steps_that_alternate_are_spread_not_a_trend():
    steps = [{"step": i + 1, "step_time_s": 1.0 if i % 2 else 3.0, "padded_tokens": 1600} for i in range(18)]
    assert abs(m.steady_drift(steps)) > m.STEADY_DRIFT_WARN  # the halves hold unequal numbers of slow steps
    assert m.drift_within_noise(steps)
    trend = [{"step": i + 1, "step_time_s": 3.0 if i < 9 else 2.0, "padded_tokens": 1600} for i in range(18)]
    assert not m.drift_within_noise(trend)


# ---------------------------------------------------------------- the seam: what the results ask of a case


def test_every_registered_case_gives_what_kit_case_metrics_asks() -> None:
    """kit/results names no case: it asks case.metrics for the names kit/case/metrics.py declares, and finds each."""
    from kit.case.metrics import Metrics

    wanted = [n for n in vars(Metrics) if not n.startswith("_")] + list(Metrics.__annotations__)
    for name, case in cases.registered().items():
        missing = [n for n in dict.fromkeys(wanted) if not hasattr(case.metrics, n)]
        assert not missing, f"case {name}: case.metrics lacks {missing}"
        # the accuracy's key is the one its rules state an olympic mean of, and its reference rows publish
        assert case.metrics.ACCURACY_KEY in rules.load(name).olympic["figures"]
        rows = load_reference(name)
        assert not rows or any(case.metrics.ACCURACY_KEY in row for row in rows)
        shape = case.metrics.shape(cases.load_config(case, case.config.available()[0]).to_dict())
        assert set(shape) == set(case.metrics.SHAPE_KEYS)


def test_the_kit_keeps_no_copy_of_the_case_formulas() -> None:
    """The formulas are the case's, once: no kit module defines them again (kit/case/metrics.py only declares them)."""
    import ast

    root = Path(__file__).resolve().parents[2] / "kit"
    defined = {node.name for p in root.rglob("*.py") if p != root / "case" / "metrics.py"
               for node in ast.walk(ast.parse(p.read_text())) if isinstance(node, ast.FunctionDef)}  # fmt: skip
    assert not defined & {"reference_mfu", "exact_flops_breakdown", "exact_flops_per_step", "model_shape", "flops"}

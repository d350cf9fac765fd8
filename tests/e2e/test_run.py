"""`kit run` end to end: the tiny case on two CPU ranks through real DeepSpeed ZeRO-2 and ZeRO-3."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess

import pytest
import tomllib

from .helpers import events, kit, only_run, start_kit, status_rows, steps, wait_for_step

TINY = ("run", "llava1_5_7b", "--config", "tiny", "--synthetic", "--native")


def test_run_directory_layout(tiny_run):
    run = json.loads((tiny_run / "run.json").read_text())
    assert run["case"] == "llava1_5_7b" and run["config"] == "tiny"
    assert tomllib.loads((tiny_run / "config.toml").read_text())["name"] == "tiny"  # the resolved config, stored once
    assert run["stages"] == ["pretrain", "finetune", "eval"]
    env = json.loads((tiny_run / "environment.json").read_text())
    assert env["case"]["versions"]["deepspeed"] and env["host"]["kit_version"]
    # the CPU is a vendor like any other: its probe in environment.json, its (empty) runtime applied by every rank
    # through the case's device layer and recorded, the host sampled alone
    assert env["host"]["accelerators"]["vendor"] == "cpu" and env["host"]["accelerators"]["devices"] == []
    assert env["case"]["torch"]["device_type"] == "cpu" and env["case"]["torch"]["dist_backend"] == "gloo"
    for stage in ("pretrain", "finetune"):
        facts = next(e["value"] for e in events(tiny_run / stage / "events.log") if e["key"] == "kit_facts")
        assert facts["runtime"] == {"vendor": "cpu", "imports": [], "environment": {}}, facts.get("runtime")
    for stage in ("pretrain", "finetune"):
        assert (tiny_run / stage / "events.log").is_file()
        assert (tiny_run / stage / "logs" / "rank0.log").is_file()
        assert (tiny_run / stage / "logs" / "rank1.log").is_file()
    assert (tiny_run / "pretrain" / "mm_projector.bin").is_file()
    assert (tiny_run / "finetune" / "model" / "pytorch_model.bin").is_file()
    states = [(r["stage"], r["state"]) for r in status_rows(tiny_run)]
    assert states[-1] == (None, "finished")
    for stage in ("pretrain", "finetune", "eval"):
        assert (stage, "finished") in states
    assert (tiny_run / "eval" / "responses.json").is_file()
    for name in ("summary.json", "judgements.jsonl", "predictions.jsonl", "disciplines.md"):
        assert (tiny_run / "eval" / "mmmu" / name).is_file()
    assert (tiny_run / "summary.json").is_file()


def test_stages_use_the_reference_zero_stages_and_two_ranks(tiny_run):
    for stage, zero in (("pretrain", 2), ("finetune", 3)):
        facts = next(e["value"] for e in events(tiny_run / stage / "events.log") if e["key"] == "kit_facts")
        assert facts["zero_stage"] == zero
        assert facts["world_size"] == 2
        assert facts["grad_accum"] * facts["micro_batch"] * 2 == facts["global_batch"]
        done = steps(tiny_run / stage / "events.log")
        assert [s["step"] for s in done] == list(range(1, facts["steps_planned"] + 1))
        assert all(s["samples"] == facts["global_batch"] for s in done)


@pytest.mark.parametrize("stage", ["pretrain", "finetune"])
def test_loss_falls(tiny_run, stage):
    losses = [s["loss"] for s in steps(tiny_run / stage / "events.log")]
    assert len(losses) >= 20
    head, tail = sum(losses[:4]) / 4, sum(losses[-4:]) / 4
    # Pretrain trains the projector alone under a frozen random LLM: a small but clear fall.
    assert tail < head - (0.05 if stage == "pretrain" else 0.5), losses


def test_finetune_starts_from_the_pretrain_projector(tiny_run):
    facts = next(e["value"] for e in events(tiny_run / "finetune" / "events.log") if e["key"] == "kit_facts")
    projector = tiny_run / "pretrain" / "mm_projector.bin"
    assert facts["init_projector"]["path"] == str(projector)
    assert facts["init_projector"]["sha256"] == hashlib.sha256(projector.read_bytes()).hexdigest()


@pytest.mark.parametrize("fmt", ["table", "json", "csv", "markdown"])
def test_report_every_format(tiny_run, fmt):
    r = kit("report", str(tiny_run), "--format", fmt)
    assert r.returncode == 0, r.stderr
    if fmt == "json":
        summary = json.loads(r.stdout)
        assert summary["stages"]["pretrain"]["steps_done"] == 24
    else:
        assert "pretrain" in r.stdout and "finetune" in r.stdout
    assert (tiny_run / "plots" / "pretrain-loss.png").is_file()


def losses_by_step(path) -> dict[int, float]:
    return {s["step"]: s["loss"] for s in steps(path)}  # a resumed attempt's steps replace the first's


def test_eval_responses_are_scored_on_the_host(tiny_run):
    """The eval stage writes raw responses; the host scores them, and `kit mmmu score` agrees."""
    responses = json.loads((tiny_run / "eval" / "responses.json").read_text())
    assert len(responses) == 60  # tiny: 2 questions in each of the 30 subjects
    assert responses[0]["id"] == "validation_Accounting_1" and responses[-1]["subject"] == "Sociology"
    scored = json.loads((tiny_run / "eval" / "mmmu" / "summary.json").read_text())
    r = kit("mmmu", "score", str(tiny_run / "eval" / "responses.json"), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["overall"] == scored["overall"]
    r = kit("report", str(tiny_run), "--format", "json")
    summary = json.loads(r.stdout)
    assert summary["mmmu_acc"] == scored["overall"]
    assert summary["stages"]["finetune"]["mmmu_acc"] == scored["overall"]
    assert summary["eval"]["questions"] == 60 and summary["eval"]["decoding"] == "greedy"


def test_eval_alone_on_a_finetuned_model(tmp_path, tiny_run):
    model = tiny_run / "finetune" / "model"
    r = kit(*TINY, "--stage", "eval", "--results", str(tmp_path), "--model-dir", str(model), "--eval-limit", "6")
    assert r.returncode == 0, r.stdout + r.stderr
    run = only_run(tmp_path)
    responses = json.loads((run / "eval" / "responses.json").read_text())
    assert [x["id"] for x in responses] == [x["id"] for x in json.loads(
        (tiny_run / "eval" / "responses.json").read_text())][:6]  # fmt: skip
    # The same model, tokenizer and greedy decoding give the same answers as in the full run.
    full = {x["id"]: x["response"] for x in json.loads((tiny_run / "eval" / "responses.json").read_text())}
    assert all(full[x["id"]] == x["response"] for x in responses)


def test_interrupt_marks_the_run_and_resume_finishes_it(tmp_path, tiny_run):
    """Ctrl-C stops every rank; the run is interrupted, reportable, and `kit resume` ends it as a full run."""
    proc = start_kit(*TINY, "--results", str(tmp_path))
    run = wait_for_step(tmp_path, "pretrain", 10, proc)  # past the checkpoint at step 8
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does to the foreground job
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out
    assert "interrupted" in out and f"kit resume {run}" in out
    rows = status_rows(run)
    assert (rows[-2]["stage"], rows[-2]["state"]) == ("pretrain", "interrupted")
    assert (rows[-1]["stage"], rows[-1]["state"]) == (None, "interrupted")
    r = kit("report", str(run), "--format", "json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["stages"]["pretrain"]["state"] == "interrupted"

    r = kit("resume", str(run))
    assert r.returncode == 0, r.stdout + r.stderr
    facts = [e["value"] for e in events(run / "pretrain" / "events.log") if e["key"] == "kit_facts"]
    assert facts[-1]["resumed_from_step"] == 8
    assert sorted(losses_by_step(run / "pretrain" / "events.log")) == list(range(1, facts[0]["steps_planned"] + 1))
    assert status_rows(run)[-1]["state"] == "finished"
    # Resumed from the checkpoint, the run retraces the uninterrupted one: same data order, same state.
    assert losses_by_step(run / "pretrain" / "events.log") == pytest.approx(
        losses_by_step(tiny_run / "pretrain" / "events.log"), rel=1e-4
    )


def test_crashed_zero3_stage_resumes_to_the_same_step_count(tmp_path, tiny_run):
    """Finetune (ZeRO-3) killed hard mid-run (SIGKILL to its processes) resumes from its checkpoint."""
    proc = start_kit(*TINY, "--results", str(tmp_path))
    run = wait_for_step(tmp_path, "finetune", 12, proc)
    # Kill the stage's processes, not kit: kit must notice the dead stage and report it failed.
    subprocess.run(["pkill", "-9", "-f", f"cases.llava1_5_7b.train --stage finetune --run-dir {run}"], check=True)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 1, out
    assert "finetune failed" in out
    assert status_rows(run)[-1]["state"] == "failed"

    r = kit("resume", str(run))
    assert r.returncode == 0, r.stdout + r.stderr
    facts = [e["value"] for e in events(run / "finetune" / "events.log") if e["key"] == "kit_facts"]
    assert len(facts) == 2 and facts[-1]["resumed_from_step"] == 8
    resumed = losses_by_step(run / "finetune" / "events.log")
    full = losses_by_step(tiny_run / "finetune" / "events.log")
    assert sorted(resumed) == sorted(full)
    assert resumed == pytest.approx(full, rel=1e-4)
    pretrain_launches = [r for r in status_rows(run) if r["stage"] == "pretrain" and r["state"] == "launched"]
    assert len(pretrain_launches) == 1  # the finished stage was kept, not rerun


def test_failing_rank_is_named(tmp_path):
    r = kit(*TINY, "--stage", "pretrain", "--results", str(tmp_path), env={"KIT_INJECT_FAULT": "1:3"})
    assert r.returncode == 1
    out = r.stdout + r.stderr
    assert "rank 1" in out and "injected fault" in out
    run = only_run(tmp_path)
    assert status_rows(run)[-1]["state"] == "failed"
    failure = json.loads((run / "pretrain" / "failure-rank1.json").read_text())
    assert failure["rank"] == 1 and "Traceback" in failure["traceback"]


def test_bad_requests_are_refused_before_anything_is_created(tmp_path):
    r = kit("run", "llava1_5_7b", "--config", "nosuch", "--synthetic", "--native", "--results", str(tmp_path))
    assert r.returncode == 2 and "no config 'nosuch'" in r.stderr and "tiny" in r.stderr
    r = kit("run", "llava1_5_7b", "--config", "tiny", "--gpus", "3", "--synthetic", "--native", "--results", str(tmp_path))
    assert r.returncode == 2 and "global_batch 16 is not a multiple" in r.stderr
    r = kit("run", "nosuchcase", "--synthetic", "--native", "--results", str(tmp_path))
    assert r.returncode == 2 and "unknown case" in r.stderr
    r = kit("run", "llava1_5_7b", "--config", "tiny", "--native", "--results", str(tmp_path))
    assert r.returncode == 2 and "--data and --models needed" in r.stderr
    r = kit(*TINY, "--stage", "eval", "--results", str(tmp_path))
    assert r.returncode == 2 and "--stage eval alone needs a finetuned model: --model-dir DIR" in r.stderr
    r = kit(*TINY, "--no-save", "--results", str(tmp_path))
    assert r.returncode == 2 and "--no-save leaves no finetuned model for the eval stage" in r.stderr
    assert not any(tmp_path.iterdir())


def test_report_of_a_missing_run_says_what_to_do(tmp_path):
    r = kit("report", "--results", str(tmp_path))
    assert r.returncode == 2 and "no runs under" in r.stderr

"""Reading events.log and status.jsonl: other lines, partial lines, resumed attempts."""

from __future__ import annotations

import json
from pathlib import Path

from kit.run.events import load_stage, parse_mllog_line, read_status, stage_events_from

from .rundir_factory import T0, StageSpec, make_run, mllog


def test_parse_line_variants() -> None:
    line = mllog("kit_step", {"step": 3}, 1000.0)
    assert parse_mllog_line(line)["value"] == {"step": 3}
    assert parse_mllog_line("[rank0] 12:00 " + line)["key"] == "kit_step"  # a logger prefix
    assert parse_mllog_line("plain text") is None
    assert parse_mllog_line(line[:-10]) is None  # being written
    assert parse_mllog_line(':::MLLOG {"no_key": 1}') is None


def test_load_stage_skips_other_lines_and_partial_last(tmp_path: Path) -> None:
    rd = make_run(tmp_path, [StageSpec("pretrain", steps=6, partial_last_line=True,
                                       extra_lines=["[W socket.cpp] warning", ":::MLLOG {broken"])])
    ev = load_stage(rd / "pretrain")
    assert [s["step"] for s in ev.steps] == [1, 2, 3, 4, 5, 6]  # step 7 is half-written
    # ":::MLLOG {broken" (line 3) is a whole line that is no event: torn; the unfinished last line is not.
    assert ev.torn_lines == [3] and ev.partial_tail == len((rd / "pretrain" / "events.log").read_text().splitlines())
    assert ev.attempts == 1 and ev.facts["world_size"] == 2
    assert ev.init_start_ms == (T0 + 2 + 1) * 1000
    assert ev.init_stop_ms == ev.run_start_ms == (T0 + 2 + 30) * 1000
    assert ev.run_stop_status == "success" and ev.save["bytes"] == 1234
    assert ev.steps[0]["time_ms"] == (T0 + 2 + 30 + 2) * 1000


def test_missing_events_log_is_empty(tmp_path: Path) -> None:
    ev = load_stage(tmp_path / "finetune")
    assert ev.stage == "finetune" and ev.steps == [] and ev.attempts == 0 and ev.facts == {}


def test_resumed_steps_deduplicated_last_wins(tmp_path: Path) -> None:
    rd = make_run(tmp_path, [StageSpec("pretrain", steps=12, resume_at=6)])
    ev = load_stage(rd / "pretrain")
    assert [s["step"] for s in ev.steps] == list(range(1, 13))
    assert ev.attempts == 2 and ev.replaced_steps == 3 and ev.resume_first_steps == [7]
    # Step 7 was logged by both attempts; the second attempt's (later) time wins.
    first_attempt_end = (T0 + 2 + 30 + 9 * 2) * 1000
    assert ev.steps[6]["time_ms"] > first_attempt_end
    assert ev.attempt_list[0].status == "aborted" or ev.attempt_list[0].status is None
    assert ev.run_stop_status == "success"


def test_dedup_pure() -> None:
    events = [json.loads(mllog(k, v, t)[len(":::MLLOG "):]) for k, v, t in [
        ("init_start", {"stage": "x"}, 1), ("kit_step", {"step": 1, "loss": 9.0}, 2),
        ("kit_step", {"step": 2, "loss": 8.0}, 3), ("init_start", {"stage": "x"}, 4),
        ("run_start", {"step": 2}, 5), ("kit_step", {"step": 2, "loss": 7.0}, 6),
    ]]
    ev = stage_events_from("x", events)
    assert [s["loss"] for s in ev.steps] == [9.0, 7.0]
    assert ev.attempts == 2 and ev.resume_first_steps == [2] and ev.init_start_ms == 1


def test_read_status_states_and_partial_line(tmp_path: Path) -> None:
    rd = make_run(tmp_path, [StageSpec("pretrain", steps=5, resume_at=2), StageSpec("finetune", state="failed")],
                  partial_status_line=True)
    st = read_status(rd)
    assert st.torn_lines == [] and not st.unreadable  # a last line still being written is not damage
    pre, fin = st.stages["pretrain"], st.stages["finetune"]
    assert pre.state == "finished" and pre.launches == 2 and pre.launched_t == T0 + 2
    assert pre.last_launched_t > pre.launched_t and pre.end_t > pre.last_launched_t
    assert fin.state == "failed" and fin.detail == "test"
    assert st.run_state == "failed" and st.run_end_t is not None


def test_read_status_iso_time_only(tmp_path: Path) -> None:
    (tmp_path / "status.jsonl").write_text(
        json.dumps({"time": "2024-01-01T00:00:00+00:00", "stage": "pretrain", "state": "launched"}) + "\n")
    st = read_status(tmp_path)
    assert st.stages["pretrain"].launched_t == 1704067200.0
    assert read_status(tmp_path / "nowhere").stages == {}


def test_read_status_counts_damaged_lines(tmp_path: Path) -> None:
    good = json.dumps({"t": T0, "stage": "pretrain", "state": "launched"})
    (tmp_path / "status.jsonl").write_text(f"{good}\nnot json\n[1]\n{good}\n")
    st = read_status(tmp_path)
    assert st.torn_lines == [2, 3] and st.valid == 2 and not st.unreadable
    (tmp_path / "status.jsonl").write_text("garbage\n\x00\x01\n")
    assert read_status(tmp_path).unreadable

"""The live display's reader: it sees each event once, and waits for a line still being written."""

from __future__ import annotations

from kit.run.progress import EventTail


def test_tail_reads_new_events_once_and_waits_for_partial_lines(tmp_path):
    log = tmp_path / "events.log"
    tail = EventTail(log)
    assert tail.read() == []  # no file yet
    log.write_text(':::MLLOG {"key": "a", "value": 1}\nnot an event\n:::MLLOG {"key": "b"')
    assert tail.read() == [{"key": "a", "value": 1}]
    with open(log, "a") as f:
        f.write(', "value": 2}\n')
    assert tail.read() == [{"key": "b", "value": 2}]
    assert tail.read() == []


# ---------------------------------------------------------------- the display, off and on a terminal

import io  # noqa: E402

from rich.console import Console  # noqa: E402

from kit.run.progress import StageProgress  # noqa: E402


def ev(key: str, value, t: float) -> dict:
    return {"key": key, "value": value, "time_ms": t * 1000.0}


def step(n: int, t: float, secs: float = 0.5, loss: float = 6.2488) -> dict:
    return ev("kit_step", {"step": n, "step_time_s": secs, "real_tokens": 2400, "loss": loss}, t)


def log_console(width: int = 80) -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, width=width, force_terminal=False), out


def test_off_a_terminal_every_line_is_plain_and_complete():
    console, out = log_console(width=40)  # narrower than any line: nothing may be cut
    d = StageProgress(console, interval=5.0)
    assert d.plain
    with d:
        d.start("pretrain")
        d.feed([ev("kit_facts", {"world_size": 2, "steps_planned": 32}, 0), ev("init_stop", None, 1)])
        d.feed([step(i, 1 + i) for i in range(1, 33)])  # a step a second: a line every 5 s, plus the last
        d.finish("finished")
    lines = out.getvalue().splitlines()
    steps = [ln for ln in lines if "/32 steps" in ln and "finished" not in ln]
    assert lines[0] == "pretrain: starting" and "pretrain: loading" in lines
    assert [ln.split()[1] for ln in steps] == ["1/32", "6/32", "11/32", "16/32", "21/32", "26/32", "31/32", "32/32"]
    assert steps[0].startswith("pretrain: 1/32 steps  loss 6.2488  2,400 tok/s/gpu  elapsed ") and "ETA 0:00:16" in steps[0]
    assert all("…" not in ln for ln in lines) and max(map(len, lines)) > 40
    assert lines[-1].startswith("pretrain: finished  32/32 steps  loss 6.2488") and "ETA" not in lines[-1]


def test_slow_steps_give_a_line_each():
    console, out = log_console()
    d = StageProgress(console, interval=5.0)
    d.start("finetune")
    d.feed([ev("kit_facts", {"world_size": 1, "steps_planned": 3}, 0)])
    d.feed([step(i, 6.0 * i, secs=6.0) for i in (1, 2, 3)])
    assert [ln.split()[1] for ln in out.getvalue().splitlines() if "steps" in ln] == ["1/3", "2/3", "3/3"]


def test_a_failed_or_interrupted_stage_says_where_it_stopped_and_keeps_no_eta():
    for state in ("failed", "interrupted"):
        console, out = log_console()
        d = StageProgress(console)
        d.start("pretrain")
        d.feed([ev("kit_facts", {"world_size": 2, "steps_planned": 32}, 0), step(1, 1)])
        d.finish(state)
        last = out.getvalue().splitlines()[-1]
        assert last.startswith(f"pretrain: {state} at step 1/32  (loss 6.2488  2,400 tok/s/gpu)  elapsed ")
        assert "ETA" not in last and "-:--" not in last


def test_on_a_terminal_the_final_line_of_a_failed_stage_has_no_eta():
    out = io.StringIO()
    console = Console(file=out, width=200, force_terminal=True, color_system=None)
    d = StageProgress(console)
    assert not d.plain
    with d:
        d.start("pretrain")
        d.feed([ev("kit_facts", {"world_size": 2, "steps_planned": 32}, 0), step(1, 1), step(2, 2)])
        d.finish("failed")
    final = [ln for ln in out.getvalue().replace("\r", "\n").splitlines() if "pretrain" in ln][-1]
    assert "2/32 steps" in final and "failed at 2/32 steps" in final and "ETA" not in final
    assert "loss 6.2488" in final and "tok/s/gpu" in final


def test_the_eval_line_counts_questions_not_loss():
    console, out = log_console()
    d = StageProgress(console, interval=0.0)
    d.start("eval")
    facts = {"world_size": 1, "questions": 60, "stage": "eval"}
    batch = {"batch": 1, "rank": 0, "questions": 4, "seconds": 2.0}
    d.feed([ev("kit_facts", facts, 0), ev("init_stop", None, 1), ev("run_start", {"questions": 60}, 1)])
    d.feed([ev("kit_eval_batch", {**batch, "batch": b}, 1 + 2 * b) for b in (1, 2, 3)])
    lines = out.getvalue().splitlines()
    assert lines[-1].startswith("eval: 12/60 questions  2.00 questions/s  elapsed ") and lines[-1].endswith("ETA 0:00:24")
    assert not any("loss" in ln or "tok/s" in ln for ln in lines)
    d.feed([ev("kit_eval_done", {"questions": 60}, 40)])
    d.finish("finished")
    assert out.getvalue().splitlines()[-1].startswith("eval: finished  60/60 questions")


def test_eval_on_several_ranks_scales_rank_0s_share_and_marks_it():
    console, out = log_console()
    d = StageProgress(console, interval=0.0)
    d.start("eval")
    d.feed([ev("kit_facts", {"world_size": 2, "questions": 61}, 0)])  # rank 0 answers 31 of the 61
    d.feed([ev("kit_eval_batch", {"questions": 10, "seconds": 5.0}, 5)])
    assert out.getvalue().splitlines()[-1].startswith("eval: ~20/61 questions  4.00 questions/s")
    d.finish("interrupted")
    assert out.getvalue().splitlines()[-1].startswith("eval: interrupted after ~20/61 questions  (4.00 questions/s)")


def test_notes_print_once_and_lose_their_markup():
    console, out = log_console()
    d = StageProgress(console)
    d.start("pretrain")
    d.note("[yellow]stopping every rank")
    d.note("[yellow]stopping every rank")
    d.note("node 0: loading [weights")  # a container's own line: a bracket that is not markup
    assert out.getvalue().splitlines()[1:] == ["pretrain: stopping every rank", "pretrain: node 0: loading [weights"]

"""What a user reads: the progress lines in a log, check-host's whole details, `kit mmmu score` on the official
repository's record types, the kit's source revision, `kit ls`, and the smaller messages (each test shows the line)."""

from __future__ import annotations

import http.server
import io
import json
import os
import socketserver
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import typer
from rich.console import Console
from rich.table import Table
from typer.testing import CliRunner

from kit.checks import Check
from kit.cli import app
from kit.commands import check_host as ch
from kit.commands import ls as ls_cmd
from kit.commands.env import env_block
from kit.launchers.base import follow
from kit.results.summary import run_summary
from kit.run.progress import EventTail, StageProgress
from kit.run.revision import revision_text, source_revision

from .rundir_factory import StageSpec, make_run, mllog

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[2]
TINY = ["run", "llava1_5_7b", "--config", "tiny", "--synthetic"]


# ---------------------------------------------------------------- progress, off a terminal


WRITER = r"""
import json, sys, time
path, steps = sys.argv[1], int(sys.argv[2])
def ev(key, value):
    return ":::MLLOG " + json.dumps({"time_ms": time.time() * 1000, "key": key, "value": value}) + "\n"
with open(path, "a") as f:
    f.write(ev("kit_facts", {"world_size": 2, "steps_planned": 40})); f.flush()
    f.write(ev("init_stop", None)); f.flush()
    for k in range(1, steps + 1):
        time.sleep(0.02)
        f.write(ev("kit_step", {"step": k, "step_time_s": 0.02, "real_tokens": 5000, "loss": 6.0 - k / 100}))
        f.flush()
sys.exit(1)  # the stage fails after its last step
"""


def test_a_stage_written_to_a_log_file_gives_plain_complete_lines_and_a_failed_end_without_eta(tmp_path):
    """A real process appends events; the display writes what a CI log would hold."""
    log = tmp_path / "run.log"
    with open(log, "w") as f:
        console = Console(file=f, width=80)  # a file: not a terminal
        display = StageProgress(console, interval=0.2)
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path / "events.log"), "25"])
        with display:
            display.start("pretrain")
            code, _ = follow(lambda: (proc.poll(), None), EventTail(tmp_path / "events.log"), display, interval=0.05)
            display.finish("failed" if code else "finished")
    lines = log.read_text().splitlines()
    print("\n".join(lines))
    assert code == 1 and lines[:2] == ["pretrain: starting", "pretrain: loading"]
    steps = [ln for ln in lines[2:-1]]
    assert steps and all(ln.startswith("pretrain: ") and "/40 steps  loss " in ln and " tok/s/gpu  elapsed " in ln
                         and "  ETA " in ln for ln in steps)  # fmt: skip
    assert len(steps) < 25  # steps faster than the interval: one line every interval, not one per step
    assert not any("…" in ln or "━" in ln for ln in lines)
    assert lines[-1].startswith("pretrain: failed at step 25/40  (loss 5.7500  125,000 tok/s/gpu)  elapsed 0:00:0")
    assert "ETA" not in lines[-1]


# ---------------------------------------------------------------- check-host: wrapped, never cut


def test_check_host_shows_every_detail_whole_at_160_columns():
    detail = ("60.4 GB free at /work/main; a full run needs ~130 MiB (finetune checkpoint 2 MiB (14 B x 0.00e9 "
              "trainable params) x 3 in flight, 16-bit model 0 MiB, synthetic data <= 122 MiB)")  # fmt: skip
    results = {"vm": [Check("system", "disk (results)", "ok", detail), Check("system", "CPU", "warn", "x " * 90, "y")]}
    console = Console(record=True, width=160)
    ch.render(results, console)
    out = console.export_text()
    print(out)
    assert "…" not in out
    joined = " ".join(" ".join(ln.strip("│ ").split()) for ln in out.splitlines() if "│" in ln)
    assert "trainable params) x 3 in flight, 16-bit model 0 MiB, synthetic data <= 122 MiB" in joined
    assert max(len(ln) for ln in out.splitlines()) <= 160


def test_check_host_on_two_cores_for_the_tiny_config_warns_of_nothing_it_cannot_fix(tmp_path):
    from kit import case as cases
    from kit.checks import system

    root = tmp_path / "root"
    (root / "proc").mkdir(parents=True)
    (root / "proc/cpuinfo").write_text("".join(f"processor\t: {i}\nmodel name\t: AMD EPYC\n\n" for i in range(2)))
    tiny = cases.load_config(cases.get("llava1_5_7b"), "tiny")
    [cpu] = [c for c in system.host_checks(tiny, root) if c.name == "CPU"]
    assert (cpu.status, cpu.detail) == ("ok", "AMD EPYC, 2 cores; 2 CPU ranks x (0 DataLoader workers + 1) want 2")
    (root / "proc/cpuinfo").write_text("processor\t: 0\nmodel name\t: AMD EPYC\n\n")
    [cpu] = [c for c in system.host_checks(tiny, root) if c.name == "CPU"]
    assert cpu.status == "warn" and "num_workers" not in cpu.fix  # it has none to lower, and never gets more
    ref = cases.load_config(cases.get("llava1_5_7b"), "A800x1x8")  # 8 GPU ranks x 4 workers on 24 cores
    (root / "proc/cpuinfo").write_text("".join(f"processor\t: {i}\nmodel name\t: Xeon\n\n" for i in range(24)))
    [cpu] = [c for c in system.host_checks(ref, root) if c.name == "CPU"]
    assert cpu.status == "warn" and "`--set data.num_workers=2`" in cpu.fix and ref.data.num_workers > 2


# ---------------------------------------------------------------- kit mmmu score


def test_mmmu_score_takes_the_official_examples_short_answer_type_and_names_a_duplicates_file(tmp_path):
    recs = [
        {"id": "validation_Art_1", "question_type": "multiple-choice", "answer": "A", "options": "['red', 'blue']",
         "response": "(A)"},
        {"id": "validation_Math_1", "question_type": "short-answer", "answer": "3.5", "response": "so it is 3.50"},
    ]  # fmt: skip
    good = tmp_path / "total_val_output.json"
    good.write_text(json.dumps(recs))
    r = runner.invoke(app, ["mmmu", "score", str(good)], env={"COLUMNS": "200"})
    print(r.output)
    assert r.exit_code == 0, r.output
    assert "records by question type: 2: 1 multiple-choice, 1 short-answer (scored as open)" in r.output
    assert "100.00%" in r.output
    dup = tmp_path / "dup.json"
    dup.write_text(json.dumps([recs[0], recs[0]]))
    r = runner.invoke(app, ["mmmu", "score", str(dup)], env={"COLUMNS": "300"})
    print(r.output)
    assert r.exit_code == 2 and f"{dup}: record 1 (id validation_Art_1): id validation_Art_1 repeats record 0" in r.output
    r = runner.invoke(app, ["mmmu", "score", "--help"], env={"COLUMNS": "200"})
    assert "runs/RUN/eval/responses.json" in " ".join(r.output.split())


# ---------------------------------------------------------------- the kit's source revision


def _git(repo: Path, *args: str) -> None:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}  # fmt: skip
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, env=env)


@pytest.mark.skipif(subprocess.run(["which", "git"], capture_output=True).returncode != 0, reason="no git here")
def test_source_revision_of_a_checkout_clean_and_dirty_and_of_no_checkout(tmp_path, monkeypatch):
    repo = tmp_path / "kit-checkout"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "a.py").write_text("x = 1\n")
    _git(repo, "add", "a.py")
    _git(repo, "commit", "-q", "-m", "one")
    head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    rev = source_revision(repo)
    assert (rev["kind"], rev["commit"], rev["dirty"], rev["changed"]) == ("git", head, False, 0)
    assert revision_text(rev) == f"git {head[:12]} (clean) at {repo}"
    (repo / "a.py").write_text("x = 2\n")
    (repo / "new.py").write_text("")
    rev = source_revision(repo)
    assert rev["dirty"] is True and rev["changed"] == 2
    assert revision_text(rev) == f"git {head[:12]} (dirty: 2 file(s) changed) at {repo}"
    assert not (repo / ".git" / "index.lock").exists()
    plain = source_revision(tmp_path / "unpacked")  # an installed copy: no .git
    assert plain["kind"] == "installed" and plain["version"] and "is not a git checkout" in plain["reason"]
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))  # git absent: never an error
    rev = source_revision(repo)
    assert rev["kind"] == "installed" and rev["reason"].endswith("git is not installed")
    assert "installed " in revision_text(rev)


def test_kit_env_and_run_json_record_the_source_revision(tmp_path):
    block = env_block()
    line = next(ln for ln in block.splitlines() if ln.startswith("- kit source:"))
    assert ("git " in line and " at " in line) or "installed " in line
    # A real `kit run` whose Python cannot run the case: the probe fails (exit 3) after run.json is written.
    r = runner.invoke(app, [*TINY, "--native", "--python", "/bin/false", "--results", str(tmp_path)])
    assert r.exit_code == 3, r.output
    [run] = [p for p in tmp_path.iterdir() if (p / "run.json").is_file()]
    src = json.loads((run / "run.json").read_text())["kit_source"]
    assert src == source_revision()


# ---------------------------------------------------------------- kit ls


def ls_app() -> typer.Typer:
    local = typer.Typer()
    local.command("ls")(ls_cmd.ls)
    local.command("unused")(lambda: None)  # two commands: `ls` stays a subcommand
    return local


def test_kit_ls_lists_runs_newest_first_with_states_figures_and_damage(tmp_path):
    old = make_run(tmp_path, [StageSpec("pretrain"), StageSpec("finetune")], run_id="20261101-100000-llava1_5_7b-H200x1x1-aaaa",
                   mmmu=0.301)  # fmt: skip
    new = make_run(tmp_path, [StageSpec("pretrain", state="failed", steps=5)],
                   run_id="20261102-100000-llava1_5_7b-H200x1x1-bbbb")  # fmt: skip
    bad = tmp_path / "20261103-100000-llava1_5_7b-tiny-cccc"
    bad.mkdir()
    (bad / "run.json").write_text("{garbage")
    (tmp_path / "builds").mkdir()  # not a run
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    r = runner.invoke(ls_app(), ["ls", "--results", str(tmp_path)], env={"COLUMNS": "100"})
    print(r.output)
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[0].split() == ["run", "config", "started", "stages", "figures", "inputs"]
    assert [ln.split()[0] for ln in lines[1:]] == [bad.name, new.name, old.name]
    assert " ".join(lines[1].split()).endswith("2026-11-03 10:00 damaged - " + f"{bad / 'run.json'} is not valid JSON "
                                               "(Expecting property name enclosed in double quotes: line 1 column 2 "
                                               "(char 1)): the file is damaged; restore it from a copy of the run (a "
                                               "submission keeps one); the raw facts (events.log, status.jsonl) are "
                                               "not touched")  # fmt: skip
    assert "2026-11-02 10:00" in lines[2] and "pretrain failed" in lines[2]
    old_line = " ".join(lines[3].split())
    summary = run_summary(old)["stages"]["pretrain"]
    ref, tps = summary["reference_method_tokens_per_s_per_gpu"], summary["tokens_per_s_per_gpu"]
    assert "pretrain finished finetune finished" in old_line and f"pretrain {ref:,.0f} finetune " in old_line
    assert "token/p/s; MMMU 30.1%" in old_line and "not comparable: " in old_line
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # read-only: no summary.json
    r = runner.invoke(ls_app(), ["ls", "--results", str(tmp_path), "--json"])
    rows = json.loads(r.output)
    assert [x["run_id"] for x in rows] == [bad.name, new.name, old.name]
    assert rows[0]["error"].startswith(f"{bad / 'run.json'} is not valid JSON") and rows[1]["stages"] == {"pretrain": "failed"}
    assert rows[2]["mmmu_acc"] == 0.301 and rows[2]["tokens_per_s_per_gpu"]["pretrain"] == tps


def test_kit_ls_on_an_empty_or_missing_results_directory(tmp_path):
    r = runner.invoke(ls_app(), ["ls", "--results", str(tmp_path)])
    assert r.exit_code == 0 and r.output.strip() == f"no runs under {tmp_path}: start one with `kit run`"
    r = runner.invoke(ls_app(), ["ls", "--results", str(tmp_path / "absent")], env={"COLUMNS": "300"})
    assert r.exit_code == 2 and f"error: --results {tmp_path / 'absent'}: no such directory" in r.output


def test_kit_ls_reads_a_torn_events_log_without_crashing(tmp_path):
    rd = make_run(tmp_path, [StageSpec("pretrain", state="running", steps=3)], run_id="20261101-090000-x-tiny-dddd")
    with open(rd / "pretrain" / "events.log", "a") as f:
        f.write(mllog("kit_step", {"step": 4}, 1)[:30])
    rows = ls_cmd.list_runs(tmp_path)
    assert rows[0]["error"] is None and rows[0]["stages"]["pretrain"] in ("running", "stopped")


# ---------------------------------------------------------------- the smaller messages


def test_gpus_0_is_refused_like_nodes_0(tmp_path):
    for flag in ("--gpus", "--nodes"):
        r = runner.invoke(app, [*TINY, "--native", flag, "0", "--dry-run", "--results", str(tmp_path)],
                          env={"COLUMNS": "300"})  # fmt: skip
        print(r.output)
        assert r.exit_code == 2 and f"error: {flag} 0: must be at least 1 (leave {flag} out for " in r.output


def test_the_global_batch_error_names_the_stage_and_the_set_that_works(tmp_path):
    r = runner.invoke(app, [*TINY, "--native", "--set", "pretrain.micro_batch=3", "--dry-run", "--results", str(tmp_path)],
                      env={"COLUMNS": "400"})  # fmt: skip
    print(r.output)
    assert r.exit_code == 2
    assert ("tiny.toml: stage pretrain: global_batch 16 is not a multiple of "
            "micro_batch 3 x 2 ranks: use --set pretrain.micro_batch=2") in r.output  # fmt: skip


def test_set_of_a_table_to_a_value_names_the_key_and_what_is_expected(tmp_path):
    r = runner.invoke(app, [*TINY, "--native", "--set", "pretrain=3", "--dry-run", "--results", str(tmp_path)],
                      env={"COLUMNS": "600"})  # fmt: skip
    print(r.output)
    assert r.exit_code == 2
    assert "with --set pretrain=3: pretrain is a table of settings (checkpoint_every, global_batch" in r.output
    assert "not a value (got 3): set one of its keys, e.g. --set pretrain.micro_batch=VALUE" in r.output


class _Engine(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


class _EngineHandler(http.server.BaseHTTPRequestHandler):
    """The three answers a container dry run asks an engine for (no Docker engine can run on this host)."""

    def address_string(self) -> str:
        return "unix"

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        path = self.path.split("?")[0]
        if path.endswith("/version"):
            body = {"Version": "27.0.0", "ApiVersion": "1.46", "MinAPIVersion": "1.24"}
        elif path.endswith("/info"):
            body = {"ID": "engine-1", "Name": "vm"}
        elif "/images/" in path and path.endswith("/json"):
            body = {"Id": "sha256:" + "ab" * 32}
        else:
            self.send_response(404)
            self.end_headers()
            return
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def test_a_container_dry_run_creates_nothing(tmp_path, monkeypatch):
    sock = tmp_path / "engine.sock"
    server = _Engine(str(sock), _EngineHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("DOCKER_HOST", f"unix://{sock}")
        results = tmp_path / "not-yet" / "runs"
        r = runner.invoke(app, [*TINY, "--image", "kit:test", "--dry-run", "--results", str(results)],
                          env={"COLUMNS": "300"})  # fmt: skip
        print(r.output)
        assert r.exit_code == 0, r.output
        assert "pretrain, node 0 (local): python -m torch.distributed.run" in r.output
        assert not (tmp_path / "not-yet").exists()
    finally:
        server.shutdown()
        server.server_close()


def test_progress_module_is_the_only_display_of_a_run():
    """The plain lines need no terminal: a `kit run` into a file never prints Rich's bar characters."""
    out = io.StringIO()
    d = StageProgress(Console(file=out))
    d.start("finetune")
    d.feed([{"key": "kit_facts", "value": {"world_size": 1, "steps_planned": 2}}])
    d.feed([{"key": "kit_step", "value": {"step": 1, "step_time_s": 1.0, "real_tokens": 10, "loss": 1.0}}])
    d.finish("interrupted")
    assert out.getvalue().splitlines()[-1].startswith("finetune: interrupted at step 1/2  (loss 1.0000  10 tok/s/gpu)")


def test_the_host_is_named_the_same_in_every_failure_message(tmp_path):
    """torchrun's root-cause block names this host by its fqdn (often `localhost`); every other message uses
    socket.gethostname(): a rank that dies without a Python error is reported on the same host name."""
    import socket

    from kit.launchers.base import launcher_root_cause

    for fqdn in ("localhost", socket.getfqdn()):
        log = tmp_path / f"launcher-{fqdn}.log"
        log.write_text("Root Cause (first observed failure):\n[0]:\n  time      : 2026-12-01_10:00:00\n"
                       f"  host      : {fqdn}\n  rank      : 1 (local_rank: 1)\n  exitcode  : -6 (pid: 42)\n")  # fmt: skip
        assert launcher_root_cause(log) == {"rank": 1, "exitcode": "-6 (pid: 42)", "host": socket.gethostname()}
    log.write_text("Root Cause\n  host      : gpu7.cluster\n  rank      : 3\n  exitcode  : 1\n")
    assert launcher_root_cause(log)["host"] == "gpu7.cluster"  # another node keeps its own name


def test_kit_report_on_a_file_or_a_results_folder_says_what_it_is_and_what_to_pass(tmp_path, monkeypatch):
    """`kit report FILE` said "does not exist" of a file that exists; `kit report runs/` said "has no run.json"
    with no hint to name a run."""
    results = tmp_path / "runs"
    ids = [f"2026110{i}-090000-llava1_5_7b-tiny-000{i}" for i in range(1, 6)]
    for k, rid in enumerate(ids):
        make_run(results, run_id=rid)
        os.utime(results / rid / "run.json", (1e9 + k, 1e9 + k))  # the newest is the last
    monkeypatch.chdir(tmp_path)

    def report(*args: str) -> str:
        r = runner.invoke(app, ["report", *args], env={"COLUMNS": "1000"})
        print(r.output)
        assert r.exit_code == 2 and r.output.count("\n") == 1, r.output
        return r.output.strip()

    newest = ", ".join(f"runs/{rid}" for rid in ids[::-1][:3])
    assert report("runs/") == (f"error: no run 'runs/': runs is a results folder holding 5 run(s), not a run: name one, "
                               f"e.g. {newest} (and 2 more); `kit ls --results runs` lists them all")  # fmt: skip
    notes = tmp_path / "notes.txt"
    notes.write_text("a plain file\n")
    assert report(str(notes)) == (f"error: no run {str(notes)!r}: {notes} is a file, not a run directory: pass the "
                                  "folder that holds run.json (`kit ls` lists the runs)")  # fmt: skip
    inside = results / ids[0] / "run.json"
    assert report(str(inside)) == (f"error: no run {str(inside)!r}: {inside} is a file in the run directory "
                                   f"{inside.parent}: pass the directory, {inside.parent}")  # fmt: skip
    tarball = tmp_path / "sub.tar.gz"
    tarball.write_bytes(b"")
    assert "a submission tarball goes to `kit verify` or `kit compare`" in report(str(tarball))
    (tmp_path / "empty").mkdir()
    assert report("empty") == ("error: no run 'empty': empty has no run.json: it is not a run directory made by "
                               "`kit run` (`kit ls --results DIR` lists runs)")  # fmt: skip


# ---------------------------------------------------------------- tables: paths and ids whole, nothing cut off a terminal


def _verify_like(where: str) -> Table:
    """A table of `kit verify`'s shape: a short check, a result, a path, prose."""
    t = Table(title="verify", title_justify="left")
    for col in ("check", "result", "where", "detail"):
        t.add_column(col, overflow="fold")
    detail = "every file the manifest names is there and hashes as the manifest says; " * 2
    t.add_row("manifest", "pass", where, detail)
    t.add_row("rules", "fail", "-", "short")
    return t


def test_a_path_column_is_kept_whole_while_the_prose_wraps():
    from kit.tables import whole

    where = "results/cpu-box/llava1_5_7b/20261101-090000-llava1_5_7b-tiny-abcd/pretrain/events.log"
    for width in (120, 160):  # the path (84) and the narrow columns fit; the prose wraps in what is left
        console = Console(record=True, width=width, file=io.StringIO())
        console.print(whole(_verify_like(where), "where"))
        out = console.export_text()
        print(out)
        assert any(where in ln for ln in out.splitlines()), width  # on one line: it can be copied
        assert max(len(ln) for ln in out.splitlines()) <= width and "…" not in out
        assert "hashes as the manifest says" in " ".join(" ".join(ln.strip("│ ").split()) for ln in out.splitlines())
    # Without it (the old way) the same path folds mid-name at 120 columns.
    console = Console(record=True, width=120, file=io.StringIO())
    console.print(_verify_like(where))
    assert not any(where in ln for ln in console.export_text().splitlines())
    # Narrower than the path itself: it folds as before rather than crush the other columns to nothing.
    console = Console(record=True, width=60, file=io.StringIO())
    console.print(whole(_verify_like(where), "where"))
    out = console.export_text()
    print(out)
    assert "manifest" in out and "pass" in out and max(len(ln) for ln in out.splitlines()) <= 60


def test_kit_configs_to_a_pipe_cuts_no_header_and_folds_nothing():
    """Off a terminal `kit configs` was cut to 80 columns ("micro/GAS/glob…"); a pipe gets the whole table."""
    from kit import case as cases

    r = runner.invoke(app, ["configs"])  # CliRunner: not a terminal, no COLUMNS
    print(r.output)
    assert r.exit_code == 0 and "…" not in r.output
    assert "pretrain ZeRO," in r.output and "micro/GAS/global" in r.output and "nodes x" in r.output
    mod = cases.config_module(cases.get("llava1_5_7b"))
    for name in mod.available():
        row = next(ln for ln in r.output.splitlines() if f"│ {name} " in ln)
        assert mod.load(name).description in row  # each description on its config's own line


def test_the_table_is_narrowed_on_a_terminal_by_wrapping_prose_never_by_cutting_a_header(monkeypatch):
    from kit.commands import configs

    out = io.StringIO()
    monkeypatch.setattr(configs, "console", Console(file=out, width=80, force_terminal=True, color_system=None))
    configs.list_configs("llava1_5_7b")
    text = out.getvalue()
    print(text)
    assert "…" not in text and "micro/GAS/global" in text and max(len(ln) for ln in text.splitlines()) <= 80
    assert all(f"│ {name} " in text for name in ("A800x1x1", "A800x1x8", "A800x2x8", "H200x1x1", "tiny"))

"""An honest report: comparable numbers only, spread shown, every input checked (what the user reads)."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from kit.cli import app
from kit.results import formats, formulas, summary
from kit.results import render_report as report
from kit.results.entries import MixedRunsError, check_one_config
from kit.results.summary import write_summary
from kit.run.dir import RunDir, RunDirError, find_run

from .rundir_factory import GIB, T0, StageSpec, _status, make_run, mllog

runner = CliRunner()
CASE = "llava1_5_7b"


def _rules() -> Any:
    from kit.case import rules

    return rules.load(CASE)


def _reference_config() -> dict[str, Any]:
    from kit.case import rules

    return rules.reference_for(_rules(), {}, False)


def _set_records(rd: Path, stage: str, records: int) -> None:
    log = rd / stage / "events.log"
    text = log.read_text()
    assert '"records": 1000,' in text
    log.write_text(text.replace('"records": 1000,', f'"records": {records},'))


def _rewrite_json(path: Path, **changes: Any) -> dict[str, Any]:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))
    return data


def make_reference_like(rd: Path, filters: dict[str, dict[str, Any]] | None = None) -> Path:
    """Turn a factory run into one of the reference: its config's model and data those of the reference config,
    an inputs.json of real data and published weights, and the reference's record counts in kit_facts."""
    ref = _reference_config()
    info = json.loads((rd / "run.json").read_text())
    info["config"] = {**ref, "name": info["config"]["name"], "device": info["config"]["device"]}
    info["synthetic"] = False
    (rd / "run.json").write_text(json.dumps(info))
    stages: dict[str, Any] = {}
    for stage in ("pretrain", "finetune"):
        if not (rd / stage / "events.log").is_file():
            continue
        entry = {"records_file": ref["data"][f"{stage}_json"], "images": ref["data"][f"{stage}_images"],
                 "sha256": "a" * 64, "bytes": 1000}
        records = _rules().records[stage]
        if filters and stage in filters:
            entry["filter"] = filters[stage]
            records -= int(filters[stage].get("dropped") or 0)
        stages[stage] = entry
        _set_records(rd, stage, records)
    (rd / "inputs.json").write_text(json.dumps({
        "schema": "kit.inputs/1", "synthetic": False,
        "data": {"root": "/data", "stages": stages, "files": {}, "digest": "b" * 64},
        "weights": {"random_init": False, "llm": {"digest": "c" * 64}, "vision": {"digest": "d" * 64},
                    "digest": "e" * 64},
    }))
    return rd


def make_synthetic_tiny(rd: Path) -> Path:
    """A factory run as `kit run --config tiny --synthetic` records it: tiny model, generated data, random weights."""
    from kit import case as cases

    tiny = cases.config_module(cases.get(CASE)).load("tiny").to_dict()
    _rewrite_json(rd / "run.json", config={**tiny, "device": "cpu"}, synthetic=True)
    (rd / "inputs.json").write_text(json.dumps({
        "schema": "kit.inputs/1", "synthetic": True, "data": {"stages": {}},
        "weights": {"random_init": True, "seed": 42, "digest": None}, "mmmu": {"generated": True, "digest": None},
    }))
    return rd


def _all_formats(s: dict[str, Any]) -> dict[str, str]:
    return {fmt: report.render(s, fmt) for fmt in report.FORMATS}


def _flat(text: str) -> str:
    return " ".join(text.split())


# ---- comparable or marked ----


def test_synthetic_tiny_run_is_labelled_and_has_no_ratios_in_any_format(tmp_path: Path) -> None:
    s = write_summary(make_synthetic_tiny(make_run(tmp_path, config="tiny", device="cpu")), plots=False)
    c = s["comparable"]
    assert (c["comparable"], c["data"], c["weights"], c["shape"]) == (False, "synthetic", "random init", "tiny shape")
    reason = "synthetic data, random-init weights, tiny shape"
    assert c["reason"] == reason
    out = _all_formats(s)
    table = _flat(out["table"])
    assert f"NOT comparable with the seed: {reason}; the seed's rows are shown for scale, without ratios" in table
    assert table.count("ratio not comparable") == 2  # the ratio rows: the title above says why, once
    assert not re.search(r"\d\.\d\dx", out["table"])  # no ratio figure anywhere
    md = out["markdown"]
    assert md.splitlines()[0] == (f"**run-1 (finished)**: NOT comparable with the seed: {reason}; the seed's rows are "
                                  "shown for scale, without ratios")
    assert md.count(f"| ratio run/seed | not comparable: {reason} |") == 2
    rows = list(csv.DictReader(io.StringIO(out["csv"])))
    ratios = [r for r in rows if r["kind"] == "ratio"]
    assert len(ratios) == 2 and all(r["comparability"] == f"not comparable: {reason}" for r in ratios)
    assert all(r["tokens_per_s"] == r["ref_method_tokens_per_s"] == r["mmmu_acc"] == "" for r in ratios)
    assert all(r["comparable"] == "false" for r in rows if r["kind"] == "run")
    assert json.loads(out["json"])["comparable"]["reason"] == reason


def test_reference_run_shows_the_like_for_like_ratio_first_and_says_what_each_compares(tmp_path: Path) -> None:
    s = write_summary(make_reference_like(make_run(tmp_path)), plots=False)
    assert s["comparable"] == {
        "comparable": True, "reason": "reference data, published weights, reference shape", "data": "reference",
        "weights": "published", "shape": "reference shape",
        "data_by_stage": {"pretrain": "reference", "finetune": "reference"}, "details": [],
    }
    text = report.render(s, "table")
    header = next(ln for ln in text.splitlines() if "config" in ln)
    assert header.split()[:3] == ["config", "token/p/s", "MFU"]  # the seed's method, where the eye lands first
    pre = s["stages"]["pretrain"]
    ratio_line = next(ln for ln in text.splitlines() if ln.strip().startswith("ratio") and "x" in ln)
    assert ratio_line.split()[1] == f"{pre['reference_method_tokens_per_s_per_gpu'] / 4013:.2f}x"
    for fmt in ("table", "markdown"):
        assert _flat(report.RATIO_LINE) in _flat(report.render(s, fmt))
    assert "over the seed's, like for like" in report.RATIO_LINE and "not like for like" in report.RATIO_LINE


def _filter(dropped: int, counts: dict[str, int] | None = None, source: str = "llava_v1_5_mix665k.json") -> dict:
    return {"sidecar": "x.kit-filter.json", "valid": True, "source_file": source, "source_sha256": "f" * 64,
            "records": 665298 - dropped, "dropped": dropped, "counts": counts or {"missing": dropped}}


def test_filtered_data_within_the_rules_is_comparable_and_said(tmp_path: Path) -> None:
    rd = make_reference_like(make_run(tmp_path), filters={"finetune": _filter(355)})
    s = write_summary(rd, plots=False)
    c = s["comparable"]
    assert c["comparable"] and c["data"] == "filtered" and c["data_by_stage"]["finetune"] == "filtered"
    assert c["reason"] == "filtered data, published weights, reference shape"
    assert "comparability: finetune: 355 records filtered out by `kit data fix` (admitted by the rules)" in _flat(
        report.render(s, "table"))


def test_filtered_beyond_the_rules_or_other_records_are_not_comparable(tmp_path: Path) -> None:
    rd = make_reference_like(make_run(tmp_path, run_id="a"), filters={"finetune": _filter(5000)})
    s = write_summary(rd, plots=False)
    assert not s["comparable"]["comparable"] and s["comparable"]["reason"] == "other data"
    assert "more than the 1,000 the rules admit" in _flat(report.render(s, "markdown"))

    rd = make_reference_like(make_run(tmp_path, run_id="b"))
    log = rd / "pretrain" / "events.log"
    log.write_text(log.read_text().replace('"records": 558128,', '"records": 1000,'))
    s = write_summary(rd, plots=False)
    assert s["comparable"]["data_by_stage"] == {"pretrain": "other", "finetune": "reference"}
    assert "not comparable: other data" in report.render(s, "csv")
    assert "pretrain: 1,000 records, the reference set has 558,128" in s["comparable"]["details"]


def test_a_run_without_inputs_json_is_not_claimed_comparable(tmp_path: Path) -> None:
    s = write_summary(make_run(tmp_path), plots=False)  # an old run: nothing recorded what it read
    assert s["comparable"]["comparable"] is False
    assert s["comparable"]["reason"] == "data unknown, weights unknown, shape unknown"
    table = _flat(report.render(s, "table"))
    assert "NOT comparable with the seed: data unknown, weights unknown, shape unknown" in table
    assert "ratio not comparable" in table


def test_units_are_exact_in_every_format(tmp_path: Path) -> None:
    s = write_summary(make_reference_like(make_run(tmp_path, run_id="gpu")), plots=False)
    pre = s["stages"]["pretrain"]
    text = report.render(s, "table")
    assert f"{pre['mem_used_peak_gib']:.1f}/{pre['mem_total_gib']:.1f} GiB" in text and "74/81 GB" in text
    assert "mem used/total" in report.render(s, "markdown")
    row = next(csv.DictReader(io.StringIO(report.render(s, "csv"))))
    assert float(row["mem_used_gib"]) == pytest.approx(pre["mem_used_peak_gib"])
    assert float(row["mem_used_gb"]) == pytest.approx(pre["mem_used_peak_gib"] * 1024 / 1000)  # the seed's unit
    assert row["mem_meaning"] == report.MEM_DEVICE

    cpu = write_summary(make_run(tmp_path, [StageSpec("pretrain", device_name="cpu", device_type="cpu")],
                                        run_id="cpu", config="tiny", device="cpu"), plots=False)  # fmt: skip
    for fmt in ("table", "markdown"):
        assert "[pretrain] mem on a CPU: one rank's peak RSS (ru_maxrss) / host RAM" in _flat(report.render(cpu, fmt))
    row = next(csv.DictReader(io.StringIO(report.render(cpu, "csv"))))
    assert row["mem_meaning"] == "one rank's peak RSS (ru_maxrss) / host RAM: host memory, not a device's"


# ---- spread, not one number ----


def _alternating(steps: int, even: float = 1.0, odd: float = 3.0) -> list[float]:
    return [even if k % 2 == 0 else odd for k in range(1, steps + 1)]


def test_step_time_spread_and_the_cv_warning_in_every_format(tmp_path: Path) -> None:
    rd = make_run(tmp_path, [StageSpec("pretrain", steps=20, step_times=_alternating(20)),
                             StageSpec("finetune", steps=20)])  # fmt: skip
    s = write_summary(rd, plots=False)
    pre, fin = s["stages"]["pretrain"], s["stages"]["finetune"]
    # Steady steps 3..20: nine of 3 s, nine of 1 s: median 2, p10 1, p90 3, CV = pstdev 1 / mean 2.
    assert pre["step_time_steps"] == 18 and pre["step_time_median_s"] == 2.0
    assert pre["step_time_p10_s"] == 1.0 and pre["step_time_p90_s"] == 3.0
    assert pre["step_time_cv"] == pytest.approx(0.5)
    assert fin["step_time_cv"] == 0 and fin["stage_warnings"] == []
    warning = "[pretrain] step time varies: CV 50% over 18 steady steps (above 10%; median 2 s, p10-p90 1-3 s)"
    out = _all_formats(s)
    assert f"warning: {warning}" in _flat(out["table"])
    assert f"> warning: {warning}" in out["markdown"]
    assert warning.removeprefix("[pretrain] ") in next(csv.DictReader(io.StringIO(out["csv"])))["warnings"]
    assert json.loads(out["json"])["stages"]["pretrain"]["stage_warnings"][0].startswith("step time varies: CV 50%")
    table = out["table"].splitlines()
    spread = table[next(i for i, ln in enumerate(table) if "step time over the steady steps" in ln):]
    assert next(ln for ln in spread if ln.startswith(" pretrain")).split() == ["pretrain", "18", "2", "1", "3", "50%"]
    assert formulas.STEP_TIME_CV_WARN == 0.10


def test_percentile_is_numpys_linear_method() -> None:
    assert formulas.percentile([1.0, 2.0, 3.0, 4.0], 0.10) == pytest.approx(1.3)
    assert formulas.percentile([5.0], 0.9) == 5.0 and formulas.percentile([], 0.5) is None


def test_stage_warning_hook_lines_are_shown_in_every_format(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def monitor(stage_dir: Path) -> list[str]:
        return ["other processes used the devices (pid 4242)"] if stage_dir.name == "pretrain" else []

    def broken(stage_dir: Path) -> list[str]:
        raise RuntimeError("no samples")

    monkeypatch.setattr(summary, "STAGE_WARNING_HOOKS", [monitor, broken])
    s = write_summary(make_run(tmp_path), plots=False)
    assert s["stages"]["pretrain"]["stage_warnings"][0] == "other processes used the devices (pid 4242)"
    out = _all_formats(s)
    line = "[pretrain] other processes used the devices (pid 4242)"
    assert f"warning: {line}" in out["table"] and f"> warning: {line}" in out["markdown"]
    assert "other processes used the devices (pid 4242)" in next(csv.DictReader(io.StringIO(out["csv"])))["warnings"]
    assert "warning source 'broken' failed on finetune: no samples" in _flat(out["table"])


def _pair(tmp_path: Path, b_config: str = "H200x1x1", b_step: float = 4.0) -> tuple[Path, Path]:
    a = make_run(tmp_path, [StageSpec("pretrain", step_time_s=2.0)], run_id="a")
    b = make_run(tmp_path, [StageSpec("pretrain", step_time_s=b_step)], run_id="b", config=b_config)
    return a, b


def test_several_runs_of_one_config_give_mean_and_spread(tmp_path: Path) -> None:
    a, b = _pair(tmp_path)
    sa, sb = (write_summary(p, plots=False) for p in (a, b))
    ms = report.multi_summary([a, b], [sa, sb])
    tps = ms["stages"]["pretrain"]["tokens_per_s_per_gpu"]
    va, vb = sa["stages"]["pretrain"]["tokens_per_s_per_gpu"], sb["stages"]["pretrain"]["tokens_per_s_per_gpu"]
    assert vb == pytest.approx(va / 2) and tps["n"] == 2
    assert tps["mean"] == pytest.approx((va + vb) / 2) and (tps["min"], tps["max"]) == (vb, va)
    assert tps["std"] == pytest.approx(abs(va - vb) / 2**0.5)  # the sample standard deviation of two values
    assert tps["olympic_mean"] == tps["mean"]  # two runs, fewer than the rules' min_runs 3: the plain mean
    ref = ms["stages"]["pretrain"]["reference_method_tokens_per_s_per_gpu"]
    assert ref["n"] == 2 and ref["olympic_over_seed"] is None  # these runs are not comparable: no ratio
    r = runner.invoke(app, ["report", str(a), str(b)], env={"COLUMNS": "100"})
    assert r.exit_code == 0, r.output
    out = _flat(r.output)
    assert "2 runs of llava1_5_7b H200x1x1: olympic mean and spread over the runs" in out
    assert "NOT comparable with the seed: data unknown, weights unknown, shape unknown; no seed figures" in out
    f = formats.tps  # olympic mean (the headline), plain mean, min-max, std (CV), runs: one format for each
    assert f"pretrain steady tok/p/s {f(tps['olympic_mean'])} {f(tps['mean'])} {f(vb)}-{f(va)} {f(tps['std'])} " \
           f"({tps['cv']:.0%}) 2" in out
    for fmt in ("json", "csv", "markdown"):
        r = runner.invoke(app, ["report", str(a), str(b), "--format", fmt])
        assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["report", str(a), str(b), "--format", "json"])
    assert json.loads(r.output)["n_runs"] == 2


def test_three_runs_state_one_headline_the_olympic_mean_in_report_compare_and_a_submission(tmp_path: Path) -> None:
    """The headline over several runs is the olympic mean of the case's rules (what a submission states and `kit
    compare` shows); `kit report` shows it first and the plain mean beside it under its own name."""
    from kit.results.entries import of_summaries
    from kit.results.model import stated_results

    runs = [make_run(tmp_path, [StageSpec("pretrain", step_time_s=t)], run_id=f"r{i}")
            for i, t in enumerate((2.0, 2.5, 4.0))]  # fmt: skip
    summaries = [write_summary(p, plots=False) for p in runs]
    values = sorted(s["stages"]["pretrain"]["tokens_per_s_per_gpu"] for s in summaries)
    ms = report.multi_summary(runs, summaries)
    tps = ms["stages"]["pretrain"]["tokens_per_s_per_gpu"]
    assert tps["olympic_mean"] == pytest.approx(values[1])  # 3 runs: the best and the worst dropped
    assert tps["mean"] == pytest.approx(sum(values) / 3) and tps["mean"] != pytest.approx(tps["olympic_mean"])
    stated = stated_results(summaries, _rules())["pretrain"]["tokens_per_s_per_gpu"]
    entry = of_summaries(summaries, runs)  # the entry `kit compare` draws a submission of these runs as
    assert stated["olympic_mean"] == tps["olympic_mean"] == entry.figure("pretrain", "tokens_per_s_per_gpu")
    r = runner.invoke(app, ["report", *map(str, runs)], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    out = _flat(r.output)
    f = formats.tps
    assert "stage figure olympic mean plain mean min-max std (CV) runs" in out
    assert f"pretrain steady tok/p/s {f(tps['olympic_mean'])} {f(tps['mean'])} {f(values[0])}-{f(values[2])}" in out


def test_several_runs_of_different_configs_are_refused(tmp_path: Path) -> None:
    a, b = _pair(tmp_path, b_config="A800x1x1")
    r = runner.invoke(app, ["report", str(a), str(b)])
    assert r.exit_code == 2
    assert ("runs of different configs cannot be reported together: a is llava1_5_7b H200x1x1 (pretrain) and b is "
            "llava1_5_7b A800x1x1 (pretrain)") in _flat(r.output)
    c = make_run(tmp_path, [StageSpec("pretrain")], run_id="c")
    info = json.loads((c / "run.json").read_text())
    _rewrite_json(c / "run.json", config={**info["config"], "pretrain": {"micro_batch": 8}})
    with pytest.raises(MixedRunsError, match=r"they differ in pretrain\.micro_batch \(None vs 8\)"):
        check_one_config([a, c])
    r = runner.invoke(app, ["report", str(a), str(a)])
    assert r.exit_code == 2 and "the same run is given more than once" in r.output


# ---- every input checked ----


@pytest.mark.parametrize("content,reason", [
    ("", "is empty"), ("{not json", "is not valid JSON"), ("[1, 2]", "holds a JSON list, not an object"),
    ('{"run_id": "x"}', 'names no case (key "case")'),
])  # fmt: skip
def test_damaged_run_json_exits_2_naming_the_file(tmp_path: Path, content: str, reason: str) -> None:
    rd = make_run(tmp_path)
    (rd / "run.json").write_text(content)
    r = runner.invoke(app, ["report", str(rd)])
    assert r.exit_code == 2, r.output
    out = _flat(r.output)
    assert f"error: {rd / 'run.json'} {reason}" in out and "run pretrain" not in out
    assert not (rd / "summary.json").exists()


def test_damaged_config_toml_and_status_jsonl_exit_2(tmp_path: Path) -> None:
    rd = make_run(tmp_path, run_id="cfg")
    info = json.loads((rd / "run.json").read_text())
    info.pop("config")
    (rd / "run.json").write_text(json.dumps(info))
    (rd / "config.toml").write_text("name = [unclosed\n")
    r = runner.invoke(app, ["report", str(rd)])
    assert r.exit_code == 2 and f"{rd / 'config.toml'} is damaged" in _flat(r.output)

    rd = make_run(tmp_path, run_id="status")
    (rd / "status.jsonl").write_bytes(b"\x00\x01garbage\n{broken\n")
    r = runner.invoke(app, ["report", str(rd)])
    assert r.exit_code == 2
    assert f"{rd / 'status.jsonl'} has 2 line(s) and not one readable status line" in _flat(r.output)


def _tear_step_line(rd: Path, stage: str, step: int) -> int:
    """Cut the kit_step line of `step` in the middle (its newline kept); returns its 1-based line number."""
    log = rd / stage / "events.log"
    lines = log.read_text().splitlines()
    n = next(i for i, ln in enumerate(lines) if '"key": "kit_step"' in ln and f'"step": {step},' in ln)
    lines[n] = lines[n][: len(lines[n]) // 2]
    log.write_text("\n".join(lines) + "\n")
    return n + 1


def test_torn_line_in_a_finished_stage_is_named_in_every_format(tmp_path: Path) -> None:
    rd = make_run(tmp_path, [StageSpec("pretrain", steps=32)])
    number = _tear_step_line(rd, "pretrain", 17)
    s = write_summary(rd, plots=False)
    pre = s["stages"]["pretrain"]
    assert (pre["steps_logged"], pre["steps_done"], pre["steps_missing"]) == (31, 32, [17])
    warning = (f"[pretrain] pretrain/events.log: 1 torn line(s) (line {number}): not whole events, left out; the "
               "figures are computed without them")
    out = _all_formats(s)
    assert f"warning: {warning}" in _flat(out["table"]) and f"> warning: {warning}" in out["markdown"]
    assert "31/32 logged" in out["table"] and "| 31/32 logged |" in out["markdown"]
    assert "31 of 32 steps logged: step 17 missing from pretrain/events.log" in _flat(out["table"])
    row = next(csv.DictReader(io.StringIO(out["csv"])))
    assert (row["steps_logged"], row["steps_done"]) == ("31", "32") and f"line {number}" in row["warnings"]
    assert f"(line {number})" in json.loads(out["json"])["stages"]["pretrain"]["stage_warnings"][0]


def test_torn_status_line_is_noted(tmp_path: Path) -> None:
    rd = make_run(tmp_path)
    lines = (rd / "status.jsonl").read_text().splitlines()
    lines.insert(2, '{"time": "2023-11-14T22:13:20", "stage": "pretr')
    (rd / "status.jsonl").write_text("\n".join(lines) + "\n")
    s = write_summary(rd, plots=False)
    assert s["state"] == "finished"
    assert "warning: status.jsonl: 1 damaged line(s) (line 3): left out of the stages' states" in _flat(
        report.render(s, "table"))


@pytest.fixture
def read_only(tmp_path: Path) -> Iterator[Path]:
    """A run directory on a read-only file system: a read-only bind mount as root, a chmod otherwise."""
    src = make_run(tmp_path / "src")
    if os.geteuid() != 0:
        for p in [src, *src.rglob("*")]:
            p.chmod(p.stat().st_mode & ~0o222 if p.is_file() else 0o555)
        yield src
        for p in [src, *src.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)
        return
    ro = tmp_path / "share"
    ro.mkdir()
    if subprocess.run(["mount", "--bind", str(tmp_path / "src"), str(ro)], capture_output=True).returncode != 0:
        pytest.skip("cannot make a read-only mount here (no mount privilege)")
    try:
        if subprocess.run(["mount", "-o", "remount,ro,bind", str(ro)], capture_output=True).returncode != 0:
            pytest.skip("cannot remount read-only here")
        yield ro / src.name
    finally:
        subprocess.run(["umount", str(ro)], capture_output=True)


def test_read_only_run_directory_still_shows_the_table(read_only: Path) -> None:
    with pytest.raises(OSError):
        (read_only / "probe").write_text("x")  # the share really is read-only
    r = runner.invoke(app, ["report", str(read_only)], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    out = _flat(r.output)
    assert "H200x1x1 pretrain" in out and "how it was measured" in out
    assert re.search(r"warning: summary\.json( and the plots)? (was|were) not written to \S+ \(Read-only file "
                     r"system\); the figures shown are computed from the raw facts all the same", out)
    r = runner.invoke(app, ["report", str(read_only), "--format", "json"])
    assert r.exit_code == 0 and "not written" in r.output


def test_eval_launched_and_never_ended_means_the_run_is_not_finished(tmp_path: Path) -> None:
    rd = make_run(tmp_path, mmmu=None)  # pretrain and finetune finished, the run line finished
    lines = (rd / "status.jsonl").read_text().splitlines()
    end = json.loads(lines[-1])["t"]
    lines.insert(-1, json.dumps(_status(end - 0.5, "eval", "launched")))  # killed by `timeout` during the eval
    (rd / "status.jsonl").write_text("\n".join(lines) + "\n")
    (rd / "eval").mkdir()
    (rd / "eval" / "events.log").write_text(mllog("init_start", {"stage": "eval"}, (end - 0.4) * 1000) + "\n")
    s = write_summary(rd, plots=False)
    assert s["state"] == "stopped" and s["eval"]["state"] == "stopped"
    assert RunDir(rd).stage_states()[None] == "stopped"  # so `kit resume` continues the eval
    text = _flat(report.render(s, "table"))
    assert "run-1 (stopped)" in text
    assert "warning: status.jsonl says the run finished, but not every stage did: eval stopped" in text

    lines.pop()  # no run line at all (kit itself killed): no kit process holds the run
    (rd / "status.jsonl").write_text("\n".join(lines) + "\n")
    assert summary.run_summary(rd)["state"] == "stopped"


def test_eval_alone_shows_the_mmmu_row(tmp_path: Path) -> None:
    rd = make_run(tmp_path, [], mmmu={"acc": 0.3})
    _rewrite_json(rd / "run.json", stages=["eval"], model_dir="/runs/x/finetune/model")
    (rd / "eval" / "mmmu" / "summary.json").write_text(json.dumps({"overall": 0.3, "num": 6}))
    (rd / "eval" / "events.log").write_text(
        mllog("init_start", {"stage": "eval"}, (T0 + 3) * 1000) + "\n"
        + mllog("kit_facts", {"stage": "eval", "questions": 6, "decoding": "greedy", "world_size": 2},
                (T0 + 4) * 1000) + "\n"  # fmt: skip
    )
    (rd / "status.jsonl").write_text("".join(json.dumps(x) + "\n" for x in (
        _status(T0, "eval", "created"), _status(T0 + 2, "eval", "launched"), _status(T0 + 20, "eval", "finished"),
        _status(T0 + 21, None, "finished"))))  # fmt: skip
    s = write_summary(rd, plots=False)
    assert s["state"] == "finished" and s["stage_order"] == []
    text = report.render(s, "table")
    row = next(ln for ln in text.splitlines() if ln.startswith(" H200x1x1 eval"))
    assert "30.0%" in row
    assert "35.9%" in next(ln for ln in text.splitlines() if "seed A800 1x8" in ln)
    assert "6 questions" in text
    rows = list(csv.DictReader(io.StringIO(report.render(s, "csv"))))
    assert [(r["kind"], r["stage"]) for r in rows] == [("run", "eval"), ("reference", "eval"), ("ratio", "eval")]
    assert float(rows[0]["mmmu_acc"]) == 0.3


def test_missing_absolute_run_is_said_once(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    with pytest.raises(RunDirError) as e:
        find_run(str(missing), tmp_path / "runs")
    assert str(e.value) == f"no run {str(missing)!r}: {missing} does not exist"
    (tmp_path / "runs" / "empty").mkdir(parents=True)
    with pytest.raises(RunDirError, match=r"runs/empty has no run\.json: it is not a run directory made by"):
        find_run("empty", tmp_path / "runs")
    r = runner.invoke(app, ["report", str(missing)])
    assert r.exit_code == 2 and "neither" not in r.output and "does not exist" in r.output


def test_peak_flops_option(tmp_path: Path) -> None:
    rd = make_run(tmp_path, [StageSpec("pretrain", device_name="cpu", device_type="cpu")], config="tiny", device="cpu")
    r = runner.invoke(app, ["report", str(rd), "--format", "json", "--peak-flops", "1e12"])
    assert r.exit_code == 0, r.output
    pre = json.loads(r.output)["stages"]["pretrain"]
    assert pre["mfu_reference"] == pytest.approx(pre["tokens_per_s_per_gpu"] * 14e9 / 1e12)
    r = runner.invoke(app, ["report", str(rd), "--peak-flops", "0"])
    assert r.exit_code == 2 and "--peak-flops 0: expected a positive FLOP/s figure" in r.output


def test_memory_fixture_is_gib() -> None:
    assert GIB == 2**30
